# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The ``learned_augmentation_segmentation`` bundle (JCSAugment, Li et al., IEEE TMI 2023) through ``ConfigWorkflow``.

Tiny phantoms (32^3), a tiny DynUNet and 16^3 patches. The default ``train.json`` is the joint method (class-specific
TRA + learned TEA); it is trained once for two tiny epochs, then resumed, evaluated and used for inference, and its
segmenter is the frozen model of the post-hoc TEA run (``learn_tta.json``, ``run learning_tta``). Every variant is
built from its config and its objects checked (policy groups, probabilities, learner, TTA); ``none`` and ``learned``
are also trained end to end, and ``learned_class_specific_learned_tta`` runs its whole pipeline (TRA training,
post-hoc TEA, evaluation with the learned TTA).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer
from monai.inferers import SlidingWindowInferer

from monai_imbalance.augment import (
    NNUNET_MIRRORING,
    AugmentationPolicy,
    LearnedTTAInferer,
    TestTimePolicy,
    TrainingTransformPool,
    load_policy,
)
from monai_imbalance.data import make_phantom_dataset
from monai_imbalance.engines import AugmentationPolicyIteration, TestTimePolicyLearner, TrainingPolicyLearner
from monai_imbalance.handlers import PolicyPlotHandler
from monai_imbalance.transforms import PolicyAugmentd

pytestmark = pytest.mark.slow  # bundle configs end to end

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "learned_augmentation_segmentation"
CONFIGS = BUNDLE / "configs"
VARIANTS = sorted(p.stem for p in (CONFIGS / "variants").glob("*.json"))
ISSUE_VARIANTS = {
    "none", "heuristic", "randaugment", "learned", "learned_class_specific", "learned_class_specific_heuristic_tta",
    "learned_class_specific_learned_tta", "joint",
}  # fmt: skip
BG_FG = ("background", "foreground")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=4, num_validation=2, seed=3)


