# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Asymmetric adversarial perturbation for segmentation (supervised, VAT-style).

Li, Kamnitsas, Glocker, "Analyzing overfitting under class imbalance in neural networks for image segmentation",
IEEE TMI 2021, method section: asymmetric adversarial training (the authors' nnU-Net
``network_trainer.py::generate_virtual_adversarial_perturbation`` / ``advND_Crossentropy.py`` and DeepMedic
``cnn3d.py::advfunc``)::

    d     ~ N(0, I)                    (or U(0, 1), DeepMedic)
    d     <- xi * normalize(d)
    L_adv = -(1/N) sum_i sum_c r_c y_ic log(p_ic(x + d) + 1e-6)      (+ Dice on rare voxels, nnU-Net)
    r_adv = eps * normalize(grad_d L_adv)

where ``normalize`` divides each sample by its largest absolute value and then by ``sqrt(sum d^2 + 1e-6)``, so
``r_adv`` has L2 norm ``eps`` per sample, and ``r_c = 1`` for the rare classes (all classes in the symmetric
version, ``rare_classes=None``). The whole patch is perturbed; the trainer then takes a step on ``x + r_adv`` with
the full loss (:class:`~monai_imbalance.engines.RegularisedSupervisedTrainer`).

Example::

    r_adv = adversarial_perturbation(network, x, y, eps=10.0, rare_classes=[1])
    loss = loss_function(network(x + r_adv), y)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from monai_imbalance.utils import check_rare_classes, highest_resolution, plain_tensor, unwrap_module

from .mixup import validate_label_map

__all__ = ["adversarial_perturbation", "normalize_per_sample"]

#: The authors' nnU-Net / DeepMedic defaults.
DEFAULT_EPS = 10.0
DEFAULT_XI = 1e-5
_DICE_SMOOTH = 1e-5
_LOG_EPS = 1e-6


def normalize_per_sample(d: torch.Tensor) -> torch.Tensor:
    """The reference code's ``normalize``: per sample, ``d / max|d|``, then ``d / sqrt(sum d^2 + 1e-6)``.

    The first division makes the second well conditioned for tiny gradients; the result has L2 norm 1 per sample
    (up to the ``1e-6``: relative error below ``5e-7``), or is zero where ``d`` is zero.

    Args:
        d: ``(B, *)`` tensor.

    Returns:
        the normalised tensor, same shape and dtype.
    """
    flat = d.flatten(1)
    flat = flat / (flat.abs().amax(dim=1, keepdim=True) + 1e-12)
    flat = flat / torch.sqrt((flat * flat).sum(dim=1, keepdim=True) + 1e-6)
    return flat.view_as(d)


@contextlib.contextmanager
def _probe(network: nn.Module) -> Iterator[None]:
    """Training mode during the block; afterwards every submodule's mode and every norm layer's running stats back."""
    modes = [(m, m.training) for m in network.modules()]
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    for m in network.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):  # BatchNorm*, SyncBatchNorm, InstanceNorm*
            for buf in (m.running_mean, m.running_var, m.num_batches_tracked):
                if buf is not None:
                    saved.append((buf, buf.detach().clone()))
    try:
        if not network.training:
            network.train()
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def _masked_direction_loss(
    logits: torch.Tensor, y: torch.Tensor, voxel_mask: torch.Tensor, rare: tuple[int, ...], dice: bool
) -> torch.Tensor:
    """``N * L_adv``: masked CE (+ soft Dice of the rare foreground classes on the masked voxels).

    The factor ``N`` (voxel count) leaves the direction unchanged and keeps per-voxel gradients of order 1, so they
    do not underflow in float16 under autocast.
    """
    p = torch.softmax(logits.float(), dim=1)
    n = float(y.numel())
    loss = -(torch.log(p.gather(1, y) + _LOG_EPS) * voxel_mask).sum()
    fg = [c for c in rare if c != 0]
    if dice and fg:
        pk = p[:, fg]
        tk = (y == torch.as_tensor(fg, device=y.device).view(1, -1, *([1] * (y.ndim - 2)))).float()
        dims = [0, *range(2, y.ndim)]  # batch Dice, as nnU-Net's plans
        tp = (pk * tk * voxel_mask).sum(dims)
        fp = (pk * (1.0 - tk) * voxel_mask).sum(dims)
        fn = ((1.0 - pk) * tk * voxel_mask).sum(dims)
        score = (2.0 * tp + _DICE_SMOOTH) / (2.0 * tp + fp + fn + _DICE_SMOOTH)
        loss = loss + n * (1.0 - score.mean())
    return loss


def _direction_loss(
    out: torch.Tensor | Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    rare_classes: Sequence[int] | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
    dice: bool = False,
) -> torch.Tensor:
    """``N * L_adv`` of a network output: the loss whose input gradient is the adversarial direction.

    The cross-entropy on rare-class voxels (all voxels when ``rare_classes=None``), plus soft Dice with ``dice=True``,
    or ``loss(logits, y, mask=mask)`` with the rare-voxel mask, scaled by the voxel count ``N``.

    Args:
        out: the network output for ``x`` (logits, a list/tuple of heads or a DynUNet deep-supervision tensor).
        x: the network input ``(B, C_in, *spatial)`` (for the shape of the output only).
        y: labels ``(B, 1, *spatial)``, integers in ``[0, C)``.
        rare_classes: the classes whose voxels count; ``None``: all classes.
        loss: a custom loss called as ``loss(logits, y, mask=mask)`` instead of the built-in CE (+ Dice).
        dice: add the soft Dice term to the built-in loss.

    Returns:
        a 0-d float32 tensor.

    Raises:
        ValueError: ``rare_classes`` out of range or labels ``>= C`` / negative.
    """
    logits = highest_resolution(out, x.ndim)
    num_classes = int(logits.shape[1])
    rare = check_rare_classes(rare_classes, num_classes)
    labels = validate_label_map(y, num_classes).to(logits.device)
    if rare is None:
        voxel_mask = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    else:
        is_rare = torch.zeros(num_classes, dtype=torch.bool, device=labels.device)
        is_rare[list(rare)] = True
        voxel_mask = is_rare[labels].float()
    if loss is None:
        return _masked_direction_loss(logits, labels, voxel_mask, rare or tuple(range(num_classes)), dice)
    return loss(logits, labels, mask=voxel_mask).float().mean() * float(labels.numel())


