# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The research's comparison table in one command: every (variant, training fraction, seed) cell trained and evaluated.

Li, Kamnitsas, Glocker (IEEE TMI 2021, Table II) compare losses and regularisers at several amounts of training
data. :func:`run_table` reproduces that shape for any bundle: for each cell it runs, as subprocesses,

1. ``python -m monai.bundle run training`` with ``train.json`` (+ ``presets/<preset>.json``) (+
   ``variants/<variant>.json``), the training fraction and the seed, into the cell's own ``bundle_root``
   (``<out>/cells/<variant>__f<fraction>__s<seed>``);
2. when the merged config sets ``learn_tta_after_training`` (the learned-augmentation bundle's post-hoc test-time
   policy), ``python -m monai.bundle run learning_tta`` with the same files and ``learn_tta.json`` on the trained
   model;
3. ``python -m monai.bundle run evaluating`` with the same files and ``evaluate.json`` on the fixed test split;

then reads the cell's ``eval/metrics_summary.csv`` and ``eval/metrics_per_case.csv`` and keeps DSC, SEN, PRC and
HD95 of one class (by default the rarest foreground class of the test split): the summary in ``result.json`` and
the per-case rows in ``cases.csv``. Finished cells are skipped on a rerun (``result.json`` is written atomically
last; a finished cell folder of the earlier seedless naming ``<variant>__f<fraction>`` is read as the seed its
``result.json`` records); an interrupted training resumes from its ``latest.pt`` (the result then says
``"resumed": true``: its ``train_seconds`` count the last attempt only). It prints ``cell k/n`` with an
ETA, and writes ``results.csv`` (one row per cell), ``summary.csv`` (one row per variant, fraction and metric) and
``results.md`` (see :mod:`monai_imbalance.experiments.markdown`: mean ± sd over seeds, paired Wilcoxon tests
against ``vanilla``, the best value of each column in bold).

With ``results_dir`` the finished cells (metrics only, never checkpoints) also go to a results folder meant to be
committed (see :mod:`monai_imbalance.experiments.results`), after each cell, with the final learned augmentation
policies of the cells that have them (:mod:`monai_imbalance.experiments.policies`); a cell found there counts as
finished, so a table resumes from the committed folder on another machine.

Each cell is a separate process, so memory is returned between cells and a crash loses one cell only (the others
still run; the failures are listed at the end); logs are in the cell folder (``train.log``, ``evaluate.log``).
``jobs > 1`` trains several cells at once (a large GPU runs many CPU-sized cells side by side), and
``collect_only`` writes the table of the cells finished so far without training.
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from monai_imbalance.utils import atomic_write_text

from .markdown import format_table
from .policies import save_cell_policies
from .provenance import git_state, now, run_stamp
from .results import cell_name, check_settings, committed_cell, csv_text, write_results_dir
from .statistics import METRICS, VANILLA, summary_rows

__all__ = [
    "VANILLA",
    "METRICS",
    "CASE_FIELDS",
    "cell_dir",
    "config_files",
    "load_cell",
    "run_cell",
    "run_table",
    "format_table",
    "write_results",
]

#: Columns of a cell's ``cases.csv`` (the per-case metrics of the reported class).
CASE_FIELDS: tuple[str, ...] = ("case", "split", *(m for m, _, _ in METRICS))

Cell = tuple[str, float, int]


def cell_dir(out: str | os.PathLike, variant: str, fraction: float, seed: int = 0) -> Path:
    """The folder of one cell: ``<out>/cells/<variant>__f<fraction>__s<seed>``."""
    return Path(out) / "cells" / cell_name(variant, fraction, seed)


def _finished_dir(out: str | os.PathLike, variant: str, fraction: float, seed: int) -> Path | None:
    """The folder of the finished cell, also under the earlier seedless name; ``None`` when not finished."""
    folder = cell_dir(out, variant, fraction, seed)
    if (folder / "result.json").is_file():
        return folder
    legacy = Path(out) / "cells" / f"{variant}__f{float(fraction):g}"
    if (legacy / "result.json").is_file() and json.loads((legacy / "result.json").read_text()).get("seed") == seed:
        return legacy
    return None


