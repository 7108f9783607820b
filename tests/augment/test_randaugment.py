# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of RandAugment as a fixed policy (:func:`monai_imbalance.augment.randaugment_probabilities`).

The probabilities equal those the ``randaugment`` variant of the learned-augmentation bundle used to write into the
policy's logits by config expressions (kept here, verbatim, as the independent reference), for several ``(N, M)``
and a subset pool; ``N`` operations are applied on average; bad ``N`` / ``M`` raise a ``ValueError`` naming the value.
"""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from monai_imbalance.augment import (
    AugmentationPolicy,
    TrainingTransformPool,
    randaugment_bins,
    randaugment_probabilities,
)

#: The former ``configs/variants/randaugment.json`` expressions of bundles/learned_augmentation_segmentation.
FORMER_CONFIG = {
    "imports": ["$import torch", "$import monai_imbalance.augment"],
    "transform_pool": {"_target_": "monai_imbalance.augment.TrainingTransformPool", "op_names": "@policy_ops"},
    "randaugment_p": "$@randaugment_num_ops / len(@transform_pool)",
    "randaugment_bins": "$dict(scale=[2 * @randaugment_magnitude - 1], rotate=[@randaugment_magnitude], mirror=[1], "
    "gamma=[@randaugment_magnitude], inverse_gamma=[@randaugment_magnitude], brightness_add=[@randaugment_magnitude], "
    "brightness_mul=[@randaugment_magnitude], contrast=[@randaugment_magnitude], "
    "blur_sharpen=[@randaugment_magnitude, 3 + @randaugment_magnitude], noise=[@randaugment_magnitude], "
    "low_resolution=[@randaugment_magnitude])",
    "randaugment_logits": "${op.name: torch.tensor([1.0 - @randaugment_p] + [@randaugment_p / "
    "len(@randaugment_bins[op.family]) if b in @randaugment_bins[op.family] else 0.0 for b in range(1, op.num_bins)])"
    ".log() for op in @transform_pool.ops}",
}


def _former(num_ops: int, magnitude: int, ops: list[str] | None = None) -> dict[str, torch.Tensor]:
    parser = ConfigParser(
        {**FORMER_CONFIG, "policy_ops": ops, "randaugment_num_ops": num_ops, "randaugment_magnitude": magnitude}
    )
    return {k: v.exp() for k, v in parser.get_parsed_content("randaugment_logits").items()}


@pytest.mark.parametrize(
    "num_ops, magnitude, ops",
    [(2, 2, None), (3, 1, None), (1, 3, None), (4, 3, ["scale", "rotate_z", "mirror_y", "blur_sharpen", "noise"])],
)
def test_probabilities_equal_the_former_config_expressions(num_ops, magnitude, ops) -> None:
    pool = TrainingTransformPool(ops)
    got = randaugment_probabilities(pool, num_ops, magnitude)
    expected = _former(num_ops, magnitude, ops)
    assert list(got) == list(pool.op_names) and set(expected) == set(got)
    for op, p in got.items():
        assert p.dtype == torch.float32 and p.shape == expected[op].shape, op
        # float32 on both sides (the former config's log, then exp): near 1, 1e-7 is under two float32 ulps, the size
        # of the exp / log rounding that differs between CPUs
        assert torch.allclose(p, expected[op], atol=1e-6, rtol=0), (op, p, expected[op])
        assert float(p.sum()) == pytest.approx(1.0, abs=1e-6)
    # N operations on average: sum over the operations of P(not identity)
    assert sum(1.0 - float(p[0]) for p in got.values()) == pytest.approx(num_ops, abs=1e-5)


def test_level_bins_and_the_policy_init() -> None:
    ops = {op.name: op for op in TrainingTransformPool().ops}

    def labels(op: str, m: int) -> list[str]:
        return [ops[op].bin_labels[b] for b in randaugment_bins(ops[op], m)]

    assert [labels("scale", m) for m in (1, 2, 3)] == [["0.05"], ["0.25"], ["0.45"]]
    assert [labels("rotate_x", m) for m in (1, 2, 3)] == [["5"], ["15"], ["25"]]  # never the rot90 bin
    assert [labels("mirror_z", m) for m in (1, 2, 3)] == [["flip"]] * 3
    assert labels("blur_sharpen", 2) == ["blur_0.7", "sharpen_0.7"]
    assert labels("low_resolution", 3) == ["0.5"]
    probs = randaugment_probabilities(num_ops=2, magnitude=2)
    policy = AugmentationPolicy(groups={"all": None}, init=probs)
    for op, p in policy.probabilities()["all"].items():
        assert torch.allclose(p, probs[op], atol=1e-7), op
    # N = O: every operation is applied (identity probability 0), at its level-M bin(s) only
    every = AugmentationPolicy(groups={"all": None}, init=randaugment_probabilities(num_ops=15, magnitude=1))
    bins = every.sample(torch.zeros(64, dtype=torch.long)).bins
    allowed = [set(randaugment_bins(op, 1)) for op in every.pool.ops]
    assert all(set(bins[:, o].tolist()) <= allowed[o] for o in range(len(allowed)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_ops": 0}, r"num_ops=0"),
        ({"num_ops": -1}, r"num_ops=-1"),
        ({"num_ops": 16}, r"\[1, 15\].*num_ops=16"),
        ({"num_ops": 2.5}, r"num_ops=2.5"),
        ({"magnitude": 0}, r"magnitude=0"),
        ({"magnitude": 4}, r"\[1, 2, 3\].*magnitude=4"),
        ({"magnitude": True}, r"magnitude=True"),
    ],
)
def test_bad_num_ops_or_magnitude(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        randaugment_probabilities(**kwargs)


def test_num_ops_is_bounded_by_the_pool() -> None:
    pool = TrainingTransformPool(["scale", "gamma"])
    assert float(randaugment_probabilities(pool, 2, 1)["gamma"][0]) == 0.0
    with pytest.raises(ValueError, match=r"\[1, 2\].*num_ops=3"):
        randaugment_probabilities(pool, 3, 1)
