# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""How the current training-time policy reaches the data loader's worker processes: a shared-memory probability table.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (JCSAugment). The policy changes every meta step, while the patches are augmented in
``DataLoader`` worker processes that live across iterations (and, with ``persistent_workers=True``, across epochs). The
mechanism:

1. The trainer builds ``shared = SharedPolicyProbabilities(policy)`` **before** the ``DataLoader`` starts its
   workers and gives it to :class:`~monai_imbalance.transforms.PolicyAugmentd`. It holds a ``(G, sum_o K_o)``
   float32 CPU tensor of the probabilities of every group and operation, and an int64 version counter, both moved
   to shared memory (``Tensor.share_memory_()``). A forked worker inherits the mapping; a spawned worker receives
   the tensors through ``torch.multiprocessing``'s pickler, which passes shared storage by handle. Either way the
   worker reads the *same* memory the trainer writes. ``copy.deepcopy`` and ``copy.copy`` return the object itself,
   so a transform copied by a pipeline still reads the shared table.
2. After each policy update the trainer calls ``shared.update(policy)``: the softmax of the logits is computed in
   the main process (on any device) and copied into the shared table in place. The write is bracketed by the
   version counter (odd while writing), and a worker's :meth:`SharedPolicyProbabilities.read` retries until it
   sees the same even version before and after copying (a sequence lock), so a worker never mixes two updates.
3. In the worker, :class:`~monai_imbalance.transforms.PolicyAugmentd` reads the row of the patch's group, draws one
   bin per operation with the transform's own ``RandomState`` (seeded per worker by MONAI's ``DataLoader``), applies
   them, and records the bins and the group in the sample dict; they are collated with the batch.
4. In the main process :meth:`~monai_imbalance.augment.AugmentationPolicy.weights` recomputes the straight-through
   weights of the recorded bins from the current logits, with gradient. The workers never need gradients or the
   ``nn.Module``, and the policy may live on the GPU.

Staleness: a worker samples when it builds a batch, up to ``prefetch_factor * num_workers`` batches ahead of the
trainer, so a batch's bins come from the probabilities of a few updates earlier (the authors sampled a whole epoch
ahead). The weights, and hence the meta-gradients, always use the current logits. Which table version a batch reads
depends on when its worker builds it relative to the trainer's update, i.e. on process timing: with ``num_workers > 0``
a seeded run is repeatable in distribution, not to the bit (with ``num_workers=0`` the batch is built in the main
process, after the previous update, and the order is fixed). Under
``torch.distributed`` each rank has its own table; ranks whose policies are kept equal (all-reduced gradients) write
equal tables.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from .policy import AugmentationPolicy, check_identity
from .training_pool import TrainingTransformPool

__all__ = ["SharedPolicyProbabilities"]


class SharedPolicyProbabilities:
    """The probabilities of an :class:`~monai_imbalance.augment.AugmentationPolicy` in shared memory.

    The table follows the policy's parameters: :meth:`update` after each policy step, and by itself whenever the
    policy's ``load_state_dict`` runs (a checkpoint loaded on resume), before any loader worker draws from it.

    Args:
        policy: the policy whose pool, groups and current probabilities are shared.

    Attributes:
        pool: the transformation pool (the workers apply it).
        groups: the class groups, ``{name: classes or None}``.
    """

    def __init__(self, policy: AugmentationPolicy) -> None:
        self.pool: TrainingTransformPool = policy.pool
        self.groups = dict(policy.groups)
        self._identity = policy.identity()
        sizes = list(self.pool.num_bins)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._table = torch.zeros(len(self.groups), int(self._offsets[-1]), dtype=torch.float32).share_memory_()
        self._version = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.update(policy)
        policy.register_load_state_dict_post_hook(self._after_load)

    # the table is shared by design: a copied transform must keep reading it
    def __copy__(self) -> SharedPolicyProbabilities:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedPolicyProbabilities:
        return self

    @property
    def version(self) -> int:
        """The number of completed updates (twice; odd while an update is being written)."""
        return int(self._version[0])

    @property
    def is_shared(self) -> bool:
        """Whether the table lives in shared memory."""
        return self._table.is_shared() and self._version.is_shared()

    def update(self, policy: AugmentationPolicy) -> None:
        """Copy the policy's current probabilities into the shared table (call after each policy step).

        Raises:
            ValueError: a policy with another pool or other groups, or NaN logits.
        """
        check_identity(self._identity, policy.identity(), "the policy given to update()")
        probs = policy.probability_matrix()
        self._version += 1  # odd: writing
        self._table.copy_(probs)
        self._version += 1  # even: consistent

    def _after_load(self, policy: AugmentationPolicy, incompatible_keys: Any) -> None:
        """``load_state_dict`` post-hook of the policy: share the loaded probabilities."""
        self.update(policy)

    def read(self, group: int, max_tries: int = 10000) -> np.ndarray:
        """A consistent copy of one group's probabilities, ``(sum_o K_o,)`` float64.

        Raises:
            ValueError: ``group`` out of range.
            RuntimeError: no consistent read after ``max_tries`` (a writer stuck mid-update).
        """
        g = int(group)
        if not 0 <= g < self._table.shape[0]:
            raise ValueError(f"group index {group} out of range [0, {self._table.shape[0]}).")
        for attempt in range(max_tries):
            before = int(self._version[0])
            if before % 2 == 0:
                row = self._table[g].numpy().astype(np.float64)  # a copy
                if int(self._version[0]) == before:
                    return row
            if attempt > 100:
                time.sleep(1e-5)
        raise RuntimeError("could not read the shared policy probabilities consistently (an update never finished).")

    def group_of(self, patch_class: int) -> int:
        """The group index of a patch's centre class (the policy's rule, evaluated without the module).

        Raises:
            ValueError: a class in no group.
        """
        c = int(patch_class)
        default = None
        for i, members in enumerate(self.groups.values()):
            if members is None:
                default = i
            elif c in members:
                return i
        if default is None:
            raise ValueError(f"patch class {c} belongs to no group of {self.groups}.")
        return default

    def sample_bins(self, group: int, rng: np.random.RandomState) -> np.ndarray:
        """One bin per operation drawn from the group's current probabilities, ``(O,)`` int64.

        Args:
            group: group index.
            rng: the caller's random state.
        """
        row = self.read(group)
        u = rng.random_sample(len(self.pool))
        bins = np.empty(len(self.pool), dtype=np.int64)
        for o in range(len(self.pool)):
            p = row[self._offsets[o] : self._offsets[o + 1]]
            cdf = np.cumsum(p)
            bins[o] = min(int(np.searchsorted(cdf, u[o] * cdf[-1], side="right")), p.shape[0] - 1)
        return bins
