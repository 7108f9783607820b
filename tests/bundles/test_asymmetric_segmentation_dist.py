# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""``multi_gpu_train.json`` under ``torchrun --nproc_per_node=2`` on CPU (gloo), as the Model Zoo's ``_dist`` tests.

Each rank saves its final weights through an extra ``finalize`` entry; DDP must leave them identical, also with
the regularised trainer's extra adversarial and mixup steps.
"""

from __future__ import annotations

import pytest
import torch

from monai_imbalance.data import make_phantom_dataset

pytestmark = pytest.mark.slow  # torchrun, 2 processes


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=4, num_validation=2, seed=4)


@pytest.mark.parametrize("variant", [None, "asymmetric_combination"])
def test_two_ranks_train_and_agree(variant, dataset, tmp_path, bundle_harness):
    bundle = bundle_harness("asymmetric_segmentation")
    dump = bundle.rank_dump_file(tmp_path, network=bundle.state_dict("network_def"))
    configs = ["train.json", *([f"variants/{variant}.json"] if variant else []), "multi_gpu_train.json", dump]
    bundle.torchrun("training", configs, dataset, tmp_path)
    latest = torch.load(tmp_path / "models" / "latest.pt", weights_only=True)  # written by rank 0 only
    assert latest["trainer"]["iteration"] == 2  # 4 cases, 2 ranks, batch 2: 1 iteration per epoch, 2 epochs
    bundle.assert_same_tensors([r["network"] for r in bundle.rank_dumps(tmp_path)] + [latest["model"]])
