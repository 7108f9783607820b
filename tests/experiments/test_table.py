# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
from __future__ import annotations

import csv
import json
import math
import os
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


@pytest.mark.slow  # a real training and evaluation
def test_table_end_to_end_and_resume(tmp_path, capsys):
    data = make_phantom_dataset(tmp_path / "data", num_training=4, num_validation=1, num_test=2, seed=3)
    out = tmp_path / "table"
    results = tmp_path / "results"
    args = ["table", "--bundle", str(BUNDLE), "--variants", "vanilla", "ce", "--fractions", "0.5", "--out", str(out),
            "--results", str(results)]  # fmt: skip
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
    # the per-case rows of the reported class, in the cell and in the results folder (no checkpoint there)
    with open(cell_dir(out, "ce", 0.5) / "cases.csv") as f:
        cases = list(csv.DictReader(f))
    assert list(cases[0]) == ["case", "split", "dice", "sensitivity", "precision", "hd95"] and len(cases) == 2
    committed = json.loads((results / "cells" / "ce__f0.5__s0.json").read_text())
    assert [c["case"] for c in committed["cases"]] == [c["case"] for c in cases]
    assert {p.suffix for p in results.rglob("*") if p.is_file()} == {".json", ".csv", ".md"}

    # a rerun skips finished cells (their result.json stays as it was) and reports them as done
    before = json.loads((cell_dir(out, "vanilla", 0.5) / "result.json").read_text())
    assert main([*args, "--", "--dataset_dir", str(data), *TINY]) == 0
    assert "(done)" in capsys.readouterr().out
    assert json.loads((cell_dir(out, "vanilla", 0.5) / "result.json").read_text()) == before
    assert not math.isnan(before["dice_mean"])


def test_parallel_cells_failure_and_collect(tmp_path, monkeypatch, capsys):
    """jobs=2 runs every cell once; a failed cell neither stops the others nor the table; --collect trains nothing."""
    import monai_imbalance.experiments.table as table_module

    calls, threads_seen = [], set()

    def fake_run_cell(
        bundle, variant, fraction, out, seed, split, class_index, overrides, preset=None, stamp=None, **kwargs
    ):
        calls.append((variant, fraction))
        threads_seen.add(kwargs.get("threads"))
        if variant == "ce" and fraction == 0.5:
            raise RuntimeError("command failed (exit 1), log 'x/train.log':\nboom")
        folder = cell_dir(out, variant, fraction, seed)
        folder.mkdir(parents=True, exist_ok=True)
        result = _result(variant, fraction, 0.6 if variant == "ce" else 0.4)
        (folder / "result.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(table_module, "run_cell", fake_run_cell)
    out = tmp_path / "table"
    with pytest.raises(RuntimeError, match=r"1 of 4 cells failed[\s\S]*ce @ 0.5, seed 0: command failed"):
        run_table(BUNDLE, ["vanilla", "ce"], [0.1, 0.5], out, jobs=2)
    assert sorted(calls) == sorted([("vanilla", 0.1), ("ce", 0.1), ("vanilla", 0.5), ("ce", 0.5)])
    assert threads_seen == {max(1, (os.cpu_count() or 1) // 2)}  # the cores shared out, no oversubscription
    rows = (out / "results.md").read_text().splitlines()
    assert rows[3].startswith("| ce | **60.0** |") and rows[3].split(" | ")[5] == "-"  # ce @ 0.5 missing
    assert "FAILED" in capsys.readouterr().out

    calls.clear()
    table = run_table(BUNDLE, ["vanilla", "ce"], [0.1, 0.5], out, collect_only=True)
    assert calls == [] and "| vanilla | 40.0 |" in table
    with pytest.raises(ValueError, match="jobs must be >= 1, got 0"):
        run_table(BUNDLE, ["vanilla"], [0.1], out, jobs=0)


def test_cell_runs_get_their_share_of_the_cores_unless_the_environment_sets_it(tmp_path, monkeypatch):
    import sys

    from monai_imbalance.experiments.table import _run

    show = [sys.executable, "-c", "import os; print(os.environ.get('OMP_NUM_THREADS'))"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    _run(show, tmp_path / "a.log", threads=3)
    assert (tmp_path / "a.log").read_text().strip() == "3"
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    _run(show, tmp_path / "b.log", threads=3)
    assert (tmp_path / "b.log").read_text().strip() == "5"


def test_each_cell_is_stamped_with_the_commit_of_its_start(tmp_path, monkeypatch):
    """A commit landing while a table runs: the later cells record it (their processes import that working tree)."""
    import monai_imbalance.experiments.table as table_module

    commits = iter([("c1", False), ("c2", True)])
    monkeypatch.setattr(table_module, "git_state", lambda *a, **k: next(commits))
    seen = []

    def fake_run_cell(bundle, variant, fraction, out, seed, split, class_index, overrides, stamp=None, **kwargs):
        seen.append((variant, stamp["commit"], stamp["dirty"]))
        folder = cell_dir(out, variant, fraction, seed)
        folder.mkdir(parents=True, exist_ok=True)
        result = {**_result(variant, fraction, 0.5), **stamp}
        (folder / "result.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(table_module, "run_cell", fake_run_cell)
    run_table(BUNDLE, ["vanilla", "ce"], [0.1], tmp_path / "table")
    assert seen == [("vanilla", "c1", False), ("ce", "c2", True)]
