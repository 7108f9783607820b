# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The estimation table over seeds: the shift benchmark of ``bundles/performance_estimation`` for one segmenter per
seed, the MAE of every estimator as mean ± sd over the seeds, each class-specific estimator against its global twin
by a paired test.

Li, Kamnitsas, Islam, Chen, Glocker (MICCAI 2022, Table 1) report the MAE between the estimated and the true Dice
over synthetic shift conditions and natural shifts. :func:`run_estimation_table` runs, for each seed, as
subprocesses of ``python -m monai.bundle run`` in the seed's own ``bundle_root`` (``<out>/s<seed>``):

1. the segmenter: the given checkpoint folder of that seed (``models_template``, e.g. the vanilla cells of an
   experiments table, ``runs/signature/cells/vanilla__f1__s{seed}/models``), or, without one, the bundle's own
   ``train.json`` (+ preset) trained on all training cases with that seed
   (:func:`~monai_imbalance.experiments.table.run_cell`, which also evaluates it);
2. ``fitting`` (``fit.json``): every estimator fitted on the labelled validation split;
3. ``benchmarking`` (``benchmark.json``, seeded by the same seed): every estimator on every shift and severity of the
   test split and on the natural splits (:class:`~monai_imbalance.estimation.ShiftBenchmark`).

Statistics (per estimator and column; a column is all synthetic conditions, the natural conditions, the unshifted
test set or one shift type): each seed gives the MAE of its conditions (the benchmark's definition: per condition the
absolute difference of the mean estimated and the mean true Dice over the cases), then the mean and the sample
standard deviation (``ddof=1``) over the seeds. A class-specific estimator ``cs-X`` is compared with ``X`` by a
two-sided Wilcoxon signed-rank test over the (seed, condition, class) pairs of absolute errors; where a column has
one condition per seed (the natural split, the unshifted test set) over the (seed, case, class) pairs of per-case
absolute errors instead.

The results folder (committed; never checkpoints) holds ``seeds/s<seed>/conditions.csv`` (the benchmark's
per-condition rows), ``seeds/s<seed>/cases.csv`` (its per-case rows of the identity and natural conditions),
``seeds/s<seed>/run.json`` (checkpoint, timings, commit, machine, settings), ``summary.csv`` (one row per estimator
and column: mean, sd, seeds, p-value against the global twin, pairs), ``results.md`` and ``provenance.json``
(``"table": "estimation"``, the command, preset, commit, machine and compute). A seed present in the folder counts as
finished, so the table resumes from the committed files.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_imbalance.utils import atomic_write_text

from .provenance import machine_name, now, run_stamp
from .results import csv_text
from .statistics import mean_sd, significance_mark, wilcoxon_p
from .table import _run, config_files, run_cell

__all__ = [
    "ESTIMATION_TABLE",
    "class_specific_twin",
    "estimation_statistics",
    "estimation_markdown",
    "run_estimation_table",
]

#: ``provenance.json``'s ``table`` entry of an estimation results folder.
ESTIMATION_TABLE = "estimation"
SEEDS = "seeds"
PROVENANCE = "provenance.json"
#: Columns before the shift types: (key, header, condition kind).
LEAD_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("synthetic", "synthetic (all)", "synthetic"),
    ("natural", "natural", "natural"),
    ("identity", "no shift", "identity"),
)
#: Per-case kinds kept in the results folder (one condition per seed: the paired test needs the cases).
CASE_KINDS = ("identity", "natural")
#: The mark of a class-specific estimator whose MAE is above its global twin's.
WORSE = "↑"


def class_specific_twin(estimator: str, estimators: Sequence[str]) -> str | None:
    """The global estimator a class-specific one is tested against (``cs-ts`` -> ``ts``), if it is in ``estimators``."""
    if not estimator.startswith("cs-"):
        return None
    twin = estimator[len("cs-") :]
    return twin if twin in estimators else None


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _seed_dirs(results_dir: Path) -> dict[int, Path]:
    root = results_dir / SEEDS
    if not root.is_dir():
        return {}
    out = {}
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("s") and d.name[1:].isdigit() and (d / "run.json").is_file():
            out[int(d.name[1:])] = d
    return dict(sorted(out.items()))


