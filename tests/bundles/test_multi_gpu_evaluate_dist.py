# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Every bundle's ``multi_gpu_evaluate.json`` under ``torchrun --nproc_per_node=2`` on CPU (gloo), against
``evaluate.json`` on one process with the same checkpoint.

The five evaluated cases (3 test, 2 external) are split unevenly (``DistributedSampler(even_divisible=False)``: rank 0
gets cases 0, 2, 4, rank 1 cases 1, 3); the ranks' report rows are gathered so that rank 0 writes one table with
every case exactly once, in the single-process order and with its metrics.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from monai_imbalance.data import make_phantom_dataset

pytestmark = pytest.mark.slow  # torchrun, 2 processes

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
EVALUATING = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "multi_gpu_evaluate.json").is_file())
METRICS = ("dice", "sensitivity", "precision", "hd95")


def _close(a: str, b: str) -> bool:
    """Two CSV numbers within 1e-6 of each other, or both NaN."""
    x, y = float(a), float(b)
    return (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-6


def test_the_evaluating_bundles():
    assert {"asymmetric_segmentation", "context_label_segmentation", "performance_estimation"} <= set(EVALUATING)
    for name in EVALUATING:
        assert (BUNDLES / name / "configs" / "evaluate.json").is_file(), name


@pytest.mark.parametrize("name", EVALUATING)
def test_two_ranks_evaluate_every_case_once(name, tmp_path, bundle_harness):
    bundle = bundle_harness(name)
    dataset = make_phantom_dataset(tmp_path / "data", num_training=2, num_validation=1, num_test=3, num_external=2)
    bundle.run(["train.json"], dataset, tmp_path, epochs=1)
    single = bundle.run(["train.json", "evaluate.json"], dataset, tmp_path, output_dir=str(tmp_path / "single"))
    dump = bundle.rank_dump_file(
        tmp_path,
        iterations="@validate#evaluator.state.iteration",
        mean_dice="@validate#evaluator.state.metrics['val_mean_dice']",
    )
    configs = ["train.json", "evaluate.json", "multi_gpu_evaluate.json", dump]
    bundle.torchrun("evaluating", configs, dataset, tmp_path, output_dir=str(tmp_path / "dist"))

    ranks = bundle.rank_dumps(tmp_path)
    assert [r["iterations"] for r in ranks] == [3, 2]  # both ranks finished their own shard
    expected_dice = single.evaluator.state.metrics["val_mean_dice"]
    assert all(r["mean_dice"] == pytest.approx(expected_dice, abs=1e-6) for r in ranks)  # MeanDice over all ranks
    rows = bundle.read_csv(tmp_path / "dist" / "metrics_per_case.csv")
    expected = bundle.read_csv(tmp_path / "single" / "metrics_per_case.csv")
    keys = [(r["split"], r["case"], r["class_index"]) for r in rows]
    assert len(set(keys)) == len(keys) == 5  # every case exactly once (one foreground class)
    assert keys == [(r["split"], r["case"], r["class_index"]) for r in expected]  # and in the single-process order
    labelled = [f.name[: -len(".nii.gz")] for d in ("labelsTs", "labelsExt") for f in (dataset / d).glob("*.nii.gz")]
    assert sorted(k[1] for k in keys) == sorted(labelled)  # the test and external cases of the dataset
    for got, want in zip(rows, expected, strict=True):
        assert (got["n_label"], got["n_pred"]) == (want["n_label"], want["n_pred"]), got["case"]
        assert all(_close(got[m], want[m]) for m in METRICS), (got, want)
    summary = bundle.read_csv(tmp_path / "dist" / "metrics_summary.csv")
    expected_summary = bundle.read_csv(tmp_path / "single" / "metrics_summary.csv")
    assert [(s["split"], s["n"]) for s in summary] == [("test", "3"), ("external", "2")]
    for got, want in zip(summary, expected_summary, strict=True):
        assert got.keys() == want.keys()
        for column, value in got.items():
            assert _close(value, want[column]) if column.endswith(("_mean", "_std")) else value == want[column], column
