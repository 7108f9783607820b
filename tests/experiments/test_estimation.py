# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The estimation table over seeds (``python -m monai_imbalance.experiments estimation``): statistics, files, resume,
render and bad input with a stubbed ``monai.bundle run`` (the real command on phantoms: ``tests/bundles/
test_estimation_table.py``)."""

from __future__ import annotations

import ast
import csv
import json
import zlib
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import wilcoxon

from monai_imbalance.experiments import render_readme
from monai_imbalance.experiments.__main__ import main
from monai_imbalance.experiments.estimation import (
    class_specific_twin,
    estimation_markdown,
    estimation_statistics,
    run_estimation_table,
)

ESTIMATORS = ("ac", "ts", "cs-ts", "atc", "cs-atc")
SHIFTS = ("noise", "blur")
SEVERITIES = (1, 2, 3)
TEST_CASES = ("t0", "t1", "t2", "t3")
EXTERNAL = ("e0", "e1", "e2")


def fake_dice(seed: int, estimator: str, condition: str, case: str) -> tuple[float, float]:
    """(estimated, true) Dice of one case: ``cs-*`` closer to the truth than its twin, ``ac`` far off."""
    rng = np.random.default_rng(zlib.crc32(f"{seed}/{estimator}/{condition}/{case}".encode()))
    true = 0.3 + 0.5 * rng.random()
    off = {"ac": 0.3, "ts": 0.1, "cs-ts": 0.02, "atc": 0.15, "cs-atc": 0.03}[estimator]
    return float(np.clip(true + off * (0.5 + rng.random()), 0, 1)), float(true)


def write_benchmark(folder: Path, seed: int) -> None:
    """The shift benchmark's outputs, as :class:`~monai_imbalance.estimation.ShiftBenchmark` writes them."""
    conditions = [("identity", "identity", "identity", 0, TEST_CASES)]
    conditions += [(f"{s}-{v}", "synthetic", s, v, TEST_CASES) for s in SHIFTS for v in SEVERITIES]
    conditions += [("external", "natural", "external", 0, EXTERNAL)]
    cases, per_condition = [], []
    for cond, kind, shift, sev, names in conditions:
        for est in ESTIMATORS:
            rows = []
            for case in names:
                e, t = fake_dice(seed, est, cond, case)
                rows.append(dict(condition=cond, kind=kind, shift=shift, severity=sev, case=case, estimator=est,
                                 estimated=e, true=t, **{"class": "lesion"}))  # fmt: skip
            cases += rows
            me, mt = np.mean([r["estimated"] for r in rows]), np.mean([r["true"] for r in rows])
            per_condition.append(dict(condition=cond, kind=kind, shift=shift, severity=sev, estimator=est,
                                      estimated=me, true=mt, abs_error=abs(me - mt), num_cases=len(rows),
                                      **{"class": "lesion"}))  # fmt: skip
    out = folder / "eval" / "benchmark"
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("cases.csv", cases), ("conditions.csv", per_condition)):
        with open(out / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    settings = {"shifts": list(SHIFTS), "severities": list(SEVERITIES), "natural": ["external"], "seed": seed,
                "estimators": list(ESTIMATORS), "classes": ["lesion"], "test_cases": len(TEST_CASES)}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"settings": settings}))


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    folder = tmp_path / "pe_bundle"
    for name in ("train", "fit", "benchmark", "metadata", "presets/fast"):
        path = folder / "configs" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"name": name}))
    (folder / "configs" / "logging.conf").write_text("")
    return folder


@pytest.fixture
def models(tmp_path: Path) -> str:
    for seed in (0, 1, 2):
        d = tmp_path / "runs" / f"vanilla__f1__s{seed}" / "models"
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"weights")
        (d.parent / "result.json").write_text(json.dumps({"dice_mean": 0.3 + seed / 100, "commit": "abc"}))
    return str(tmp_path / "runs" / "vanilla__f1__s{seed}" / "models")


