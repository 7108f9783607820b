# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The research's comparison table in one command: every (variant, training fraction) cell trained and evaluated.

Li, Kamnitsas, Glocker (IEEE TMI 2021, Table II) compare losses and regularisers at several amounts of training
data. :func:`run_table` reproduces that shape for any bundle: for each cell it runs, as subprocesses,

1. ``python -m monai.bundle run training`` with ``train.json`` (+ ``variants/<variant>.json``), the training
   fraction and the seed, into the cell's own ``bundle_root`` (``<out>/cells/<variant>__f<fraction>``);
2. ``python -m monai.bundle run evaluating`` with ``evaluate.json`` on the fixed test split;

then reads the cell's ``eval/metrics_summary.csv`` and keeps DSC, SEN, PRC and HD95 of one class (by default the
rarest foreground class of the test split). Finished cells are skipped on a rerun (their ``result.json`` is
written atomically last); an interrupted training resumes from its ``latest.pt``. It prints ``cell k/n`` with an
ETA, and writes ``results.csv`` (one row per cell) and ``results.md`` (one row per variant, per fraction the four
metrics, the best value of each column in bold).

Each cell is a separate process, so memory is returned between cells and a crash loses one cell only (the others
still run; the failures are listed at the end); logs are in the cell folder (``train.log``, ``evaluate.log``).
``jobs > 1`` trains several cells at once (a large GPU runs many CPU-sized cells side by side), and
``collect_only`` writes the table of the cells finished so far without training.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from monai_imbalance.utils import atomic_open, atomic_write_text

__all__ = ["VANILLA", "METRICS", "cell_dir", "run_cell", "run_table", "format_table", "write_results"]

#: The name of the unmodified ``train.json`` in ``--variants`` (unless the bundle has ``variants/vanilla.json``).
VANILLA = "vanilla"
#: (summary column, table header, higher is better) of the reported metrics.
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("dice", "DSC", True),
    ("sensitivity", "SEN", True),
    ("precision", "PRC", True),
    ("hd95", "HD95", False),
)


def cell_dir(out: str | os.PathLike, variant: str, fraction: float) -> Path:
    """The folder of one cell: ``<out>/cells/<variant>__f<fraction>``."""
    return Path(out) / "cells" / f"{variant}__f{fraction:g}"


def _config_files(bundle: Path, variant: str) -> list[str]:
    configs = bundle / "configs"
    files = [configs / "train.json"]
    override = configs / "variants" / f"{variant}.json"
    if variant != VANILLA or override.is_file():
        files.append(override)
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"variant {variant!r}: config file '{f}' not found.")
    return [str(f) for f in files]


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise RuntimeError(f"command failed (exit {proc.returncode}), log '{log}':\n{' '.join(cmd)}\n...{tail}")


def _pick_class(cases_csv: Path, split: str) -> int:
    """The foreground class with the fewest reference voxels over the split's cases (the rarest)."""
    totals: dict[int, float] = {}
    with open(cases_csv) as f:
        for row in csv.DictReader(f):
            if row["split"] == split and int(row["class_index"]) > 0:
                totals[int(row["class_index"])] = totals.get(int(row["class_index"]), 0.0) + float(row["n_label"])
    if not totals:
        raise RuntimeError(f"'{cases_csv}' has no foreground rows for split {split!r}.")
    return min(totals, key=lambda c: (totals[c], c))