def _parser(config_files, dataset, bundle_root, **override):
    """The merged config, parsed lazily (objects are built on ``get_parsed_content``)."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in config_files])
    parser.update({"dataset_dir": str(dataset), "bundle_root": str(bundle_root), "cache_rate": 0.0, **override})
    return parser


def _copy_models(src: Path, dst: Path, names) -> None:
    (dst / "models").mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(src / "models" / name, dst / "models" / name)


@pytest.fixture(scope="module")
def harness(bundle_harness):
    return bundle_harness("learned_augmentation_segmentation")


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory, harness):
    root = tmp_path_factory.mktemp("bundle")
    wf = harness.complete(harness.workflow(["train.json"], dataset, root))
    return root, wf


def test_variants_are_the_issue_list():
    assert set(VARIANTS) == ISSUE_VARIANTS | {
        "vanilla",
        "learned_class_specific_scaled_meta_lr",
        "heuristic_mirroring_tta",
    }
    for name in VARIANTS:
        content = json.loads((CONFIGS / "variants" / f"{name}.json").read_text())
        assert "train" not in content and "validate" not in content, name  # deltas only, never whole sections
        assert isinstance(content.get("_desc_"), str) and len(content["_desc_"]) > 40, name  # says what it is
    # the experiment table's default "vanilla" row is the un-augmented baseline, not a second copy of train.json
    assert (CONFIGS / "variants" / "vanilla.json").read_text() == (CONFIGS / "variants" / "none.json").read_text()


def test_joint_training_learns_both_policies_and_saves_them(trained):
    root, wf = trained
    hook = wf.parser.get_parsed_content("train#trainer#iteration_update")
    learner, tea_learner = (
        wf.parser.get_parsed_content("policy_learner"),
        wf.parser.get_parsed_content("test_time_learner"),
    )
    assert isinstance(hook, AugmentationPolicyIteration) and hook.augment_validation  # TRA sees TEA (joint)
    assert hook.training is learner and hook.test_time is tea_learner and wf.trainer._process_function is hook
    assert (learner.steps, learner.skipped, tea_learner.steps, tea_learner.skipped) == (4, 0, 4, 0)
    policy, tea = learner.policy, tea_learner.policy
    assert policy is wf.parser.get_parsed_content("policy") and tea is wf.parser.get_parsed_content("test_time_policy")
    assert policy.group_names == BG_FG and policy.groups["background"] == (0,)
    # the policy moved away from its nnU-Net-like initialisation, and the loader workers' table follows it
    assert not torch.allclose(policy.probability_matrix(), AugmentationPolicy(init="nnunet").probability_matrix())
    shared = wf.parser.get_parsed_content("shared_policy")
    for g in range(2):
        np.testing.assert_allclose(shared.read(g), policy.probability_matrix()[g].numpy(), atol=1e-7)

    latest = torch.load(root / "models" / "latest.pt", map_location="cpu", weights_only=True)
    for key in ("policy", "policy_optimizer", "test_time_policy", "test_time_optimizer", "policy_history"):
        assert key in latest, key
    assert all(int(s["step"]) == 4 for s in latest["policy_optimizer"]["state"].values())  # 4 TRA updates
    assert all(int(s["step"]) == 4 for s in latest["test_time_optimizer"]["state"].values())  # 4 TEA updates
    for name, module in (("policy", policy), ("test_time_policy", tea)):
        for k, v in module.state_dict().items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(latest[name][k], v.cpu()), (name, k)
        # the readable files next to the checkpoint hold the same probabilities
        loaded = load_policy(root / "models" / name)
        desc = json.loads((root / "models" / f"{name}.json").read_text())
        if name == "policy":
            assert set(desc["probabilities"]) == set(BG_FG)
            torch.testing.assert_close(loaded.probability_matrix(), policy.probability_matrix())
            p_scale = desc["probabilities"]["foreground"]["scale"]["identity"]
            assert math.isclose(p_scale, float(policy.probabilities()["foreground"]["scale"][0]), abs_tol=1e-6)
        else:
            assert desc["type"] == "TestTimePolicy" and len(desc["probabilities"]) == 84
            torch.testing.assert_close(loaded.probabilities(), tea.probabilities().cpu())

    history = latest["policy_history"]
    assert history["epochs"] == [1, 2]
    np.testing.assert_allclose(  # the last record of the plot handler is the policy at the end of training
        history["training"]["foreground"]["gamma"][-1], policy.probabilities()["foreground"]["gamma"].cpu(), rtol=1e-6
    )
    pngs = sorted((root / "eval" / "policy").glob("*.png"))
    assert [p.name for p in pngs] == ["policy_epoch0001.png", "policy_epoch0002.png"] and pngs[-1].stat().st_size > 0
    assert 0.0 <= wf.trainer.state.metrics["train_mean_dice"] <= 1.0


def test_resume_restores_the_policies(trained, dataset, harness, tmp_path):
    root, _ = trained
    _copy_models(root, tmp_path, ["latest.pt", "model.pt"])
    saved = torch.load(tmp_path / "models" / "latest.pt", map_location="cpu", weights_only=True)
    wf = harness.workflow(["train.json"], dataset, tmp_path, resume=True)
    wf.initialize()
    wf.run()  # already at epoch 2: restores and stops
    assert wf.trainer.state.epoch == 2
    learner, tea_learner = (
        wf.parser.get_parsed_content("policy_learner"),
        wf.parser.get_parsed_content("test_time_learner"),
    )
    for name, module in (("policy", learner.policy), ("test_time_policy", tea_learner.policy)):
        for k, v in module.state_dict().items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v.cpu(), saved[name][k]), (name, k)
    shared = wf.parser.get_parsed_content("shared_policy")  # what the loader workers sample from
    np.testing.assert_allclose(shared.read(1), learner.policy.probability_matrix()[1].numpy(), atol=1e-7)
    assert learner.optimizer.state_dict()["state"][0]["step"] == saved["policy_optimizer"]["state"][0]["step"]
    assert tea_learner.optimizer.state_dict()["state"][0]["step"] == saved["test_time_optimizer"]["state"][0]["step"]
    assert wf.parser.get_parsed_content("train#handlers#4").epochs == [1, 2]  # the curves continue


def test_a_policy_for_another_grouping_or_pool_is_refused(trained, dataset, harness, tmp_path):
    root, _ = trained
    with pytest.raises(ValueError, match="group"):
        load_policy(root / "models" / "policy", AugmentationPolicy(groups={"all": None}))
    with pytest.raises(ValueError, match="op"):
        load_policy(root / "models" / "policy", AugmentationPolicy(TrainingTransformPool(["scale", "gamma"])))
    # resuming the class-agnostic variant from the class-specific checkpoint fails before any step, naming the groups
    _copy_models(root, tmp_path, ["latest.pt"])
    wf = harness.workflow(["train.json", "variants/learned.json"], dataset, tmp_path, resume=True, epochs=3)
    wf.initialize()
    with pytest.raises(RuntimeError) as err:  # MONAI wraps the error of a config expression
        wf.run()
    assert isinstance(_cause(err.value), ValueError) and "2 class group(s)" in str(_cause(err.value))
    assert wf.trainer.state.iteration == 0  # refused before any step
    # a training-time policy file where inference expects the test-time one
    bad = tmp_path / "bad"
    _copy_models(root, bad, ["model.pt"])
    for ext in (".pt", ".json"):
        shutil.copy(root / "models" / f"policy{ext}", bad / "models" / f"test_time_policy{ext}")
    wf = harness.inference_workflow(dataset, bad, tmp_path / "out")
    assert not wf.parser.get_parsed_content("inferer").loaded  # built without reading the file (lazy) ...
    with pytest.raises(RuntimeError) as err:
        wf.initialize()  # ... which the initialize list reads: refused before any prediction
    assert isinstance(_cause(err.value), ValueError) and "not a TestTimePolicy" in str(_cause(err.value))
    assert not (tmp_path / "out").exists()


def _cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def _labels(path: Path) -> set[int]:
    return set(np.unique(np.asarray(nib.load(path).dataobj)).astype(int).tolist())


def test_inference_uses_the_learned_tta_when_a_policy_file_is_there(trained, dataset, harness, tmp_path):
    root, wf_train = trained
    tea = wf_train.parser.get_parsed_content("test_time_learner").policy
    for with_policy in (True, False):
        bundle = tmp_path / ("with" if with_policy else "without")
        _copy_models(root, bundle, ["model.pt"] + (["test_time_policy.pt", "test_time_policy.json"] * with_policy))
        wf = harness.complete(harness.inference_workflow(dataset, bundle, bundle / "out"))
        inferer = wf.parser.get_parsed_content("inferer")
        if with_policy:
            assert isinstance(inferer, LearnedTTAInferer)
            indices, weights = tea.top_k(8)
            assert inferer.indices == indices
            np.testing.assert_allclose(inferer.weights, weights.cpu().numpy(), rtol=1e-6)
        else:
            assert isinstance(inferer, SlidingWindowInferer) and not isinstance(inferer, LearnedTTAInferer)
        outputs = sorted((bundle / "out").glob("*_seg.nii.gz"))
        assert len(outputs) == 2
        for out in outputs:
            assert nib.load(out).shape[:3] == (32, 32, 32) and _labels(out) <= {0, 1}


def test_evaluate_with_learned_tta_writes_the_report(trained, dataset, harness):
    root, _ = trained
    wf = harness.complete(harness.workflow(["train.json", "evaluate.json"], dataset, root, save_predictions=True))
    assert isinstance(wf.parser.get_parsed_content("validate#inferer"), LearnedTTAInferer)
    with open(root / "eval" / "metrics_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["split"] for r in rows}) == ["external", "test"] and {r["class_index"] for r in rows} == {"1"}
    predictions = sorted((root / "eval" / "predictions").glob("*_seg.nii.gz"))
    assert len(predictions) == 3 and all(_labels(p) <= {0, 1} for p in predictions)


def test_evaluate_with_learned_tta_and_no_policy_file_fails(dataset, harness, tmp_path):
    wf = harness.workflow(["train.json", "evaluate.json"], dataset, tmp_path)
    inferer = wf.parser.get_parsed_content("validate#inferer")  # the config builds without the file (bundle checks)
    assert isinstance(inferer, LearnedTTAInferer) and not inferer.loaded
    with pytest.raises(RuntimeError) as err:
        wf.initialize()
    assert isinstance(_cause(err.value), FileNotFoundError) and "test_time_policy.pt" in str(_cause(err.value))
    assert not (tmp_path / "eval" / "metrics_per_case.csv").exists()  # failed before evaluating without the TTA


def test_mirroring_control_trains_and_evaluates_end_to_end(dataset, harness, tmp_path):
    """``heuristic_mirroring_tta`` through the bundle: one epoch of ``heuristic``'s training, then ``evaluate.json``
    with nnU-Net's 8 mirrorings, which need no learned test-time policy file."""
    files = ["train.json", "variants/heuristic_mirroring_tta.json"]
    harness.complete(harness.workflow(files, dataset, tmp_path, epochs=1))
    assert not (tmp_path / "models" / "test_time_policy.pt").exists()
    wf = harness.complete(harness.workflow([*files, "evaluate.json"], dataset, tmp_path))
    inferer = wf.parser.get_parsed_content("validate#inferer")
    assert isinstance(inferer, LearnedTTAInferer) and inferer.transform_names == list(NNUNET_MIRRORING)
    with open(tmp_path / "eval" / "metrics_per_case.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted({r["split"] for r in rows}) == ["external", "test"] and {r["class_index"] for r in rows} == {"1"}


@pytest.mark.parametrize(
    "control, twin",
    [("heuristic_mirroring_tta", "heuristic"), ("learned_class_specific_heuristic_tta", "learned_class_specific")],
)
def test_tta_controls_train_exactly_as_their_twin(control, twin):
    """The mirroring-TTA controls change the evaluation only: the same override file as their twin but for ``tta``."""
    ours, theirs = (json.loads((CONFIGS / "variants" / f"{v}.json").read_text()) for v in (control, twin))
    assert (ours.pop("tta"), theirs.pop("tta")) == ("mirroring", "none")
    ours.pop("_desc_"), theirs.pop("_desc_")
    assert ours == theirs


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("none", None),
        ("heuristic", None),
        ("randaugment", None),
        ("learned", None),
        ("learned_class_specific", None),
        ("learned_class_specific_heuristic_tta", NNUNET_MIRRORING),
        ("heuristic_mirroring_tta", NNUNET_MIRRORING),
        ("learned_class_specific_learned_tta", "learned"),
        ("joint", "learned"),
    ],
)
def test_evaluation_tta_of_each_variant(variant, expected, dataset, tmp_path):
    files = ["train.json", f"variants/{variant}.json", "evaluate.json"]
    if expected == "learned":  # a saved test-time policy for the learned TTA
        probs = [0.3, 0.2, 0.12, 0.1, 0.05, 0.04, 0.03, 0.06]  # the other 76 transforms share 0.1
        policy = TestTimePolicy(init=dict(zip(TestTimePolicy().pool.names[:8], probs, strict=True)))
        PolicyPlotHandler(None, tmp_path, policy).save_policies(tmp_path / "models")
    inferer = _parser(files, dataset, tmp_path, patch_size=[16, 16, 16]).get_parsed_content("validate#inferer")
    if expected is None:
        assert isinstance(inferer, SlidingWindowInferer)
    elif expected == "learned":
        assert isinstance(inferer, LearnedTTAInferer) and inferer.indices == [0, 1, 2, 3, 7, 4, 5, 6]
        np.testing.assert_allclose(inferer.weights, np.sort(probs)[::-1] / sum(probs), rtol=1e-5)  # renormalised top 8
        assert isinstance(inferer.inferer, SlidingWindowInferer)
    else:
        assert isinstance(inferer, LearnedTTAInferer) and inferer.transform_names == list(expected)
        assert inferer.weights == [1.0 / 8] * 8


