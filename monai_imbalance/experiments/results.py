# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The committed results of a table: the small text files its Markdown (and the README blocks) are generated from.

A results folder (``table --results DIR``, e.g. ``results/table2_brain_lesion``) holds only:

- ``cells/<variant>__f<fraction>__s<seed>.json``: one finished cell: its settings, the reported class, the
  summary (``<metric>_mean`` / ``_std`` over cases), the per-case rows ``cases`` (``case, split, dice,
  sensitivity, precision, hd95``, what the paired tests need), ``train_seconds`` / ``eval_seconds`` and the
  ``commit``, ``dirty`` flag, ``machine`` and ``finished`` date of the run that made it;
- ``results.csv``: one row per cell (without the per-case rows);
- ``summary.csv``: one row per (variant, fraction, metric): mean and sd over seeds, seeds, Wilcoxon p-value
  against ``vanilla`` and its number of pairs;
- ``results.md``: the table with its legend and a provenance line (command, preset, commit, machine, compute);
  this is what ``python -m monai_imbalance.experiments render`` writes into a README;
- ``policies/<cell>.json``: for a cell whose training learned augmentation policies, their final probabilities
  (:mod:`monai_imbalance.experiments.policies`), summarised under the table in ``results.md``;
- ``provenance.json``: the bundle, preset, split, class, variants, fractions, seeds and overrides; the command
  line, commit, dirty flag, machine (platform, CPU model, cores, torch version, GPU names) and date of the latest
  run that added cells; the number of cells and their total compute seconds; and ``runs``, one entry per run that
  added cells (its command, commit, machine, start and end, and the cells it added).

A cell file is never rewritten: a cell present counts as finished, so a table resumed on another machine from the
committed folder trains only the missing cells. The folder accepts cells of one bundle, preset, split and class
(:func:`check_settings`); the variants, fractions and seeds of successive runs are merged.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_imbalance.utils import atomic_write_text

from .markdown import format_table
from .policies import POLICIES, policies_markdown
from .provenance import now
from .statistics import summary_rows

__all__ = [
    "cell_name",
    "csv_text",
    "load_cells",
    "committed_cell",
    "check_settings",
    "write_results_dir",
    "merge_results_dirs",
    "results_markdown",
]

CELLS = "cells"
PROVENANCE = "provenance.json"
#: Settings that must agree between the runs writing one results folder.
FIXED_SETTINGS = ("bundle", "preset", "optimizer", "split", "class_index")