def config_files(
    bundle: str | os.PathLike, variant: str, preset: str | None = None, optimizer: str | None = None
) -> list[str]:
    """The training config files of a cell: ``train.json``, the preset, the variant, the optimizer (in this order).

    Args:
        bundle: the bundle folder.
        variant: a file of ``configs/variants`` without ``.json``; ``vanilla`` is ``train.json`` alone unless
            ``variants/vanilla.json`` exists.
        preset: a file of ``configs/presets`` without ``.json``, or ``None``.
        optimizer: a file of ``configs/optimizers`` without ``.json`` (e.g. ``"sgd_nnunet"``), stacked last so that
            its learning rate wins over the preset's, or ``None``.

    Raises:
        FileNotFoundError: naming the missing file.
    """
    configs = Path(bundle) / "configs"
    files = [configs / "train.json"]
    if preset is not None:
        files.append(configs / "presets" / f"{preset}.json")
        if not files[-1].is_file():
            raise FileNotFoundError(f"preset {preset!r}: config file '{files[-1]}' not found.")
    override = configs / "variants" / f"{variant}.json"
    if variant != VANILLA or override.is_file():
        files.append(override)
    if optimizer is not None:
        files.append(configs / "optimizers" / f"{optimizer}.json")
        if not files[-1].is_file():
            raise FileNotFoundError(f"optimizer {optimizer!r}: config file '{files[-1]}' not found.")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"variant {variant!r}: config file '{f}' not found.")
    return [str(f) for f in files]


