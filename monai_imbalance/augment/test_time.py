# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The test-time augmentation policy: one straight-through Gumbel categorical over signed test-time transforms.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (method section: test-time augmentation; the authors' ``SampleNet(84, orgts)``). Logits
``beta`` over the transforms of a :class:`~monai_imbalance.augment.TestTimeTransformPool` (84 by default), ``P =
softmax(beta)``. The TEA step draws ``Z`` transforms ``t_z`` with straight-through weights ``w_z``
(:meth:`TestTimePolicy.sample`), weights the Dice losses of the inverse-transformed predictions by ``w_z / sum w`` and
sends ``g_z = d L / d w_z`` back with a baseline and per-transform normalisation
(:meth:`TestTimePolicy.accumulate_hypergradient`). At inference the top-``K`` transforms by probability are averaged
(:class:`~monai_imbalance.augment.LearnedTTAInferer`).

Initialisations (``init``, the authors' ``--orgts``): ``0`` uniform; ``2`` (``"nnunet"``, the default) 0.1 on each
of nnU-Net's eight mirrorings, the remaining 0.2 spread evenly over the other transforms; ``4``
(``"mirror_axes"``) 0.2 on the identity and each single-axis mirror, the remaining 0.2 spread over the others; or a
mapping ``{transform name: probability}`` with the remainder spread evenly over the transforms not named. With a
subset pool a preset keeps the probabilities of the transforms the pool has (renormalised if nothing else is left).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .gumbel import (
    backward_per_bin,
    check_logits,
    per_bin_coefficients,
    sample_straight_through,
    straight_through_given,
)
from .policy import PolicyWeights, check_identity
from .test_time_pool import NNUNET_MIRRORING, TestTimeTransformPool

__all__ = ["TEST_TIME_INIT_PRESETS", "TestTimePolicy"]

#: Named initial probabilities by the authors' ``--orgts`` number (the rest spread evenly over the other transforms).
TEST_TIME_INIT_PRESETS: dict[int, dict[str, float]] = {
    2: {n: 0.1 for n in NNUNET_MIRRORING},
    4: {n: 0.2 for n in ("identity", "mirror_x", "mirror_y", "mirror_z")},
}
_ALIASES = {"uniform": 0, "nnunet": 2, "mirror_axes": 4}


class TestTimePolicy(nn.Module):
    """One categorical over test-time transforms, sampled with straight-through Gumbel.

    Args:
        pool: the transforms (default: the 84 of the authors).
        init: ``0``, ``2``, ``4`` (the authors' ``--orgts``), an alias (``"uniform"``, ``"nnunet"``,
            ``"mirror_axes"``), or ``{name: probability}`` (module docstring).
        temperature: Gumbel-softmax temperature ``> 0``.

    Raises:
        ValueError: an unknown preset, a name not in the pool, probabilities outside ``[0, 1]`` or summing above 1,
            ``temperature <= 0``.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(
        self,
        pool: TestTimeTransformPool | None = None,
        init: int | str | Mapping[str, float] = 2,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.pool = pool if pool is not None else TestTimeTransformPool()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got temperature={temperature!r}.")
        self.temperature = float(temperature)
        self.logits = nn.Parameter(self._init_logits(init))

    def _init_logits(self, init: int | str | Mapping[str, float]) -> torch.Tensor:
        n = len(self.pool)
        if isinstance(init, Mapping):
            chosen = {str(k): float(v) for k, v in init.items()}
        else:
            key = _ALIASES.get(init, init) if isinstance(init, str) else init
            if key == 0:
                return torch.zeros(n)
            if key not in TEST_TIME_INIT_PRESETS:
                raise ValueError(f"unknown init {init!r}: use 0, 2, 4, one of {list(_ALIASES)} or a mapping.")
            # a preset names transforms of the full pool: keep those this pool has
            chosen = {k: v for k, v in TEST_TIME_INIT_PRESETS[key].items() if k in self.pool.names}
        for name, p in chosen.items():
            self.pool.index(name)  # raises for unknown names
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"initial probability of {name!r} must be in [0, 1], got {p}.")
        total = sum(chosen.values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"initial probabilities sum to {total} > 1.")
        others = [t for t in self.pool.names if t not in chosen]
        probs = torch.empty(n, dtype=torch.float64)
        for i, name in enumerate(self.pool.names):
            probs[i] = chosen[name] if name in chosen else (1.0 - total) / len(others)
        if not others:
            probs = probs / probs.sum()
        return torch.log(probs).float()

    def identity(self) -> dict[str, Any]:
        """What a policy file must match: the pool (JSON-ready)."""
        return {"type": type(self).__name__, "pool": self.pool.describe()}

    def get_extra_state(self) -> dict[str, Any]:
        """The identity, saved in the state dict so that a mismatched checkpoint is refused."""
        return self.identity()

    def set_extra_state(self, state: Any) -> None:
        """Check a loaded state's identity against this policy (``ValueError`` naming the difference)."""
        check_identity(self.identity(), state, "the state dict")

    def check_finite(self) -> None:
        """Raise a clear ``ValueError`` if a logit is NaN or ``+inf``."""
        check_logits(self.logits.detach(), "test-time policy")

    def probabilities(self) -> torch.Tensor:
        """``(N,)`` probabilities (detached)."""
        self.check_finite()
        return torch.softmax(self.logits.detach(), -1)

    def top_k(self, k: int) -> tuple[list[int], torch.Tensor]:
        """The ``k`` most probable transforms and their probabilities renormalised to sum 1 (the learned TTA).

        Returns:
            ``(indices, weights)``: indices in decreasing probability, weights ``(k,)``.

        Raises:
            ValueError: ``k`` not in ``[1, N]``.
        """
        if not 1 <= int(k) <= len(self.pool):
            raise ValueError(f"top_k must be in [1, {len(self.pool)}], got {k}.")
        probs = self.probabilities()
        values, idx = torch.topk(probs, int(k))
        return idx.tolist(), values / values.sum()

    def sample(self, n: int) -> PolicyWeights:
        """``n`` fresh transforms with straight-through weights (``bins`` ``(n, 1)``; ``weight`` ``(n,)``)."""
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}.")
        self.check_finite()
        k, st = sample_straight_through(self.logits[None].expand(int(n), -1), self.temperature)
        zeros = torch.zeros_like(k)
        return PolicyWeights(k[:, None], zeros, st[:, None])

    def weights(self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None) -> PolicyWeights:
        """Differentiable weights of given transform indices, Gumbel noise re-drawn given them.

        Raises:
            ValueError: an index out of range, or NaN logits.
        """
        self.check_finite()
        idx = torch.as_tensor(indices, device=self.logits.device).long().reshape(-1)
        if bool(((idx < 0) | (idx >= len(self.pool))).any()):
            raise ValueError(f"indices must be in [0, {len(self.pool)}), got {idx.tolist()}.")
        logits = self.logits[None].expand(idx.shape[0], -1)
        st, y = straight_through_given(logits, idx, self.temperature, generator)
        return PolicyWeights(idx[:, None], torch.zeros_like(idx), st[:, None], (y,))

    def accumulate_hypergradient(
        self, weights: PolicyWeights, grad_w: torch.Tensor, baseline: bool = True, normalize: bool = True
    ) -> None:
        """Add ``sum_z (g_z - mean g) / n_{t_z} * d w_z / d beta`` to ``logits.grad`` (the authors' TEA update).

        Raises:
            ValueError: shape mismatch or non-finite ``grad_w``.
        """
        g = torch.as_tensor(grad_w)
        if not bool(torch.isfinite(g).all()):
            raise ValueError("grad_w holds NaN or inf: skip this policy update (and log it) instead.")
        coef = per_bin_coefficients(g.to(weights.bins.device), weights.bins, weights.groups, baseline, normalize)
        backward_per_bin(weights.per_op, coef)

    def extra_repr(self) -> str:
        probs = self.probabilities()
        top = torch.topk(probs, min(3, len(self.pool)))
        desc = ", ".join(
            f"{self.pool.names[i]}={p:.3f}" for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        )
        return f"transforms={len(self.pool)}, tau={self.temperature}, top: {desc}"
