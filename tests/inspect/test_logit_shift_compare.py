# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""``tools/logit_shift_compare.py``: the table of several inspections (mean ± sd over runs) and the figure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "logit_shift_compare.py"


def _tool():
    spec = importlib.util.spec_from_file_location("logit_shift_compare", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inspection(folder: Path, lesion_test: float) -> Path:
    """An inspect-logits folder: background margins 10 in both splits, lesion 2 in training and ``lesion_test``."""
    rng = np.random.default_rng(0)
    samples = {"train_0": 10 + rng.normal(size=500), "test_0": 10 + rng.normal(size=500)}
    samples["train_1"] = 2 + rng.normal(size=200)
    samples["test_1"] = lesion_test + rng.normal(size=300)
    folder.mkdir(parents=True)
    np.savez(folder / "logit_margins.npz", **samples)
    stats = {
        s: {
            name: {
                "n": len(samples[f"{s}_{i}"]),
                "mean": float(samples[f"{s}_{i}"].mean()),
                "wrong_side": float((samples[f"{s}_{i}"] < 0).mean()),
            }  # fmt: skip
            for i, name in enumerate(("background", "lesion"))
        }
        for s in ("train", "test")
    }
    summary = {"classes": ["background", "lesion"], "splits": ["train", "test"], "stats": stats}
    (folder / "logit_margins_summary.json").write_text(json.dumps(summary))
    return folder


def test_table_and_figure(tmp_path):
    a0 = _inspection(tmp_path / "a0", -4.0)
    a1 = _inspection(tmp_path / "a1", -2.0)
    b0 = _inspection(tmp_path / "b0", 1.5)
    out = tmp_path / "out"
    rc = _tool().main(["--out", str(out), "--run", f"vanilla={a0}", "--run", f"vanilla={a1}", "--run", f"asym={b0}"])
    assert rc == 0
    text = (out / "logit_shift.md").read_text().splitlines()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in text if line.startswith(("| v", "| a"))}
    lesion = rows[("vanilla", "lesion")].split("|")
    summaries = [json.loads((p / "logit_margins_summary.json").read_text()) for p in (a0, a1)]
    means = [s["stats"]["test"]["lesion"]["mean"] for s in summaries]
    assert lesion[3].strip() == "2" and lesion[5].strip() == f"{np.mean(means):.2f} ± {np.std(means, ddof=1):.2f}"
    assert float(rows[("asym", "lesion")].split("|")[8]) == pytest.approx(2 - 1.5, abs=0.2)  # one run: no sd
    assert (out / "logit_shift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_run_is_named(tmp_path, capsys):
    assert _tool().main(["--out", str(tmp_path), "--run", f"x={tmp_path / 'missing'}"]) == 1
    assert "missing" in capsys.readouterr().err