def _policy_augment(parser) -> list[PolicyAugmentd]:
    return [t for t in parser.get_parsed_content("train#random_transforms") if isinstance(t, PolicyAugmentd)]


@pytest.mark.parametrize("variant", sorted(ISSUE_VARIANTS))
def test_variant_builds_what_its_name_says(variant, dataset, tmp_path):
    parser = _parser(["train.json", f"variants/{variant}.json"], dataset, tmp_path, patch_size=[16, 16, 16])
    policy = parser.get_parsed_content("policy")
    hook = parser.get_parsed_content("train#trainer#iteration_update")
    tta = parser.get_parsed_content("tta")
    if variant == "none":
        assert policy is None and parser.get_parsed_content("shared_policy") is None and hook is None
        assert _policy_augment(parser) == [] and parser.get_parsed_content("crop_size") == [16, 16, 16]
        assert tta == "none"
        return
    augment = _policy_augment(parser)
    assert len(augment) == 1 and augment[0].probabilities is parser.get_parsed_content("shared_policy")
    assert augment[0].spatial_size == (16, 16, 16) and parser.get_parsed_content("crop_size") == [20, 20, 20]
    np.testing.assert_allclose(augment[0].probabilities.read(0), policy.probability_matrix()[0].numpy(), atol=1e-7)
    if variant in ("heuristic", "randaugment"):
        assert hook is None and tta == "none" and policy.group_names == ("all",)
        probs = {op: p.cpu() for op, p in policy.probabilities()["all"].items()}
        if variant == "heuristic":  # the nnU-Net-like preset (the authors' --org 2), fixed
            expected = AugmentationPolicy(groups={"all": None}, init=2).probabilities()["all"]
            for op in probs:
                torch.testing.assert_close(probs[op], expected[op])
            assert math.isclose(1 - float(probs["mirror_x"][0]), 0.5, rel_tol=1e-5)
        else:  # N = 2 operations on average, each at magnitude level M = 2 only
            level = {"scale": [3], "blur_sharpen": [2, 5]}  # scale bins: 0.05 0.15 *0.25* 0.35 0.45
            for op, p in probs.items():
                nonzero = torch.nonzero(p[1:])[:, 0].add(1).tolist()
                assert nonzero == ([1] if op.startswith("mirror") else level.get(op, [2])), op
                assert math.isclose(1 - float(p[0]), 2 / 15, rel_tol=1e-5)
            assert math.isclose(sum(1 - float(p[0]) for p in probs.values()), 2.0, rel_tol=1e-5)
        return
    assert isinstance(hook, AugmentationPolicyIteration) and hook.training is parser.get_parsed_content(
        "policy_learner"
    )
    learner, tea_learner = hook.training, hook.test_time
    assert isinstance(learner, TrainingPolicyLearner) and learner.policy is policy
    assert learner.optimizer.defaults["lr"] == 5e-4 and learner.validation_loss == "ce_dice"
    assert learner.interval == 1 and learner.warmup_epochs == 0 and learner.method == "finite_difference"
    assert learner.lr_scheduler.total_iters == 30 * 2  # poly over the TRA steps: epochs x iterations (3 cases, batch 2)
    assert hook.validation_loader is parser.get_parsed_content("meta_validation#dataloader")
    held_out = parser.get_parsed_content("meta_validation#datalist")
    training = parser.get_parsed_content("train#datalist")
    assert len(held_out) == 1 and len(training) == 3  # 20 % of the 4 training cases held out for the meta steps
    assert not {d["image"] for d in held_out} & {d["image"] for d in training}
    expected_groups = ("all",) if variant == "learned" else BG_FG
    assert policy.group_names == expected_groups
    # the experiment table runs learning_tta (learn_tta.json) between training and evaluation for this variant only
    post_hoc = variant == "learned_class_specific_learned_tta"
    assert parser.get("learn_tta_after_training", False) is post_hoc
    if variant != "joint":  # TRA alone in training; the learned-TTA variant learns its test-time policy post hoc
        assert tea_learner is None and parser.get_parsed_content("test_time_policy") is None
        heuristic = variant == "learned_class_specific_heuristic_tta"
        assert tta == ("learned" if post_hoc else "mirroring" if heuristic else "none")
    else:  # TEA from the start, coupled with TRA, the joint learning rate
        assert isinstance(tea_learner, TestTimePolicyLearner) and isinstance(tea_learner.policy, TestTimePolicy)
        assert tea_learner.num_samples == 10 and tea_learner.interval == 1 and tta == "learned"
        assert hook.augment_validation and tea_learner.warmup_epochs == 0
        assert tea_learner.optimizer.defaults["lr"] == 5e-5 and tea_learner.lr_scheduler.total_iters == 30 * 2


