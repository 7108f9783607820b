# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Learned test-time augmentation: the top-K test-time transforms, each predicted and mapped back, averaged.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint Optimization of Class-Specific Training- and Test-Time Data Augmentation in
Segmentation", IEEE TMI 2023 (methods.md 3.7; the authors' ``tta_rolling``). With transforms ``T_k`` and weights
``pi_k`` (the learned probabilities of the top ``K`` transforms, renormalised)::

    logits = sum_k pi_k T_k^{-1}( f(T_k(x)) ) / sum_k pi_k c_k

where ``f`` is the wrapped inferer (sliding-window logits with Gaussian weighting, as the authors) and ``c_k`` the
coverage of ``T_k`` (:meth:`~monai_imbalance.augment.TestTimeTransformPool.coverage`, the inverse transform of the
forward transform of an image of ones): 1 for flips, 90-degree rotations and intensity transforms, the fraction of
each voxel that stays inside the field of view for zooms and small rotations. The inverse of a zoomed or rotated
prediction is zero where the field of view was lost and partly zero next to it (the interpolation mixes in the
padding), in the same proportion as ``c_k``; dividing by ``sum_k pi_k c_k`` instead of ``sum_k pi_k`` (a normalised
convolution) keeps the border unbiased (the authors average ``pi_k logits_k`` over all ``k``; their TEA loss masks
the padding). Voxels that no transform covers get 0. Logits are averaged, as the authors do; the caller takes the
argmax (or a softmax).

