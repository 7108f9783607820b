# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""``python -m monai_imbalance.experiments estimation`` end to end with the real ``performance_estimation`` bundle on
phantoms: a segmenter trained per seed, the estimators fitted, two shifts benchmarked, the table written."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from monai_imbalance.experiments.estimation import estimation_statistics


@pytest.mark.slow  # two trainings, fits and benchmarks
def test_command_end_to_end_on_phantoms(tmp_path, tiny_overrides):
    """The real command: trains a segmenter per seed with the bundle, fits, benchmarks two shifts, writes the table."""
    from monai_imbalance.data import make_phantom_dataset

    data = make_phantom_dataset(tmp_path / "phantom", num_training=4, num_validation=2, seed=2)
    repo = Path(__file__).resolve().parents[2]
    overrides = ["--dataset_dir", str(data), "--shifts", "['noise', 'gamma']", "--severities", "[1, 5]",
                 "--estimator_names", "['ts', 'cs-ts', 'atc', 'cs-atc']", "--keep_margin", "2.0",
                 "--background_samples", "256", "--validate#inferer#roi_size", "[32, 32, 32]"]  # fmt: skip
    for key, value in tiny_overrides.items():
        overrides += [f"--{key}", json.dumps(value)]
    results = tmp_path / "results" / "est"
    cmd = [sys.executable, "-m", "monai_imbalance.experiments", "estimation", "--seeds", "0", "1",
           "--bundle", str(repo / "bundles" / "performance_estimation"), "--out", str(tmp_path / "work"),
           "--results", str(results), "--", *overrides]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=repo)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    estimators, columns, stats = estimation_statistics(results)
    assert estimators == ["ts", "cs-ts", "atc", "cs-atc"]
    assert [k for k, _ in columns] == ["synthetic", "natural", "identity", "noise", "gamma"]
    for seed in (0, 1):
        run = json.loads((results / "seeds" / f"s{seed}" / "run.json").read_text())
        assert run["segmenter"]["seed"] == seed and run["train_seconds"] > 0
        rows = list(csv.DictReader(open(results / "seeds" / f"s{seed}" / "conditions.csv")))
        assert {r["condition"] for r in rows} == {"identity", "noise-1", "noise-5", "gamma-1", "gamma-5", "external"}
    s = stats[("cs-ts", "synthetic")]
    assert s["n_seeds"] == 2 and s["n_pairs"] == 2 * 4 and not math.isnan(s["mean"]) and s["sd"] is not None
    assert "| cs-atc |" in (results / "results.md").read_text()