@pytest.mark.parametrize("variant", ["none", "learned"])
def test_variant_trains_end_to_end(variant, dataset, tmp_path, harness):
    wf = harness.complete(harness.workflow(["train.json", f"variants/{variant}.json"], dataset, tmp_path, epochs=1))
    trainer = wf.trainer
    assert isinstance(trainer, SupervisedTrainer) and np.isfinite(float(trainer.state.output[0]["loss"]))
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    if variant == "none":
        assert wf.parser.get_parsed_content("train#trainer#iteration_update") is None
        assert models == ["latest.pt", "model.pt"]
        batch = trainer.state.batch  # decollated: one dict per patch
        assert all(item["image"].shape[1:] == (16, 16, 16) and "policy_bins" not in item for item in batch)
    else:
        learner = wf.parser.get_parsed_content("policy_learner")
        assert learner.steps == 2 and learner.skipped == 0 and wf.parser.get_parsed_content("test_time_learner") is None
        assert models == ["latest.pt", "model.pt", "policy.json", "policy.pt"]
        batch = trainer.state.batch  # decollated: one dict per patch, each with the bins its worker drew
        assert len(batch) == 2 and all(item["policy_bins"].shape == (15,) for item in batch)  # last: 1 case x 2
        assert {int(item["policy_group"]) for item in batch} == {0}
        assert list(json.loads((tmp_path / "models" / "policy.json").read_text())["probabilities"]) == ["all"]


