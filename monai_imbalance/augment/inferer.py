# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Learned test-time augmentation: the top-K test-time transforms, each predicted and mapped back, averaged.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (method section: inference with learned test-time augmentation; the authors'
``tta_rolling``). With transforms ``T_k`` and weights ``pi_k`` (the learned probabilities of the top ``K`` transforms,
renormalised)::

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

A policy given as a file path is loaded lazily, on the first call (or an explicit :meth:`LearnedTTAInferer.load`):
a config can build the inferer before training has written the file (the bundle checker instantiates every id;
every rank of a distributed evaluation loads it for itself), and a config that must fail early calls ``load()`` in
its ``initialize`` list (a missing file: ``FileNotFoundError``; a policy of another pool or type: ``ValueError``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer, SimpleInferer
from monai.utils import convert_to_dst_type

from ..utils import plain_tensor
from .io import load_policy, policy_paths
from .test_time import TestTimePolicy
from .test_time_pool import NNUNET_MIRRORING, TestTimeTransformPool

__all__ = ["TTA_PRESETS", "LearnedTTAInferer"]

#: The fixed baselines: no TTA and nnU-Net's mirroring.
TTA_PRESETS: dict[str, tuple[str, ...]] = {"none": ("identity",), "mirroring": NNUNET_MIRRORING}


class LearnedTTAInferer(Inferer):
    """Test-time augmentation with learned (or fixed) transforms around any MONAI inferer.

    Give exactly one of ``policy``, ``transforms`` or ``preset``.

    Args:
        inferer: the inferer producing logits, e.g. ``SlidingWindowInferer(roi_size, mode="gaussian")``
            (default: ``SimpleInferer()``).
        policy: a :class:`~monai_imbalance.augment.TestTimePolicy` or the path of a saved one (``x``, ``x.pt`` or
            ``x.json``; loaded on the first call or by :meth:`load`); its ``top_k`` most probable transforms are
            used, weighted by their renormalised probabilities.
        top_k: how many transforms of ``policy`` (the authors: 8 for U-Net, 4 for DeepMedic); at most the pool size.
        transforms: explicit transform names or indices of ``pool``.
        weights: weights of ``transforms`` (default: equal); normalised to sum 1.
        preset: ``"none"`` or ``"mirroring"`` (:data:`TTA_PRESETS`), equal weights.
        pool: the test-time transform pool (default: the policy's, or the full 84-transform pool).
        coverage_weighting: weight each transform's logits by its field-of-view coverage (module docstring).

    Raises:
        ValueError: not exactly one source, ``top_k < 1``, an unknown preset or transform, negative / all-zero
            weights, a policy of another pool.
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
    ) -> None:
        super().__init__()
        given = [
            name for name, v in (("policy", policy), ("transforms", transforms), ("preset", preset)) if v is not None
        ]
        if len(given) != 1:
            raise ValueError(f"give exactly one of policy, transforms or preset; got {given or 'none'}.")
        if int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1, got top_k={top_k!r}.")
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.coverage_weighting = bool(coverage_weighting)
        self.top_k = int(top_k)
        self._pool_arg = pool
        #: the state dict file of a policy given by path (``None`` otherwise); read by :meth:`load`.
        self.policy_file: Path | None = None
        self._pool: TestTimeTransformPool | None = None
        self._indices: list[int] = []
        self._weights: list[float] = []
        if isinstance(policy, (str, Path)):
            self.policy_file = policy_paths(policy)[0]
        elif policy is not None:
            self._use_policy(policy)
        else:
            self._use_transforms(transforms, weights, preset)

    # --------------------------------------------------------------------------------------------- resolution
    def _use_policy(self, policy: TestTimePolicy) -> None:
        pool = self._pool_arg
        if pool is not None and pool.names != policy.pool.names:
            pairs = zip(pool.names, policy.pool.names, strict=False)
            first = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(pool), len(policy.pool)))
            raise ValueError(
                f"pool differs from the policy's pool: {len(pool)} vs {len(policy.pool)} transforms, first "
                f"difference at position {first}."
            )
        indices, wts = policy.top_k(min(self.top_k, len(policy.pool)))
        self._set(policy.pool, indices, [float(v) for v in wts])

    def _use_transforms(
        self, transforms: Sequence[str | int] | None, weights: Sequence[float] | None, preset: str | None
    ) -> None:
        pool = self._pool_arg if self._pool_arg is not None else TestTimeTransformPool()
        if preset is not None:
            if preset not in TTA_PRESETS:
                raise ValueError(f"unknown preset {preset!r}; use one of {list(TTA_PRESETS)}.")
            transforms = TTA_PRESETS[preset]
        assert transforms is not None  # exactly one source was given
        indices = [pool.index(t) for t in transforms]
        if len(set(indices)) != len(indices):
            raise ValueError(f"transforms repeat: {list(transforms)}.")
        wts = [1.0] * len(indices) if weights is None else [float(v) for v in weights]
        if len(wts) != len(indices):
            raise ValueError(f"got {len(wts)} weights for {len(indices)} transforms.")
        self._set(pool, indices, wts)

    def _set(self, pool: TestTimeTransformPool, indices: list[int], wts: list[float]) -> None:
        if any(not v >= 0 for v in wts) or sum(wts) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {wts}.")
        total = sum(wts)
        self._pool, self._indices, self._weights = pool, list(indices), [v / total for v in wts]

    @property
    def loaded(self) -> bool:
        """Whether the transforms and weights are known (always, unless a policy file is still to be read)."""
        return self._pool is not None

    def load(self) -> LearnedTTAInferer:
        """Read the policy file now (once; later calls do nothing) and choose its top-``K`` transforms.

        Returns:
            this inferer.

        Raises:
            FileNotFoundError: no policy state dict at :attr:`policy_file`.
            ValueError: the file holds a training-time policy or another object, a policy of another test-time pool
                (than ``pool``, or, without its JSON, than the default 84 transforms), or NaN logits.
        """
        if self.loaded:
            return self
        pt, js = policy_paths(self.policy_file)  # type: ignore[arg-type]  # set whenever not loaded
        # without its JSON, a state dict is loaded into the default 84-transform policy (and checked)
        loaded = load_policy(pt, None if js.is_file() else TestTimePolicy(self._pool_arg))
        if not isinstance(loaded, TestTimePolicy):
            raise ValueError(f"{pt} holds a {type(loaded).__name__}, not a TestTimePolicy.")
        self._use_policy(loaded)
        return self

    @property
    def pool(self) -> TestTimeTransformPool:
        """The test-time transform pool (loads a policy file first, :meth:`load`)."""
        self.load()
        return self._pool  # type: ignore[return-value]

    @property
    def indices(self) -> list[int]:
        """The transforms used, by pool index, in decreasing weight for a policy (loads a policy file first)."""
        self.load()
        return list(self._indices)

    @property
    def weights(self) -> list[float]:
        """The transforms' weights, summing to 1 (loads a policy file first)."""
        self.load()
        return list(self._weights)

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
            FileNotFoundError: a policy file (first call) that does not exist.
            ValueError: inputs that are not 5D, a wrapped inferer that does not return one tensor, or a policy file
                (first call) that :meth:`load` refuses.
        """
        pool = self.load().pool
        x = plain_tensor(inputs)
        if x.ndim != 5:
            raise ValueError(f"inputs must be (B, C, X, Y, Z), got shape {tuple(x.shape)}.")
        spatial = tuple(x.shape[2:])
        acc: torch.Tensor | None = None
        norm: torch.Tensor | float = 0.0
        out_dtype = None
        for idx, w in zip(self._indices, self._weights, strict=True):
            if w == 0.0:
                continue
            t = pool.transforms[idx]
            xt = x if t.family == "identity" else self._per_sample(x, lambda s, i=idx: pool.forward(s, i))
            out = self.inferer(xt, network, *args, **kwargs)
            if not isinstance(out, torch.Tensor):
                raise ValueError(
                    f"the wrapped inferer returned {type(out).__name__}; LearnedTTAInferer needs one logits tensor."
                )
            out = plain_tensor(out)
            out_dtype = out.dtype
            if t.spatial:
                out = self._per_sample(out, lambda s, i=idx: pool.inverse(s, i))
            term = w * out.float()
            acc = term if acc is None else acc + term
            cov = pool.coverage(spatial, idx, device=out.device) if self.coverage_weighting else None
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
