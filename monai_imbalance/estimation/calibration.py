# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Calibration maps of the estimators, on channel-first logits ``(C, V)`` (classes by samples or voxels, MONAI's
channel-first layout; reductions over the few classes are fastest there), vectorised in torch on the logits' device.

- Temperature: ``p = softmax(z / T_{y_hat})`` with ``y_hat = argmax z`` (one ``T`` or one per predicted class); the
  confidence is ``s = max_c p_c = 1 / sum_k exp((z_k - z_{y_hat}) / T)`` (Li et al., MICCAI 2022, method section).
- Vector scaling, VS (Guo et al., ICML 2017): ``z' = W * z + b`` with diagonal ``W``; fitted by the negative
  log-likelihood (NLL) of the validation labels (a baseline of Li et al., MICCAI 2022).
- NORCAL (Pan et al., NeurIPS 2021): ``z'_c = z_c - gamma log n_c`` with ``n_c`` the class frequency (counts), the
  background channel untouched in segmentation, renormalised by the softmax; ``gamma`` fitted by the NLL (a baseline of
  Li et al., MICCAI 2022; the NORCAL paper tunes ``gamma`` on held-out data, here the NLL of the labelled validation
  set).

After VS and NORCAL the argmax may move; the estimators then use the calibrated probability *of the model's own
prediction* ``y_hat = argmax z`` (the prediction whose accuracy / Dice is estimated), not the new maximum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "channel_argmax",
    "predicted_confidence",
    "temperature_softmax",
    "fit_vector_scaling",
    "vector_scaling",
    "fit_norcal",
    "norcal",
]


def channel_argmax(logits: torch.Tensor) -> torch.Tensor:
    """``argmax`` over dim 0 of ``(C, ...)`` logits, the first maximal class on ties (``max(0).indices``, much faster
    than ``argmax(0)`` on CPU)."""
    return logits.max(0).indices


def _per_column(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    if isinstance(value, torch.Tensor):
        return value.to(like.dtype)[None]
    return float(value)


def predicted_confidence(logits: torch.Tensor, pred: torch.Tensor, temperature: torch.Tensor | float = 1.0):
    """``softmax(z / T)`` at the class ``pred`` (the max-softmax confidence when ``pred = argmax z``).

    Args:
        logits: ``(C, V)``.
        pred: ``(V,)`` int64 predicted classes.
        temperature: a float or a ``(V,)`` tensor (one temperature per column).

    Returns:
        ``(V,)`` confidences in ``(0, 1]``.
    """
    rel = (logits - logits.gather(0, pred[None])) / _per_column(temperature, logits)
    if bool((rel <= 0).all()):  # pred is the argmax: exp(rel) <= 1, no overflow
        return 1.0 / torch.exp(rel).sum(0)
    return torch.exp(-torch.logsumexp(rel, dim=0))


def temperature_softmax(logits: torch.Tensor, temperature: torch.Tensor | float = 1.0) -> torch.Tensor:
    """``softmax(z / T)`` over the classes (dim 0) of ``(C, V)`` logits, with a float ``T`` or one per column."""
    return torch.softmax(logits / _per_column(temperature, logits), dim=0)


def vector_scaling(logits: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``W * z + b`` (diagonal ``W``) of ``(C, V)`` logits, ``(C,)`` weight and bias."""
    return logits * weight.to(logits.dtype)[:, None] + bias.to(logits.dtype)[:, None]


def norcal(logits: torch.Tensor, gamma: float, log_counts: torch.Tensor, adjust: torch.Tensor) -> torch.Tensor:
    """``z_c - gamma log n_c`` for the adjusted classes (``adjust`` a ``(C,)`` bool mask), ``(C, V)`` logits."""
    shift = float(gamma) * log_counts.to(logits.dtype) * adjust.to(logits.dtype)
    return logits - shift[:, None]


def _weighted_nll(z: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    nll = F.cross_entropy(z[None], labels[None], reduction="none")[0]
    if weight is None:
        return nll.mean()
    return (nll * weight).sum() / weight.sum()


def _lbfgs(params: list[torch.Tensor], closure, max_iter: int) -> None:
    opt = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def step():
        opt.zero_grad()
        loss = closure()
        loss.backward()
        return loss

    opt.step(step)


def fit_vector_scaling(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor | None = None,
    present: torch.Tensor | None = None,
    max_iter: int = 500,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal vector scaling ``W * z + b`` fitted by the (weighted) NLL with L-BFGS, in float64.

    Args:
        logits: ``(C, V)``.
        labels: ``(V,)`` int64.
        weight: optional ``(V,)`` sample weights (reduced segmentation sets).
        present: optional ``(C,)`` bool: classes absent from the labels keep ``W_c = 1, b_c = 0`` (their NLL
            optimum is ``b_c -> -inf``).

    Returns:
        ``W`` and ``b``, ``(C,)`` float64 each; ``b`` is centred on the fitted classes (the softmax ignores a common
        shift).
    """
    z = logits.detach().to(torch.float64)
    c = z.shape[0]
    mask = torch.ones(c, dtype=torch.bool, device=z.device) if present is None else present.to(z.device)
    w = None if weight is None else weight.detach().to(torch.float64)
    scale = torch.ones(c, dtype=torch.float64, device=z.device, requires_grad=True)
    shift = torch.zeros(c, dtype=torch.float64, device=z.device, requires_grad=True)
    one = torch.ones_like(scale.detach())
    zero = torch.zeros_like(shift.detach())

    def effective():
        return torch.where(mask, scale, one), torch.where(mask, shift, zero)

    def closure():
        s, b = effective()
        return _weighted_nll(z * s[:, None] + b[:, None], labels, w)

    _lbfgs([scale, shift], closure, max_iter)
    with torch.no_grad():
        s, b = effective()
        if bool(mask.all()):
            b = b - b.mean()
    return s.detach().clone(), b.detach().clone()


def fit_norcal(
    logits: torch.Tensor,
    labels: torch.Tensor,
    log_counts: torch.Tensor,
    adjust: torch.Tensor,
    weight: torch.Tensor | None = None,
    max_iter: int = 200,
) -> float:
    """NORCAL's ``gamma`` minimising the (weighted) NLL of ``softmax(z - gamma log n)`` (L-BFGS, float64; the NLL is
    convex in ``gamma``).

    Args:
        logits: ``(C, V)``.
        labels: ``(V,)`` int64.
        log_counts: ``(C,)`` ``log n_c``.
        adjust: ``(C,)`` bool, the classes whose logits are shifted (all but the background in segmentation).
        weight: optional ``(V,)`` sample weights.
    """
    z = logits.detach().to(torch.float64)
    w = None if weight is None else weight.detach().to(torch.float64)
    direction = (log_counts.to(torch.float64) * adjust.to(torch.float64)).to(z.device)
    gamma = torch.zeros((), dtype=torch.float64, device=z.device, requires_grad=True)

    def closure():
        return _weighted_nll(z - gamma * direction[:, None], labels, w)

    _lbfgs([gamma], closure, max_iter)
    return float(gamma.detach())
