# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The ``context_label_segmentation`` bundle (CoLab, Li et al., IEEE TMI 2023) through ``ConfigWorkflow``.

Tiny phantoms (32^3), a tiny DynUNet and 16^3 patches; the default ``train.json`` is CoLab with t = 2 and the meta
step every iteration here (``meta_interval`` 1) so that the two tiny epochs take meta steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.engines import SupervisedTrainer
from monai.transforms import Compose, Orientationd, Spacingd

from monai_imbalance.data import make_phantom_dataset
from monai_imbalance.engines import ContextTargetLoss
from monai_imbalance.transforms import DilatedRingContextLabelsd, KMeansContextLabelsd

pytestmark = pytest.mark.slow  # bundle configs end to end

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "context_label_segmentation" / "configs"
VARIANTS = sorted(p.stem for p in (CONFIGS / "variants").glob("*.json"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=4, num_validation=2, seed=3)


@pytest.fixture(scope="module")
def bundle(bundle_harness):
    return bundle_harness("context_label_segmentation", meta_interval=1)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory, bundle):
    root = tmp_path_factory.mktemp("bundle")
    wf = bundle.run(["train.json"], dataset, root)
    return root, wf


def test_variants_are_the_issue_list():
    assert set(VARIANTS) == {
        "vanilla", "kmeans_t2", "dilated_t2", "colab_t2", "colab_t4", "colab_t6", "colab_t2_fast",
        "colab_t2_scaled_meta_lr", "colab_t4_scaled_meta_lr", "organ_t2", "colab_t2_batched",
    }  # fmt: skip
    for name in VARIANTS:
        content = json.loads((CONFIGS / "variants" / f"{name}.json").read_text())
        assert "train" not in content and "validate" not in content, name


def test_colab_training_updates_the_generator_and_checkpoints_it(trained):
    root, wf = trained
    learner = wf.parser.get_parsed_content("context_learner")
    assert learner.num_context == 2 and learner.steps == 4 and learner.skipped == 0  # 2 epochs x 2 iterations
    latest = torch.load(root / "models" / "latest.pt", weights_only=True)
    assert {"generator", "generator_optimizer", "generator_lr_scheduler"} <= set(latest)
    assert latest["generator_lr_scheduler"]["last_epoch"] == 4  # stepped once per meta step
    adam = latest["generator_optimizer"]["state"]
    # the authors' per-sample loop: one generator update per sample (batch 2 x 2 samples), none skipped
    assert learner.updates == 4 * 2 * 2
    assert adam and all(int(state["step"]) == 16 for state in adam.values())
    best = torch.load(root / "models" / "model.pt", weights_only=True)
    assert best["output_block.conv.conv.weight"].shape[0] == 3  # K = C + t - 1 = 3 segmenter channels
    assert sorted(p.name for p in (root / "eval" / "context_labels").glob("*.png")) == [
        "context_labels_epoch0001.png",
        "context_labels_epoch0002.png",
    ]
    assert 0.0 <= wf.trainer.state.metrics["train_mean_dice"] <= 1.0  # metrics see the collapsed C classes


def test_resume_restores_the_generator(trained, dataset, bundle, tmp_path):
    root, _ = trained
    for name in ("latest.pt", "model.pt"):
        (tmp_path / "models").mkdir(exist_ok=True)
        (tmp_path / "models" / name).write_bytes((root / "models" / name).read_bytes())
    saved = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)["generator"]
    wf = bundle.workflow(["train.json"], dataset, tmp_path, epochs=2, resume=True)
    wf.initialize()
    wf.run()  # already at epoch 2: restores and stops
    generator = wf.parser.get_parsed_content("generator")
    for k, v in generator.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert wf.trainer.state.epoch == 2


def test_evaluate_and_inference_output_only_the_original_classes(trained, dataset, bundle, tmp_path):
    root, _ = trained
    bundle.run(["train.json", "evaluate.json"], dataset, root, save_predictions=True)
    rows = bundle.read_csv(root / "eval" / "metrics_per_case.csv")
    assert sorted({r["split"] for r in rows}) == ["external", "test"] and {r["class_index"] for r in rows} == {"1"}
    bundle.inference(dataset, root, tmp_path)
    outputs = sorted(tmp_path.glob("*_seg.nii.gz"))
    assert len(outputs) == 2
    for out in outputs:
        seg = np.asarray(nib.load(out).dataobj)
        assert seg.shape[:3] == (32, 32, 32) and set(np.unique(seg)) <= {0, 1}  # context never leaks as a label


@pytest.mark.parametrize("variant", ["vanilla", "kmeans_t2", "dilated_t2", "colab_t4", "colab_t2_fast"])
def test_variant_builds_what_its_name_says(variant, dataset, tmp_path, bundle):
    wf = bundle.run(["train.json", f"variants/{variant}.json"], dataset, tmp_path, epochs=1)
    trainer = wf.trainer
    assert isinstance(trainer, SupervisedTrainer) and isinstance(trainer.loss_function, ContextTargetLoss)
    learner = wf.parser.get_parsed_content("context_learner")
    transforms = wf.parser.get_parsed_content("train#context_transforms")
    if variant == "vanilla":
        assert learner.num_context == 1 and learner.generator is None and learner.mask_key is None
        assert wf.parser.get_parsed_content("num_channels") == 2
    elif variant in ("kmeans_t2", "dilated_t2"):
        kind = KMeansContextLabelsd if variant == "kmeans_t2" else DilatedRingContextLabelsd
        assert learner.generator is None and learner.context_key == "context_label" and learner.num_context == 2
        assert [type(t) for t in transforms] == [kind]
    elif variant == "colab_t4":
        assert learner.num_context == 4 and learner.generator is not None and learner.steps == 2
        assert learner.mask_key == "context_mask"
        assert learner.method == "finite_difference" and not learner.reuse_lookahead_gradient  # the authors'
        assert list(learner.generator.filters) == list(wf.parser.get_parsed_content("filters"))
    else:  # the cheaper set-up: one-sided difference, reused gradient, quarter-width generator
        assert learner.num_context == 2 and learner.steps == 2 and learner.skipped == 0
        assert learner.method == "forward_difference" and learner.reuse_lookahead_gradient
        filters = wf.parser.get_parsed_content("filters")
        assert list(learner.generator.filters) == [max(1, round(f / 4)) for f in filters] != list(filters)
    assert np.isfinite(float(trainer.state.output[0]["loss"]))