@pytest.fixture
def fake_runs(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    import monai_imbalance.experiments.estimation as module

    calls: list[dict] = []

    def fake_run(cmd: list[str], log: Path, threads: int | None = None) -> None:
        stage = cmd[4]
        folder = Path(cmd[cmd.index("--bundle_root") + 1])
        seed = int(cmd[cmd.index("--seed") + 1])
        files = ast.literal_eval(cmd[cmd.index("--config_file") + 1])
        calls.append({"stage": stage, "seed": seed, "files": files, "cmd": cmd})
        log.write_text(f"{stage} ok\n")
        if stage == "benchmarking":
            write_benchmark(folder, seed)

    monkeypatch.setattr(module, "_run", fake_run)
    return calls


def _run(bundle: Path, models: str, results: Path, tmp_path: Path, seeds=(0, 1, 2), **kw) -> str:
    return run_estimation_table(bundle, list(seeds), tmp_path / "work", results, models_template=models, **kw)


def test_twin():
    assert class_specific_twin("cs-ts", ["ts", "cs-ts"]) == "ts"
    assert class_specific_twin("cs-ts-atc", ["ts", "cs-ts-atc"]) is None  # its twin is not in the table
    assert class_specific_twin("ts", ["ts", "cs-ts"]) is None


def test_statistics_follow_the_definition(bundle, models, fake_runs, tmp_path):
    results = tmp_path / "results" / "est"
    _run(bundle, models, results, tmp_path, preset="fast", overrides=["--dataset_dir", "d"], command="cmd")
    stages = [(c["stage"], c["seed"]) for c in fake_runs]
    assert stages == [(s, k) for k in (0, 1, 2) for s in ("fitting", "benchmarking")]
    first = fake_runs[0]
    assert first["files"][:2] == [str(bundle / "configs" / "train.json"), str(bundle / "configs/presets/fast.json")]
    assert first["files"][-1].endswith("fit.json") and "--dataset_dir" in first["cmd"]
    assert first["cmd"][first["cmd"].index("--ckpt_dir") + 1] == models.format(seed=0)

    estimators, columns, stats = estimation_statistics(results)
    assert estimators == list(ESTIMATORS)
    assert [k for k, _ in columns] == ["synthetic", "natural", "identity", *SHIFTS]
    for est in ESTIMATORS:
        per_seed = {}
        for seed in (0, 1, 2):  # the MAE over the synthetic conditions, from the per-case values
            errors = []
            for s in SHIFTS:
                for v in SEVERITIES:
                    pairs = [fake_dice(seed, est, f"{s}-{v}", c) for c in TEST_CASES]
                    errors.append(abs(np.mean([p[0] for p in pairs]) - np.mean([p[1] for p in pairs])))
            per_seed[seed] = np.mean(errors)
        got = stats[(est, "synthetic")]
        assert got["mean"] == pytest.approx(np.mean(list(per_seed.values())), abs=1e-9)
        assert got["sd"] == pytest.approx(np.std(list(per_seed.values()), ddof=1), abs=1e-9)
        assert got["n_seeds"] == 3
    # cs-ts against ts: one pair per (seed, condition); natural: one pair per (seed, case)
    cs, ts = [], []
    for seed in (0, 1, 2):
        for s in SHIFTS:
            for v in SEVERITIES:
                a = [fake_dice(seed, "cs-ts", f"{s}-{v}", c) for c in TEST_CASES]
                b = [fake_dice(seed, "ts", f"{s}-{v}", c) for c in TEST_CASES]
                cs.append(abs(np.mean([p[0] for p in a]) - np.mean([p[1] for p in a])))
                ts.append(abs(np.mean([p[0] for p in b]) - np.mean([p[1] for p in b])))
    got = stats[("cs-ts", "synthetic")]
    assert got["twin"] == "ts" and got["n_pairs"] == 18
    assert got["p_value"] == pytest.approx(wilcoxon(cs, ts).pvalue, rel=1e-6)
    natural = stats[("cs-atc", "natural")]
    assert natural["twin"] == "atc" and natural["n_pairs"] == 3 * len(EXTERNAL)
    assert stats[("ac", "synthetic")]["twin"] is None and stats[("ac", "synthetic")]["p_value"] is None
    assert stats[("ts", "noise")]["mean"] > stats[("cs-ts", "noise")]["mean"]

    md = (results / "results.md").read_text()
    assert md == estimation_markdown(results)
    row = next(line for line in md.splitlines() if line.startswith("| cs-ts |"))
    assert "**" in row  # the lowest MAE of the synthetic column is cs-ts's (off by 0.02)
    best = 100 * stats[("cs-ts", "synthetic")]["mean"]
    assert f"**{best:.1f} ± {100 * stats[('cs-ts', 'synthetic')]['sd']:.1f}**" in row
    assert row.split("|")[2].strip().endswith("** \\*\\*") and "↑" not in row  # significant at 18 pairs, better
    assert "`fast`" in md and "cmd" in md and "3 seeds" in md
    summary = list(csv.DictReader(open(results / "summary.csv")))
    assert len(summary) == len(ESTIMATORS) * len(columns)
    provenance = json.loads((results / "provenance.json").read_text())
    assert provenance["table"] == "estimation" and provenance["seeds"] == [0, 1, 2] and provenance["preset"] == "fast"
    run = json.loads((results / "seeds" / "s1" / "run.json").read_text())
    assert run["segmenter"]["dice_mean"] == pytest.approx(0.31) and run["seed"] == 1
    kept = list(csv.DictReader(open(results / "seeds" / "s1" / "cases.csv")))
    assert {r["kind"] for r in kept} == {"identity", "natural"}  # the synthetic cases are not committed


def test_resume_collect_and_render(bundle, models, fake_runs, tmp_path):
    results = tmp_path / "results" / "est"
    _run(bundle, models, results, tmp_path, seeds=[0])
    assert "(n=1)" not in (results / "results.md").read_text()  # one seed of one: complete
    _run(bundle, models, results, tmp_path, seeds=[0, 1], command="second run")
    assert [c["seed"] for c in fake_runs] == [0, 0, 1, 1]  # seed 0 was finished: not run again
    estimators, _, stats = estimation_statistics(results)
    assert stats[("ts", "synthetic")]["n_seeds"] == 2
    n = len(fake_runs)
    run_estimation_table(
        bundle, [0, 1, 2], tmp_path / "work", results, models_template=models, collect_only=True, command="collect"
    )
    assert len(fake_runs) == n
    provenance = json.loads((results / "provenance.json").read_text())
    assert provenance["command"] == "second run" and provenance["seeds"] == [0, 1]  # a collect ran nothing
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- results:est -->\n<!-- /results:est -->\ny\n")
    assert render_readme(results, readme, "est")
    assert estimation_markdown(results).splitlines()[0] in readme.read_text()
    assert not render_readme(results, readme, "est", check=True)


def test_bad_input_is_named_and_runs_nothing(bundle, models, fake_runs, tmp_path, capsys):
    missing = str(tmp_path / "nowhere" / "s{seed}")
    with pytest.raises(FileNotFoundError, match=r"nowhere/s0/model\.pt"):
        _run(bundle, missing, tmp_path / "r1", tmp_path)
    Path(models.format(seed=2), "model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"seed 2.*model\.pt"):
        _run(bundle, models, tmp_path / "r2", tmp_path)
    assert fake_runs == []  # every checkpoint is checked before the first run
    rc = main(["estimation", "--bundle", str(bundle), "--models", str(tmp_path / "one"), "--seeds", "0", "1",
               "--results", str(tmp_path / "r3")])  # fmt: skip
    assert rc == 1 and "{seed}" in capsys.readouterr().err
    other = tmp_path / "r4"
    other.mkdir()
    (other / "provenance.json").write_text(json.dumps({"bundle": "x", "cells": 3}))
    with pytest.raises(ValueError, match="not an estimation table"):
        _run(bundle, models, other, tmp_path, seeds=[0])
    with pytest.raises(FileNotFoundError, match="no finished seed"):
        estimation_statistics(tmp_path / "empty")


def test_other_settings_need_another_folder(bundle, models, fake_runs, tmp_path):
    results = tmp_path / "est"
    _run(bundle, models, results, tmp_path, seeds=[0], preset="fast")
    with pytest.raises(ValueError, match="preset"):
        _run(bundle, models, results, tmp_path, seeds=[1])