def _perturbation_from_gradient(g: torch.Tensor, eps: float, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``r_adv = eps * normalize(g)``: L2 norm ``eps`` per sample (zero where ``g`` is zero), detached."""
    r = float(eps) * normalize_per_sample(plain_tensor(g, detach=True))
    return r if dtype is None else r.to(dtype)


def adversarial_perturbation(
    network: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float = DEFAULT_EPS,
    xi: float = DEFAULT_XI,
    rare_classes: Sequence[int] | None = None,
    loss: Callable[..., torch.Tensor] | None = None,
    dice: bool = False,
    distribution: str = "normal",
) -> torch.Tensor:
    """Adversarial perturbation of L2 norm ``eps`` per sample, directed by the loss on rare-class voxels.

    Li, Kamnitsas, Glocker, IEEE TMI 2021, asymmetric adversarial training. The direction is the gradient, with
    respect to ``d``, of the cross-entropy restricted to voxels whose label is rare (all voxels when
    ``rare_classes=None``), evaluated at ``x + xi * normalize(d)`` for a random ``d``; ``dice=True`` adds nnU-Net's
    soft Dice of the rare foreground classes on those voxels. A sample with no rare-class voxel gets a zero
    perturbation, unless BatchNorm (batch statistics) couples it to the other samples.

    The probe leaves no gradient in the network's parameters (``torch.autograd.grad`` with respect to ``d`` only),
    runs in training mode and restores every submodule's mode and the running statistics of every norm layer, which
    its forward pass would otherwise update a second time per iteration.

    It may be called inside ``torch.autocast``: the loss is computed in float32 from the (possibly half precision)
    logits and scaled by the voxel count; if the gradient is still not finite, it is recomputed without autocast.

    Args:
        network: the segmenter, returning logits ``(B, C, *spatial)`` (a list/tuple or a DynUNet deep-supervision
            tensor ``(B, heads, C, *spatial)``: the first, full-resolution head is used). DDP/DataParallel wrappers
            are unwrapped for the probe.
        x: images ``(B, C_in, *spatial)``.
        y: labels ``(B, 1, *spatial)``, integers in ``[0, C)``.
        eps: the L2 norm of the perturbation of each sample, ``>= 0`` (default 10, the authors').
        xi: the size of the random start ``d``, ``>= 0`` (default 1e-5).
        rare_classes: the classes whose voxels drive the direction; ``None``: all classes (symmetric).
        loss: a custom direction loss, called as ``loss(logits, y, mask=mask)`` with ``mask`` the float
            ``(B, 1, *spatial)`` indicator of the voxels that count (e.g. ``MarginFocalLoss``); replaces the built-in
            masked CE (+ Dice).
        dice: add the soft Dice term to the built-in loss (nnU-Net version; the DeepMedic version is CE only).
        distribution: the random start, ``"normal"`` (nnU-Net) or ``"uniform"`` (DeepMedic).

    Returns:
        ``r_adv``, detached, same shape, dtype and device as ``x``.

    Raises:
        ValueError: negative ``eps`` or ``xi``, an unknown ``distribution``, ``rare_classes`` out of range, labels
            ``>= C`` or negative, or ``x`` / ``y`` shapes that do not match.
    """
    if not float(eps) >= 0.0:
        raise ValueError(f"eps must be >= 0, got eps={eps!r}.")
    if not float(xi) >= 0.0:
        raise ValueError(f"xi must be >= 0, got xi={xi!r}.")
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"distribution must be 'normal' or 'uniform', got distribution={distribution!r}.")
    if x.ndim < 3 or y.ndim != x.ndim or y.shape[0] != x.shape[0] or y.shape[1] != 1 or y.shape[2:] != x.shape[2:]:
        raise ValueError(
            f"x must be (B, C_in, *spatial) and y (B, 1, *spatial) with the same B and spatial shape, got x "
            f"{tuple(x.shape)} and y {tuple(y.shape)}."
        )
    rare = check_rare_classes(rare_classes)
    net = unwrap_module(network)  # the probe must not trigger DDP's gradient reduction
    x0 = plain_tensor(x, detach=True)
    dtype = x0.dtype if x0.dtype in (torch.float32, torch.float64) else torch.float32
    d = torch.randn(x0.shape, dtype=dtype, device=x0.device)
    if distribution == "uniform":
        d = torch.rand(x0.shape, dtype=dtype, device=x0.device)
    d = float(xi) * normalize_per_sample(d)

    def direction() -> torch.Tensor:
        dd = d.clone().requires_grad_(True)
        with torch.enable_grad(), _probe(net):
            value = _direction_loss(net(x0 + dd), x0, y, rare, loss=loss, dice=dice)
            (grad,) = torch.autograd.grad(value, dd)
        return grad.detach()

    g = direction()
    device_type = x0.device.type
    if torch.is_autocast_enabled(device_type) and not bool(torch.isfinite(g).all()):
        with torch.autocast(device_type, enabled=False):
            g = direction()
    return _perturbation_from_gradient(g, eps, x0.dtype)
