# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Where a result came from: the git commit of the code (and whether the work tree differed) and the machine.

:func:`git_state` reads ``git rev-parse HEAD`` and ``git status --porcelain`` (with ``GIT_OPTIONAL_LOCKS=0``, so
the repository is only read); :func:`machine_info` reads the platform, the CPU model (``/proc/cpuinfo``), the
core count, the installed torch version and the GPU names (``nvidia-smi``; CUDA is not initialised in this
process). :func:`run_stamp` bundles both with the date, as recorded in every finished cell.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["git_state", "machine_info", "machine_name", "now", "run_stamp"]


def _output(cmd: list[str]) -> str:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    # rstrip only: `git status --porcelain` lines start with a space (" M path") that strip() would eat
    return subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, timeout=60).stdout.rstrip()


def git_state(path: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()) -> tuple[str | None, bool | None]:
    """The commit checked out at ``path`` and whether tracked files differ from it.

    Args:
        path: a folder inside the repository.
        exclude: folders whose changes do not count as dirty (e.g. the results folder being written).

    Returns:
        ``(commit, dirty)``; ``(None, None)`` outside a git repository or without git.
    """
    try:
        top = Path(_output(["git", "-C", str(path), "rev-parse", "--show-toplevel"]))
        commit = _output(["git", "-C", str(top), "rev-parse", "HEAD"])
        status = _output(["git", "-C", str(top), "status", "--porcelain", "--untracked-files=no"])
    except (OSError, subprocess.SubprocessError):
        return None, None
    excluded = [Path(e).resolve() for e in exclude]
    dirty = False
    for line in status.splitlines():
        changed = (top / line[3:].split(" -> ")[-1].strip('"')).resolve()
        if not any(changed == e or e in changed.parents for e in excluded):
            dirty = True
    return commit, dirty


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> list[str]:
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        names = _output(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    except (OSError, subprocess.SubprocessError):
        return []
    return [n.strip() for n in names.splitlines() if n.strip()]


def machine_info() -> dict[str, Any]:
    """``{"name", "platform", "cpu", "cores", "torch", "gpus"}`` of this machine (``gpus``: the CUDA device names;
    ``name``: :func:`machine_name`)."""
    try:
        torch_version: str | None = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = None
    info = {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch_version,
        "gpus": _gpus(),
    }
    return {"name": machine_name(info), **info}


def machine_name(info: dict[str, Any]) -> str:
    """A short name of a :func:`machine_info`: the GPU (``k x`` when several), else the CPU and its cores."""
    gpus = info.get("gpus") or []
    if gpus:
        return gpus[0] if len(gpus) == 1 else f"{len(gpus)} x {gpus[0]}"
    return f"{info.get('cpu', '?')} ({info.get('cores', '?')} cores)"


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_stamp(path: str | os.PathLike, exclude: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """``{"commit", "dirty", "machine"}`` of a run on this machine (``machine``: a :func:`machine_info`).

    Args:
        path: a folder of the repository of the run (e.g. the bundle); when it is not in a git repository, the
            repository of this package.
        exclude: as in :func:`git_state`.
    """
    commit, dirty = git_state(path, exclude)
    if commit is None:
        commit, dirty = git_state(Path(__file__).parent, exclude)
    return {"commit": commit, "dirty": dirty, "machine": machine_info()}