def _columns(rows: Sequence[Mapping[str, str]]) -> list[tuple[str, str, str]]:
    shifts: list[str] = []
    for r in rows:
        if r["kind"] == "synthetic" and r["shift"] not in shifts:
            shifts.append(r["shift"])
    return [*LEAD_COLUMNS, *((s, s, "synthetic") for s in shifts)]


def _in_column(row: Mapping[str, str], key: str, kind: str) -> bool:
    if row["kind"] != kind:
        return False
    return key in ("synthetic", "natural", "identity") or row["shift"] == key


def estimation_statistics(results_dir: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]], dict]:
    """The numbers of the estimation table of a results folder.

    Args:
        results_dir: the results folder (``seeds/s<seed>/conditions.csv`` and ``cases.csv``).

    Returns:
        ``(estimators, columns, stats)``: estimators in the benchmark's order, ``(key, header)`` of each column, and
        ``stats[(estimator, key)] = {"mean", "sd", "n_seeds", "p_value", "n_pairs", "twin"}`` in Dice (not points);
        ``mean`` is NaN where no seed has that column.

    Raises:
        FileNotFoundError: when the folder holds no finished seed.
    """
    folder = Path(results_dir)
    seeds = _seed_dirs(folder)
    if not seeds:
        raise FileNotFoundError(f"'{folder}' holds no finished seed ('{folder / SEEDS}/s<seed>/run.json' not found).")
    conditions = {s: _read_csv(d / "conditions.csv") for s, d in seeds.items()}
    cases = {s: _read_csv(d / "cases.csv") for s, d in seeds.items()}
    estimators: list[str] = []
    for rows in conditions.values():
        for r in rows:
            if r["estimator"] not in estimators:
                estimators.append(r["estimator"])
    columns = _columns([r for rows in conditions.values() for r in rows])

    def errors(seed: int, est: str, key: str, kind: str, per_case: bool) -> dict[tuple, float]:
        if per_case:
            return {
                (seed, r["condition"], r["case"], r["class"]): abs(float(r["estimated"]) - float(r["true"]))
                for r in cases[seed]
                if r["estimator"] == est and _in_column(r, key, kind)
            }
        return {
            (seed, r["condition"], r["class"]): float(r["abs_error"])
            for r in conditions[seed]
            if r["estimator"] == est and _in_column(r, key, kind)
        }

    stats: dict[tuple[str, str], dict[str, Any]] = {}
    for key, _, kind in columns:
        per_case = kind in CASE_KINDS
        for est in estimators:
            seed_maes = []
            for s in seeds:
                e = errors(s, est, key, kind, False)
                if e:
                    seed_maes.append(math.fsum(e.values()) / len(e))
            mean, sd = mean_sd(seed_maes) if seed_maes else (math.nan, None)
            twin = class_specific_twin(est, estimators)
            p, n_pairs = None, 0
            if twin is not None:
                a, b = {}, {}
                for s in seeds:
                    a.update(errors(s, est, key, kind, per_case))
                    b.update(errors(s, twin, key, kind, per_case))
                pairs = sorted(k for k in a.keys() & b.keys() if not (math.isnan(a[k]) or math.isnan(b[k])))
                p, n_pairs = wilcoxon_p([a[k] for k in pairs], [b[k] for k in pairs]), len(pairs)
            stats[(est, key)] = {
                "mean": mean,
                "sd": sd,
                "n_seeds": len(seed_maes),
                "p_value": p,
                "n_pairs": n_pairs,
                "twin": twin,
            }
    return estimators, [(k, h) for k, h, _ in columns], stats


def _entry(s: Mapping[str, Any], best: bool, n_seeds: int) -> str:
    if math.isnan(s["mean"]):
        return "-"
    text = f"{100 * s['mean']:.1f}" + ("" if s["sd"] is None else f" ± {100 * s['sd']:.1f}")
    if best:
        text = f"**{text}**"
    mark = significance_mark(s["p_value"]).replace("*", "\\*") if s["twin"] is not None else ""
    if s["twin"] is not None and s["mean"] > s["twin_mean"] + 1e-12:  # NaN compares False
        mark = f"{mark} {WORSE}".strip()
    if mark:
        text += f" {mark}"
    if s["n_seeds"] < n_seeds:
        text += f" (n={s['n_seeds']})"
    return text


