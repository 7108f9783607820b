# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""CoLab's ``multi_gpu_train.json`` under ``torchrun --nproc_per_node=2`` on CPU (gloo).

Each rank saves its final segmenter and generator weights through an extra ``finalize`` entry: DDP keeps the
segmenters identical, and the generator, which is not wrapped in DDP, must stay identical too (broadcast from rank 0
at start, hypergradients averaged over the ranks before every meta step).
"""

from __future__ import annotations

import pytest
import torch

from monai_imbalance.data import make_phantom_dataset

pytestmark = pytest.mark.slow  # torchrun, 2 processes


def test_two_ranks_train_colab_and_agree(tmp_path, bundle_harness):
    bundle = bundle_harness("context_label_segmentation", meta_interval=1)
    dataset = make_phantom_dataset(tmp_path / "data", num_training=4, num_validation=2, seed=5)
    dump = bundle.rank_dump_file(
        tmp_path,
        segmenter=bundle.state_dict("network_def"),
        generator=bundle.state_dict("generator"),
        meta_steps="@context_learner.steps",
        skipped="@context_learner.skipped",
    )
    bundle.torchrun("training", ["train.json", "multi_gpu_train.json", dump], dataset, tmp_path)
    ranks = bundle.rank_dumps(tmp_path)
    assert ranks[0]["meta_steps"] == ranks[1]["meta_steps"] == 2  # 1 iteration per epoch per rank, 2 epochs
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 0
    bundle.assert_same_tensors([r["segmenter"] for r in ranks])
    latest = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)  # written by rank 0 only
    bundle.assert_same_tensors([r["generator"] for r in ranks] + [latest["generator"]])
