# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the straight-through Gumbel estimator (:mod:`monai_imbalance.augment.gumbel`).

The conditional re-draw is compared with the authors' rejection sampler (same distribution of the soft sample), the
straight-through weight with its closed-form gradient ``y_k (delta_kj - y_j) / tau``, fresh draws with the
categorical probabilities, and the per-group-baseline, per-bin-normalised coefficients with a direct loop.
"""

from __future__ import annotations

import pytest
import torch

from monai_imbalance.augment import gumbel


def test_fresh_draws_follow_the_probabilities() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([0.0, 1.0, -1.0, 0.5], requires_grad=True)
    k, st = gumbel.sample_straight_through(logits[None].expand(6000, -1))
    freq = torch.bincount(k, minlength=4).double() / 6000
    p = torch.softmax(logits.detach().double(), 0)
    assert torch.allclose(freq, p, atol=0.02)
    assert torch.allclose(st, torch.ones_like(st))
    st.sum().backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0


def test_conditional_redraw_matches_rejection_sampling() -> None:
    torch.manual_seed(1)
    logits = torch.tensor([0.5, -0.5, 1.0, 0.0])
    n = 40000
    # the authors: draw unconditionally and keep the draws whose argmax is the recorded bin
    g = -torch.log(-torch.log(torch.rand(n, 4).clamp(1e-12, 1 - 1e-7)))
    z = logits + g
    for k in (1, 2):
        kept = z[z.argmax(1) == k]
        ref = torch.softmax(kept, 1).mean(0)
        cond = gumbel.conditional_gumbel(logits[None].expand(n, -1), torch.full((n,), k))
        assert bool((cond.argmax(1) == k).all())
        got = torch.softmax(cond, 1).mean(0)
        assert torch.allclose(got, ref, atol=0.01), (k, got, ref)
        # the maximum is Gumbel(logsumexp): its mean is logsumexp + Euler-Mascheroni, whatever k
        assert float(cond.max(1).values.mean()) == pytest.approx(float(torch.logsumexp(logits, 0)) + 0.5772, abs=0.03)


def test_conditional_redraw_handles_zero_probability_bins() -> None:
    logits = torch.tensor([[0.0, float("-inf"), 1.0], [0.0, float("-inf"), 1.0]], requires_grad=True)
    st, y = gumbel.straight_through_given(logits, torch.tensor([0, 1]))
    assert bool(torch.isfinite(st).all()) and bool(torch.isfinite(y).all())
    st.sum().backward()
    assert bool(torch.isfinite(logits.grad).all())


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_straight_through_given_has_value_one_and_the_closed_form_gradient(tau: float) -> None:
    torch.manual_seed(2)
    logits = torch.randn(5, 6, requires_grad=True)
    k = torch.tensor([0, 3, 5, 1, 1])
    st, y = gumbel.straight_through_given(logits, k, tau=tau)
    assert torch.allclose(st, torch.ones(5))
    assert bool((y.argmax(1) == k).all())  # the soft sample's maximum is the recorded bin
    coef = torch.randn(5)
    (st * coef).sum().backward()
    onehot = torch.nn.functional.one_hot(k, 6).double()
    yk = y.double().gather(1, k[:, None])
    expected = coef[:, None].double() * yk * (onehot - y.double()) / tau
    assert torch.allclose(logits.grad.double(), expected, atol=1e-6)


def test_per_bin_coefficients_match_a_loop() -> None:
    torch.manual_seed(3)
    b, o = 9, 3
    grad_w = torch.randn(b)
    bins = torch.randint(0, 3, (b, o))
    groups = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1, 0])
    coef = gumbel.per_bin_coefficients(grad_w, bins, groups)
    for i in range(b):
        same = [j for j in range(b) if groups[j] == groups[i]]
        g = float(grad_w[i]) - sum(float(grad_w[j]) for j in same) / len(same)
        for op in range(o):
            n = sum(1 for j in same if bins[j, op] == bins[i, op])
            assert float(coef[i, op]) == pytest.approx(g / n, abs=1e-9)
    raw = gumbel.per_bin_coefficients(grad_w, bins, groups, baseline=False, normalize=False)
    assert torch.allclose(raw, grad_w[:, None].double().expand(b, o))
    # the baseline makes each group's coefficients sum to zero before normalisation
    centred = gumbel.per_bin_coefficients(grad_w, bins, groups, normalize=False)
    for grp in (0, 1):
        assert abs(float(centred[groups == grp, 0].sum())) < 1e-9


def test_backward_per_bin_and_check_logits_errors() -> None:
    with pytest.raises(ValueError, match="must match"):
        gumbel.backward_per_bin(torch.ones(2, 3, requires_grad=True), torch.ones(2, 2))
    with pytest.raises(ValueError, match="require grad"):
        gumbel.backward_per_bin(torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="per_op|grad_w|bins"):
        gumbel.per_bin_coefficients(torch.ones(3), torch.zeros(2, 1, dtype=torch.long), torch.zeros(3))
    with pytest.raises(ValueError, match="my policy holds NaN"):
        gumbel.check_logits(torch.tensor([0.0, float("nan")]), "my policy")
    with pytest.raises(ValueError, match="all -inf"):
        gumbel.check_logits(torch.full((2,), float("-inf")), "p")
    gumbel.check_logits(torch.tensor([0.0, float("-inf")]), "p")  # a zero-probability bin is fine


def test_a_group_alone_in_the_batch_takes_its_running_baseline() -> None:
    """The per-group baseline cancels a singleton group's gradient; a running baseline gives it one."""
    grad_w = torch.tensor([0.5, -0.25, 2.0], dtype=torch.float64)
    bins = torch.tensor([[0], [1], [0]])
    groups = torch.tensor([0, 0, 1])  # group 1 has one patch
    plain = gumbel.per_bin_coefficients(grad_w, bins, groups)
    assert float(plain[2, 0]) == 0.0  # g - mean(g of its group) = 0: the authors' rule, a silent zero
    coef = gumbel.per_bin_coefficients(grad_w, bins, groups, singleton_baselines={1: 0.5})
    assert float(coef[2, 0]) == pytest.approx(2.0 - 0.5)  # by hand: (g - running mean) / 1 patch in its bin
    torch.testing.assert_close(coef[:2], plain[:2])  # groups with several patches keep the batch mean

    running = gumbel.SingletonGroupBaseline(momentum=0.9)
    assert running(grad_w, groups) == {}  # first time alone: no running mean yet (counted)
    assert running.singletons == 1 and running.without_baseline == 1
    assert running.means == {0: pytest.approx(0.125), 1: pytest.approx(2.0)}
    out = running(torch.tensor([1.0, 3.0, -1.0], dtype=torch.float64), torch.tensor([1, 1, 0]))
    assert out == {0: pytest.approx(0.125)}  # group 0 is alone now: its running mean from the last batch
    assert running.means[1] == pytest.approx(0.9 * 2.0 + 0.1 * 2.0) and running.means[0] == pytest.approx(
        0.9 * 0.125 + 0.1 * -1.0
    )
    assert running.singletons == 2 and running.without_baseline == 1
    copy = gumbel.SingletonGroupBaseline()
    copy.load_state_dict(running.state_dict())
    assert copy.means == running.means and copy.singletons == 2
    with pytest.raises(ValueError, match="momentum"):
        gumbel.SingletonGroupBaseline(momentum=1.0)
