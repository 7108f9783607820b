# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The ``asymmetric_segmentation`` bundle through ``ConfigWorkflow``, as the Model Zoo's unit tests run bundles.

Tiny phantoms (32^3), a tiny DynUNet and 16^3 patches keep each run to seconds on a 2-core CPU.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_imbalance.data import DataValidationError, load_evaluation_datalist, make_phantom_dataset

pytestmark = pytest.mark.slow  # bundle configs end to end


def _epoch(checkpoint: dict) -> int:
    """The trainer's epoch in a checkpoint (ignite saves the iteration and the epoch length)."""
    return checkpoint["trainer"]["iteration"] // checkpoint["trainer"]["epoch_length"]


CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "asymmetric_segmentation" / "configs"


def _causes(error: BaseException | None) -> list[BaseException]:
    """``error`` and its chain of ``__cause__`` (MONAI's config parser wraps the errors it evaluates)."""
    out = []
    while error is not None:
        out.append(error)
        error = error.__cause__
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=4, num_validation=2, seed=1)


@pytest.fixture(scope="module")
def bundle(bundle_harness):
    return bundle_harness("asymmetric_segmentation")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory, bundle):
    root = tmp_path_factory.mktemp("bundle")
    wf = bundle.run(["train.json"], dataset, root)
    return root, wf


def test_train_writes_best_and_latest_checkpoints(trained):
    root, wf = trained
    assert wf.trainer.state.epoch == 2 and wf.trainer.state.iteration == 4  # 4 cases / batch 2 = 2 per epoch
    latest = torch.load(root / "models" / "latest.pt", weights_only=True)
    assert set(latest) == {"model", "optimizer", "lr_scheduler", "trainer", "best"}
    assert _epoch(latest) == 2
    best = torch.load(root / "models" / "model.pt", weights_only=True)
    assert set(best) == set(wf.parser.get_parsed_content("network_def").state_dict())  # a bare state dict
    assert 0.0 <= latest["best"]["best_metric"] <= 1.0 and latest["best"]["best_epoch"] in (1, 2)
    runs = list((root / "eval" / "tensorboard").iterdir())  # one folder per run
    assert len(runs) == 1 and any(p.name.startswith("events.out.tfevents") for p in runs[0].iterdir())
    assert not list((root / "models").glob(".*tmp*"))  # atomic writes leave no temporary file


def test_evaluate_reports_test_and_external(trained, dataset, bundle):
    root, _ = trained
    wf = bundle.run(["train.json", "evaluate.json"], dataset, root, save_predictions=True)
    rows = bundle.read_csv(root / "eval" / "metrics_per_case.csv")
    assert sorted({r["split"] for r in rows}) == ["external", "test"]
    assert len(rows) == 3  # 2 test + 1 external cases, one foreground class
    for r in rows:
        assert 0.0 <= float(r["dice"]) <= 1.0
    table = (root / "eval" / "metrics_summary.md").read_text()
    assert "DSC" in table and "HD95" in table and "external" in table
    # predictions are written on the label's original grid
    pred = nib.load(next((root / "eval" / "predictions").glob("*_seg.nii.gz")))
    assert pred.shape[:3] == (32, 32, 32) and set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    assert wf.evaluator.state.metrics["val_mean_dice"] >= 0.0


def test_inference_writes_segmentations(trained, dataset, tmp_path, bundle):
    root, _ = trained
    bundle.inference(dataset, root, tmp_path)
    outputs = sorted(tmp_path.glob("*_seg.nii.gz"))
    assert len(outputs) == 2
    seg = nib.load(outputs[0])
    assert seg.shape[:3] == (32, 32, 32) and np.allclose(seg.affine, np.diag([2.0, 2.0, 2.0, 1.0]))


def test_resume_continues_from_latest(dataset, tmp_path, bundle):
    bundle.run(["train.json"], dataset, tmp_path, epochs=1)
    first = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)
    wf = bundle.run(["train.json"], dataset, tmp_path, epochs=3, resume=True)
    assert wf.trainer.state.epoch == 3 and wf.trainer.state.iteration == 6  # continued: 2 more epochs of 2
    latest = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)
    assert _epoch(latest) == 3
    assert latest["best"]["best_metric"] >= first["best"]["best_metric"]  # the best score was carried over


def test_resume_without_checkpoint_is_a_clear_error(dataset, tmp_path, bundle):
    wf = bundle.workflow(["train.json"], dataset, tmp_path, resume=True)
    wf.initialize()
    with pytest.raises(RuntimeError) as err:  # MONAI wraps errors raised while it builds the trainer
        wf.run()
    cause = err.value
    while cause is not None and not isinstance(cause, FileNotFoundError):
        cause = cause.__cause__
    assert cause is not None and "no checkpoint" in str(cause) and str(tmp_path / "models" / "latest.pt") in str(cause)


def test_same_seed_gives_identical_weights(dataset, tmp_path, bundle):
    weights = []
    for run in ("a", "b"):
        bundle.run(["train.json"], dataset, tmp_path / run, epochs=1, val_interval=5, num_workers=2)
        weights.append(torch.load(tmp_path / run / "models" / "latest.pt", weights_only=True)["model"])
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
    bundle.run(["train.json"], dataset, tmp_path / "c", epochs=1, val_interval=5, seed=1)
    other = torch.load(tmp_path / "c" / "models" / "latest.pt", weights_only=True)["model"]
    assert any(not torch.equal(other[k], weights[0][k]) for k in other)  # and the seed matters


