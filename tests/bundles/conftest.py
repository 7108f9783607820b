# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Shared settings and helpers of the bundle tests: tiny enough that a training epoch takes about a second on 2 CPU
cores.

The helpers are fixtures, since pytest imports the test modules with ``--import-mode=importlib`` (a test module
cannot import a sibling module): ``tiny_overrides`` and ``bundle_harness``, a factory of :class:`BundleHarness`
that runs a bundle's configs in-process through ``ConfigWorkflow`` (as the Model Zoo's unit tests do) or from the
command line, also under ``torchrun --nproc_per_node=2`` on CPU (gloo), as the Zoo's ``_dist`` tests do.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from monai.bundle import ConfigWorkflow

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


@pytest.fixture(scope="session")
def tiny_overrides() -> dict:
    """Bundle overrides for tests: 16^3 patches, a 3-level DynUNet with 8-16-32 filters, no loader workers."""
    return {
        "epochs": 2,
        "val_interval": 1,
        "patch_size": [16, 16, 16],
        "filters": [8, 16, 32],
        "batch_size": 2,
        "num_samples": 2,
        "num_workers": 0,
    }


@pytest.fixture(scope="session")
def bundle_harness(tiny_overrides) -> Callable[..., BundleHarness]:
    """``bundle_harness(name, **settings)``: a :class:`BundleHarness` of ``bundles/<name>`` with the tiny overrides
    and ``settings`` given to every run."""

    def make(name: str, **settings: Any) -> BundleHarness:
        return BundleHarness(name, {**tiny_overrides, **settings})

    return make


class BundleHarness:
    """Runs one bundle's configs with fixed settings: through ``ConfigWorkflow`` or its command line.

    Args:
        name: the bundle's folder under ``bundles/``.
        settings: config overrides given to every run (before the run's own overrides).
    """

    def __init__(self, name: str, settings: dict[str, Any]) -> None:
        self.name = name
        self.configs = BUNDLES / name / "configs"
        self.settings = dict(settings)

    def config_path(self, config: str | os.PathLike) -> str:
        """An absolute path as it is, else the file of the bundle's ``configs/`` (e.g. ``"variants/ce.json"``)."""
        path = Path(config)
        return str(path if path.is_absolute() else self.configs / path)

    def workflow(
        self,
        config_files: Sequence[str | os.PathLike],
        dataset: str | os.PathLike,
        bundle_root: str | os.PathLike,
        workflow_type: str = "train",
        **override: Any,
    ) -> ConfigWorkflow:
        """A ``ConfigWorkflow`` (not initialised) of the merged ``config_files`` on ``dataset``."""
        files = [self.config_path(f) for f in config_files]
        return ConfigWorkflow(
            config_file=files if len(files) > 1 else files[0],
            meta_file=self.config_path("metadata.json"),
            logging_file=self.config_path("logging.conf"),
            workflow_type=workflow_type,
            dataset_dir=str(dataset),
            bundle_root=str(bundle_root),
            **{**self.settings, **override},
        )

    @staticmethod
    def complete(wf: ConfigWorkflow) -> ConfigWorkflow:
        """Initialise ``wf``, check that no required property is missing, run and finalise it."""
        wf.initialize()
        assert not wf.check_properties()
        wf.run()
        wf.finalize()
        return wf

    def run(
        self,
        config_files: Sequence[str | os.PathLike],
        dataset: str | os.PathLike,
        bundle_root: str | os.PathLike,
        **override: Any,
    ) -> ConfigWorkflow:
        """:meth:`workflow` then :meth:`complete`."""
        return self.complete(self.workflow(config_files, dataset, bundle_root, **override))

    def inference(
        self, dataset: str | os.PathLike, bundle_root: str | os.PathLike, output_dir: str | os.PathLike
    ) -> ConfigWorkflow:
        """:meth:`inference_workflow`, completed (:meth:`complete`)."""
        return self.complete(self.inference_workflow(dataset, bundle_root, output_dir))

    def inference_workflow(
        self, dataset: str | os.PathLike, bundle_root: str | os.PathLike, output_dir: str | os.PathLike
    ) -> ConfigWorkflow:
        """``inference.json`` with the settings' network size (not initialised)."""
        return ConfigWorkflow(
            config_file=self.config_path("inference.json"),
            meta_file=self.config_path("metadata.json"),
            logging_file=self.config_path("logging.conf"),
            workflow_type="inference",
            bundle_root=str(bundle_root),
            dataset_dir=str(dataset),
            output_dir=str(output_dir),
            patch_size=self.settings["patch_size"],
            filters=self.settings["filters"],
            **{"dataloader#num_workers": 0},
        )

    def command(
        self,
        run_id: str,
        config_files: Sequence[str | os.PathLike],
        dataset: str | os.PathLike,
        bundle_root: str | os.PathLike,
        **override: Any,
    ) -> list[str]:
        """The arguments after ``python`` of ``-m monai.bundle run <run_id>`` with the settings as ``--key value``."""
        settings = {**self.settings, **override, "dataset_dir": str(dataset), "bundle_root": str(bundle_root)}
        args = ["-m", "monai.bundle", "run", run_id, "--config_file", repr([self.config_path(f) for f in config_files])]
        args += ["--meta_file", self.config_path("metadata.json"), "--logging_file", self.config_path("logging.conf")]
        for key, value in settings.items():  # strings as they are, bools as python-fire parses them, else JSON
            text = value if isinstance(value, str) else str(value) if isinstance(value, bool) else json.dumps(value)
            args += [f"--{key}", text]
        return args

    def torchrun(self, *args: Any, **override: Any) -> subprocess.CompletedProcess:
        """``torchrun --standalone --nproc_per_node=2`` on CPU of :meth:`command` (same arguments); fails the test
        unless every rank exits with 0."""
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
        cmd += self.command(*args, **override)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
        return out

    @staticmethod
    def rank_dump_file(folder: str | os.PathLike, **expressions: str) -> Path:
        """An override file whose ``+finalize`` entry saves ``{name: value}`` of the config ``expressions``
        (without ``$``) to ``<folder>/rank<RANK>.pt`` on every rank; read them with :meth:`rank_dumps`."""
        items = ", ".join(f"{name!r}: {expression}" for name, expression in expressions.items())
        entry = f"$torch.save({{{items}}}, os.path.join({str(folder)!r}, 'rank' + os.environ['RANK'] + '.pt'))"
        path = Path(folder) / "dump_ranks.json"
        path.write_text(json.dumps({"+finalize": [entry]}))
        return path

    @staticmethod
    def state_dict(config_id: str) -> str:
        """The expression of the CPU state dict of the module ``@config_id``, for :meth:`rank_dump_file`."""
        return f"{{k: v.detach().cpu() for k, v in @{config_id}.state_dict().items()}}"

    @staticmethod
    def rank_dumps(folder: str | os.PathLike, world_size: int = 2) -> list[dict]:
        """What :meth:`rank_dump_file` saved, by rank."""
        return [torch.load(Path(folder) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]

    @staticmethod
    def assert_same_tensors(state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Every state dict holds the first one's tensors, bit for bit (e.g. the ranks' weights and the checkpoint)."""
        first, *others = state_dicts
        for k in first:
            for i, other in enumerate(others, start=1):
                assert torch.equal(first[k], other[k]), (k, i)

    @staticmethod
    def read_csv(path: str | os.PathLike) -> list[dict[str, str]]:
        """The rows of a CSV file with a header."""
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