@pytest.mark.parametrize("lr", [5e-3, 0.0])
def test_post_hoc_tea_learns_the_test_time_policy_on_the_frozen_segmenter(lr, trained, dataset, harness, tmp_path):
    root, _ = trained
    _copy_models(root, tmp_path, ["model.pt"])  # the trained segmenter alone: no test-time policy file yet
    saved = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    settings = {"tta_epochs": 2, "tta_iterations": 3, "tta_learning_rate": lr}
    wf = harness.run(["train.json", "learn_tta.json"], dataset, tmp_path, run_id="learning_tta", **settings)
    trainer = wf.parser.get_parsed_content("learn_tta#trainer")
    network = wf.parser.get_parsed_content("network")
    assert trainer.network is network  # the held-out patches of the joint TEA:
    assert trainer.data_loader is wf.parser.get_parsed_content("meta_validation#dataloader")
    # the segmenter holds the trained weights bit for bit after the run, frozen
    state = network.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k].cpu(), saved[k]) for k in saved)
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    # 2 x 3 TEA steps from the nnU-Net-like start, at the given learning rate (poly over the 6 steps)
    learner = trainer.learner
    assert learner.steps == 6 and learner.skipped == 0 and learner.optimizer.defaults["lr"] == lr
    assert learner.lr_scheduler.total_iters == 6 and learner.num_samples == 10
    start = TestTimePolicy(init="nnunet").probabilities()
    probs = learner.policy.probabilities().cpu()
    change = float((probs - start).abs().max())
    assert trainer.state.metrics["test_time_policy_max_change"] == pytest.approx(change, abs=1e-7)
    if lr > 0:
        assert change > 1e-4  # the policy moved
    else:
        assert torch.equal(probs, start)
    # written where evaluate.json reads it, and read by its learned-TTA inferer
    assert wf.parser.get_parsed_content("test_time_policy_file") == str(tmp_path / "models" / "test_time_policy.pt")
    torch.testing.assert_close(load_policy(tmp_path / "models" / "test_time_policy").probabilities(), probs)
    files = ["train.json", "variants/learned_class_specific_learned_tta.json", "evaluate.json"]
    inferer = _parser(files, dataset, tmp_path, patch_size=[16, 16, 16]).get_parsed_content("validate#inferer")
    assert isinstance(inferer, LearnedTTAInferer) and inferer.load().indices == learner.policy.top_k(8)[0]


