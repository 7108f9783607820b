# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Learned test-time augmentation (TEA): the test-time policy's step on held-out patches.

JCSAugment: Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data
augmentation in segmentation", IEEE TMI 2023, method section (test-time augmentation and its optimisation).
:class:`TestTimePolicyLearner` holds the test-time policy, its optimiser and the TEA step; the trainer's
``iteration_update`` :class:`~monai_imbalance.engines.AugmentationPolicyIteration` runs it before the segmenter step.
:meth:`TestTimePolicyLearner.transformed_validation` also gives the training-time learner its held-out batch seen
through the current test-time policy (the joint method).

Example (JSON)::

    "test_time_learner": {
        "_target_": "monai_imbalance.engines.TestTimePolicyLearner",
        "policy": "@test_time_policy", "optimizer": "@test_time_optimizer",
        "interval": 1, "warmup_epochs": 0, "num_samples": 10
    }
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from monai_imbalance.augment import TestTimePolicy, TestTimeTransformPool
from monai_imbalance.utils import check_int_setting, check_settings, highest_resolution, unwrap_module

from .augmentation_losses import foreground_dice_loss
from .auxiliary_step import finish_auxiliary_step

__all__ = ["DEFAULT_TEST_TIME_LR", "TestTimePolicyLearner", "TransformedValidation"]

logger = logging.getLogger(__name__)

#: The TEA policy's Adam learning rate in joint training (the authors' setting; 5e-3 for TEA only).
DEFAULT_TEST_TIME_LR = 5e-5

_OWNER = "TestTimePolicyLearner"
_ALLOWED = (
    "policy",
    "optimizer",
    "lr_scheduler",
    "interval",
    "warmup_epochs",
    "num_samples",
    "patches",
    "batch_size",
    "baseline",
    "normalize",
)


def _uses_batch_statistics(model: torch.nn.Module) -> bool:
    """Whether a forward pass of ``model`` in its current mode mixes the samples of a batch.

    BatchNorm normalises with the batch's statistics in training mode, and in eval mode too without running statistics
    (``track_running_stats=False``); instance, group and layer normalisation, convolutions and activations act on each
    sample alone. When this is ``False``, one forward pass of a stacked batch gives each sample the output of its own
    forward pass (up to float rounding), which is how the TEA step and the transformed validation batch are batched.
    """
    return any(
        isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and (m.training or not m.track_running_stats)
        for m in model.modules()
    )


def _field_of_view(pool: TestTimeTransformPool, image: torch.Tensor, transforms: list[int]) -> torch.Tensor | None:
    """``(B, 1, *sp)`` float: 1 where ``T_b^{-1}(T_b(.))`` keeps content in the field of view (``None``: all)."""
    covers = [pool.coverage(image.shape[2:], t, device=image.device) for t in transforms]
    if all(c is None for c in covers):
        return None
    ones = image.new_ones((1, *image.shape[2:]))
    return torch.stack([ones if c is None else (c > 0).to(image.dtype) for c in covers])


