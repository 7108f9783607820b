# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""CoLab's ``multi_gpu_train.json`` under ``torchrun --nproc_per_node=2`` on CPU (gloo).

Each rank saves its final segmenter and generator weights through an extra ``finalize`` entry: DDP keeps the
segmenters identical, and the generator, which is not wrapped in DDP, must stay identical too (broadcast from rank 0
at start, hypergradients averaged over the ranks before every meta step).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from monai_imbalance.data import make_phantom_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "bundles" / "context_label_segmentation" / "configs"
DUMP_WEIGHTS = {
    "+finalize": [
        "$torch.save({'segmenter': {k: v.detach().cpu() for k, v in @network_def.state_dict().items()}, "
        "'generator': {k: v.detach().cpu() for k, v in @generator.state_dict().items()}, "
        "'meta_steps': @train#trainer.context_labels.steps, 'skipped': @train#trainer.context_labels.skipped}, "
        "os.path.join(@bundle_root, 'rank' + os.environ['RANK'] + '.pt'))"
    ]
}


def test_two_ranks_train_colab_and_agree(tmp_path, tiny_overrides):
    dataset = make_phantom_dataset(tmp_path / "data", num_training=4, num_validation=2, seed=5)
    dump = tmp_path / "dump_weights.json"
    dump.write_text(json.dumps(DUMP_WEIGHTS))
    configs = [str(CONFIGS / "train.json"), str(CONFIGS / "multi_gpu_train.json"), str(dump)]
    settings = {**tiny_overrides, "meta_interval": 1, "dataset_dir": str(dataset), "bundle_root": str(tmp_path)}
    overrides = []
    for key, value in settings.items():
        overrides += [f"--{key}", json.dumps(value) if not isinstance(value, str) else value]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
        "-m", "monai.bundle", "run", "training", "--config_file", repr(configs),
        "--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf"), *overrides,
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["meta_steps"] == ranks[1]["meta_steps"] == 2  # 1 iteration per epoch per rank, 2 epochs
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 0
    for part in ("segmenter", "generator"):
        for k in ranks[0][part]:
            assert torch.equal(ranks[0][part][k], ranks[1][part][k]), (part, k)
    latest = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)  # written by rank 0 only
    for k in ranks[0]["generator"]:
        assert torch.equal(latest["generator"][k], ranks[0]["generator"][k]), k