def cell_name(variant: str, fraction: float, seed: int) -> str:
    """The name of a cell: ``<variant>__f<fraction>__s<seed>``."""
    return f"{variant}__f{float(fraction):g}__s{int(seed)}"


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV of ``rows`` with ``columns`` (default: the union of the rows' keys, in order of appearance)."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="", extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell_json(result: Mapping[str, Any]) -> str:
    """The cell as JSON: the fields one per line, the per-case rows one per line."""
    text = json.dumps({k: v for k, v in result.items() if k != "cases"}, indent=4)
    cases = [json.dumps(c) for c in result.get("cases") or []]
    block = "[\n" + ",\n".join(f"        {c}" for c in cases) + "\n    ]" if cases else "[]"
    return f'{text[:-2]},\n    "cases": {block}\n}}\n'


def load_cells(results_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The cells of a results folder, in file-name order (none when it has no ``cells`` folder)."""
    folder = Path(results_dir) / CELLS
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def committed_cell(results_dir: str | os.PathLike, variant: str, fraction: float, seed: int) -> dict[str, Any] | None:
    """The committed cell ``(variant, fraction, seed)`` of a results folder, or ``None``."""
    path = Path(results_dir) / CELLS / f"{cell_name(variant, fraction, seed)}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _provenance(results_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(results_dir) / PROVENANCE
    return json.loads(path.read_text()) if path.is_file() else {}


def check_settings(results_dir: str | os.PathLike, settings: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when the recorded bundle, preset, optimizer, split or class differ from ``settings``.

    Args:
        results_dir: the results folder (may not exist yet).
        settings: the table's ``bundle``, ``preset``, ``optimizer``, ``split`` and ``class_index``.
    """
    old = _provenance(results_dir)
    for key in FIXED_SETTINGS:
        if key not in old:
            continue
        a, b = old[key], settings.get(key)
        if key == "bundle":
            a, b = Path(str(a)).name, Path(str(b)).name
        if a != b:
            raise ValueError(
                f"results folder '{results_dir}' holds cells with {key} {a!r}, this table has {b!r}: "
                "use another --results folder."
            )


def _union(old: Sequence[Any], new: Sequence[Any]) -> list[Any]:
    return list(old) + [x for x in new if x not in old]


def write_results_dir(
    results_dir: str | os.PathLike,
    results: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    run: Mapping[str, Any],
) -> str:
    """Add the new finished cells to a results folder and rewrite its tables and provenance (atomically).

    Args:
        results_dir: the results folder (created when missing).
        results: finished cell results with ``cases``; the ones the folder already has are left as they are.
        settings: ``bundle, preset, split, class_index, variants, fractions, seeds, overrides`` of the table.
        run: this run's ``command``, ``started`` (date), ``commit``, ``dirty`` and ``machine`` (a
            :func:`~monai_imbalance.experiments.provenance.machine_info`).

    Returns:
        The Markdown written to ``results.md`` (see :func:`results_markdown`).
    """
    folder = Path(results_dir)
    check_settings(folder, settings)
    added = []
    for r in results:
        path = folder / CELLS / f"{cell_name(r['variant'], r['fraction'], r['seed'])}.json"
        if not path.is_file():
            atomic_write_text(_cell_json(r), path)
            added.append(path.stem)
    old = _provenance(folder)
    runs = list(old.get("runs", []))
    date = now()
    if added:
        if runs and runs[-1].get("started") == run.get("started") and runs[-1].get("command") == run.get("command"):
            runs[-1] = {**runs[-1], "finished": date, "cells": [*runs[-1]["cells"], *added]}
        else:
            runs.append({**run, "overrides": list(settings.get("overrides", ())), "finished": date, "cells": added})
    latest = runs[-1] if runs else run
    provenance = {
        **{k: settings.get(k) for k in FIXED_SETTINGS if k != "optimizer" or settings.get(k) is not None},
        "variants": _union(old.get("variants", []), settings.get("variants", [])),
        "fractions": sorted(set(old.get("fractions", [])) | {float(f) for f in settings.get("fractions", [])}),
        "seeds": sorted(set(old.get("seeds", [])) | {int(s) for s in settings.get("seeds", [])}),
        "overrides": list(settings.get("overrides", ())),
        **{k: latest.get(k) for k in ("command", "commit", "dirty", "machine")},
        "date": latest.get("finished", date),
        "runs": runs,
    }
    return _write_tables(folder, provenance)


def _write_tables(folder: Path, provenance: Mapping[str, Any]) -> str:
    """Write ``provenance.json`` (with the derived ``cells`` and ``compute_seconds``, before ``runs``),
    ``results.csv``, ``summary.csv`` and ``results.md`` of the folder's cells."""
    cells = load_cells(folder)
    derived = {"cells": len(cells), "compute_seconds": round(math.fsum(_seconds(c) for c in cells), 1)}
    provenance = {**{k: v for k, v in provenance.items() if k != "runs"}, **derived, "runs": provenance.get("runs", [])}
    atomic_write_text(json.dumps(provenance, indent=4) + "\n", folder / PROVENANCE)
    atomic_write_text(csv_text([{k: v for k, v in c.items() if k != "cases"} for c in cells]), folder / "results.csv")
    variants, fractions, _ = _axes(cells, provenance)
    atomic_write_text(csv_text(summary_rows(cells, variants, fractions)), folder / "summary.csv")
    markdown = results_markdown(folder)
    atomic_write_text(markdown, folder / "results.md")
    return markdown


def merge_results_dirs(source: str | os.PathLike, target: str | os.PathLike) -> list[str]:
    """Add the cells of ``source`` that ``target`` lacks (the same table run elsewhere: another worktree, machine or
    GPU session) and the runs that made them, then rewrite the target's tables. Cells present in both stay as the
    target has them (a cell file is never rewritten).

    Args:
        source: a results folder of the same bundle, preset, optimizer, split and class.
        target: the results folder to complete (e.g. the committed one).

    Returns:
        The names of the cells added.

    Raises:
        FileNotFoundError: either folder lacks ``provenance.json``.
        ValueError: the folders' settings differ (:func:`check_settings`).
    """
    source, target = Path(source), Path(target)
    for folder in (source, target):
        if not (folder / PROVENANCE).is_file():
            raise FileNotFoundError(f"'{folder}' is not a results folder: '{folder / PROVENANCE}' not found.")
    theirs, ours = _provenance(source), _provenance(target)
    check_settings(target, theirs)
    added = _copy_missing(source / CELLS, target / CELLS)
    _copy_missing(source / POLICIES, target / POLICIES)
    runs = list(ours.get("runs", []))
    index = {(r.get("started"), r.get("command")): i for i, r in enumerate(runs)}
    for run in theirs.get("runs", []):
        key = (run.get("started"), run.get("command"))
        if key not in index:
            runs.append(run)
        elif len(run.get("cells", [])) > len(runs[index[key]].get("cells", [])):
            runs[index[key]] = run  # the same run, further along
    latest = max(runs, key=lambda r: str(r.get("finished", ""))) if runs else ours
    provenance = {
        **ours,
        "variants": _union(ours.get("variants", []), theirs.get("variants", [])),
        "fractions": sorted(set(ours.get("fractions", [])) | set(theirs.get("fractions", []))),
        "seeds": sorted(set(ours.get("seeds", [])) | set(theirs.get("seeds", []))),
        **{k: latest.get(k, ours.get(k)) for k in ("command", "commit", "dirty", "machine")},
        "date": latest.get("finished", ours.get("date")),
        "runs": runs,
    }
    _write_tables(target, provenance)
    return added


def _copy_missing(source: Path, target: Path) -> list[str]:
    """Copy the ``*.json`` files of ``source`` that ``target`` lacks (never rewriting one); return their stems."""
    copied = []
    for path in sorted(source.glob("*.json")):
        if not (target / path.name).is_file():
            atomic_write_text(path.read_text(), target / path.name)
            copied.append(path.stem)
    return copied


def _seconds(cell: Mapping[str, Any]) -> float:
    return float(cell.get("train_seconds") or 0.0) + float(cell.get("eval_seconds") or 0.0)


def _axes(cells: Sequence[Mapping[str, Any]], provenance: Mapping[str, Any]) -> tuple[list, list, list]:
    """Variants (the recorded ones, then any other of the cells), fractions (ascending) and seeds of the table."""
    variants = _union(provenance.get("variants", []), [c["variant"] for c in cells])
    fractions = sorted(
        set(_union([float(f) for f in provenance.get("fractions", [])], [float(c["fraction"]) for c in cells]))
    )
    seeds = sorted(set(provenance.get("seeds", [])) | {int(c["seed"]) for c in cells})
    return variants, fractions, seeds


def _counted(counter: Counter) -> str:
    if len(counter) == 1:
        return next(iter(counter))
    return ", ".join(f"{k} ({cell_count(n)})" for k, n in counter.most_common())


def cell_count(n: int) -> str:
    """``"1 cell"``, ``"n cells"``: the count of cells in the tables' and commands' messages."""
    return f"{n} cell" if n == 1 else f"{n} cells"


def table_command(provenance: Mapping[str, Any]) -> str | None:
    """The command that makes the whole table: the latest run's command line with its ``--variants``, ``--seeds``
    and ``--fractions`` replaced by all those of the folder (runs that each added some cells are one command; cells
    already in the results folder count as finished, so it trains only what is missing).

    Args:
        provenance: a results folder's ``provenance.json`` (``command``, ``variants``, ``seeds``, ``fractions``).

    Returns:
        The command line (quoted as a shell reads it); the recorded one unchanged when it cannot be split.
    """
    command = provenance.get("command")
    try:
        words = shlex.split(command) if command else []
    except ValueError:
        return command
    axes = {
        "--variants": [str(v) for v in provenance.get("variants") or []],
        "--seeds": [str(int(s)) for s in provenance.get("seeds") or []],
        "--fractions": [repr(float(f)) for f in provenance.get("fractions") or []],
    }
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        out.append(word)
        i += 1
        if word == "--":  # the bundle overrides follow: copied as they are
            out.extend(words[i:])
            break
        if word in axes and axes[word]:
            while i < len(words) and not words[i].startswith("--"):
                i += 1
            out.extend(axes[word])
    return shlex.join(out) if words else command


def results_markdown(results_dir: str | os.PathLike) -> str:
    """The table of a results folder, generated from its cell files and ``provenance.json`` only.

    Args:
        results_dir: the results folder.

    Returns:
        :func:`~monai_imbalance.experiments.markdown.format_table` of the cells, then a line with the command that
        makes the whole table (:func:`table_command`), the preset, the commits and machines of the cells and the
        total compute time.

    Raises:
        FileNotFoundError: when the folder has no ``provenance.json``.
    """
    folder = Path(results_dir)
    if not (folder / PROVENANCE).is_file():
        raise FileNotFoundError(f"'{folder}' is not a results folder: '{folder / PROVENANCE}' not found.")
    provenance = _provenance(folder)
    cells = load_cells(folder)
    variants, fractions, seeds = _axes(cells, provenance)
    preset = provenance.get("preset")
    table = format_table(cells, variants, fractions, seeds, preset=preset)
    commits = Counter(
        f"`{c['commit'][:7]}`" + (" (dirty)" if c.get("dirty") else "") if c.get("commit") else "unknown" for c in cells
    )
    machines = Counter(str(c.get("machine") or "unknown") for c in cells)
    hours = math.fsum(_seconds(c) for c in cells) / 3600
    line = (
        f"Command (the whole table; finished cells are skipped): `{table_command(provenance)}`; "
        f"preset: {f'`{preset}`' if preset else 'none'}; "
        f"commit: {_counted(commits) if cells else '-'}; machine: {_counted(machines) if cells else '-'}; "
        f"{cell_count(len(cells))}, {hours:.1f} h of training and evaluation"
    )
    resumed = sum(1 for c in cells if c.get("resumed"))
    if resumed == 1:
        line += " (1 resumed cell counts its last attempt only)."
    elif resumed:
        line += f" ({resumed} resumed cells count their last attempt only)."
    else:
        line += "."
    policies = policies_markdown(folder)
    return f"{table}\n{line}\n" + (f"\n{policies}" if policies else "")
