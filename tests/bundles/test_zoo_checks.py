# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The Model Zoo's checks with MONAI's own command line, on every bundle with a trained ``models/model.pt``.

As the Zoo's CI (``ci/verify_bundle.py``) runs them: ``verify_metadata`` with ``--filepath <bundle>/eval/schema.json``
(the Zoo's CI downloads the schema there first; offline, this package's schema is put there, so nothing is
downloaded), ``verify_net_in_out network_def`` and ``ckpt_export network_def`` of the trained ``models/model.pt``
on the bundle's own ``inference.json``. Then ``python -m monai_imbalance.bundle verify`` on the same bundle.

Each bundle is copied and trained for one epoch on phantoms with its own network size (the ``filters`` of
``inference.json``, so the checkpoint fits the network the checks build) and 16^3 patches.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_imbalance.bundle import SCHEMA_PATH
from monai_imbalance.bundle.__main__ import main as verify_main
from monai_imbalance.data import make_phantom_dataset

pytestmark = pytest.mark.slow  # trains every bundle, then MONAI's command line

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=2, num_validation=1, seed=3)


@pytest.fixture(scope="module", params=NAMES)
def trained(request, dataset, tmp_path_factory, bundle_harness) -> Path:
    """A copy of the bundle whose ``models/model.pt`` was written by one epoch of its own training."""
    name = request.param
    root = tmp_path_factory.mktemp("zoo") / name
    shutil.copytree(BUNDLES / name, root, ignore=shutil.ignore_patterns("eval", "*.pt", "*.ts", "runs"))
    filters = json.loads((root / "configs" / "inference.json").read_text())["filters"]
    bundle_harness(name, filters=filters, epochs=1, val_interval=1).run(["train.json"], dataset, root)
    assert (root / "models" / "model.pt").is_file()
    return root


def _monai_bundle(*args: str) -> str:
    """``python -m monai.bundle <args>``; fails the test unless it exits with 0; returns its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    return out.stdout + out.stderr


def test_monai_cli_zoo_checks_pass_on_the_trained_bundle(trained: Path) -> None:
    configs = trained / "configs"
    meta, inference = str(configs / "metadata.json"), str(configs / "inference.json")
    schema = trained / "eval" / "schema.json"
    schema.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SCHEMA_PATH, schema)

    out = _monai_bundle("verify_metadata", "--meta_file", meta, "--filepath", str(schema))
    assert "skipped downloading" in out and "metadata is verified with no error" in out

    _monai_bundle(
        "verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", inference,
        "--bundle_root", str(trained), "--device", "cpu",
    )  # fmt: skip

    ts_file = trained / "models" / "verify_model.ts"
    _monai_bundle(
        "ckpt_export", "network_def", "--filepath", str(ts_file), "--ckpt_file", str(trained / "models" / "model.pt"),
        "--meta_file", meta, "--config_file", inference, "--bundle_root", str(trained),
    )  # fmt: skip
    # the export carries the trained weights: same output as network_def holding model.pt
    parser = ConfigParser()
    parser.read_config(inference)
    parser["bundle_root"] = str(trained)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(trained / "models" / "model.pt", weights_only=True), strict=True)
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    exported = torch.jit.load(str(ts_file)).eval()
    with torch.no_grad():
        expected, got = net.eval()(x), exported(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_project_verify_passes_on_the_trained_bundle(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main(["verify", str(trained)]) == 0
    out = capsys.readouterr().out
    for name in ("metadata", "net_in_out", "torchscript", "configs"):
        assert f"PASS {name}" in out
    assert "ckpt_export of models/model.pt" in out and "UNTRAINED" not in out