Baselines (``preset``): ``"none"`` (identity only: exactly the wrapped inferer's output) and ``"mirroring"``
(nnU-Net's eight mirrorings with equal weights, the heuristic TTA).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer
from monai.utils import convert_to_dst_type

from .test_time import TestTimePolicy
from .test_time_pool import NNUNET_MIRRORING, TestTimeTransformPool

__all__ = ["TTA_PRESETS", "LearnedTTAInferer"]

logger = logging.getLogger(__name__)

#: The fixed baselines: no TTA and nnU-Net's mirroring.
TTA_PRESETS: dict[str, tuple[str, ...]] = {"none": ("identity",), "mirroring": NNUNET_MIRRORING}


class LearnedTTAInferer(Inferer):
    """Test-time augmentation with learned (or fixed) transforms around any MONAI inferer.

    Give exactly one of ``policy``, ``transforms`` or ``preset``.

    Args:
        inferer: the inferer producing logits, e.g. ``SlidingWindowInferer(roi_size, mode="gaussian")``
            (default: ``SimpleInferer()``).
        policy: a :class:`~monai_imbalance.augment.TestTimePolicy` or the path of a saved one; its ``top_k`` most
            probable transforms are used, weighted by their renormalised probabilities.
        top_k: how many transforms of ``policy`` (the authors: 8 for U-Net, 4 for DeepMedic).
        transforms: explicit transform names or indices of ``pool``.
        weights: weights of ``transforms`` (default: equal); normalised to sum 1.
        preset: ``"none"`` or ``"mirroring"`` (:data:`TTA_PRESETS`), equal weights.
        pool: the test-time transform pool (default: the policy's, or the full 84-transform pool).
        coverage_weighting: weight each transform's logits by its field-of-view coverage (module docstring).
        fallback_preset: when ``policy`` is a path that does not exist, use this preset instead (logged) rather
            than raising; e.g. ``"none"`` for an inference config that uses learned TTA only when a policy is there.

    Raises:
        ValueError: not exactly one source, an unknown preset or transform, negative / all-zero weights.
        FileNotFoundError: a missing policy file without ``fallback_preset``.
    """

    def __init__(
        self,
        inferer: Inferer | Callable[..., Any] | None = None,
        policy: TestTimePolicy | str | Path | None = None,
        top_k: int = 8,
        transforms: Sequence[str | int] | None = None,
        weights: Sequence[float] | None = None,
        preset: str | None = None,
        pool: TestTimeTransformPool | None = None,
        coverage_weighting: bool = True,
        fallback_preset: str | None = None,
    ) -> None:
        super().__init__()
        given = [
            name for name, v in (("policy", policy), ("transforms", transforms), ("preset", preset)) if v is not None
        ]
        if len(given) != 1:
            raise ValueError(f"give exactly one of policy, transforms or preset; got {given or 'none'}.")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.coverage_weighting = bool(coverage_weighting)
        if isinstance(policy, (str, Path)):
            from .io import load_policy, policy_paths

            pt, js = policy_paths(policy)
            if not pt.is_file() and fallback_preset is not None:
                logger.warning("no test-time policy at %s: using the %r TTA preset instead.", pt, fallback_preset)
                policy, preset = None, fallback_preset
            else:
                # without its JSON, a state dict is loaded into the default 84-transform policy (and checked)
                loaded = load_policy(pt, None if js.is_file() else TestTimePolicy(pool))
                if not isinstance(loaded, TestTimePolicy):
                    raise ValueError(f"{pt} holds a {type(loaded).__name__}, not a TestTimePolicy.")
                policy = loaded
        if policy is not None:
            self.pool = pool if pool is not None else policy.pool
            if pool is not None and pool.names != policy.pool.names:
                raise ValueError("pool differs from the policy's pool.")
            idx, w = policy.top_k(min(int(top_k), len(policy.pool)))
            indices, wts = list(idx), [float(v) for v in w]
        else:
            self.pool = pool if pool is not None else TestTimeTransformPool()
            if preset is not None:
                if preset not in TTA_PRESETS:
                    raise ValueError(f"unknown preset {preset!r}; use one of {list(TTA_PRESETS)}.")
                transforms = TTA_PRESETS[preset]
            indices = [self.pool.index(t) for t in transforms]  # type: ignore[union-attr]
            if len(set(indices)) != len(indices):
                raise ValueError(f"transforms repeat: {list(transforms)}.")  # type: ignore[arg-type]
            wts = [1.0] * len(indices) if weights is None else [float(v) for v in weights]
            if len(wts) != len(indices):
                raise ValueError(f"got {len(wts)} weights for {len(indices)} transforms.")
        if any(not v >= 0 for v in wts) or sum(wts) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {wts}.")
        total = sum(wts)
        #: the transforms used, by pool index, and their normalised weights.
        self.indices: list[int] = indices
        self.weights: list[float] = [v / total for v in wts]

    @property
    def transform_names(self) -> list[str]:
        """The names of the transforms used, in order."""
        return [self.pool.names[i] for i in self.indices]

    def _per_sample(self, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return torch.stack([fn(s) for s in x])

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """The TTA logits.

        Args:
            inputs: ``(B, C, X, Y, Z)`` whole images.
            network: the segmenter (in eval mode), passed to the wrapped inferer.
            args: extra positional arguments of the wrapped inferer.
            kwargs: extra keyword arguments of the wrapped inferer.

        Returns:
            ``(B, K, X, Y, Z)`` averaged logits (a ``MetaTensor`` with the input's metadata when the input is one).

        Raises:
            ValueError: inputs that are not 5D, or a wrapped inferer that does not return one tensor.
        """
        x = inputs.as_tensor() if isinstance(inputs, MetaTensor) else torch.as_tensor(inputs)
        if x.ndim != 5:
            raise ValueError(f"inputs must be (B, C, X, Y, Z), got shape {tuple(x.shape)}.")
        spatial = tuple(x.shape[2:])
        acc: torch.Tensor | None = None
        norm: torch.Tensor | float = 0.0
        out_dtype = None
        for idx, w in zip(self.indices, self.weights, strict=True):
            if w == 0.0:
                continue
            t = self.pool.transforms[idx]
            xt = x if t.family == "identity" else self._per_sample(x, lambda s, i=idx: self.pool.forward(s, i))
            out = self.inferer(xt, network, *args, **kwargs)
            if not isinstance(out, torch.Tensor):
                raise ValueError(
                    f"the wrapped inferer returned {type(out).__name__}; LearnedTTAInferer needs one logits tensor."
                )
            out = out.as_tensor() if isinstance(out, MetaTensor) else out
            out_dtype = out.dtype
            if t.spatial:
                out = self._per_sample(out, lambda s, i=idx: self.pool.inverse(s, i))
            term = w * out.float()
            acc = term if acc is None else acc + term
            cov = self.pool.coverage(spatial, idx, device=out.device) if self.coverage_weighting else None
            norm = norm + (w if cov is None else w * cov[None])
        assert acc is not None  # weights have a positive sum
        if isinstance(norm, torch.Tensor):
            result = torch.where(norm > 0, acc / norm.clamp_min(1e-12), torch.zeros_like(acc))
        else:
            result = acc / norm
        result = result.to(out_dtype)
        if isinstance(inputs, MetaTensor):
            result = convert_to_dst_type(result, inputs, device=result.device, dtype=result.dtype)[0]
        return result
