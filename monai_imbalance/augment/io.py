# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Saving and loading learned augmentation policies: a state dict plus a readable JSON description.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (JCSAugment). MONAI 1.6 loads checkpoints with ``weights_only=True``, so a policy file
holds only tensors and primitives: ``<name>.pt`` is the module's state dict (logits, and the pool / group identity as
extra state) and ``<name>.json`` describes it for people and for checks:

.. code-block:: json

    {
        "format_version": 1,
        "type": "AugmentationPolicy",
        "pool": {"name": "jcsaugment_training", "ops": [{"name": "scale", "bins": ["identity", "0.05", ...]}, ...]},
        "groups": {"background": [0], "foreground": null},
        "temperature": 1.0,
        "probabilities": {"background": {"scale": {"identity": 0.8, "0.05": 0.04, ...}, ...}, ...}
    }

A test-time policy has ``"type": "TestTimePolicy"``, ``"pool": {"name": ..., "transforms": [...]}``,
``"probabilities": {transform: p}`` and ``"ranking"``: the transforms by decreasing probability.

Loading checks the file against the policy (or, without one, rebuilds the policy the file describes): another op
pool, other bins, another number of class groups or other groups raise a ``ValueError`` that names the difference;
NaN / ``+inf`` logits in the file raise a ``ValueError`` too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..utils import atomic_open, atomic_write_text
from .policy import AugmentationPolicy, check_identity
from .test_time import TestTimePolicy
from .test_time_pool import TestTimeTransformPool
from .training_pool import TrainingTransformPool

__all__ = ["describe_policy", "load_policy", "policy_paths", "save_policy"]

FORMAT_VERSION = 1
PolicyModule = AugmentationPolicy | TestTimePolicy


def policy_paths(path: str | Path) -> tuple[Path, Path]:
    """``(state dict path, JSON path)`` of a policy file name: ``x``, ``x.pt`` or ``x.json`` -> ``x.pt``, ``x.json``."""
    p = Path(path)
    if p.suffix in (".pt", ".pth", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".pt"), p.with_name(p.name + ".json")


def describe_policy(policy: PolicyModule) -> dict[str, Any]:
    """The JSON description of a policy: identity, temperature and probabilities (module docstring).

    Raises:
        ValueError: not a policy, or NaN logits.
    """
    if not isinstance(policy, (AugmentationPolicy, TestTimePolicy)):
        raise ValueError(f"policy must be an AugmentationPolicy or a TestTimePolicy, got {type(policy).__name__}.")
    out: dict[str, Any] = {"format_version": FORMAT_VERSION, **policy.identity(), "temperature": policy.temperature}
    if isinstance(policy, AugmentationPolicy):
        probs = policy.probabilities()
        out["probabilities"] = {
            g: {
                op.name: {label: round(float(p), 6) for label, p in zip(op.bin_labels, probs[g][op.name], strict=True)}
                for op in policy.pool.ops
            }
            for g in policy.groups
        }
    else:
        probs = policy.probabilities()
        out["probabilities"] = {n: round(float(p), 6) for n, p in zip(policy.pool.names, probs, strict=True)}
        order = torch.argsort(probs, descending=True).tolist()
        out["ranking"] = [policy.pool.names[i] for i in order]
    return out


def save_policy(policy: PolicyModule, path: str | Path) -> tuple[Path, Path]:
    """Write ``<path>.pt`` (state dict, tensors on the CPU) and ``<path>.json`` (description, indented by 4 spaces),
    each atomically (a reader sees the old file or the complete new one).

    Returns:
        the two paths written.
    """
    pt, js = policy_paths(path)
    desc = describe_policy(policy)
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in policy.state_dict().items()}
    with atomic_open(pt, "wb") as f:
        torch.save(state, f)
    atomic_write_text(json.dumps(desc, indent=4) + "\n", js)
    return pt, js


def _build(desc: dict[str, Any]) -> PolicyModule:
    kind = desc.get("type")
    pool = desc.get("pool") or {}
    temperature = float(desc.get("temperature", 1.0))
    if kind == "AugmentationPolicy":
        if pool.get("name") != TrainingTransformPool.name:
            raise ValueError(f"the file is for the op pool {pool.get('name')!r}, not {TrainingTransformPool.name!r}.")
        names = [o.get("name") for o in pool.get("ops", [])]
        policy: PolicyModule = AugmentationPolicy(
            TrainingTransformPool(names), groups=desc.get("groups"), init=0, temperature=temperature
        )
    elif kind == "TestTimePolicy":
        if pool.get("name") != TestTimeTransformPool.name:
            raise ValueError(f"the file is for the pool {pool.get('name')!r}, not {TestTimeTransformPool.name!r}.")
        policy = TestTimePolicy(TestTimeTransformPool(pool.get("transforms")), init=0, temperature=temperature)
    else:
        raise ValueError(f"the file describes a {kind!r}, not an AugmentationPolicy or TestTimePolicy.")
    check_identity(policy.identity(), desc, "the policy file")  # same bins as this library's pool
    return policy


def load_policy(
    path: str | Path, policy: PolicyModule | None = None, map_location: str | torch.device = "cpu"
) -> PolicyModule:
    """Load a saved policy, checking that it fits.

    Args:
        path: ``x``, ``x.pt`` or ``x.json`` (both files are read; the JSON may be missing, the state dict's extra
            state is then checked alone).
        policy: load into this policy (its pool and groups must match); ``None``: build the policy the JSON
            describes.
        map_location: ``torch.load``'s ``map_location``.

    Returns:
        the policy with the loaded logits.

    Raises:
        FileNotFoundError: no state dict file.
        ValueError: another op pool / bins / class-group count or groups, another policy type, NaN logits.
    """
    pt, js = policy_paths(path)
    if not pt.is_file():
        raise FileNotFoundError(f"no policy state dict at {pt}.")
    desc = json.loads(js.read_text()) if js.is_file() else None
    if policy is None:
        if desc is None:
            raise ValueError(f"{js} is missing: pass the policy to load into.")
        policy = _build(desc)
    elif desc is not None:
        check_identity(policy.identity(), desc, f"the policy file {js}")
    state = torch.load(pt, map_location=map_location, weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{pt} does not hold a state dict.")
    key = nn.modules.module._EXTRA_STATE_KEY_SUFFIX
    if key in state:
        check_identity(policy.identity(), state[key], f"the state dict {pt}")
    policy.load_state_dict(state)
    try:
        policy.check_finite()
    except ValueError as err:
        raise ValueError(f"the policy file {pt}: {err}") from None
    return policy
