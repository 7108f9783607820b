# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Straight-through Gumbel sampling of categorical policies, and its per-bin normalised gradient.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (method section: the policies and their meta-gradients; the authors'
``sampler_gambels*.py``). For logits ``alpha`` of one categorical and temperature ``tau``::

    y   = softmax((alpha + G) / tau),  G ~ Gumbel(0, 1)       # the soft sample
    k   = argmax(y)                                           # the chosen bin, distributed as softmax(alpha)
    ST  = onehot(k) - sg(y) + y                               # straight-through: value onehot(k)
    ST[k] = 1 in value, d ST[k] / d alpha_j = y_k (delta_kj - y_j) / tau

- :func:`sample_straight_through`: a fresh draw, ``torch.nn.functional.gumbel_softmax(hard=True)``.
- :func:`straight_through_given`: the weight of a bin already chosen (by a loader worker, from the same
  probabilities): ``G`` is re-drawn from the Gumbel distribution *conditioned on* ``argmax = k``, exactly, by the
  top-down construction of Maddison, Tarlow, Minka ("A* sampling", NeurIPS 2014): the maximum
  ``T = logsumexp(alpha) + Gumbel`` goes to ``k``, every other perturbed logit is a Gumbel truncated below ``T``.
  The authors draw the same distribution by rejection (redraw until the argmax is ``k``), which can take many tries
  for an improbable bin. The noise is then held fixed (detached), so the gradient is the formula above.
- :func:`per_bin_coefficients`: the coefficients of the authors' update of both policies: with ``g_b`` the
  gradient of the meta loss with respect to sample ``b``'s weight, ``g_b <- g_b - mean_{b' in group(b)} g_b'`` (a
  baseline per class group) and ``c_bo = g_b / n_{g(b), o, k_bo}`` with ``n`` the number of samples of that group
  that chose the same bin of operation ``o``; the logits' gradient is then
  ``sum_b sum_o c_bo * d ST_o[k_bo] / d alpha_o`` (:func:`backward_per_bin`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "backward_per_bin",
    "check_logits",
    "conditional_gumbel",
    "per_bin_coefficients",
    "SingletonGroupBaseline",
    "sample_straight_through",
    "straight_through_given",
]

# -inf logits (probability exactly 0) are replaced by this in the conditional draw, so the noise stays finite.
_LOGIT_FLOOR = -1e4


def check_logits(logits: torch.Tensor, name: str) -> None:
    """Raise a clear error when logits hold NaN or ``+inf`` (``-inf`` is a probability of exactly 0).

    Raises:
        ValueError: naming ``name`` and the offending bins.
    """
    bad = torch.isnan(logits) | torch.isposinf(logits)
    if bool(bad.any()):
        idx = torch.nonzero(bad.reshape(-1)).reshape(-1)[:8].tolist()
        raise ValueError(
            f"{name} holds NaN or +inf logits at flat positions {idx}: the policy update diverged (check the meta "
            "learning rate and skip updates whose hypergradient is not finite)."
        )
    if bool(torch.isneginf(logits).all(dim=-1).any()):
        raise ValueError(f"{name} has a categorical whose logits are all -inf (no bin has any probability).")


