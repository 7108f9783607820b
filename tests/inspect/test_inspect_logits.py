# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""``python -m monai_imbalance.inspect logits`` end to end on phantoms, with a model from a 1-epoch bundle training.

The training also runs the bundle's ``LogitDistributionHandler`` entry (``logit_plots=true``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigWorkflow

from monai_imbalance.data import make_phantom_dataset
from monai_imbalance.inspect.__main__ import main, parse_overrides

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "asymmetric_segmentation" / "configs"
#: as ``tiny_overrides`` in tests/bundles/conftest.py, one epoch
TINY = {"epochs": 1, "val_interval": 1, "patch_size": [16, 16, 16], "filters": [8, 16, 32], "num_workers": 0}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    dataset = make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=4, num_validation=2, seed=1)
    root = tmp_path_factory.mktemp("bundle")
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        dataset_dir=str(dataset),
        bundle_root=str(root),
        logit_plots=True,
        **TINY,
    )
    wf.initialize()
    assert not wf.check_properties()
    wf.run()
    wf.finalize()
    return dataset, root


def test_bundle_handler_entry_writes_the_report(trained):
    _, root = trained
    logits = root / "eval" / "logits"
    names = sorted(p.name for p in logits.iterdir())
    assert "logit_margins_epoch0001.npz" in names and "logit_margins_epoch0001_1_class_1.png" in names
    npz = np.load(logits / "logit_margins_epoch0001.npz")
    assert npz["train_1"].size > 0 and npz["validation_1"].size > 0


def test_inspect_logits_command(trained, tmp_path, caplog):
    dataset, root = trained
    out = tmp_path / "inspect"
    argv = ["logits", "--config_file", str(CONFIGS / "train.json"), "--checkpoint", str(root / "models" / "model.pt")]
    argv += ["--splits", "train", "validation", "test", "--out", str(out), "--samples_per_class", "2000"]
    argv += ["--max_cases", "1", "--dataset_dir", str(dataset), "--patch_size", "[16, 16, 16]", "--filters=[8, 16, 32]"]
    argv += ["--validate#inferer#overlap", "0"]  # 8 windows per 32^3 phantom: fast
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    for c, name in enumerate(["background", "class_1"]):
        assert (out / f"logit_margins_{c}_{name}.png").stat().st_size > 5000
    npz = np.load(out / "logit_margins.npz")
    assert list(npz["splits"]) == ["train", "validation", "test"]
    for split in ("train", "validation", "test"):
        assert npz[f"{split}_0"].size == 2000 and 0 < npz[f"{split}_1"].size <= 2000  # balanced, capped
    assert "shift train-test" in caplog.text and "wrong side test" in caplog.text
    # a training checkpoint (latest.pt, with a "model" entry) works as well
    assert main([*argv[:4], str(root / "models" / "latest.pt"), *argv[5:], "--splits", "test"]) == 0


def test_seed_selects_the_training_cases_of_the_run(trained, tmp_path, caplog):
    """``--seed`` is the bundle's (the training cases of a fraction, as in training); the samplers' is
    ``--sampler_seed``: a model trained with seed 1 is inspected on seed 1's cases."""
    from monai_imbalance.data import load_datalist

    dataset, root = trained
    chosen = {}
    for seed in (0, 1, 2, 3):
        names = [Path(d["image"]).name.split(".")[0] for d in load_datalist(dataset, "training", 0.5, seed=seed)]
        chosen[seed] = ", ".join(names)
    seed = next(s for s in (1, 2, 3) if chosen[s] != chosen[0])
    argv = ["logits", "--config_file", str(CONFIGS / "train.json"), "--checkpoint", str(root / "models" / "model.pt")]
    argv += ["--splits", "train", "--out", str(tmp_path), "--samples_per_class", "500", "--sampler_seed", "3"]
    argv += ["--dataset_dir", str(dataset), "--patch_size", "[16, 16, 16]", "--filters=[8, 16, 32]"]
    argv += ["--validate#inferer#overlap", "0", "--training_fraction", "0.5", "--seed", str(seed)]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    assert f"train: 2 cases ({chosen[seed]})" in caplog.text


def test_parse_overrides():
    assert parse_overrides(["--dataset_dir", "d", "--epochs=3", "--patch_size", "[8, 8]", "--device", "$torch"]) == {
        "dataset_dir": "d",
        "epochs": 3,
        "patch_size": [8, 8],
        "device": "$torch",
    }
    with pytest.raises(ValueError):
        parse_overrides(["oops"])