def test_learned_class_specific_learned_tta_is_tra_then_post_hoc_tea(dataset, harness, tmp_path):
    files = ["train.json", "variants/learned_class_specific_learned_tta.json"]
    wf = harness.run(files, dataset, tmp_path, epochs=1)
    assert wf.parser.get_parsed_content("train#trainer#iteration_update").test_time is None  # no TEA in training
    assert not (tmp_path / "models" / "test_time_policy.pt").exists()
    model = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    settings = {"run_id": "learning_tta", "tta_epochs": 1, "tta_iterations": 2}
    wf = harness.run([*files, "learn_tta.json"], dataset, tmp_path, **settings)
    policy = wf.parser.get_parsed_content("learn_tta#learner").policy
    assert policy.pool.names == TestTimePolicy().pool.names and (tmp_path / "models" / "test_time_policy.pt").is_file()
    after = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(after[k], model[k]) for k in model)  # the file is not rewritten either
    wf = harness.run([*files, "evaluate.json"], dataset, tmp_path)
    inferer = wf.parser.get_parsed_content("validate#inferer")
    assert isinstance(inferer, LearnedTTAInferer) and inferer.indices == policy.top_k(8)[0]
    assert {r["split"] for r in harness.read_csv(tmp_path / "eval" / "metrics_per_case.csv")} == {"test", "external"}