def sample_straight_through(logits: torch.Tensor, tau: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh straight-through Gumbel draw per row.

    Args:
        logits: ``(B, K)``.
        tau: temperature ``> 0``.

    Returns:
        ``(k, st)``: the chosen bins ``(B,)`` (long) and ``ST[b, k_b]`` ``(B,)`` (value 1, gradient to ``logits``).
    """
    y = F.gumbel_softmax(logits, tau=tau, hard=True, dim=-1)
    k = y.detach().argmax(dim=-1)
    return k, y.gather(-1, k[:, None])[:, 0]


def conditional_gumbel(
    logits: torch.Tensor, index: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Perturbed logits ``alpha + G`` with ``G ~ Gumbel`` conditioned on ``argmax(alpha + G) = index`` (exact).

    Args:
        logits: ``(B, K)``; ``-inf`` entries are allowed except at ``index``.
        index: ``(B,)`` the required argmax.
        generator: optional ``torch.Generator``.

    Returns:
        ``(B, K)`` detached perturbed logits whose row maximum is at ``index``.
    """
    a = logits.detach().clamp(min=_LOGIT_FLOOR)
    shape = a.shape
    u = torch.rand(shape, generator=generator, device=a.device, dtype=a.dtype).clamp_(1e-12, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(u))
    top = torch.logsumexp(a, dim=-1) + gumbel[torch.arange(shape[0], device=a.device), index]  # (B,)
    z = a + gumbel
    # a Gumbel with location a_j truncated below top: -log(exp(-top) + exp(-z_j))
    trunc = -torch.logaddexp(-top[:, None], -z)
    out = trunc.scatter(-1, index[:, None], top[:, None])
    return out


def straight_through_given(
    logits: torch.Tensor, index: torch.Tensor, tau: float = 1.0, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The straight-through weight of given bins, with the Gumbel noise re-drawn conditioned on them.

    Args:
        logits: ``(B, K)``, with gradient.
        index: ``(B,)`` the bins chosen earlier.
        tau: temperature ``> 0``.
        generator: optional ``torch.Generator``.

    Returns:
        ``(st, y)``: ``ST[b, k_b]`` ``(B,)`` (value 1, gradient ``y_k (delta_kj - y_j) / tau``) and the soft
        sample ``y`` ``(B, K)`` (detached).
    """
    noise = conditional_gumbel(logits, index, generator) - logits.detach().clamp(min=_LOGIT_FLOOR)
    y = torch.softmax((logits.clamp(min=_LOGIT_FLOOR) + noise) / tau, dim=-1)
    yk = y.gather(-1, index[:, None])[:, 0]
    return 1.0 - yk.detach() + yk, y.detach()


def per_bin_coefficients(
    grad_w: torch.Tensor,
    bins: torch.Tensor,
    groups: torch.Tensor,
    baseline: bool = True,
    normalize: bool = True,
    singleton_baselines: Mapping[int, float] | None = None,
) -> torch.Tensor:
    """The coefficients ``c_bo`` of the authors' per-group-baseline, per-bin-normalised update (module docstring).

    Args:
        grad_w: ``(B,)`` gradient of the meta loss with respect to each sample's weight ``w_b``.
        bins: ``(B, O)`` chosen bin of each operation.
        groups: ``(B,)`` class group of each sample.
        baseline: subtract the mean of ``grad_w`` within each group.
        normalize: divide by the number of samples of the same group that chose the same bin of the operation.
        singleton_baselines: ``{group: baseline}`` for groups with a single sample in the batch, whose own mean would
            cancel its gradient (e.g. a running mean of the group's earlier gradients); a singleton group missing from
            it keeps the batch mean (its coefficients are then zero).

    Returns:
        ``(B, O)`` coefficients (detached).

    Raises:
        ValueError: mismatched shapes.
    """
    g = grad_w.detach().reshape(-1).to(torch.float64)
    if bins.ndim != 2 or bins.shape[0] != g.shape[0] or groups.reshape(-1).shape[0] != g.shape[0]:
        raise ValueError(
            f"grad_w (B,), bins (B, O) and groups (B,) must agree, got {tuple(grad_w.shape)}, {tuple(bins.shape)}, "
            f"{tuple(groups.shape)}."
        )
    groups = groups.reshape(-1).to(bins.device)
    same_group = groups[:, None] == groups[None, :]  # (B, B)
    if baseline:
        size = same_group.sum(1)
        mean = (same_group.to(g.dtype) @ g) / size.to(g.dtype)
        if singleton_baselines:
            for b in torch.nonzero(size == 1)[:, 0].tolist():
                value = singleton_baselines.get(int(groups[b]))
                if value is not None:
                    mean[b] = float(value)
        g = g - mean
    coef = g[:, None].expand(-1, bins.shape[1]).clone()
    if normalize:
        same_bin = bins[:, None, :] == bins[None, :, :]  # (B, B, O)
        counts = (same_bin & same_group[:, :, None]).sum(1)  # (B, O)
        coef = coef / counts.to(g.dtype)
    return coef


def backward_per_bin(per_op: torch.Tensor, coefficients: torch.Tensor) -> None:
    """Backpropagate ``sum_bo c_bo * ST_o[k_bo]`` into the logits behind ``per_op``.

    Args:
        per_op: ``(B, O)`` straight-through values ``ST_o[k_bo]`` (value 1, with graph).
        coefficients: ``(B, O)`` from :func:`per_bin_coefficients`.

    Raises:
        ValueError: shape mismatch or ``per_op`` without gradient.
    """
    if tuple(per_op.shape) != tuple(coefficients.shape):
        raise ValueError(f"per_op {tuple(per_op.shape)} and coefficients {tuple(coefficients.shape)} must match.")
    if not per_op.requires_grad:
        raise ValueError("per_op does not require grad: sample the weights with gradients enabled.")
    (per_op * coefficients.to(per_op.dtype)).sum().backward()


class SingletonGroupBaseline:
    """Running per-group baselines for the class groups that are alone in a batch (the learned-augmentation TRA step).

    The per-group baseline subtracts each group's batch mean from its patches' weight gradients, so a group with one
    patch in the batch gets a zero gradient. Called once per update with the batch's ``grad_w`` and ``groups``, this
    object returns, for each group alone in the batch, the exponential running mean of that group's earlier batch
    means (momentum ``momentum``) to use as its baseline instead (see :func:`per_bin_coefficients`), then updates the
    running mean of every group present. A group alone before it has a running mean keeps the zero gradient.

    Args:
        momentum: the weight of the old running mean, in ``[0, 1)``.

    Attributes:
        singletons: patches whose group was alone in their batch.
        without_baseline: those of them that had no running mean yet (zero gradient).
    """

    def __init__(self, momentum: float = 0.9) -> None:
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"SingletonGroupBaseline: momentum must be in [0, 1), got momentum={momentum!r}.")
        self.momentum = float(momentum)
        self.means: dict[int, float] = {}
        self.singletons = 0
        self.without_baseline = 0

    def __call__(self, grad_w: torch.Tensor, groups: torch.Tensor) -> dict[int, float]:
        """``{group: running mean}`` for the groups alone in this batch; then update every present group's mean.

        Args:
            grad_w: ``(B,)`` gradient of the meta loss with respect to each patch's weight.
            groups: ``(B,)`` class group of each patch.
        """
        g = grad_w.detach().reshape(-1).double().cpu()
        groups = groups.reshape(-1).cpu()
        present, counts = torch.unique(groups, return_counts=True)
        out: dict[int, float] = {}
        for group, count in zip(present.tolist(), counts.tolist(), strict=True):
            if count == 1:
                self.singletons += 1
                if group in self.means:
                    out[group] = self.means[group]
                else:
                    self.without_baseline += 1
        for group in present.tolist():
            mean = float(g[groups == group].mean())
            old = self.means.get(group)
            self.means[group] = mean if old is None else self.momentum * old + (1.0 - self.momentum) * mean
        return out

    def state_dict(self) -> dict[str, Any]:
        """The running means and counters (primitives)."""
        means = {str(k): v for k, v in self.means.items()}
        return {"means": means, "singletons": self.singletons, "without_baseline": self.without_baseline}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (an empty mapping resets)."""
        self.means = {int(k): float(v) for k, v in dict(state.get("means", {})).items()}
        self.singletons = int(state.get("singletons", 0))
        self.without_baseline = int(state.get("without_baseline", 0))
