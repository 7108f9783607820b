# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The final learned augmentation policies of a table's cells, kept in its results folder and shown under the table.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (results: the learned policies apply larger transformations to the foreground than to
the background). A cell whose training wrote ``models/policy.json`` (training-time policies per class group) or
``models/test_time_policy.json`` (:func:`~monai_imbalance.augment.save_policy`'s format) gets
``policies/<cell>.json`` in the results folder, never rewritten once there:

.. code-block:: json

    {
        "training": {"groups": {"background": [0], "foreground": null},
                     "applied": {"background": {"scale": 0.21, ...}, "foreground": {...}},
                     "first_epoch": {"background": {"scale": 0.2, ...}, ...}},
        "test_time": {"probabilities": {"identity": 0.2, ...}, "first_epoch": {...}}
    }

``applied`` is the probability that an operation is applied, ``1 - P(identity)``, at the end of training;
``first_epoch`` the same after the first recorded epoch (from the policy history that the checkpoint
``models/latest.pt`` keeps; absent when the checkpoint has none), so that a policy that never moved shows as such.
:func:`policies_markdown` summarises the files of a results folder per variant and fraction: mean ± sd over seeds
per operation and class group, and the most probable test-time transforms.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from monai_imbalance.utils import atomic_write_text

__all__ = ["POLICIES", "cell_policies", "save_cell_policies", "policies_markdown"]

#: The folder of a results folder that holds the cells' final policies.
POLICIES = "policies"
TRAINING_FILE = "policy.json"
TEST_TIME_FILE = "test_time_policy.json"
#: The checkpoint key of the policy history (:class:`~monai_imbalance.handlers.PolicyPlotHandler`'s state dict).
HISTORY_KEY = "policy_history"
#: Test-time transforms listed per row of the Markdown.
TOP_TEST_TIME = 5


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"policy file '{path}' is not valid JSON: {e}") from None


def _history(models: Path) -> dict[str, Any]:
    checkpoint = models / "latest.pt"
    if not checkpoint.is_file():
        return {}
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    history = state.get(HISTORY_KEY) if isinstance(state, Mapping) else None
    return history if isinstance(history, Mapping) and history.get("epochs") else {}


def cell_policies(models: str | os.PathLike) -> dict[str, Any] | None:
    """The summary of a cell's final policies (module docstring), or ``None`` when its training wrote none.

    Args:
        models: the cell's ``models`` folder (``policy.json``, ``test_time_policy.json``, ``latest.pt``).

    Raises:
        ValueError: a policy file that is not valid JSON or not of the expected type (naming the file).
    """
    models = Path(models)
    paths = {"training": models / TRAINING_FILE, "test_time": models / TEST_TIME_FILE}
    if not any(p.is_file() for p in paths.values()):
        return None
    history = _history(models)
    out: dict[str, Any] = {}
    if paths["training"].is_file():
        desc = _read_json(paths["training"])
        if desc.get("type") != "AugmentationPolicy":
            raise ValueError(f"'{paths['training']}' describes a {desc.get('type')!r}, not an AugmentationPolicy.")
        missing = [
            f"{g}/{op}"
            for g, ops in desc.get("probabilities", {}).items()
            for op, b in ops.items()
            if "identity" not in b
        ]
        if missing or not desc.get("probabilities"):
            raise ValueError(f"'{paths['training']}': no 'identity' probability for {missing or 'any operation'}.")
        applied = {
            g: {op: round(1.0 - float(bins["identity"]), 6) for op, bins in ops.items()}
            for g, ops in desc["probabilities"].items()
        }
        out["training"] = {"groups": desc.get("groups"), "applied": applied}
        if history.get("training"):
            out["training"]["first_epoch"] = {
                g: {op: round(1.0 - float(rows[0][0]), 6) for op, rows in ops.items()}
                for g, ops in history["training"].items()
            }
    if paths["test_time"].is_file():
        desc = _read_json(paths["test_time"])
        if desc.get("type") != "TestTimePolicy":
            raise ValueError(f"'{paths['test_time']}' describes a {desc.get('type')!r}, not a TestTimePolicy.")
        out["test_time"] = {"probabilities": {k: float(v) for k, v in desc["probabilities"].items()}}
        if history.get("test_time"):
            out["test_time"]["first_epoch"] = {k: round(float(v[0]), 6) for k, v in history["test_time"].items()}
    return out


