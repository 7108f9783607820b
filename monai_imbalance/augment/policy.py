# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The training-time augmentation policy: one categorical per operation, one policy per class group.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (method section: the class-specific training-time policy; the authors'
``SampleNet_compose``). For each class group ``G`` and operation ``o`` of the pool
(:class:`~monai_imbalance.augment.TrainingTransformPool`: 15 operations, 62 bins) the policy holds logits ``alpha^G_o``
(bin 0 = identity), ``P^G_o = softmax(alpha^G_o)``. A patch of group ``G`` gets one bin ``k_o`` per operation and the
straight-through weight ``w_b = prod_o ST_o[k_bo]`` (value 1, gradient to the logits;
:mod:`~monai_imbalance.augment.gumbel`), which multiplies the patch's training loss in the meta step. Class groups
(JCSAugment's class-specific TRA): each training patch is centred on a voxel drawn from the background (class 0) or a
foreground class, and augmented with the policy of its centre class's group. The default groups are ``{"background":
[0], "foreground": None}`` (``None``: every class not listed elsewhere); ``{"all": None}`` is the class-agnostic policy,
and finer groups (one per class) are possible.

Initialisations (``init``, the authors' ``--org``): ``0`` uniform logits; ``1`` identity logit 1, the others
``log(e / (K - 1))`` (``P(identity) = 0.5``); ``>= 2`` identity logit 1, the others ``log(p e / ((K - 1)(1 - p)))``
so that ``P(identity) = 1 - p`` and the rest is uniform, with ``p`` per operation:

- ``2`` (``"nnunet"``, U-Net): scale .2, rotations .1 each, mirrors .5 each, gamma .3, inverse gamma .1,
  brightness add .05, brightness multiply .15, contrast .15, blur / sharpen .2, noise .1, low resolution .1;
- ``3`` (``"deepmedic"``): scale .2, rotations .2 each, ``mirror_x`` .5, ``mirror_y`` / ``mirror_z`` .05,
  brightness add .15, all others .05;
- ``4``: .1 for all; ``5`` (nnFormer): .05 for all;
- a mapping ``{op name: p}`` for every operation of the pool;
- a mapping ``{op name: (K_o,) probabilities}`` giving each operation's whole categorical (bins of probability 0
  get logit ``-inf``), e.g. RandAugment's (:func:`~monai_imbalance.augment.randaugment_probabilities`); a mapping
  may mix both forms.

