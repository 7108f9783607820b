# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Every variant of ``asymmetric_segmentation`` (Table II of Li et al., TMI 2021) trains through ``ConfigWorkflow``.

Each variant is ``train.json`` plus one override file; the test runs one tiny epoch on phantoms and checks that
the variant really built what its name says (loss, trainer steps, augmentation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.losses import DiceCELoss

from monai_imbalance.data import make_phantom_dataset
from monai_imbalance.engines import RegularisedSupervisedTrainer
from monai_imbalance.losses import FBetaLoss, MarginFocalLoss

pytestmark = pytest.mark.slow  # bundle configs end to end

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "asymmetric_segmentation" / "configs"
VARIANTS = sorted(p.stem for p in (CONFIGS / "variants").glob("*.json"))
TABLE_II = {
    "ce", "dice", "f2", "f4", "f8", "large_margin", "asymmetric_large_margin", "focal", "asymmetric_focal",
    "adversarial", "asymmetric_adversarial", "mixup", "asymmetric_mixup", "symmetric_combination",
    "asymmetric_combination", "asymmetric_augmentation",
}  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=4, num_validation=1, seed=2)


def test_every_table_row_has_a_variant():
    assert set(VARIANTS) == TABLE_II


def test_variant_files_are_small_overrides():
    for name in VARIANTS:
        content = json.loads((CONFIGS / "variants" / f"{name}.json").read_text())
        assert "train" not in content and "validate" not in content, name  # deltas only, never whole sections
        text = json.dumps(content)
        assert '"_target_": "MarginFocalLoss"' not in text and '"_target_": "FBetaLoss"' not in text  # dotted paths


def _rare(classes):
    return None if classes is None else tuple(int(c) for c in classes)


def _expected(name: str, wf: ConfigWorkflow) -> None:
    loss = wf.parser.get_parsed_content("loss")
    trainer = wf.trainer
    rare = (1,)
    if name == "ce":
        assert isinstance(loss, MarginFocalLoss) and loss.lambda_dice == 0 and loss.margin == 0 and loss.gamma == 0
    elif name in ("dice", "f2", "f4", "f8"):
        beta = 1.0 if name == "dice" else float(name[1:])
        assert isinstance(loss, FBetaLoss) and loss.beta == beta
    elif "large_margin" in name:
        assert isinstance(loss, MarginFocalLoss) and loss.margin == 1.0 and loss.gamma == 0
        assert _rare(loss.rare_classes) == (rare if name.startswith("asymmetric") else None)
    elif name in ("focal", "asymmetric_focal"):
        assert isinstance(loss, MarginFocalLoss) and loss.gamma == 4.0 and loss.margin == 0
        assert _rare(loss.rare_classes) == (rare if name.startswith("asymmetric") else None)
    elif name == "asymmetric_augmentation":
        assert wf.parser.get_parsed_content("prob_background") == 0.5 and isinstance(loss, DiceCELoss)
    if "adversarial" in name or "mixup" in name or "combination" in name:
        assert isinstance(trainer, RegularisedSupervisedTrainer)
        output = trainer.state.output[0] if isinstance(trainer.state.output, list) else trainer.state.output
        asym = name.startswith("asymmetric")
        if "adversarial" in name or "combination" in name:
            assert "loss_adversarial" in output and torch.isfinite(torch.as_tensor(output["loss_adversarial"]))
            assert _rare(trainer.adversarial.rare_classes) == (rare if asym else None)
        if "mixup" in name or "combination" in name:
            assert "loss_mixup" in output and torch.isfinite(torch.as_tensor(output["loss_mixup"]))
            assert _rare(trainer.mixup.rare_classes) == (rare if asym else None) and trainer.mixup.raw
        if "combination" in name:
            assert isinstance(loss, MarginFocalLoss) and loss.gamma == 2.0 and trainer.mixup.alpha == 1.0
    else:
        assert type(trainer).__name__ == "SupervisedTrainer"


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains(name, dataset, tmp_path, bundle_harness):
    wf = bundle_harness("asymmetric_segmentation").workflow(
        ["train.json", f"variants/{name}.json"], dataset, tmp_path, epochs=1
    )
    wf.initialize()
    assert not wf.check_properties()
    wf.run()
    assert wf.trainer.state.iteration == 2
    assert torch.isfinite(torch.as_tensor(wf.trainer.state.output[0]["loss"]))
    _expected(name, wf)
    wf.finalize()
    assert (tmp_path / "models" / "latest.pt").is_file()
