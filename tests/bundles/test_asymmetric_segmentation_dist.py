# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""``multi_gpu_train.json`` under ``torchrun --nproc_per_node=2`` on CPU (gloo), as the Model Zoo's ``_dist`` tests.

Each rank saves its final weights through an extra ``finalize`` entry; DDP must leave them identical, also with
the regularised trainer's extra adversarial and mixup steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from monai_imbalance.data import make_phantom_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "asymmetric_segmentation" / "configs"
DUMP_WEIGHTS = {
    "+finalize": [
        "$torch.save({k: v.detach().cpu() for k, v in @network_def.state_dict().items()}, "
        "os.path.join(@bundle_root, 'rank' + os.environ['RANK'] + '.pt'))"
    ]
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=4, num_validation=2, seed=4)


@pytest.mark.parametrize("variant", [None, "asymmetric_combination"])
def test_two_ranks_train_and_agree(variant, dataset, tmp_path, tiny_overrides):
    dump = tmp_path / "dump_weights.json"
    dump.write_text(json.dumps(DUMP_WEIGHTS))
    configs = [str(CONFIGS / "train.json")]
    if variant:
        configs.append(str(CONFIGS / "variants" / f"{variant}.json"))
    configs += [str(CONFIGS / "multi_gpu_train.json"), str(dump)]
    overrides = []
    for key, value in {**tiny_overrides, "dataset_dir": str(dataset), "bundle_root": str(tmp_path)}.items():
        overrides += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training", "--config_file", repr(configs),
        "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"), *overrides,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for k in ranks[0]:
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    latest = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)  # written by rank 0 only
    assert latest["trainer"]["iteration"] == 2  # 4 cases, 2 ranks, batch 2: 1 iteration per epoch, 2 epochs
    for k in ranks[0]:
        assert torch.equal(latest["model"][k], ranks[0][k]), k