def _predict_pairs(
    pool: TestTimeTransformPool,
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    pairs: list[tuple[int, int]],
    size: int,
) -> list[torch.Tensor]:
    """``T_t^{-1}(predict(T_t(x_b)))`` ``(K, *spatial)`` for each ``(b, t)`` of ``pairs``, in order.

    The transformed patches of one shape go through ``predict`` together, ``size`` at a time.
    """
    inputs = [pool.forward(image[b], t) for b, t in pairs]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(inputs):
        by_shape.setdefault(tuple(x.shape), []).append(i)
    out: list[torch.Tensor | None] = [None] * len(pairs)
    for members in by_shape.values():
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            pred = predict(torch.stack([inputs[i] for i in chunk]))
            for j, i in enumerate(chunk):
                out[i] = pool.inverse(pred[j], pairs[i][1])
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class TransformedValidation:
    """A held-out batch seen through test-time transforms, one per patch (JCSAugment, joint TRA and TEA).

    Made by :meth:`TestTimePolicyLearner.transformed_validation`; the training-time learner's meta-validation
    prediction is then :meth:`predict` and its loss counts the voxels of :attr:`mask` only.

    Attributes:
        pool: the test-time transform pool.
        transforms: ``T_b``, one transform index per patch (``B`` of them).
        mask: ``(B, 1, *spatial)`` float, 1 where ``T_b^{-1}(T_b(.))`` keeps content in the field of view; ``None``:
            every voxel.
        size: patches per forward pass (1 when the network mixes the samples of a batch).
    """

    pool: TestTimeTransformPool
    transforms: list[int]
    mask: torch.Tensor | None
    size: int

    def predict(self, predict: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """``stack_b T_b^{-1}(predict(T_b(x_b)))`` ``(B, K, *spatial)`` for ``image`` ``(B, C_in, *spatial)``."""
        return torch.stack(_predict_pairs(self.pool, predict, image, list(enumerate(self.transforms)), self.size))


@dataclass
class TestTimePolicyLearner:
    """Settings, state and step of the learned test-time augmentation (TEA; JCSAugment, Li et al., IEEE TMI 2023).

    TEA step, every ``interval`` iterations after ``warmup_epochs``, on ``patches`` held-out validation patches:
    ``Z`` transforms ``t_z`` drawn from the policy with straight-through weights ``w_z``, predictions without gradient
    in eval mode ``P_z = T_z^{-1}(f_theta(T_z(x)))``, and::

        L_TEA = sum_z (w_z / sum w) * Dice_fg(P_z, y; mask = voxels inside the field of view of T_z)

    with ``Dice_fg`` the batch soft Dice over all foreground classes
    (:func:`~monai_imbalance.engines.foreground_dice_loss`); ``g_z = d L_TEA / d w_z`` goes through the policy's
    ``accumulate_hypergradient`` to the optimizer. A non-finite loss or policy gradient skips the optimizer step
    (logged, counted in ``skipped``). Under DDP the policy is not wrapped: its gradients and the skip flag are averaged
    over the ranks and its parameters broadcast from rank 0 at the start (:meth:`broadcast`).

    Attributes:
        policy: the test-time policy ``(T,)`` logits over the transforms of its pool.
        optimizer: its optimizer; ``None``: Adam, lr :data:`DEFAULT_TEST_TIME_LR`, betas (0.9, 0.999), no weight
            decay (the authors' setting).
        lr_scheduler: its scheduler, stepped once per TEA step.
        interval: iterations between TEA steps (1); runs when ``iteration % interval == 0``.
        warmup_epochs: epochs before the first TEA step (0).
        num_samples: ``Z``, transforms drawn per TEA step (10).
        patches: validation patches the step uses, those with foreground first (the authors: 1, an FG-centred patch);
            ``None``: the whole validation batch.
        batch_size: patches per forward pass of the TEA step and of :meth:`transformed_validation`'s prediction
            (``None``: all patches of one shape at once); the batching applies when the network does not mix the
            samples of a batch (no BatchNorm using batch statistics), else one patch per pass.
        baseline: subtract the mean of the weight gradients over the draws (the authors' rule; True).
        normalize: divide by the number of times each transform was drawn (True).
        steps, skipped: TEA steps taken / skipped.
    """

    __test__ = False  # not a pytest test class despite the name

    policy: TestTimePolicy
    optimizer: torch.optim.Optimizer | None = None
    lr_scheduler: Any | None = None
    interval: int = 1
    warmup_epochs: int = 0
    num_samples: int = 10
    patches: int | None = 1
    batch_size: int | None = None
    baseline: bool = True
    normalize: bool = True
    steps: int = field(default=0, init=False)
    skipped: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.policy, TestTimePolicy):
            raise ValueError(f"{_OWNER} policy must be a TestTimePolicy, got {type(self.policy)}.")
        self.interval = check_int_setting(_OWNER, "interval", self.interval, 1)
        self.warmup_epochs = check_int_setting(_OWNER, "warmup_epochs", self.warmup_epochs, 0)
        self.num_samples = check_int_setting(_OWNER, "num_samples", self.num_samples, 1)
        if self.patches is not None:
            self.patches = check_int_setting(_OWNER, "patches", self.patches, 1)
        if self.batch_size is not None:
            self.batch_size = check_int_setting(_OWNER, "batch_size", self.batch_size, 1)
        for name in ("baseline", "normalize"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{_OWNER} {name} must be true or false, got {getattr(self, name)!r}.")
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(
                self.policy.parameters(), lr=DEFAULT_TEST_TIME_LR, betas=(0.9, 0.999), weight_decay=0.0
            )

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> TestTimePolicyLearner:
        """Build from a JSON-style dict; raises ``ValueError`` naming an unknown or bad setting."""
        check_settings(_OWNER, config, _ALLOWED, required=("policy",))
        return cls(**dict(config))

    def is_due(self, iteration: int, epoch: int) -> bool:
        """Whether the TEA step runs at this 1-based iteration of this 1-based epoch."""
        return epoch > self.warmup_epochs and iteration % self.interval == 0

    def _pass_size(self, network: torch.nn.Module, n: int) -> int:
        """Patches per forward pass: ``batch_size`` (or all ``n``) when ``network`` does not mix samples, else 1."""
        return 1 if _uses_batch_statistics(network) else (self.batch_size or n)

    def transformed_validation(self, network: torch.nn.Module, image: torch.Tensor) -> TransformedValidation:
        """One transform per patch of ``image`` ``(B, C_in, *spatial)``, drawn from the current probabilities.

        The batching follows ``network``'s current mode (call it in the mode of the prediction to come).
        """
        transforms = torch.multinomial(self.policy.probabilities(), image.shape[0], replacement=True).tolist()
        mask = _field_of_view(self.policy.pool, image, transforms)
        size = self._pass_size(unwrap_module(network), len(transforms))
        return TransformedValidation(self.policy.pool, transforms, mask, size)

    def _patches(self, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``patches`` patches of the batch, those holding foreground first."""
        if self.patches is None or self.patches >= image.shape[0]:
            return image, label
        has_fg = (label.flatten(1) > 0).any(1)
        order = torch.cat([torch.nonzero(has_fg)[:, 0], torch.nonzero(~has_fg)[:, 0]])[: self.patches]
        return image[order], label[order]

    def step(
        self,
        network: torch.nn.Module,
        validation: tuple[torch.Tensor, torch.Tensor],
        indices: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, float]:
        """One TEA policy update (JCSAugment, TEA); the segmenter is not updated (no gradient, eval mode).

        Each distinct transform among the ``Z`` draws is evaluated once, the transformed patches batched when the
        network does not mix the samples of a batch; the loss of a draw is that of its transform.

        Args:
            network: the segmenter (a DDP wrapper is unwrapped).
            validation: ``(image, label)`` of a held-out validation batch ``(B, C_in, *sp)``, ``(B, 1, *sp)``; the
                step uses ``patches`` of them.
            indices: ``(Z,)`` transform indices to use instead of fresh draws (their weights are then recomputed
                with re-drawn Gumbel noise, :meth:`~monai_imbalance.augment.TestTimePolicy.weights`).
            generator: optional ``torch.Generator`` for that re-drawn noise.

        Returns:
            ``{"test_time_loss": L_TEA, "test_time_skipped": 0.0 or 1.0}``.
        """
        assert self.optimizer is not None
        policy = self.policy
        segmenter = unwrap_module(network)
        image, label = self._patches(*validation)
        weights = policy.sample(self.num_samples) if indices is None else policy.weights(indices, generator=generator)
        chosen = weights.bins[:, 0].tolist()

        def _predict(x: torch.Tensor) -> torch.Tensor:
            return highest_resolution(segmenter(x), x.ndim)

        was_training = segmenter.training
        segmenter.eval()
        distinct = list(dict.fromkeys(chosen))  # a transform drawn twice has one (deterministic) loss
        n = len(image)
        try:
            with torch.no_grad():
                pairs = [(b, t) for t in distinct for b in range(n)]
                preds = _predict_pairs(policy.pool, _predict, image, pairs, self._pass_size(segmenter, len(pairs)))
                loss_of = {}
                for j, t in enumerate(distinct):
                    pred = torch.stack(preds[j * n : (j + 1) * n])
                    mask = _field_of_view(policy.pool, image, [t] * n)
                    loss_of[t] = foreground_dice_loss(pred.float(), label, mask)
        finally:
            segmenter.train(was_training)
        per_z = torch.stack([loss_of[t] for t in chosen]).to(weights.per_op.dtype)  # (Z,)
        w = weights.weight.detach().requires_grad_(True)
        loss = (w * per_z).sum() / w.sum()
        (grad_w,) = torch.autograd.grad(loss, w)
        self.steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        skipped, reason = not bool(torch.isfinite(grad_w).all()), "nonfinite_test_time_loss"
        if not skipped:
            policy.accumulate_hypergradient(weights, grad_w, self.baseline, self.normalize)
            reason = None
        skipped, reason = finish_auxiliary_step(policy, self.optimizer, skipped, reason, "nonfinite_policy_grad")
        if skipped:
            self.skipped += 1
            logger.warning(
                "TEA policy step %d skipped (%s); %d of %d TEA steps skipped so far.",
                self.steps,
                reason,
                self.skipped,
                self.steps,
            )
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return {"test_time_loss": float(loss.detach()), "test_time_skipped": float(skipped)}

    def broadcast(self) -> None:
        """Copy rank 0's policy to every rank (no-op without a process group)."""
        if dist.is_available() and dist.is_initialized():
            with torch.no_grad():
                for tensor in self.policy.parameters():
                    dist.broadcast(tensor, src=0)

    def state_dict(self) -> dict[str, Any]:
        """The policy, its optimizer and the counters (tensors, containers, primitives)."""
        assert self.optimizer is not None
        state = {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}
        return {**state, "steps": self.steps, "skipped": self.skipped}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` (a policy over another transform pool raises ``ValueError``)."""
        assert self.optimizer is not None
        for name in ("policy", "optimizer"):
            if name not in state:
                raise ValueError(f"{_OWNER} state lacks '{name}'.")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps, self.skipped = int(state.get("steps", 0)), int(state.get("skipped", 0))