def run_cell(
    bundle: str | os.PathLike,
    variant: str,
    fraction: float,
    out: str | os.PathLike,
    seed: int = 0,
    split: str = "test",
    class_index: int | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Train and evaluate one cell (or return its saved result), and return the result dict.

    Args:
        bundle: the bundle folder (with ``configs/train.json``, ``configs/evaluate.json``, ``configs/variants/``).
        variant: a variant file name without ``.json``, or ``"vanilla"`` for ``train.json`` alone.
        fraction: the training fraction (nested, seeded subsets of the training cases).
        out: the experiment folder.
        seed: the seed of the case selection, the initialisation and the augmentation.
        split: the evaluation split.
        class_index: the class to report; default the rarest foreground class of the split.
        overrides: extra command-line overrides passed to both runs, e.g. ``["--epochs", "5"]``.

    Returns:
        ``{"variant", "fraction", "seed", "class_index", "class", "n", "<metric>_mean", "<metric>_std",
        "train_seconds", "eval_seconds"}``.
    """
    bundle = Path(bundle)
    folder = cell_dir(out, variant, fraction)
    result_file = folder / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    train_files = _config_files(bundle, variant)
    configs = bundle / "configs"
    common = [
        "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
        "--bundle_root", str(folder), "--seed", str(seed), "--training_fraction", str(fraction), *overrides,
    ]  # fmt: skip
    start = time.time()
    resume = ["--resume", "true"] if (folder / "models" / "latest.pt").is_file() else []
    train_cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", repr(train_files)]
    _run([*train_cmd, *common, *resume], folder / "train.log")
    train_seconds = time.time() - start
    start = time.time()
    eval_files = [*train_files, str(configs / "evaluate.json")]
    eval_cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", repr(eval_files)]
    _run([*eval_cmd, *common, "--eval_splits", repr([split])], folder / "evaluate.log")
    eval_seconds = time.time() - start

    if class_index is None:
        class_index = _pick_class(folder / "eval" / "metrics_per_case.csv", split)
    with open(folder / "eval" / "metrics_summary.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split and int(r["class_index"]) == class_index]
    if not rows:
        raise RuntimeError(f"no summary row for split {split!r}, class {class_index} in '{folder / 'eval'}'.")
    row = rows[0]
    result: dict[str, Any] = {
        "variant": variant,
        "fraction": fraction,
        "seed": seed,
        "class_index": class_index,
        "class": row["class"],
        "n": int(row["n"]),
        **{f"{m}_{s}": float(row[f"{m}_{s}"]) for m, _, _ in METRICS for s in ("mean", "std")},
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(eval_seconds, 1),
    }
    atomic_write_text(json.dumps(result, indent=4) + "\n", result_file)
    return result


def format_table(results: Sequence[dict[str, Any]], variants: Sequence[str], fractions: Sequence[float]) -> str:
    """The Markdown table: one row per variant; per fraction DSC, SEN, PRC (%), HD95 (mm); best per column bold."""
    by_cell = {(r["variant"], float(r["fraction"])): r for r in results}
    header = ["Variant"] + [f"{h} @ {f:g}" for f in fractions for _, h, _ in METRICS]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    best: dict[tuple[float, str], float] = {}
    for f in fractions:
        for key, _, higher in METRICS:
            values = [by_cell[(v, f)][f"{key}_mean"] for v in variants if (v, f) in by_cell]
            values = [x for x in values if not math.isnan(x)]
            if values:
                best[(f, key)] = max(values) if higher else min(values)
    for v in variants:
        cells = [v]
        for f in fractions:
            for key, _, _ in METRICS:
                r = by_cell.get((v, f))
                if r is None or math.isnan(r[f"{key}_mean"]):
                    cells.append("-" if r is None else "n/a")
                    continue
                value = r[f"{key}_mean"]
                text = f"{value:.2f}" if key == "hd95" else f"{100 * value:.1f}"
                cells.append(f"**{text}**" if best.get((f, key)) == value else text)
        lines.append("| " + " | ".join(cells) + " |")
    some = next(iter(results), None)
    if some is not None:
        lines.append("")
        lines.append(
            f"Class `{some['class']}` of the `{len(results)}` cells' test split: mean over cases (DSC, SEN, PRC in %, "
            "HD95 in mm); best of each column in bold; seed "
            f"{some['seed']}."
        )
    return "\n".join(lines) + "\n"


def write_results(
    out: str | os.PathLike, results: Sequence[dict[str, Any]], variants: Sequence[str], fractions: Sequence[float]
) -> str:
    """Write ``results.csv`` and ``results.md`` into ``out`` (atomically) and return the Markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    columns = list(results[0]) if results else ["variant", "fraction"]
    with atomic_open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(results)
    table = format_table(results, variants, fractions)
    atomic_write_text(table, out / "results.md")
    return table


def run_table(
    bundle: str | os.PathLike,
    variants: Sequence[str],
    fractions: Sequence[float],
    out: str | os.PathLike,
    seed: int = 0,
    split: str = "test",
    class_index: int | None = None,
    overrides: Sequence[str] = (),
    jobs: int = 1,
    collect_only: bool = False,
) -> str:
    """Run every (variant, fraction) cell not finished yet, then write and return the table (see module doc).

    Args:
        bundle, variants, fractions, out, seed, split, class_index, overrides: as in :func:`run_cell`.
        jobs: cells trained at the same time (each its own process; useful on a GPU with spare memory and CPU
            cores for the loaders). Cells start in table order.
        collect_only: train nothing; write the table of the cells finished so far (missing cells show ``-``).

    A failed cell does not stop the others: every runnable cell is run, the table of the finished ones is
    written, then a ``RuntimeError`` names each failed cell and its log.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    bundle = Path(bundle)
    for v in variants:
        _config_files(bundle, v)  # fail before the first cell on a misspelt variant
    cells = [(v, float(f)) for f in fractions for v in variants]
    todo = [c for c in cells if not (cell_dir(out, *c) / "result.json").is_file()]
    failures: dict[tuple[str, float], str] = {}
    if not collect_only:
        failures = _run_cells(bundle, cells, todo, out, jobs, (seed, split, class_index, overrides))
    results = [
        json.loads((cell_dir(out, *c) / "result.json").read_text())
        for c in cells
        if (cell_dir(out, *c) / "result.json").is_file()
    ]
    table = write_results(out, results, list(variants), [float(f) for f in fractions])
    if failures:
        lines = [f"{v} @ {f:g}: {msg.splitlines()[0]}" for (v, f), msg in failures.items()]
        raise RuntimeError(
            f"{len(failures)} of {len(cells)} cells failed (table of the others written):\n" + "\n".join(lines)
        )
    return table


def _run_cells(
    bundle: Path,
    cells: list[tuple[str, float]],
    todo: list[tuple[str, float]],
    out: str | os.PathLike,
    jobs: int,
    settings: tuple[int, str, int | None, Sequence[str]],
) -> dict[tuple[str, float], str]:
    """Run the ``todo`` cells, ``jobs`` at a time, printing progress; return ``{cell: error message}``."""
    for k, (variant, fraction) in enumerate(cells, start=1):
        if (variant, fraction) not in todo:
            print(f"cell {k}/{len(cells)}: {variant} @ {fraction:g} (done)", flush=True)
    lock = threading.Lock()
    durations: list[float] = []
    failures: dict[tuple[str, float], str] = {}
    finished = [0]

    def one(cell: tuple[str, float]) -> None:
        k = cells.index(cell) + 1
        with lock:
            left = len(todo) - finished[0]
            eta = f", ETA {_duration(left * sum(durations) / len(durations) / jobs)}" if durations else ""
            print(f"cell {k}/{len(cells)}: {cell[0]} @ {cell[1]:g}{eta}", flush=True)
        start = time.time()
        try:
            run_cell(bundle, cell[0], cell[1], out, *settings)
        except (RuntimeError, OSError, ValueError) as e:
            with lock:
                failures[cell] = str(e)
                print(f"cell {k}/{len(cells)}: {cell[0]} @ {cell[1]:g} FAILED: {str(e).splitlines()[0]}", flush=True)
        with lock:
            durations.append(time.time() - start)
            finished[0] += 1

    if jobs == 1:
        for cell in todo:
            one(cell)
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            list(pool.map(one, todo))
    return {c: failures[c] for c in todo if c in failures}


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