def estimation_markdown(results_dir: str | os.PathLike) -> str:
    """The estimation table of a results folder with its legend and provenance line (what ``render`` writes)."""
    folder = Path(results_dir)
    estimators, columns, stats = estimation_statistics(folder)
    provenance = json.loads((folder / PROVENANCE).read_text()) if (folder / PROVENANCE).is_file() else {}
    runs = [json.loads((d / "run.json").read_text()) for d in _seed_dirs(folder).values()]
    n_seeds = len(runs)
    for (_, key), s in stats.items():
        if s["twin"] is not None:
            s["twin_mean"] = stats[(s["twin"], key)]["mean"]
    lines = [
        "| Estimator | " + " | ".join(h for _, h in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    best = {}
    for key, _ in columns:
        values = [stats[(e, key)]["mean"] for e in estimators if not math.isnan(stats[(e, key)]["mean"])]
        best[key] = min(values) if values else None
    for est in estimators:
        cells = [_entry(stats[(est, k)], stats[(est, k)]["mean"] == best[k], n_seeds) for k, _ in columns]
        lines.append(f"| {est} | " + " | ".join(cells) + " |")
    classes = sorted({c for r in runs for c in r.get("settings", {}).get("classes", [])})
    conditions = runs[0].get("settings", {}) if runs else {}
    legend = (
        f"MAE between the estimated and the true mean Dice of class {', '.join(f'`{c}`' for c in classes) or '?'} "
        f"in Dice points, seeds {', '.join(str(r['seed']) for r in runs)}: per seed the MAE over its conditions "
        f"(synthetic: {len(conditions.get('shifts', []))} shift types x {len(conditions.get('severities', []))} "
        f"severities of the {conditions.get('test_cases', '?')} {conditions.get('benchmark_split', 'test')} cases; "
        f"natural: {', '.join(conditions.get('natural', [])) or 'none'}; no shift: the unshifted test set), then the "
        "mean ± sd (ddof=1) over the seeds; lowest of each column in bold; \\* p < 0.05, \\*\\* p < 0.01: two-sided "
        "paired Wilcoxon signed-rank test of a class-specific estimator `cs-X` against `X` over the (seed, condition) "
        "absolute errors (natural and no shift: over the (seed, case) absolute errors); ↑: MAE above its global "
        "twin's; (n=k): k of the seeds finished."
    )
    commits = Counter(
        f"`{str(r.get('commit'))[:7]}`" + (" (dirty)" if r.get("dirty") else "") for r in runs if r.get("commit")
    )
    machines = Counter(str(r.get("machine_name") or "unknown") for r in runs)
    hours = math.fsum(float(r.get("compute_seconds") or 0.0) for r in runs) / 3600
    template = provenance.get("models")
    models = f"`{template}`" if template else "trained by the command (the bundle's `train.json`, all training cases)"
    preset = provenance.get("preset")
    commit_text = ", ".join(f"{k} ({n} seed{'s' * (n > 1)})" for k, n in commits.items()) or "-"
    line = (
        f"Command: `{provenance.get('command')}`; preset: {f'`{preset}`' if preset else 'none'}; "
        f"segmenters: {models}; commit: {commit_text}; machine: {', '.join(machines)}; "
        f"{n_seeds} seed{'s' * (n_seeds > 1)}, {hours:.1f} h of fitting and benchmarking."
    )
    return "\n".join(lines) + f"\n\n{legend}\n\n{line}\n"


def _summary_rows(results_dir: Path) -> list[dict[str, Any]]:
    estimators, columns, stats = estimation_statistics(results_dir)
    return [
        {
            "estimator": e,
            "column": k,
            "mae": stats[(e, k)]["mean"],
            "sd": "" if stats[(e, k)]["sd"] is None else stats[(e, k)]["sd"],
            "n_seeds": stats[(e, k)]["n_seeds"],
            "twin": stats[(e, k)]["twin"] or "",
            "p_value": "" if stats[(e, k)]["p_value"] is None else stats[(e, k)]["p_value"],
            "n_pairs": stats[(e, k)]["n_pairs"],
        }
        for k, _ in columns
        for e in estimators
    ]


def _models_dir(template: str | None, seed: int) -> Path | None:
    if template is None:
        return None
    path = Path(template.format(seed=seed))
    if not (path / "model.pt").is_file():
        raise FileNotFoundError(f"segmenter of seed {seed}: '{path / 'model.pt'}' not found (--models {template}).")
    return path


def _check_folder(results_dir: Path, settings: Mapping[str, Any]) -> None:
    path = results_dir / PROVENANCE
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    if old.get("table") != ESTIMATION_TABLE:
        raise ValueError(f"results folder '{results_dir}' is not an estimation table ('{path}' lacks it).")
    for key in ("bundle", "preset", "models", "overrides"):
        if key in old and old[key] != settings.get(key):
            raise ValueError(
                f"results folder '{results_dir}' holds seeds with {key} {old[key]!r}, this table has "
                f"{settings.get(key)!r}: use another --results folder."
            )


def _run_seed(
    bundle: Path,
    seed: int,
    out: Path,
    models: Path | None,
    preset: str | None,
    overrides: Sequence[str],
    threads: int | None,
) -> dict[str, Any]:
    """Fit and benchmark the estimators of one seed's segmenter in ``out / s<seed>``; returns the run record."""
    folder = out / f"s{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    configs = bundle / "configs"
    train_files = config_files(bundle, "vanilla", preset)
    started, start = now(), time.time()
    train_seconds = 0.0
    if models is None:
        cell = run_cell(bundle, "vanilla", 1.0, out / "segmenters", seed, preset=preset, overrides=overrides,
                        threads=threads)  # fmt: skip
        models = out / "segmenters" / "cells" / f"vanilla__f1__s{seed}" / "models"
        train_seconds = float(cell.get("train_seconds") or 0.0) + float(cell.get("eval_seconds") or 0.0)
        source = f"trained by this command ({bundle}/configs/train.json, all training cases)"
    else:
        source = str(models.parent)
    common = [
        "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
        "--bundle_root", str(folder), "--seed", str(seed), "--ckpt_dir", str(models), *overrides,
    ]  # fmt: skip
    fit_start = time.time()
    fit_cmd = [sys.executable, "-m", "monai.bundle", "run", "fitting", "--config_file",
               repr([*train_files, str(configs / "fit.json")])]  # fmt: skip
    _run([*fit_cmd, *common], folder / "fit.log", threads)
    fit_seconds = time.time() - fit_start
    bench_start = time.time()
    bench_cmd = [sys.executable, "-m", "monai.bundle", "run", "benchmarking", "--config_file",
                 repr([*train_files, str(configs / "benchmark.json")])]  # fmt: skip
    _run([*bench_cmd, *common], folder / "benchmark.log", threads)
    bench_seconds = time.time() - bench_start
    bench = folder / "eval" / "benchmark"
    summary = json.loads((bench / "results.json").read_text())
    cell = models.parent / "result.json"
    return {
        "seed": seed,
        "models_source": source,
        "segmenter": json.loads(cell.read_text()) if cell.is_file() else None,
        "settings": summary["settings"],
        "train_seconds": round(train_seconds, 1),
        "fit_seconds": round(fit_seconds, 1),
        "benchmark_seconds": round(bench_seconds, 1),
        "compute_seconds": round(fit_seconds + bench_seconds + train_seconds, 1),
        "started": started,
        "finished": now(),
        "wall_seconds": round(time.time() - start, 1),
        "_bench_dir": str(bench),
    }


def run_estimation_table(
    bundle: str | os.PathLike,
    seeds: Sequence[int],
    out: str | os.PathLike,
    results_dir: str | os.PathLike,
    models_template: str | None = None,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    command: str = "",
    collect_only: bool = False,
    threads: int | None = None,
) -> str:
    """Run the missing seeds of an estimation table and rewrite its results folder; returns ``results.md``.

    Args:
        bundle: the performance-estimation bundle (``configs/train.json``, ``fit.json``, ``benchmark.json``).
        seeds: one segmenter, fit and benchmark per seed (``--seed`` of every run).
        out: the working folder (checkpoints, logs, benchmark outputs; not committed).
        results_dir: the results folder to commit; a seed found there counts as finished.
        models_template: the checkpoint folder of each seed's segmenter, ``{seed}`` replaced by the seed (it must
            hold ``model.pt`` of the bundle's ``network_def``); ``None`` trains one per seed with the bundle's
            ``train.json`` (+ preset) on all training cases.
        preset: a file of ``configs/presets`` without ``.json`` (sizes of the network and the grid).
        overrides: extra ``monai.bundle run`` overrides for every run, e.g. ``["--dataset_dir", "data/x"]``.
        command: the command line, recorded.
        collect_only: run nothing; rewrite the tables from the finished seeds.
        threads: ``OMP_NUM_THREADS`` of the runs unless the environment sets it.

    Raises:
        FileNotFoundError: a missing checkpoint (naming it) or config file.
        ValueError: a results folder of other settings.
    """
    bundle, out, folder = Path(bundle), Path(out), Path(results_dir)
    settings = {
        "table": ESTIMATION_TABLE,
        "bundle": bundle.name,
        "preset": preset,
        "models": models_template,
        "overrides": list(overrides),
    }
    _check_folder(folder, settings)
    done = _seed_dirs(folder)
    todo = [] if collect_only else [s for s in seeds if s not in done]
    for s in todo:  # every checkpoint checked before the first (long) run
        _models_dir(models_template, s)
    stamp = run_stamp(bundle)
    for s in todo:
        record = _run_seed(bundle, s, out, _models_dir(models_template, s), preset, overrides, threads)
        bench = Path(record.pop("_bench_dir"))
        target = folder / SEEDS / f"s{s}"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(bench / "conditions.csv", target / "conditions.csv.tmp")
        os.replace(target / "conditions.csv.tmp", target / "conditions.csv")
        rows = [r for r in _read_csv(bench / "cases.csv") if r["kind"] in CASE_KINDS]
        atomic_write_text(csv_text(rows), target / "cases.csv")
        record.update({**stamp, "machine_name": machine_name(stamp["machine"]), "command": command})
        atomic_write_text(json.dumps(record, indent=4) + "\n", target / "run.json")  # last: the seed is finished
        _write_folder(folder, settings, command, stamp)
    if not _seed_dirs(folder):
        raise FileNotFoundError(f"'{folder}' holds no finished seed and none was run.")
    return _write_folder(folder, settings, command, stamp)


def _write_folder(folder: Path, settings: Mapping[str, Any], command: str, stamp: Mapping[str, Any]) -> str:
    """Rewrite provenance, summary and Markdown; the command, commit and machine are those of the latest seed's run
    (a ``--collect`` that ran nothing does not replace them)."""
    runs = [json.loads((d / "run.json").read_text()) for d in _seed_dirs(folder).values()]
    latest = sorted(runs, key=lambda r: str(r.get("finished", "")))[-1]  # ties: the last seed
    provenance = {
        **settings,
        "seeds": [r["seed"] for r in runs],
        "command": latest.get("command", command),
        "commit": latest.get("commit", stamp.get("commit")),
        "dirty": latest.get("dirty", stamp.get("dirty")),
        "machine": latest.get("machine", stamp.get("machine")),
        "date": latest.get("finished", now()),
        "compute_seconds": round(math.fsum(float(r.get("compute_seconds") or 0.0) for r in runs), 1),
    }
    atomic_write_text(json.dumps(provenance, indent=4) + "\n", folder / PROVENANCE)
    atomic_write_text(csv_text(_summary_rows(folder)), folder / "summary.csv")
    markdown = estimation_markdown(folder)
    atomic_write_text(markdown, folder / "results.md")
    return markdown
