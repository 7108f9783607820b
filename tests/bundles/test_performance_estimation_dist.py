# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The ``performance_estimation`` bundle's ``multi_gpu_train.json`` under ``torchrun --nproc_per_node=2`` on CPU
(gloo): both ranks finish with identical segmenter weights, which rank 0 alone checkpoints."""

from __future__ import annotations

import pytest
import torch

from monai_imbalance.data import make_phantom_dataset

pytestmark = pytest.mark.slow  # torchrun, 2 processes


def test_two_ranks_train_and_agree(tmp_path, bundle_harness):
    bundle = bundle_harness("performance_estimation")
    dataset = make_phantom_dataset(tmp_path / "data", num_training=4, num_validation=2, seed=7)
    dump = bundle.rank_dump_file(tmp_path, network=bundle.state_dict("network_def"))
    bundle.torchrun("training", ["train.json", "multi_gpu_train.json", dump], dataset, tmp_path)
    latest = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)  # written by rank 0 only
    assert latest["trainer"]["iteration"] == 2  # 4 cases, 2 ranks, batch 2: 1 iteration per epoch, 2 epochs
    bundle.assert_same_tensors([r["network"] for r in bundle.rank_dumps(tmp_path)] + [latest["model"]])
