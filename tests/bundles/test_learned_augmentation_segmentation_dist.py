# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The learned-augmentation ``multi_gpu_train.json`` and ``multi_gpu_evaluate.json`` under ``torchrun
--nproc_per_node=2`` on CPU (gloo).

The default ``train.json`` is the joint method (JCSAugment, Li et al., IEEE TMI 2023): a class-specific training-time
policy and a test-time policy, neither wrapped in DDP. Each rank saves its final segmenter, both policies and its
step counters through an extra ``finalize`` entry: DDP keeps the segmenters identical, and the policies must stay
identical too (broadcast from rank 0 at start, policy gradients averaged over the ranks before every TRA / TEA step,
``engines.finish_auxiliary_step``), and so must the probability tables the loader workers of each rank sample from.
In a distributed evaluation every rank reads the test-time policy file and applies the same learned TTA (here with
zooms and rotations, which interpolate) to its share of the cases: the table equals one process's.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_imbalance.augment import AugmentationPolicy, TestTimePolicy, save_policy
from monai_imbalance.data import make_phantom_dataset

pytestmark = pytest.mark.slow  # torchrun, 2 processes

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "learned_augmentation_segmentation" / "configs"
DUMP = (
    "$torch.save({"
    "'segmenter': {k: v.detach().cpu() for k, v in @network_def.state_dict().items()}, "
    "'policy': {k: v.detach().cpu() for k, v in @policy.named_parameters()}, "
    "'test_time_policy': {k: v.detach().cpu() for k, v in @test_time_policy.named_parameters()}, "
    "'table': torch.stack([torch.as_tensor(@shared_policy.read(g)) for g in range(2)]), "
    "'steps': [@policy_learner.steps, @policy_learner.skipped, @test_time_learner.steps, @test_time_learner.skipped]}, "
    "os.path.join(@bundle_root, 'rank' + os.environ['RANK'] + '.pt'))"
)


def test_two_ranks_learn_the_same_policies(tmp_path, tiny_overrides):
    dataset = make_phantom_dataset(tmp_path / "data", num_training=5, num_validation=2, seed=5)
    dump = tmp_path / "dump_weights.json"
    dump.write_text(json.dumps({"+finalize": [DUMP]}))
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(dump)]
    settings = {**tiny_overrides, "epochs": 1, "dataset_dir": str(dataset), "bundle_root": str(tmp_path)}
    overrides = []
    for key, value in settings.items():
        overrides += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training", "--config_file", repr(configs),
        "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"), *overrides,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    # 5 cases - 1 held out = 4 training cases, 2 per rank, batch 2: one iteration, one TRA and one TEA step per rank
    assert ranks[0]["steps"] == ranks[1]["steps"] == [1, 0, 1, 0]
    for part in ("segmenter", "policy", "test_time_policy"):
        assert ranks[0][part].keys() == ranks[1][part].keys()
        for k in ranks[0][part]:
            assert torch.equal(ranks[0][part][k], ranks[1][part][k]), (part, k)
    assert torch.equal(ranks[0]["table"], ranks[1]["table"])
    initial = dict(
        AugmentationPolicy(init="nnunet").named_parameters()
    )  # the step moved them: agreement is not trivial
    assert any(not torch.allclose(v, initial[k]) for k, v in ranks[0]["policy"].items())
    latest = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)  # written by rank 0 only
    for k, v in ranks[0]["policy"].items():
        assert torch.equal(latest["policy"][k], v), k
    assert sorted(p.name for p in (tmp_path / "eval" / "policy").glob("*.png")) == ["policy_epoch0001.png"]


def test_two_ranks_evaluate_with_the_same_learned_tta(tmp_path, bundle_harness):
    bundle = bundle_harness("learned_augmentation_segmentation")
    dataset = make_phantom_dataset(tmp_path / "data", num_training=2, num_validation=1, num_test=2, num_external=1)
    bundle.run(["train.json", "variants/none.json"], dataset, tmp_path, epochs=1)  # the segmenter only
    chosen = {"rotate_z+25": 0.3, "identity": 0.25, "scale+0.45": 0.2, "rot90_xy+": 0.15}  # top 4 of 84
    save_policy(TestTimePolicy(init=chosen), tmp_path / "models" / "test_time_policy")
    settings = {"tta": "learned", "tta_top_k": 4}
    bundle.run(["train.json", "evaluate.json"], dataset, tmp_path, output_dir=str(tmp_path / "single"), **settings)
    dump = bundle.rank_dump_file(
        tmp_path,
        transforms="@validate#inferer.transform_names",
        weights="@validate#inferer.weights",
        iterations="@validate#evaluator.state.iteration",
    )
    configs = ["train.json", "evaluate.json", "multi_gpu_evaluate.json", dump]
    bundle.torchrun("evaluating", configs, dataset, tmp_path, output_dir=str(tmp_path / "dist"), **settings)
    ranks = bundle.rank_dumps(tmp_path)
    assert [r["iterations"] for r in ranks] == [2, 1]
    for r in ranks:  # each rank read the file and uses its top 4, renormalised
        assert r["transforms"] == list(chosen)
        assert r["weights"] == pytest.approx([v / sum(chosen.values()) for v in chosen.values()], abs=1e-6)
    rows = bundle.read_csv(tmp_path / "dist" / "metrics_per_case.csv")
    expected = bundle.read_csv(tmp_path / "single" / "metrics_per_case.csv")
    assert len(rows) == len(expected) == 3 and len({r["case"] for r in rows}) == 3
    for got, want in zip(rows, expected, strict=True):
        assert (got["split"], got["case"], got["n_pred"]) == (want["split"], want["case"], want["n_pred"])
        for metric in ("dice", "sensitivity", "precision", "hd95"):
            x, y = float(got[metric]), float(want[metric])
            assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-6, (metric, got, want)