Where the sampled bins come from: in the data path the loader workers draw the bins from the current probabilities
(:class:`~monai_imbalance.augment.SharedPolicyProbabilities`), apply them and record them in the batch; in the main
process :meth:`AugmentationPolicy.weights` recomputes the weights differentiably from the recorded bins, with the
Gumbel noise re-drawn conditioned on them (as the authors do: "meta-gradients use a re-drawn Gumbel sample
conditioned on the stored argmax"). :meth:`AugmentationPolicy.sample` draws fresh bins and weights in the main
process. :meth:`AugmentationPolicy.accumulate_hypergradient` turns the meta-gradients of the weights into the
logits' gradient with the authors' per-group baseline and per-bin normalisation
(:func:`~monai_imbalance.augment.gumbel.per_bin_coefficients`).

Saving: the state dict holds the logits and, as extra state, the pool's identity and the groups, so loading a
checkpoint of another pool or another grouping raises a ``ValueError`` naming the difference (also through
``load_state_dict``); :func:`~monai_imbalance.augment.save_policy` adds a readable JSON of the probabilities.
"""

from __future__ import annotations

import dataclasses
import math
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
from .training_pool import TrainingTransformPool

__all__ = [
    "DEFAULT_GROUPS",
    "TRAINING_INIT_PRESETS",
    "AugmentationPolicy",
    "PolicyWeights",
    "check_groups",
    "check_identity",
]

#: Background-centred vs foreground-centred patches (JCSAugment's class groups).
DEFAULT_GROUPS: dict[str, tuple[int, ...] | None] = {"background": (0,), "foreground": None}


def _preset(p: dict[str, float], default: float) -> dict[str, float]:
    return {"__default__": default, **p}


_ROT = {f"rotate_{a}": 0.1 for a in "xyz"}
_MIR = {f"mirror_{a}": 0.5 for a in "xyz"}
#: ``p`` (probability of not being the identity) per operation, by the authors' ``--org`` number.
TRAINING_INIT_PRESETS: dict[int, dict[str, float]] = {
    2: _preset(
        {
            "scale": 0.2,
            **_ROT,
            **_MIR,
            "gamma": 0.3,
            "inverse_gamma": 0.1,
            "brightness_add": 0.05,
            "brightness_mul": 0.15,
            "contrast": 0.15,
            "blur_sharpen": 0.2,
            "noise": 0.1,
            "low_resolution": 0.1,
        },
        0.1,
    ),
    3: _preset(
        {
            "scale": 0.2,
            **{f"rotate_{a}": 0.2 for a in "xyz"},
            "mirror_x": 0.5,
            "mirror_y": 0.05,
            "mirror_z": 0.05,
            "brightness_add": 0.15,
        },
        0.05,
    ),
    4: _preset({}, 0.1),
    5: _preset({}, 0.05),
}
_INIT_ALIASES = {"uniform": 0, "identity_half": 1, "nnunet": 2, "deepmedic": 3}


def check_groups(groups: Mapping[str, Sequence[int] | None] | None) -> dict[str, tuple[int, ...] | None]:
    """Validate class groups ``{name: class indices or None}`` (``None``: every class not listed elsewhere).

    Raises:
        ValueError: no group, a name that is not an identifier, a class in two groups, a negative class, or more
            than one catch-all group.
    """
    if groups is None:
        return dict(DEFAULT_GROUPS)
    out: dict[str, tuple[int, ...] | None] = {}
    seen: dict[int, str] = {}
    catch_all = []
    for name, classes in dict(groups).items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"group names must be identifiers (no dots or spaces), got {name!r}.")
        if classes is None:
            catch_all.append(name)
            out[name] = None
            continue
        cls = tuple(int(c) for c in classes)
        if not cls:
            raise ValueError(f"group {name!r} lists no class; use None for 'every other class'.")
        for c in cls:
            if c < 0:
                raise ValueError(f"group {name!r} has a negative class index {c}.")
            if c in seen:
                raise ValueError(f"class {c} is in both groups {seen[c]!r} and {name!r}.")
            seen[c] = name
        out[name] = cls
    if not out:
        raise ValueError("groups must define at least one group.")
    if len(catch_all) > 1:
        raise ValueError(f"at most one group may be None (every other class), got {catch_all}.")
    return out


def _init_logits(num_bins: int, init: int, p: float) -> torch.Tensor:
    if init == 0:
        return torch.zeros(num_bins)
    others = num_bins - 1
    if init == 1:
        p = 0.5
    if not 0.0 <= p < 1.0:
        raise ValueError(f"the initial probability of a transformation must be in [0, 1), got p={p}.")
    rest = math.log(p * math.e / (others * (1.0 - p))) if p > 0 else float("-inf")
    return torch.tensor([1.0] + [rest] * others)


def _logits_of(op: str, num_bins: int, value: Any) -> torch.Tensor:
    """The logits of one operation's ``init`` entry: ``p`` (a number) or its ``(K,)`` bin probabilities."""
    v = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if v.ndim == 0:
        return _init_logits(num_bins, 2, float(v))
    if v.shape != (num_bins,):
        raise ValueError(f"init for op {op!r} must be p or {num_bins} bin probabilities, got shape {tuple(v.shape)}.")
    if not bool(torch.isfinite(v).all()) or bool((v < 0).any()) or abs(float(v.sum()) - 1.0) > 1e-5:
        raise ValueError(f"init probabilities of op {op!r} must be >= 0 and sum to 1, got {v.tolist()}.")
    return (v / v.sum()).log().float()  # a bin of probability 0 gets logit -inf: never drawn


@dataclasses.dataclass
class PolicyWeights:
    """The bins of a batch of patches and their straight-through weights.

    Attributes:
        bins: ``(B, O)`` long, the chosen bin of each operation.
        groups: ``(B,)`` long, the class group of each patch.
        per_op: ``(B, O)`` the straight-through values ``ST_o[k_bo]`` (value 1, gradient to the logits).
        soft: per operation, the soft Gumbel sample ``(B, K_o)`` (detached; for inspection and tests).
    """

    bins: torch.Tensor
    groups: torch.Tensor
    per_op: torch.Tensor
    soft: tuple[torch.Tensor, ...] = ()

    @property
    def weight(self) -> torch.Tensor:
        """``w_b = prod_o ST_o[k_bo]``, ``(B,)``: value 1, gradient to the logits."""
        return self.per_op.prod(dim=1)


class AugmentationPolicy(nn.Module):
    """Training-time policy per class group: one straight-through Gumbel categorical per operation.

    Args:
        pool: the operations (default: the full 15-operation, 62-bin pool).
        groups: class groups ``{name: classes or None}`` (default: background vs foreground; module docstring).
        init: ``0``-``5`` (the authors' ``--org``), an alias (``"uniform"``, ``"identity_half"``, ``"nnunet"``,
            ``"deepmedic"``), or a mapping for every operation of the pool, ``{op name: p}`` with
            ``P(identity) = 1 - p`` (the rest uniform) or ``{op name: (K_o,) bin probabilities}`` (e.g.
            :func:`~monai_imbalance.augment.randaugment_probabilities`), mixed as needed.
        temperature: Gumbel-softmax temperature ``tau > 0`` (the authors: 1).

    Raises:
        ValueError: bad groups, an unknown preset, a mapping that misses an operation, ``p`` outside ``[0, 1)``,
            bin probabilities of another length, negative or not summing to 1, ``temperature <= 0``.
    """

    def __init__(
        self,
        pool: TrainingTransformPool | None = None,
        groups: Mapping[str, Sequence[int] | None] | None = None,
        init: int | str | Mapping[str, float | Sequence[float] | torch.Tensor] = 2,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.pool = pool if pool is not None else TrainingTransformPool()
        self.groups = check_groups(groups)
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got temperature={temperature!r}.")
        self.temperature = float(temperature)
        initial = self._initial_logits(init)
        self.logits = nn.ModuleDict(
            {
                g: nn.ParameterDict({op.name: nn.Parameter(initial[op.name].clone()) for op in self.pool.ops})
                for g in self.groups
            }
        )

    def _initial_logits(self, init: int | str | Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``{op: (K_o,) logits}`` of an ``init`` (class docstring), the same for every group."""
        if isinstance(init, Mapping):
            missing = [n for n in self.pool.op_names if n not in init]
            extra = [n for n in init if n not in self.pool.op_names]
            if missing or extra:
                raise ValueError(
                    f"init mapping must give p or probabilities for exactly the pool's ops: missing {missing}, "
                    f"unknown {extra}."
                )
            return {op.name: _logits_of(op.name, op.num_bins, init[op.name]) for op in self.pool.ops}
        key = _INIT_ALIASES.get(init, init) if isinstance(init, str) else init
        if not isinstance(key, int) or key not in (0, 1, *TRAINING_INIT_PRESETS):
            raise ValueError(
                f"unknown init {init!r}: use 0-5, one of {list(_INIT_ALIASES)} or a mapping op -> p or probabilities."
            )
        if key in (0, 1):
            return {op.name: _init_logits(op.num_bins, key, 0.0) for op in self.pool.ops}
        preset = TRAINING_INIT_PRESETS[key]
        return {
            op.name: _init_logits(op.num_bins, key, preset.get(op.name, preset["__default__"])) for op in self.pool.ops
        }

    # ----------------------------------------------------------------------------------------------- identity
    @property
    def group_names(self) -> tuple[str, ...]:
        """Group names, in order (group index = position)."""
        return tuple(self.groups)

    def identity(self) -> dict[str, Any]:
        """What a policy file must match: the pool and the groups (JSON-ready)."""
        return {
            "type": type(self).__name__,
            "pool": self.pool.describe(),
            "groups": {g: None if c is None else list(c) for g, c in self.groups.items()},
        }

    def get_extra_state(self) -> dict[str, Any]:
        """The identity, saved in the state dict so that a mismatched checkpoint is refused."""
        return self.identity()

    def set_extra_state(self, state: Any) -> None:
        """Check a loaded state's identity against this policy.

        Raises:
            ValueError: naming the first difference (pool name, operations, bins or groups).
        """
        check_identity(self.identity(), state, "the state dict")

    # ----------------------------------------------------------------------------------------- probabilities
    def group_index(self, patch_class: int | torch.Tensor | Sequence[int]) -> torch.Tensor:
        """The group index of each patch's centre class.

        Args:
            patch_class: one class or ``(B,)`` classes.

        Returns:
            ``(B,)`` long (``(1,)`` for one class).

        Raises:
            ValueError: a class in no group (and no catch-all group).
        """
        cls = torch.as_tensor(patch_class).reshape(-1).long()
        out = torch.full_like(cls, -1)
        default = None
        for i, members in enumerate(self.groups.values()):
            if members is None:
                default = i
                continue
            for c in members:
                out[cls == c] = i
        if default is not None:
            out[out < 0] = default
        if bool((out < 0).any()):
            missing = sorted(set(cls[out < 0].tolist()))
            raise ValueError(f"patch class(es) {missing} belong to no group of {dict(self.groups)}.")
        return out

    def check_finite(self) -> None:
        """Raise a clear ``ValueError`` if any logit is NaN or ``+inf`` (naming group and operation)."""
        for g, ops in self.logits.items():
            for name, p in ops.items():
                check_logits(p.detach(), f"policy group {g!r}, op {name!r}")

    def probabilities(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{group: {op: (K_o,) probabilities}}`` (detached)."""
        self.check_finite()
        return {g: {n: torch.softmax(p.detach(), -1) for n, p in ops.items()} for g, ops in self.logits.items()}

    def probability_matrix(self) -> torch.Tensor:
        """``(G, sum_o K_o)`` float32 CPU: each group's probabilities, operations concatenated in pool order."""
        probs = self.probabilities()
        return torch.stack([torch.cat([probs[g][n] for n in self.pool.op_names]) for g in self.groups]).float().cpu()

    def _group_logits(self, op: str) -> torch.Tensor:
        return torch.stack([self.logits[g][op] for g in self.groups])  # (G, K)

    def _check_batch(self, bins: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bins = torch.as_tensor(bins).long()
        groups = torch.as_tensor(groups).long().reshape(-1)
        if bins.ndim != 2 or bins.shape[1] != len(self.pool):
            raise ValueError(f"bins must be (B, {len(self.pool)}), got shape {tuple(bins.shape)}.")
        if groups.shape[0] != bins.shape[0]:
            raise ValueError(f"groups must be (B,) with B = {bins.shape[0]}, got shape {tuple(groups.shape)}.")
        if bool(((groups < 0) | (groups >= len(self.groups))).any()):
            raise ValueError(f"group indices must be in [0, {len(self.groups)}), got {groups.tolist()}.")
        hi = torch.tensor(self.pool.num_bins, device=bins.device)
        if bool(((bins < 0) | (bins >= hi)).any()):
            raise ValueError(f"bins out of range for the pool's bins per op {self.pool.num_bins}.")
        return bins, groups

    # ------------------------------------------------------------------------------------------------ sampling
    def sample(self, groups: torch.Tensor | Sequence[int]) -> PolicyWeights:
        """Fresh bins and straight-through weights, one per patch (``torch.nn.functional.gumbel_softmax``).

        Args:
            groups: ``(B,)`` group index of each patch (:meth:`group_index`).

        Returns:
            :class:`PolicyWeights` (``soft`` is empty).
        """
        self.check_finite()
        device = next(self.parameters()).device
        groups = torch.as_tensor(groups, device=device).long().reshape(-1)
        bins, cols = [], []
        for name in self.pool.op_names:
            k, st = sample_straight_through(self._group_logits(name)[groups], self.temperature)
            bins.append(k)
            cols.append(st)
        return PolicyWeights(torch.stack(bins, 1), groups, torch.stack(cols, 1))

    def weights(
        self,
        bins: torch.Tensor,
        groups: torch.Tensor | Sequence[int],
        generator: torch.Generator | None = None,
    ) -> PolicyWeights:
        """Differentiable weights of bins drawn earlier (in a loader worker), noise re-drawn given the bins.

        Args:
            bins: ``(B, O)`` recorded bins (the batch's ``"policy_bins"``).
            groups: ``(B,)`` recorded group indices (the batch's ``"policy_group"``).
            generator: optional ``torch.Generator`` for the re-drawn noise.

        Returns:
            :class:`PolicyWeights`; ``.weight`` is ``w_b`` (value 1, gradient to the logits).

        Raises:
            ValueError: shapes / ranges that do not fit the pool and groups, or NaN logits.
        """
        self.check_finite()
        device = next(self.parameters()).device
        bins, groups = self._check_batch(torch.as_tensor(bins, device=device), torch.as_tensor(groups, device=device))
        cols, soft = [], []
        for o, name in enumerate(self.pool.op_names):
            st, y = straight_through_given(self._group_logits(name)[groups], bins[:, o], self.temperature, generator)
            cols.append(st)
            soft.append(y)
        return PolicyWeights(bins, groups, torch.stack(cols, 1), tuple(soft))

    def accumulate_hypergradient(
        self,
        weights: PolicyWeights,
        grad_w: torch.Tensor,
        baseline: bool = True,
        normalize: bool = True,
        singleton_baselines: Mapping[int, float] | None = None,
    ) -> None:
        """Add the meta-gradient of the weights to the logits' ``.grad`` (JCSAugment's TRA meta-gradient).

        ``g_b <- g_b - mean_{b' in group(b)} g_b'`` (``baseline``), then
        ``grad alpha^G_o += sum_{b in G} g_b / n^G_{o, k_bo} * d ST_o[k_bo] / d alpha^G_o`` (``normalize``; ``n``:
        patches of the group with the same bin of ``o``). With both off this is ``w.backward(grad_w)``.

        Args:
            weights: from :meth:`weights` / :meth:`sample` (graph intact).
            grad_w: ``(B,)`` ``d L_val / d w_b`` (e.g. ``LookaheadResult.grads[0]``).
            baseline: subtract the per-group mean.
            normalize: divide by the per-group, per-op bin counts.
            singleton_baselines: the baseline of a group with a single patch in the batch, by group index
                (:func:`~monai_imbalance.augment.gumbel.per_bin_coefficients`).

        Raises:
            ValueError: shape mismatch or a non-finite ``grad_w``.
        """
        g = torch.as_tensor(grad_w)
        if not bool(torch.isfinite(g).all()):
            raise ValueError("grad_w holds NaN or inf: skip this policy update (and log it) instead.")
        coef = per_bin_coefficients(
            g.to(weights.bins.device), weights.bins, weights.groups, baseline, normalize, singleton_baselines
        )
        backward_per_bin(weights.per_op, coef)

    def extra_repr(self) -> str:
        return (
            f"groups={list(self.groups)}, ops={len(self.pool)}, bins={sum(self.pool.num_bins)}, tau={self.temperature}"
        )


def check_identity(expected: Mapping[str, Any], found: Any, source: str) -> None:
    """Compare a policy's identity (pool, groups) with the one found in a file / state dict.

    Raises:
        ValueError: naming what differs.
    """
    if not isinstance(found, Mapping):
        raise ValueError(f"{source} does not describe a policy (got {type(found).__name__}).")
    if found.get("type") != expected.get("type"):
        raise ValueError(f"{source} holds a {found.get('type')!r}, expected a {expected.get('type')!r}.")
    pool_e, pool_f = expected.get("pool", {}), found.get("pool", {})
    if not isinstance(pool_f, Mapping) or pool_f.get("name") != pool_e.get("name"):
        name = pool_f.get("name") if isinstance(pool_f, Mapping) else pool_f
        raise ValueError(f"{source} is for the op pool {name!r}, this policy uses {pool_e.get('name')!r}.")
    if "ops" in pool_e:
        ops_e = [(o["name"], list(o["bins"])) for o in pool_e["ops"]]
        ops_f = [(o.get("name"), list(o.get("bins", []))) for o in pool_f.get("ops", [])]
        names_e, names_f = [n for n, _ in ops_e], [n for n, _ in ops_f]
        if names_e != names_f:
            raise ValueError(f"{source} is for another op pool: ops {names_f}, this policy's pool has ops {names_e}.")
        for (n, be), (_, bf) in zip(ops_e, ops_f, strict=True):
            if be != bf:
                raise ValueError(f"{source} is for another op pool: op {n!r} has bins {bf}, this pool has {be}.")
    if "transforms" in pool_e and list(pool_f.get("transforms", [])) != list(pool_e["transforms"]):
        raise ValueError(
            f"{source} is for another test-time pool: {len(pool_f.get('transforms', []))} transforms "
            f"{list(pool_f.get('transforms', []))[:6]}..., this pool has {len(pool_e['transforms'])}."
        )
    if "groups" in expected:
        ge, gf = dict(expected["groups"]), dict(found.get("groups") or {})
        if len(ge) != len(gf):
            raise ValueError(f"{source} has {len(gf)} class group(s) {list(gf)}, this policy has {len(ge)} {list(ge)}.")
        if ge != {k: (None if v is None else list(v)) for k, v in gf.items()}:
            raise ValueError(f"{source} has class groups {gf}, this policy has {ge}.")
