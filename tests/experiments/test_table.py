# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from monai_imbalance.data import make_phantom_dataset
from monai_imbalance.experiments import cell_dir, format_table, run_table
from monai_imbalance.experiments.__main__ import main

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "asymmetric_segmentation"
TINY = [
    "--epochs", "1", "--val_interval", "1", "--patch_size", "[16,16,16]", "--filters", "[8,16,32]",
    "--num_workers", "0",
]  # fmt: skip


def _result(variant, fraction, dice, hd95=5.0):
    return {
        "variant": variant, "fraction": fraction, "seed": 0, "class_index": 1, "class": "fg", "n": 3,
        "dice_mean": dice, "dice_std": 0.0, "sensitivity_mean": dice, "sensitivity_std": 0.0,
        "precision_mean": 1.0 - dice, "precision_std": 0.0, "hd95_mean": hd95, "hd95_std": 0.0,
    }  # fmt: skip


def test_format_table_marks_best_per_column():
    results = [
        _result("vanilla", 0.1, 0.5, hd95=4.0),
        _result("ce", 0.1, 0.7, hd95=6.0),
        _result("vanilla", 0.5, 0.8, hd95=float("nan")),
    ]
    table = format_table(results, ["vanilla", "ce"], [0.1, 0.5])
    lines = table.splitlines()
    assert lines[0].startswith("| Variant | DSC @ 0.1 | SEN @ 0.1 | PRC @ 0.1 | HD95 @ 0.1 | DSC @ 0.5")
    vanilla = lines[2].split(" | ")
    ce = lines[3].split(" | ")
    assert vanilla[1] == "50.0" and ce[1] == "**70.0**"  # higher DSC is better
    assert vanilla[3] == "**50.0**" and ce[3] == "30.0"  # precision column: vanilla best
    assert vanilla[4] == "**4.00**" and ce[4] == "6.00"  # lower HD95 is better
    assert vanilla[8].startswith("n/a") and ce[5] == "-"  # undefined vs missing cell


def test_misspelt_variant_fails_before_any_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="variants/no_such.json"):
        run_table(BUNDLE, ["vanilla", "no_such"], [0.5], tmp_path)
    assert not (tmp_path / "cells").exists()


def test_table_end_to_end_and_resume(tmp_path, capsys):
    data = make_phantom_dataset(tmp_path / "data", num_training=4, num_validation=1, num_test=2, seed=3)
    out = tmp_path / "table"
    args = ["table", "--bundle", str(BUNDLE), "--variants", "vanilla", "ce", "--fractions", "0.5", "--out", str(out)]
    assert main([*args, "--", "--dataset_dir", str(data), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "cell 1/2: vanilla @ 0.5" in printed and "cell 2/2: ce @ 0.5" in printed and "ETA" in printed
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["vanilla", "ce"]
    for r in rows:
        assert r["class"] == "class_1" and int(r["n"]) == 2 and 0.0 <= float(r["dice_mean"]) <= 1.0
    # the cell's training used half of the 4 training cases
    log = (cell_dir(out, "ce", 0.5) / "train.log").read_text()
    assert "training_fraction: 0.5" in log or "training_fraction: '0.5'" in log
    assert "| vanilla |" in (out / "results.md").read_text()

    # a rerun skips finished cells (their result.json stays as it was) and reports them as done
    before = json.loads((cell_dir(out, "vanilla", 0.5) / "result.json").read_text())
    assert main([*args, "--", "--dataset_dir", str(data), *TINY]) == 0
    assert "(done)" in capsys.readouterr().out
    assert json.loads((cell_dir(out, "vanilla", 0.5) / "result.json").read_text()) == before
    assert not math.isnan(before["dice_mean"])
