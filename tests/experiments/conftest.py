# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""A fake bundle and a stubbed ``python -m monai.bundle run``: the table's cells run in milliseconds, no training.

The stub writes ``eval/metrics_per_case.csv`` and ``eval/metrics_summary.csv`` as the evaluation would, with the
per-case values of :func:`case_dice`: a case, seed and variant give a known DSC (``ce``: a strong improvement over
vanilla; ``same``: none; ``worse``: a drop).
"""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

CASES = [f"case_{i}" for i in range(8)]
METRIC_NAMES = ("dice", "sensitivity", "precision", "hd95")


def case_dice(variant: str, seed: int, i: int) -> float:
    """The DSC the fake evaluation gives to case ``i`` of a cell."""
    base = 0.5 + 0.03 * i + 0.01 * seed
    if variant == "ce":
        return base + 0.1 + 0.002 * i
    if variant == "same":
        return base + (0.01 if (i + seed) % 2 else -0.01)
    if variant == "worse":
        return base - 0.2
    return base


def write_eval(folder: Path, variant: str, seed: int) -> None:
    """The evaluation files of a cell: class 1 (``fg``, the rarest) and class 2 (``big``) of the test cases."""
    rows = []
    for i, case in enumerate(CASES):
        dice = case_dice(variant, seed, i)
        rows.append(dict(case=case, split="test", class_index=1, **{"class": "fg"}, dice=dice, sensitivity=dice,
                         precision=1.0 - dice / 2, hd95=10.0 * (1.0 - dice), n_label=10, n_pred=10))  # fmt: skip
        rows.append(dict(case=case, split="test", class_index=2, **{"class": "big"}, dice=0.9, sensitivity=0.9,
                         precision=0.9, hd95=1.0, n_label=1000, n_pred=1000))  # fmt: skip
    (folder / "eval").mkdir(parents=True, exist_ok=True)
    with open(folder / "eval" / "metrics_per_case.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = []
    for c in (1, 2):
        sel = [r for r in rows if r["class_index"] == c]
        entry = {"split": "test", "class_index": c, "class": sel[0]["class"], "n": len(sel)}
        for m in METRIC_NAMES:
            entry[f"{m}_mean"] = float(np.mean([r[m] for r in sel]))
            entry[f"{m}_std"] = float(np.std([r[m] for r in sel]))
        summary.append(entry)
    with open(folder / "eval" / "metrics_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)


@pytest.fixture
def fake_eval() -> SimpleNamespace:
    """The fake evaluation's ``cases`` (names) and ``case_dice`` (the DSC of a variant, seed and case index)."""
    return SimpleNamespace(cases=CASES, case_dice=case_dice)


@pytest.fixture
def fake_bundle(tmp_path: Path) -> Path:
    """A bundle folder with ``train.json``, ``evaluate.json``, the variants ``ce``, ``same``, ``worse``, ``broken``
    (its training fails), the preset ``fast`` and the optimizer ``sgd``."""
    bundle = tmp_path / "fake_bundle"
    for name in (
        "train",
        "evaluate",
        "metadata",
        "variants/ce",
        "variants/same",
        "variants/worse",
        "variants/broken",
        "presets/fast",
        "optimizers/sgd",
    ):
        path = bundle / "configs" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"name": name}))
    (bundle / "configs" / "logging.conf").write_text("")
    return bundle


@pytest.fixture
def fake_runs(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Stub the subprocess runs of :func:`run_cell`; return the list of calls (``stage``, ``files``, ``seed``,
    ``folder``, ``cmd``, ``threads``). A cell of the variant ``broken`` fails its training."""
    import monai_imbalance.experiments.table as table_module

    calls: list[dict] = []

    def fake_run(cmd: list[str], log: Path, threads: int | None = None) -> None:
        stage = cmd[4]
        files = ast.literal_eval(cmd[cmd.index("--config_file") + 1])
        folder = Path(cmd[cmd.index("--bundle_root") + 1])
        seed = int(cmd[cmd.index("--seed") + 1])
        calls.append({"stage": stage, "files": files, "seed": seed, "folder": folder, "cmd": cmd, "threads": threads})
        variant = next((Path(f).stem for f in files if Path(f).parent.name == "variants"), "vanilla")
        if variant == "broken":
            raise RuntimeError(f"command failed (exit 1), log '{log}':\nboom")
        log.write_text(f"{stage} ok\n")
        if stage == "evaluating":
            write_eval(folder, variant, seed)

    monkeypatch.setattr(table_module, "_run", fake_run)
    return calls