def test_killed_mid_epoch_then_resumed(dataset, tmp_path, bundle):
    """Kill the CLI run while it trains, then ``--resume``: it continues from the last saved epoch."""

    def args(epochs: int, **override) -> list[str]:
        settings = {"val_interval": 100, "epochs": epochs, **override}
        return [sys.executable, *bundle.command("training", ["train.json"], dataset, tmp_path, **settings)]

    latest = tmp_path / "models" / "latest.pt"
    proc = subprocess.Popen(args(1000), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not latest.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(0.5)  # well into a later epoch
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved_epoch = _epoch(torch.load(latest, weights_only=True))
    assert 1 <= saved_epoch < 1000
    out = subprocess.run(
        args(saved_epoch + 1, resume=True),
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Restored all variables" in out.stdout + out.stderr
    assert _epoch(torch.load(latest, weights_only=True)) == saved_epoch + 1


def test_classes_view_trains_and_evaluates_on_one_class_of_a_three_class_dataset(tmp_path, bundle):
    """``classes: ["class_2"]`` on a 3-class dataset: a 2-output network, class_1 folded into the background, and the
    evaluation scores the view's class against the mapped reference (as the brain_lesion binary lesion view)."""
    data = make_phantom_dataset(tmp_path / "data", num_training=3, num_validation=1, num_classes=3, seed=4)
    root = tmp_path / "bundle"
    wf = bundle.run(["train.json"], data, root, epochs=1, classes=["class_2"])
    assert wf.parser.get_parsed_content("labels") == {0: "background", 1: "class_2"}
    assert wf.parser.get_parsed_content("network_def").output_block.conv.conv.out_channels == 2
    batch = next(iter(wf.parser.get_parsed_content("validate#dataloader")))
    reference = nib.load(wf.parser.get_parsed_content("validate#datalist")[0]["label"]).get_fdata()
    assert {0, 1, 2} <= set(np.unique(reference))  # the dataset has both foreground classes ...
    assert set(torch.unique(batch["label"]).tolist()) == {0, 1}  # ... the view one, class_2 only
    assert int((batch["label"] == 1).sum()) == int((reference == 2).sum())  # same grid here (2 mm phantoms)
    bundle.run(["train.json", "evaluate.json"], data, root, classes=["class_2"])
    rows = bundle.read_csv(root / "eval" / "metrics_per_case.csv")
    assert {r["class"] for r in rows} == {"class_2"} and {r["class_index"] for r in rows} == {"1"}
    labels = {
        Path(e["label"]).name.split(".")[0]: e["label"] for e in load_evaluation_datalist(data, ["test", "external"])
    }
    for r in rows:  # the reference of the view's class 1 is the dataset's class 2, on the label's own grid
        assert float(r["n_label"]) == float((nib.load(labels[r["case"]]).get_fdata() == 2).sum()) > 0


def test_unknown_class_in_the_view_is_named(tmp_path, bundle):
    data = make_phantom_dataset(tmp_path / "data", num_training=2, num_validation=1, seed=5)
    with pytest.raises(Exception) as info:
        bundle.run(["train.json"], data, tmp_path / "bundle", epochs=1, classes=["tumour"])
    causes = _causes(info.value)
    assert any(
        isinstance(c, DataValidationError) and "'tumour' is not a class of the dataset" in str(c) for c in causes
    )


def test_a_run_shorter_than_the_validation_interval_still_leaves_model_pt(dataset, tmp_path, bundle):
    """--epochs 1 with val_interval 5: the last epoch validates, so evaluation, inference and export find model.pt."""
    wf = bundle.run(["train.json"], dataset, tmp_path, epochs=1, val_interval=5)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert wf.parser.get_parsed_content("validate#evaluator").state.epoch == 1


def test_a_2d_dataset_given_to_the_3d_bundle_names_the_file(tmp_path, bundle):
    from PIL import Image

    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    entries = []
    for i in range(3):
        label = np.zeros((32, 32), np.uint8)
        label[8:16, 8:16] = 1
        Image.fromarray((label * 200 + i).astype(np.uint8)).save(data / "images" / f"case_{i}.png")
        Image.fromarray(label).save(data / "labels" / f"case_{i}.png")
        entries.append({"image": f"images/case_{i}.png", "label": f"labels/case_{i}.png"})
    dataset = {"labels": {"0": "background", "1": "square"}, "training": entries[:2], "validation": entries[2:]}
    (data / "dataset.json").write_text(json.dumps(dataset))
    with pytest.raises(Exception) as info:
        bundle.run(["train.json"], data, tmp_path / "bundle", epochs=1)
    causes = _causes(info.value)
    message = next(str(c) for c in causes if isinstance(c, DataValidationError))
    assert "case_" in message and ".png' has 2 spatial dimension(s)" in message and "takes 3D images" in message


def test_each_run_logs_to_its_own_tensorboard_folder_and_prints_the_loss(dataset, tmp_path, bundle, caplog):
    with caplog.at_level(logging.INFO):
        bundle.run(["train.json"], dataset, tmp_path, epochs=1, log_interval=1)
    time.sleep(1.1)  # run folders are named by the second the run started
    bundle.run(["train.json"], dataset, tmp_path, epochs=2, resume=True)
    runs = sorted((tmp_path / "eval" / "tensorboard").iterdir())
    assert len(runs) == 2 and all(any(r.glob("events.out.tfevents*")) for r in runs)
    assert "Iter: 1/2 -- train_loss:" in caplog.text and "Iter: 2/2 -- train_loss:" in caplog.text