def test_validation_postprocessing_keeps_the_paper_rule(dataset, tmp_path):
    """The K-channel prediction becomes the C-class one-hot of "argmax over K, context -> background"."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"dataset_dir": str(dataset), "bundle_root": str(tmp_path), "num_context": 3})
    post = parser.get_parsed_content("validate#postprocessing")
    logits = torch.zeros((4, 5, 5, 5))  # K = 2 + 3 - 1 = 4: [ctx_0, FG_1, ctx_1, ctx_2]
    logits[1, :2] = 5.0  # foreground wins here
    logits[3, 1:3] = 9.0  # ... except where context 2 beats it (row 1), and it wins alone in row 2
    out = post({"pred": logits, "label": torch.zeros((1, 5, 5, 5))})
    fg = out["pred"][1]
    assert out["pred"].shape == (2, 5, 5, 5)
    assert torch.all(fg[0] == 1) and torch.all(fg[1:] == 0)


def test_colab_training_with_performance_tracking(dataset, tmp_path, bundle):
    """CoLab + the performance_estimation bundle's track.json: the estimators see the segmenter's K = C + t - 1
    channels folded into the C classes (context channels into the background, the package's one rule)."""
    track = Path(__file__).resolve().parents[2] / "bundles" / "performance_estimation" / "configs" / "track.json"
    bundle.run(["train.json", track], dataset, tmp_path, epochs=1, track_estimators=["ac", "cs-ts"])
    (file,) = sorted((tmp_path / "eval" / "estimates").glob("*.json"))
    results = json.loads(file.read_text())
    external = results["targets"]["external"]["mean"]
    assert len(external["true"]) == 1  # one foreground class (C = 2), not the K - 1 = 2 channels of the segmenter
    for name in ("ac", "cs-ts"):
        assert 0.0 <= external["estimated"][name][0] <= 1.0


@pytest.mark.parametrize("variant, num_context", [("colab_t2_scaled_meta_lr", 2), ("colab_t4_scaled_meta_lr", 4)])
def test_scaled_meta_lr_variant_gives_the_generator_the_authors_step_budget(
    dataset, tmp_path, bundle, variant, num_context
):
    """``colab_t{2,4}_scaled_meta_lr``: 3e-4 x min(100, 80,000 / generator updates), the updates counted by hand."""
    wf = bundle.workflow(["train.json", f"variants/{variant}.json"], dataset, tmp_path, epochs=3)
    wf.initialize()
    parser = wf.parser
    assert parser.get_parsed_content("num_context") == num_context
    iterations = len(parser.get_parsed_content("train#dataloader"))
    patches = parser["batch_size"] * parser["num_samples"]
    updates = 3 * iterations // parser["meta_interval"] * patches  # one update per patch (the per-sample loop)
    expected = 3e-4 * min(100.0, 80000 / max(1, updates))
    assert parser.get_parsed_content("generator_learning_rate") == pytest.approx(expected)
    optimizer = parser.get_parsed_content("generator_optimizer")
    assert optimizer.param_groups[0]["lr"] == pytest.approx(expected) and expected > 3e-4


def test_organ_variant_takes_the_context_from_the_dataset_label_before_the_view_folds_it(tmp_path, bundle):
    """``organ_t2`` (human-defined context): on a 3-class dataset viewed as class 2 alone, the organ (class 1) that
    the view folds into the background is the second context class, aligned with the image, and trains."""
    data = make_phantom_dataset(tmp_path / "data", num_training=4, num_validation=1, num_classes=3, seed=5)
    files = ["train.json", "variants/organ_t2.json"]
    settings = {"classes": ["class_2"], "context_classes": ["class_1"], "epochs": 1}
    wf = bundle.workflow(files, data, tmp_path / "root", **settings)
    wf.initialize()
    parser = wf.parser
    entry = parser.get_parsed_content("train#datalist")[0]
    item = Compose(parser.get_parsed_content("train#deterministic_transforms"))(dict(entry))
    source = Compose(
        parser.get_parsed_content("train#deterministic_transforms")[:2]
        + [
            Orientationd(keys="label", axcodes="RAS"),
            Spacingd(keys="label", pixdim=parser["pixdim"], mode="nearest"),
        ]
    )({"image": entry["image"], "label": entry["label"]})["label"]  # the dataset label, not folded
    assert int((source == 1).sum()) > 0 and int((source == 2).sum()) > 0  # both classes in the case
    assert torch.equal(item["context_label"].as_tensor() > 0, source.as_tensor() == 1)  # the organ, voxel for voxel
    assert set(torch.unique(item["label"]).tolist()) <= {0, 1} and torch.equal(
        item["label"].as_tensor() == 1, source.as_tensor() == 2
    )  # the view: class 2 alone
    wf.run()
    learner = parser.get_parsed_content("context_learner")
    assert learner.context_key == "context_label" and learner.num_context == 2 and learner.generator is None
    assert np.isfinite(float(wf.trainer.state.output[0]["loss"]))