def test_post_hoc_tea_without_a_trained_segmenter_fails_naming_the_file(dataset, harness, tmp_path):
    args = harness.command("learning_tta", ["train.json", "learn_tta.json"], dataset, tmp_path, cache_rate=0.0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode != 0
    assert f"no trained segmenter at '{tmp_path / 'models' / 'model.pt'}'" in out.stdout + out.stderr
    assert not (tmp_path / "models" / "test_time_policy.pt").exists()


def test_scaled_meta_lr_variant_gives_the_policy_the_authors_step_budget(dataset, tmp_path):
    """``learned_class_specific_scaled_meta_lr``: 5e-4 x min(100, 200,000 / TRA steps), the steps counted by hand."""
    files = ["train.json", "variants/learned_class_specific_scaled_meta_lr.json"]
    parser = _parser(files, dataset, tmp_path, epochs=4, iterations_per_epoch=50)
    steps = (4 - parser["warmup_epochs"]) * 50 // parser["meta_interval"]
    expected = 5e-4 * min(100.0, 200000 / steps)
    assert parser.get_parsed_content("policy_learning_rate") == pytest.approx(expected)
    assert parser.get_parsed_content("policy_optimizer").param_groups[0]["lr"] == pytest.approx(expected)
    assert parser.get_parsed_content("policy").group_names == BG_FG  # the class-specific policy of the variant