def save_cell_policies(results_dir: str | os.PathLike, name: str, models: str | os.PathLike) -> Path | None:
    """Write ``<results_dir>/policies/<name>.json`` from a cell's ``models`` folder, unless it exists already.

    Returns:
        the file written, or ``None`` (present already, or the cell has no policy).
    """
    path = Path(results_dir) / POLICIES / f"{name}.json"
    if path.is_file():
        return None
    summary = cell_policies(models)
    if summary is None:
        return None
    atomic_write_text(json.dumps(summary, indent=4) + "\n", path)
    return path


def _mean_sd(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``mean ± sd`` of ``scale * values`` (the sd when there are two values or more); no negative zero."""
    mean = round(scale * statistics.fmean(values), digits) + 0.0
    text = f"{mean:.{digits}f}"
    return text + (f" ± {scale * statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def _cells(folder: Path) -> dict[tuple[str, float], list[dict[str, Any]]]:
    """The policy files grouped by (variant, fraction), seeds in file-name order."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for path in sorted((folder / POLICIES).glob("*.json")):
        variant, fraction, _seed = path.stem.rsplit("__", 2)
        groups.setdefault((variant, float(fraction[1:])), []).append(_read_json(path))
    return groups


def _ordered(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _training_table(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    policies = [r["training"] for r in runs if "training" in r]
    groups = _ordered(g for p in policies for g in p["applied"])
    ops = _ordered(op for p in policies for g in groups for op in p["applied"].get(g, {}))
    with_start = all("first_epoch" in p for p in policies)
    header = ["Operation"] + [f"{g}{' (epoch 1 → end)' if with_start else ''}" for g in groups]
    if len(groups) == 2:
        header.append(f"{groups[1]} − {groups[0]} (end)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def column(key: str, g: str, op: str) -> list[float]:
        return [p[key][g][op] for p in policies if op in p[key].get(g, {})]

    for op in [*ops, None]:  # None: the expected number of operations applied per patch
        row = [f"`{op}`" if op else "expected operations per patch"]
        per_group = {}
        scale, digits = (100.0, 1) if op else (1.0, 2)  # probabilities in %, the expected count as it is
        for g in groups:
            if op is None:
                end = [math.fsum(p["applied"][g].values()) for p in policies if g in p["applied"]]
                start = [math.fsum(p["first_epoch"][g].values()) for p in policies] if with_start else []
            else:
                end = column("applied", g, op)
                start = column("first_epoch", g, op) if with_start else []
            per_group[g] = end
            row.append(
                (f"{_mean_sd(start, scale, digits)} → " if start else "") + _mean_sd(end, scale, digits) if end else "-"
            )
        if len(groups) == 2:
            a, b = per_group[groups[0]], per_group[groups[1]]
            diff = [y - x for x, y in zip(a, b, strict=False)]
            row.append(_mean_sd(diff, scale, digits) if a and len(a) == len(b) else "-")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _test_time_line(runs: Sequence[Mapping[str, Any]]) -> str:
    policies = [r["test_time"]["probabilities"] for r in runs if "test_time" in r]
    names = _ordered(n for p in policies for n in p)
    means = {n: statistics.fmean(p.get(n, 0.0) for p in policies) for n in names}
    top = sorted(names, key=lambda n: -means[n])[:TOP_TEST_TIME]
    uniform = 100.0 / len(names) if names else float("nan")
    listed = ", ".join(f"`{n}` {100 * means[n]:.1f}" for n in top)
    return f"Test-time policy, most probable transforms (%, mean over seeds; uniform {uniform:.1f}): {listed}."


def policies_markdown(results_dir: str | os.PathLike) -> str:
    """The final policies of a results folder's cells as Markdown (empty when it has none).

    Per (variant, fraction): the probability (%) that each operation is applied, per class group, mean ± sd over the
    seeds (with the value after the first epoch when the history was kept), the foreground-minus-background
    difference, the expected number of operations per patch (a count, the sum of those probabilities), and the most
    probable test-time transforms.
    """
    folder = Path(results_dir)
    groups = _cells(folder)
    if not groups:
        return ""
    out = [
        "Final learned policies (`policies/`): probability (%) that each operation is applied, `1 - P(identity)`, "
        "per class group, mean ± sd over seeds; the last row is their sum, the expected number of operations per patch."
    ]
    for (variant, fraction), runs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        out += ["", f"**{variant} @ {fraction:g}** ({len(runs)} seed{'s' if len(runs) > 1 else ''})"]
        if any("training" in r for r in runs):
            out += [""] + _training_table(runs)
        if any("test_time" in r for r in runs):
            out += ["", _test_time_line(runs)]
    return "\n".join(out) + "\n"