def _learns_tta_after_training(train_files: Sequence[str]) -> bool:
    """Whether the merged training config asks for the post-hoc test-time policy stage (``learn_tta_after_training``,
    the learned-augmentation bundle's ``learn_tta.json``, run as ``learning_tta`` between training and evaluation)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(list(train_files))
    return bool(parser.get("learn_tta_after_training", False))


def _run(cmd: list[str], log: Path, threads: int | None = None) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads is not None and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(threads)  # cells side by side must not oversubscribe the cores
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
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


def _read_cases(path: Path, split: str | None = None, class_index: int | None = None) -> list[dict[str, Any]]:
    """Per-case rows (``CASE_FIELDS``, metrics as floats) of a ``cases.csv`` or of the split and class of an
    ``eval/metrics_per_case.csv``."""
    with open(path) as f:
        rows = [
            r
            for r in csv.DictReader(f)
            if (split is None or r["split"] == split) and (class_index is None or int(r["class_index"]) == class_index)
        ]
    return [{"case": r["case"], "split": r["split"], **{m: float(r[m]) for m, _, _ in METRICS}} for r in rows]


def load_cell(folder: str | os.PathLike) -> dict[str, Any]:
    """The result of a finished cell folder: ``result.json`` with its per-case rows as ``cases``.

    The rows come from ``cases.csv``, or for a cell finished before it was written, from the reported split and
    class of ``eval/metrics_per_case.csv`` (none when that is gone too).
    """
    folder = Path(folder)
    result = json.loads((folder / "result.json").read_text())
    cases: list[dict[str, Any]] = []
    if (folder / "cases.csv").is_file():
        cases = _read_cases(folder / "cases.csv")
    elif (folder / "eval" / "metrics_per_case.csv").is_file():
        cases = _read_cases(
            folder / "eval" / "metrics_per_case.csv", result.get("split", "test"), result["class_index"]
        )
    return {**result, "cases": cases}


def run_cell(
    bundle: str | os.PathLike,
    variant: str,
    fraction: float,
    out: str | os.PathLike,
    seed: int = 0,
    split: str = "test",
    class_index: int | None = None,
    overrides: Sequence[str] = (),
    preset: str | None = None,
    stamp: Mapping[str, Any] | None = None,
    threads: int | None = None,
    optimizer: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate one cell (or return its saved result), and return the result dict.

    Args:
        bundle: the bundle folder (with ``configs/train.json``, ``configs/evaluate.json``, ``configs/variants/``).
        variant: a variant file name without ``.json``, or ``"vanilla"`` for ``train.json`` alone.
        fraction: the training fraction (nested, seeded subsets of the training cases).
        out: the experiment folder.
        seed: the seed of the case selection, the initialisation and the augmentation (``--seed`` of both runs).
        split: the evaluation split.
        class_index: the class to report; default the rarest foreground class of the split.
        overrides: extra command-line overrides passed to both runs, e.g. ``["--epochs", "5"]``.
        preset: a file of ``configs/presets`` (without ``.json``) stacked after ``train.json``, before the variant.
        stamp: extra entries recorded in the result (e.g. ``commit``, ``dirty``, ``machine``).
        threads: ``OMP_NUM_THREADS`` of both runs, unless the environment sets it (default: the library's own).
        optimizer: a file of ``configs/optimizers`` (without ``.json``) stacked last (:func:`config_files`).

    Returns:
        ``{"variant", "fraction", "seed", "preset", "optimizer", "split", "class_index", "class", "n", "<metric>_mean",
        "<metric>_std", "train_seconds", "eval_seconds", "finished", **stamp, "cases"}``, ``cases`` the per-case
        rows of the class (also written to the cell's ``cases.csv``).
    """
    bundle = Path(bundle)
    finished = _finished_dir(out, variant, fraction, seed)
    if finished is not None:
        return load_cell(finished)
    folder = cell_dir(out, variant, fraction, seed)
    folder.mkdir(parents=True, exist_ok=True)
    train_files = config_files(bundle, variant, preset, optimizer)
    configs = bundle / "configs"
    common = [
        "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
        "--bundle_root", str(folder), "--seed", str(seed), "--training_fraction", str(fraction), *overrides,
    ]  # fmt: skip
    start = time.time()
    resume = ["--resume", "true"] if (folder / "models" / "latest.pt").is_file() else []
    train_cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", repr(train_files)]
    _run([*train_cmd, *common, *resume], folder / "train.log", threads)
    train_seconds = time.time() - start
    tta_seconds = None
    if _learns_tta_after_training(train_files):  # a post-hoc stage on the trained model, before the evaluation
        start = time.time()
        tta_files = [*train_files, str(configs / "learn_tta.json")]
        tta_cmd = [sys.executable, "-m", "monai.bundle", "run", "learning_tta", "--config_file", repr(tta_files)]
        _run([*tta_cmd, *common], folder / "learn_tta.log", threads)
        tta_seconds = round(time.time() - start, 1)
    start = time.time()
    eval_files = [*train_files, str(configs / "evaluate.json")]
    eval_cmd = [sys.executable, "-m", "monai.bundle", "run", "evaluating", "--config_file", repr(eval_files)]
    _run([*eval_cmd, *common, "--eval_splits", repr([split])], folder / "evaluate.log", threads)
    eval_seconds = time.time() - start

    per_case = folder / "eval" / "metrics_per_case.csv"
    if class_index is None:
        class_index = _pick_class(per_case, split)
    with open(folder / "eval" / "metrics_summary.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split and int(r["class_index"]) == class_index]
    if not rows:
        raise RuntimeError(f"no summary row for split {split!r}, class {class_index} in '{folder / 'eval'}'.")
    row = rows[0]
    cases = _read_cases(per_case, split, class_index)
    result: dict[str, Any] = {
        "variant": variant,
        "fraction": fraction,
        "seed": seed,
        "preset": preset,
        **({"optimizer": optimizer} if optimizer is not None else {}),
        "split": split,
        "class_index": class_index,
        "class": row["class"],
        "n": int(row["n"]),
        **{f"{m}_{s}": float(row[f"{m}_{s}"]) for m, _, _ in METRICS for s in ("mean", "std")},
        "train_seconds": round(train_seconds, 1),
        **({"resumed": True} if resume else {}),  # train_seconds counts the last attempt only
        **({"tta_seconds": tta_seconds} if tta_seconds is not None else {}),
        "eval_seconds": round(eval_seconds, 1),
        "finished": now(),
        **(stamp or {}),
    }
    atomic_write_text(csv_text(cases, CASE_FIELDS), folder / "cases.csv")
    atomic_write_text(json.dumps(result, indent=4) + "\n", folder / "result.json")
    return {**result, "cases": cases}


def write_results(
    out: str | os.PathLike,
    results: Sequence[dict[str, Any]],
    variants: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int] | None = None,
    preset: str | None = None,
) -> str:
    """Write ``results.csv``, ``summary.csv`` and ``results.md`` into ``out`` (atomically) and return the Markdown.

    Args:
        out: the experiment folder.
        results: the finished cells (with ``cases`` for the paired tests).
        variants, fractions, seeds, preset: the table's (see :func:`~monai_imbalance.experiments.format_table`).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items() if k != "cases"} for r in results]
    atomic_write_text(csv_text(rows, None if rows else ["variant", "fraction", "seed"]), out / "results.csv")
    atomic_write_text(csv_text(summary_rows(results, variants, fractions)), out / "summary.csv")
    table = format_table(results, variants, fractions, seeds, preset=preset)
    atomic_write_text(table, out / "results.md")
    return table


def run_table(
    bundle: str | os.PathLike,
    variants: Sequence[str],
    fractions: Sequence[float],
    out: str | os.PathLike,
    seeds: int | Sequence[int] = (0,),
    split: str = "test",
    class_index: int | None = None,
    overrides: Sequence[str] = (),
    jobs: int = 1,
    collect_only: bool = False,
    preset: str | None = None,
    results_dir: str | os.PathLike | None = None,
    command: str | None = None,
    optimizer: str | None = None,
) -> str:
    """Run every (variant, fraction, seed) cell not finished yet, then write and return the table (see module doc).

    Args:
        bundle, variants, fractions, out, split, class_index, overrides, preset, optimizer: as in :func:`run_cell`.
        seeds: the seeds; each (variant, fraction, seed) is one cell.
        jobs: cells trained at the same time (each its own process; useful on a GPU with spare memory and CPU
            cores for the loaders). Cells start in table order.
        collect_only: train nothing; write the table of the cells finished so far (missing cells show ``-``).
        results_dir: a results folder to commit (see :mod:`monai_imbalance.experiments.results`): its cells count
            as finished, and each cell finished here is added to it.
        command: the command line recorded in the results folder (default: this process's).

    A failed cell does not stop the others: every runnable cell is run, the table of the finished ones is
    written, then a ``RuntimeError`` names each failed cell and its log.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    seeds = [int(seeds)] if isinstance(seeds, int) else [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must not be empty.")
    bundle = Path(bundle)
    for v in variants:
        config_files(bundle, v, preset, optimizer)  # fail before the first cell on a misspelt variant or preset
    settings = {
        "bundle": str(bundle), "preset": preset, **({"optimizer": optimizer} if optimizer is not None else {}),
        "split": split, "class_index": class_index,
        "variants": list(variants), "fractions": [float(f) for f in fractions], "seeds": seeds,
        "overrides": list(overrides),
    }  # fmt: skip
    if results_dir is not None:
        check_settings(results_dir, settings)
    stamp = run_stamp(bundle, [results_dir] if results_dir is not None else [])
    run = {
        "command": command or shlex.join([Path(sys.executable).name, *sys.argv]),
        "started": now(),
        "commit": stamp["commit"],
        "dirty": stamp["dirty"],
        "machine": stamp["machine"],
    }

    def cell_stamp() -> dict[str, Any]:
        """The commit and dirty flag when a cell starts: its processes import the working tree of that moment."""
        commit, dirty = git_state(bundle, [results_dir] if results_dir is not None else [])
        return {"commit": commit, "dirty": dirty, "machine": stamp["machine"]["name"]}

    cells: list[Cell] = [(v, float(f), s) for f in fractions for v in variants for s in seeds]
    lock = threading.Lock()

    def finished() -> list[dict[str, Any]]:
        found = []
        for v, f, s in cells:
            r = committed_cell(results_dir, v, f, s) if results_dir is not None else None
            if r is None and (folder := _finished_dir(out, v, f, s)) is not None:
                r = load_cell(folder)
            if r is not None:
                for key, value in (("preset", preset), ("optimizer", optimizer)):
                    if r.get(key) != value:
                        raise ValueError(
                            f"cell {cell_name(v, f, s)} was run with {key} {r.get(key)!r}, this table has "
                            f"{value!r}: use another --out / --results folder."
                        )
                found.append(r)
        return found

    def commit_results() -> None:
        if results_dir is not None:
            with lock:
                done = finished()
                for r in done:  # before the tables: results.md lists the policies
                    folder = _finished_dir(out, r["variant"], r["fraction"], r["seed"])
                    if folder is not None:
                        name = cell_name(r["variant"], r["fraction"], r["seed"])
                        save_cell_policies(results_dir, name, folder / "models")
                write_results_dir(results_dir, done, settings, run)

    done = {(r["variant"], float(r["fraction"]), int(r["seed"])) for r in finished()}
    todo = [c for c in cells if c not in done]
    failures: dict[Cell, str] = {}
    if not collect_only:
        args = (split, class_index, overrides)
        threads = max(1, (os.cpu_count() or 1) // jobs)  # the cores shared out among the cells side by side
        failures = _run_cells(
            bundle,
            cells,
            todo,
            out,
            jobs,
            args,
            {"preset": preset, "threads": threads, "optimizer": optimizer},
            cell_stamp,
            commit_results,
        )
    results = finished()
    table = write_results(out, results, list(variants), settings["fractions"], seeds, preset)
    commit_results()
    if failures:
        lines = [f"{v} @ {f:g}, seed {s}: {msg.splitlines()[0]}" for (v, f, s), msg in failures.items()]
        raise RuntimeError(
            f"{len(failures)} of {len(cells)} cells failed (table of the others written):\n" + "\n".join(lines)
        )
    return table


def _label(cell: Cell) -> str:
    return f"{cell[0]} @ {cell[1]:g}, seed {cell[2]}"


def _run_cells(
    bundle: Path,
    cells: list[Cell],
    todo: list[Cell],
    out: str | os.PathLike,
    jobs: int,
    args: tuple[str, int | None, Sequence[str]],
    kwargs: dict[str, Any],
    stamp: Callable[[], dict[str, Any]],
    on_finished: Callable[[], None],
) -> dict[Cell, str]:
    """Run the ``todo`` cells, ``jobs`` at a time, stamped by ``stamp()`` when each starts, printing progress and
    calling ``on_finished`` after each finished cell; return ``{cell: error message}``."""
    for k, cell in enumerate(cells, start=1):
        if cell not in todo:
            print(f"cell {k}/{len(cells)}: {_label(cell)} (done)", flush=True)
    lock = threading.Lock()
    durations: list[float] = []
    failures: dict[Cell, str] = {}
    finished = [0]

    def one(cell: Cell) -> None:
        k = cells.index(cell) + 1
        with lock:
            left = len(todo) - finished[0]
            eta = f", ETA {_duration(left * sum(durations) / len(durations) / jobs)}" if durations else ""
            print(f"cell {k}/{len(cells)}: {_label(cell)}{eta}", flush=True)
        start = time.time()
        try:
            run_cell(bundle, cell[0], cell[1], out, cell[2], *args, stamp=stamp(), **kwargs)
            on_finished()
        except (RuntimeError, OSError, ValueError) as e:
            with lock:
                failures[cell] = str(e)
                print(f"cell {k}/{len(cells)}: {_label(cell)} FAILED: {str(e).splitlines()[0]}", flush=True)
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
