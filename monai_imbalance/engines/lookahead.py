# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The one-step look-ahead hypergradient shared by CoLab and learned augmentation.

CoLab (Li et al., "Context label learning: improving background class representations in semantic segmentation",
IEEE TMI 2023, method section: the meta-learned task generator) and JCSAugment (Li et al., "Joint optimization of
class-specific training- and test-time data augmentation in segmentation", IEEE TMI 2023, method section: the
training-time policy's meta-gradient) both follow DARTS (Liu, Simonyan, Yang, ICLR 2019). With ``theta`` the
segmenter's parameters and ``aux`` the auxiliary tensors the training loss depends on (CoLab: the generator's soft
context labels; JCSAugment: the per-sample weights ``w_b`` of the augmentation policy)::

    theta' = theta - lr * grad_theta L_tr(theta, aux)                  # a virtual plain SGD step
    v      = grad_theta' L_val(theta')
    dL_val(theta'(aux)) / d aux = -lr * (d^2 L_tr / d aux d theta) v    # the hypergradient

:func:`lookahead_hypergradient` takes one virtual step on the batch loss; :func:`per_sample_lookahead_hypergradient`
one per sample, as the CoLab authors' code does. :func:`functional_forward` runs a module with replaced parameters
(safe for DynUNet, whose ``skip_layers`` are reachable by several paths). :class:`LookaheadTrainPass` keeps the
look-ahead's training pass at ``theta`` and :func:`step_from_lookahead` turns it into the trainer's normal step
(both learners' ``reuse_lookahead_gradient``); :func:`lookahead_step_blockers` names the trainer settings under which
that is not the normal step.

Example (CoLab: ``aux`` is the generator's soft labels ``q``; :func:`apply_hypergradient` backpropagates their
hypergradient through the generator)::

    q = torch.softmax(generator(x), dim=1)
    res = lookahead_hypergradient(
        seg,
        lambda p: soft_ce_dice(functional_forward(seg, p, x), context_target(q, y)),
        lambda p: fg_bce(functional_forward(seg, p, x), y),
        q,
        lr=current_lr,
    )
    if not res.skipped:
        gen_opt.zero_grad()
        apply_hypergradient(q, res.grads)
        gen_opt.step()
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import SimpleInferer
from monai.utils import CommonKeys as Keys
from torch import nn

from monai_imbalance.utils import unwrap_module

from .auxiliary_step import average_over_ranks

__all__ = [
    "DEFAULT_RADIUS",
    "LOOKAHEAD_METHODS",
    "LookaheadResult",
    "LookaheadTrainPass",
    "LookaheadTrainStep",
    "apply_hypergradient",
    "check_lookahead_settings",
    "functional_forward",
    "lookahead_hypergradient",
    "lookahead_step_blockers",
    "per_sample_lookahead_hypergradient",
    "step_from_lookahead",
]

#: The ways to compute the mixed second derivative.
LOOKAHEAD_METHODS = ("finite_difference", "forward_difference", "exact")

#: The default radius ``r`` of each finite-difference method (``R = r / ||v||``): DARTS' 0.01 for the central
#: difference, ten times smaller for the one-sided one (first order in ``r``).
DEFAULT_RADIUS = {"finite_difference": 1e-2, "forward_difference": 1e-3, "exact": 1e-2}

AuxLike = torch.Tensor | Sequence[torch.Tensor] | nn.Module


@dataclasses.dataclass
class LookaheadResult:
    """The hypergradient of one look-ahead, and what the caller needs to decide whether to use it.

    Attributes:
        grads: ``d L_val(theta'(aux)) / d aux``, one tensor per auxiliary tensor, same shapes and dtypes (per-sample
            version: the per-sample hypergradients, stacked on the leading batch dimension); zeros when skipped.
        skipped: ``True`` when the update of ``aux`` must be skipped (every sample skipped, per-sample version).
        reason: why it was skipped (``"nonfinite_train_grad"``, ``"zero_val_grad"``, ``"nonfinite_val_grad"``,
            ``"nonfinite_hypergrad"``), ``None`` otherwise.
        train_loss: ``L_tr(theta, aux)``, detached (per-sample version: ``(B,)``).
        val_loss: ``L_val(theta')``, detached (per-sample version: ``(B,)``); ``nan`` when the train gradient was not
            finite.
        val_grad_norm: ``||v||`` (per-sample version: ``(B,)``).
        train_grads: ``grad_theta L_tr(theta, aux)`` by parameter name, detached (batched version only); a caller whose
            normal step uses the same loss and batch can reuse it instead of another forward/backward pass.
        skipped_samples: ``(B,)`` bool, the samples whose hypergradient was zeroed (per-sample version only).
    """

    grads: tuple[torch.Tensor, ...]
    skipped: bool
    reason: str | None
    train_loss: torch.Tensor
    val_loss: torch.Tensor
    val_grad_norm: torch.Tensor
    train_grads: dict[str, torch.Tensor] | None = None
    skipped_samples: torch.Tensor | None = None


def _alias_names(model: nn.Module) -> dict[int, list[str]]:
    """``id(tensor) -> names``: one name per distinct (module, attribute) slot holding each parameter / buffer."""
    names: dict[int, list[str]] = {}
    seen: set[tuple[int, str]] = set()
    for prefix, module in model.named_modules(remove_duplicate=False):
        for attr, tensor in (*module._parameters.items(), *module._buffers.items()):
            if tensor is None or (id(module), attr) in seen:
                continue
            seen.add((id(module), attr))
            names.setdefault(id(tensor), []).append(f"{prefix}.{attr}" if prefix else attr)
    return names


def functional_forward(model: nn.Module, params: Mapping[str, torch.Tensor], *args: Any, **kwargs: Any) -> Any:
    """``model(*args, **kwargs)`` with the named parameters / buffers replaced by ``params``, leaving ``model`` intact.

    ``torch.func.functional_call`` with a safe expansion of tied names: every (module, attribute) slot that holds a
    replaced tensor gets the new value exactly once, so modules reachable by several paths (DynUNet's
    ``skip_layers``) are restored correctly afterwards (pytorch/pytorch#164759), and weights shared by different
    modules are all replaced. Works inside ``torch.func`` transforms (``grad``, ``vmap``).

    Args:
        model: the module.
        params: new values by the names of :meth:`~torch.nn.Module.named_parameters` /
            :meth:`~torch.nn.Module.named_buffers` (any alias of a shared tensor); the others keep their values.
        args: positional inputs of ``model``.
        kwargs: keyword inputs of ``model``.

    Returns:
        what ``model`` returns.

    Raises:
        ValueError: a name that is neither a parameter nor a buffer of ``model``, or two different values for one
            shared tensor.
    """
    from torch.func import functional_call

    current = dict(model.named_parameters(remove_duplicate=False))
    current.update(model.named_buffers(remove_duplicate=False))
    aliases = _alias_names(model)
    expanded: dict[str, torch.Tensor] = {}
    for name, value in params.items():
        tensor = current.get(name)
        if tensor is None:
            raise ValueError(f"params has {name!r}, which is neither a parameter nor a buffer of the model.")
        for alias in aliases[id(tensor)]:
            if alias in expanded and expanded[alias] is not value:
                raise ValueError(f"params gives two different values for the shared tensor {alias!r}.")
            expanded[alias] = value
    return functional_call(model, expanded, args, kwargs, tie_weights=False)


@contextlib.contextmanager
def _preserve_module_state(model: nn.Module) -> Iterator[None]:
    """Afterwards every parameter / buffer slot of ``model`` holds its original tensor, with its original values."""
    slots = [
        (table, attr, tensor)
        for module in model.modules()
        for table in (module._parameters, module._buffers)
        for attr, tensor in table.items()
    ]
    values = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        for table, attr, tensor in slots:
            if table.get(attr) is not tensor:
                table[attr] = tensor
        with torch.no_grad():
            for tensor, value in values:
                tensor.copy_(value)


@contextlib.contextmanager
def _preserve_retained_grads(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """``autograd.grad`` with respect to a non-leaf tensor that ``retains_grad`` fills its ``.grad``: put it back."""
    saved = [(t, t.grad) for t in tensors if not t.is_leaf and t.retains_grad]
    try:
        yield
    finally:
        for t, g in saved:
            t.grad = g


def _aux_tensors(aux: AuxLike, name: str = "aux") -> tuple[torch.Tensor, ...]:
    if isinstance(aux, nn.Module):
        tensors = tuple(p for p in aux.parameters() if p.requires_grad)
    elif isinstance(aux, torch.Tensor):
        tensors = (aux,)
    else:
        tensors = tuple(aux)
    if not tensors:
        raise ValueError(f"{name} must hold at least one tensor, got {aux!r}.")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name}[{i}] must be a floating-point tensor, got {type(t).__name__}.")
    return tensors


def _check_scalars(lr: float, r: float | None, method: str) -> tuple[float, float]:
    if method not in LOOKAHEAD_METHODS:
        raise ValueError(f"method must be one of {LOOKAHEAD_METHODS}, got method={method!r}.")
    lr, r = float(lr), float(DEFAULT_RADIUS[method] if r is None else r)
    if not (math.isfinite(lr) and lr >= 0.0):
        raise ValueError(f"lr must be a finite number >= 0, got lr={lr!r}.")
    if not (math.isfinite(r) and r > 0.0):
        raise ValueError(f"r must be a finite number > 0, got r={r!r}.")
    return lr, r


def check_lookahead_settings(owner: str, method: Any, r: Any, meta_lr: Any) -> None:
    """Check a learner's look-ahead settings where they enter (a config), naming the owner and the key.

    Args:
        owner: the name in the message, e.g. ``"context_labels"``.
        method: one of :data:`LOOKAHEAD_METHODS`.
        r: the finite-difference radius, a finite number ``> 0`` or ``None`` (the method's :data:`DEFAULT_RADIUS`).
        meta_lr: the virtual step's learning rate, a finite number ``> 0`` or ``None`` (the segmenter's).

    Raises:
        ValueError: an unknown ``method``, or an ``r`` / ``meta_lr`` that is not ``None`` nor a finite number > 0.
    """
    if method not in LOOKAHEAD_METHODS:
        raise ValueError(f"{owner} method must be one of {list(LOOKAHEAD_METHODS)}, got method={method!r}.")
    for name, value in (("r", r), ("meta_lr", meta_lr)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0)
        ):
            raise ValueError(f"{owner} {name} must be a number > 0 or null, got {name}={value!r}.")


def _theta(model: nn.Module, params: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Detached working copies (same storage) of the parameters to vary."""
    source = dict(params) if params is not None else {k: p for k, p in model.named_parameters() if p.requires_grad}
    if not source:
        raise ValueError("params is empty: the model has no parameter with requires_grad=True.")
    for k, p in source.items():
        if not isinstance(p, torch.Tensor) or not p.is_floating_point():
            raise ValueError(f"params[{k!r}] must be a floating-point tensor, got {type(p).__name__}.")
    return {k: p.detach() for k, p in source.items()}


def _scalar(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must return a scalar tensor, got {shape}.")
    return value.reshape(())


def _grads(
    output: torch.Tensor,
    inputs: Sequence[torch.Tensor],
    create_graph: bool = False,
    retain_graph: bool = False,
    required_by: str | None = None,
    required: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """``torch.autograd.grad`` with zeros for inputs the output does not depend on (or no graph at all).

    With ``required_by`` (a closure's name), an output that depends on none of the inputs (of the first ``required``
    inputs, when given) raises a ValueError.
    """
    grads: Sequence[torch.Tensor | None] = [None] * len(inputs)
    if output.requires_grad:
        grads = torch.autograd.grad(
            output, inputs, create_graph=create_graph, retain_graph=retain_graph or create_graph, allow_unused=True
        )
    if required_by is not None and all(g is None for g in grads[:required]):
        raise ValueError(f"{required_by}(params) does not depend on params: nothing to differentiate.")
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, inputs, strict=True))


def _all_finite(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite, with one host synchronisation (not one per tensor)."""
    if not tensors:
        return True
    flags = [torch.isfinite(t).all() for t in tensors]
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


def _norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().double()) for t in tensors]))


@contextlib.contextmanager
def _same_randomness(device: torch.device) -> Iterator[None]:
    """Each block starts from the random state at entry (dropout masks repeat between the closures' calls)."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def lookahead_hypergradient(
    model: nn.Module,
    train_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    val_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    aux: AuxLike,
    lr: float,
    method: str = "finite_difference",
    r: float | None = None,
    params: Mapping[str, torch.Tensor] | None = None,
) -> LookaheadResult:
    """The one-step look-ahead hypergradient ``d L_val(theta - lr grad_theta L_tr(theta, aux)) / d aux``.

    CoLab and JCSAugment's training-time policy (Li et al., IEEE TMI 2023, both method sections), written once: a
    virtual SGD step of the segmenter on the batch loss (``theta' = theta - lr * grad_theta L_tr``), the validation
    loss after it, and the gradient back to the auxiliary tensors. With a mean over samples the hypergradient of
    ``aux_b`` includes the effect of sample ``b`` on the other samples' validation loss (the per-sample version,
    :func:`per_sample_lookahead_hypergradient`, leaves those cross terms out).

    ``method`` computes the mixed second derivative ``-lr * (d^2 L_tr / d aux d theta) v``, ``v = grad L_val(theta')``:

    - ``"finite_difference"`` (the authors' ``hessian_vector_product_Unet``): ``R = r / ||v||``,
      ``-lr * (grad_aux L_tr(theta + R v) - grad_aux L_tr(theta - R v)) / (2R)``. Ordinary forward/backward passes
      only, so the peak memory is about a normal training step's; the passes at ``theta +- R v`` differentiate with
      respect to ``aux`` only. Its error is ``O(r^2)`` for smooth activations, larger on (Leaky)ReLU networks where
      ``theta +- R v`` crosses activation kinks.
    - ``"forward_difference"``: ``-lr * (grad_aux L_tr(theta + R v) - grad_aux L_tr(theta)) / R``, with
      ``grad_aux L_tr(theta)`` taken from the backward pass at ``theta``: one pass fewer, an error first order in
      ``r`` (hence the ten times smaller default radius).
    - ``"exact"``: double backward, ``-lr * grad_aux <grad_theta L_tr(theta, aux), v>``: no truncation error, but
      the first backward pass's graph is kept, which raises the peak memory well above a normal step's.

    The model's parameters, their ``.grad``, the auxiliary tensors' ``.grad`` and every buffer (BatchNorm running
    statistics) are left as they were, and every closure call starts from the same random state (the same dropout
    masks). Take the differences in float32 or float64 (call it outside ``torch.autocast``), and pass the plain
    module, not a DDP wrapper: each rank computes the hypergradient of its own batch. When ``grad_theta L_tr`` is
    not finite, ``v`` is zero or not finite, or the hypergradient is not finite, the result says ``skipped`` with a
    ``reason`` and zero ``grads``: the caller must skip the optimizer step of ``aux`` (Adam would still move on its
    momentum). The authors' extra rule (skip when any parameter's ``v`` is exactly zero) is not used: DynUNet's
    deep-supervision heads always get a zero ``v`` when ``L_val`` uses the first head only.

    Args:
        model: the segmenter (a plain module, not a DDP wrapper).
        train_loss: ``params -> L_tr``, a scalar tensor: the caller's closure, running the segmenter with
            :func:`functional_forward` (``model``, ``params``, inputs) on the training batch, depending on ``aux``
            through autograd (a soft target or loss weights built from ``aux``, or a generator whose parameters are
            ``aux``). Called three times (``"finite_difference"``), twice (``"forward_difference"``) or once
            (``"exact"``); the first call is at ``theta`` itself, so a caller may keep that call's prediction (the
            normal step's forward pass).
        val_loss: ``params -> L_val``, a scalar tensor, on the validation batch (CoLab: the same training patch).
        aux: the auxiliary tensors, each with ``requires_grad``: leaf parameters (a generator ``nn.Module`` stands for
            its trainable parameters), or non-leaf tensors in the middle of a graph (soft labels ``softmax(gen(x))``
            ``(B, t, *spatial)``, per-sample weights ``w`` ``(B,)`` of a policy); their upstream graph is kept.
        lr: the segmenter's current learning rate ``alpha`` (``>= 0``), the size of the virtual step.
        method: ``"finite_difference"`` (central), ``"forward_difference"`` (one-sided) or ``"exact"``.
        r: the finite-difference radius, ``R = r / ||v||``; ``None``: :data:`DEFAULT_RADIUS` of the method (DARTS'
            0.01 for the central difference, 1e-3 for the one-sided one).
        params: the parameters to vary by name (default: the model's parameters with ``requires_grad``); their
            values are ``theta``.

    Returns:
        a :class:`LookaheadResult`; ``grads`` has one tensor per auxiliary tensor, same shape.

    Raises:
        ValueError: an unknown ``method``, ``lr < 0``, ``r <= 0``, empty ``aux`` / ``params``, an auxiliary tensor
            without ``requires_grad``, a loss that is not a scalar, or a ``train_loss`` / ``val_loss`` that does not
            depend on ``params``.
    """
    lr, r = _check_scalars(lr, r, method)
    aux_t = _aux_tensors(aux)
    for i, t in enumerate(aux_t):
        if not t.requires_grad:
            raise ValueError(f"aux[{i}] does not require grad: its hypergradient would be zero.")
    theta = _theta(model, params)
    names, values = list(theta), [t.requires_grad_(True) for t in theta.values()]
    exact, forward = method == "exact", method == "forward_difference"
    device = values[0].device

    def skip(reason: str, train: torch.Tensor, val: torch.Tensor, norm: torch.Tensor, g: Sequence[torch.Tensor]):
        zeros = tuple(torch.zeros_like(t) for t in aux_t)
        grads = {k: gi.detach() for k, gi in zip(names, g, strict=True)}
        return LookaheadResult(zeros, True, reason, train.detach(), val.detach(), norm, grads)

    with torch.enable_grad(), _preserve_module_state(model), _preserve_retained_grads(aux_t):
        with _same_randomness(device):
            loss = _scalar(train_loss(dict(zip(names, values, strict=True))), "train_loss")
        # the forward difference takes grad_aux L_tr(theta) from the same backward pass; the graph is kept for that
        # pass only (the part upstream of aux may be shared with the later calls), then released with `loss`'s
        first = _grads(
            loss, [*values, *aux_t] if forward else values, exact, forward, "train_loss", required=len(values)
        )
        g, aux_at_theta = first[: len(values)], first[len(values) :]
        loss = loss.detach()
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        if not _all_finite(g):
            return skip("nonfinite_train_grad", loss, nan, nan, g)

        theta_p = [(t - lr * gi).detach().requires_grad_(True) for t, gi in zip(values, g, strict=True)]
        with _same_randomness(device):
            val = _scalar(val_loss(dict(zip(names, theta_p, strict=True))), "val_loss")
        v = [vi.detach() for vi in _grads(val, theta_p, required_by="val_loss")]
        del theta_p
        norm = _norm(v)
        if not bool(torch.isfinite(norm)):
            return skip("nonfinite_val_grad", loss, val, norm, g)
        if float(norm) == 0.0:
            return skip("zero_val_grad", loss, val, norm, g)

        if exact:
            inner = sum((gi * vi).sum() for gi, vi in zip(g, v, strict=True))
            hyper = tuple(-lr * h for h in _grads(inner, aux_t, retain_graph=True))
        else:
            radius = r / float(norm)

            def aux_grad(sign: float) -> tuple[torch.Tensor, ...]:
                shifted = [(t + sign * radius * vi).detach() for t, vi in zip(values, v, strict=True)]
                with _same_randomness(device):
                    value = _scalar(train_loss(dict(zip(names, shifted, strict=True))), "train_loss")
                return _grads(value, aux_t, retain_graph=True)

            plus = aux_grad(1.0)
            if forward:
                hyper = tuple(-lr * (a - b) / radius for a, b in zip(plus, aux_at_theta, strict=True))
            else:
                minus = aux_grad(-1.0)
                hyper = tuple(-lr * (a - b) / (2.0 * radius) for a, b in zip(plus, minus, strict=True))
        hyper = tuple(h.detach().to(t.dtype) for h, t in zip(hyper, aux_t, strict=True))
        if not _all_finite(hyper):
            return skip("nonfinite_hypergrad", loss, val, norm, g)
        grads = {k: gi.detach() for k, gi in zip(names, g, strict=True)}
        return LookaheadResult(hyper, False, None, loss.detach(), val.detach(), norm, grads)


def _check_vmap_norms(model: nn.Module) -> None:
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats:
            raise ValueError(
                f"model.{name} ({type(m).__name__}) updates running statistics in training mode, which torch.func.vmap "
                "cannot do in place: use lookahead_hypergradient, or put that layer in eval mode."
            )


def per_sample_lookahead_hypergradient(
    model: nn.Module,
    train_loss: Callable[..., torch.Tensor],
    val_loss: Callable[..., torch.Tensor],
    aux: torch.Tensor | Sequence[torch.Tensor],
    batch: Sequence[torch.Tensor],
    lr: float,
    method: str = "finite_difference",
    r: float | None = None,
    params: Mapping[str, torch.Tensor] | None = None,
    chunk_size: int | None = None,
) -> LookaheadResult:
    """The CoLab authors' per-sample look-ahead (Li et al., IEEE TMI 2023), vectorised with ``torch.func.vmap``.

    For each sample ``b`` on its own: ``theta'_b = theta - lr grad_theta L_tr(theta, aux_b; b)``,
    ``v_b = grad L_val(theta'_b; b)`` and ``-lr (d^2 L_tr / d aux_b d theta) v_b``, by finite differences with
    ``R_b = r / ||v_b||`` or by ``torch.func.vjp`` of ``grad`` (exact). The closures are functional: they receive one
    sample, without its batch dimension, and call the network on ``x[None]``. The stacked hypergradients sum to the
    gradient of one auxiliary step over all samples (the authors take one step per sample).

    Args:
        model: the segmenter; its norm layers must not update running statistics (instance norm, or eval mode).
        train_loss: ``(params, aux_b, *sample) -> L_tr``, a scalar; ``aux_b`` is ``aux[b]`` (a tuple when ``aux`` is
            a sequence) and ``sample`` the ``b``-th slices of ``batch``.
        val_loss: ``(params, *sample) -> L_val``, a scalar.
        aux: per-sample auxiliary tensor(s), each ``(B, ...)`` (e.g. soft labels ``softmax(gen(x))`` ``(B, t,
            *spatial)``); their hypergradients can be sent upstream with :func:`apply_hypergradient`.
        batch: the per-sample inputs of the closures, each ``(B, ...)`` (e.g. ``(x, y)``).
        lr: the segmenter's current learning rate (``>= 0``).
        method: ``"finite_difference"``, ``"forward_difference"`` or ``"exact"`` (see :func:`lookahead_hypergradient`).
        r: the finite-difference radius, ``R_b = r / ||v_b||``; ``None``: :data:`DEFAULT_RADIUS` of the method.
        params: the parameters to vary by name (default: those with ``requires_grad``).
        chunk_size: ``vmap``'s chunk size (``None``: all samples at once; ``1``: the authors' memory, one at a time).

    Returns:
        a :class:`LookaheadResult` whose ``grads`` are the per-sample hypergradients ``(B, ...)`` (the skipped samples'
        zeroed, listed in ``skipped_samples``), ``train_loss`` / ``val_loss`` / ``val_grad_norm`` of shape ``(B,)``,
        and ``skipped`` when every sample was skipped.

    Raises:
        ValueError: bad ``method`` / ``lr`` / ``r``, empty ``aux`` or ``batch``, tensors whose leading dimensions
            differ, losses that are not scalars, or norm layers that update running statistics.
    """
    from torch.func import grad, grad_and_value, vjp, vmap

    lr, r = _check_scalars(lr, r, method)
    aux_t = _aux_tensors(aux)
    batch = tuple(batch)
    if not batch:
        raise ValueError("batch must hold at least one (B, ...) tensor.")
    sizes = {int(t.shape[0]) if t.ndim else -1 for t in (*aux_t, *batch)}
    if len(sizes) != 1 or -1 in sizes:
        shapes = [tuple(t.shape) for t in (*aux_t, *batch)]
        raise ValueError(f"aux and batch must all be (B, ...) with the same B, got shapes {shapes}.")
    if chunk_size is not None and int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be None or >= 1, got chunk_size={chunk_size!r}.")
    _check_vmap_norms(model)
    theta = _theta(model, params)
    exact, forward = method == "exact", method == "forward_difference"
    single = isinstance(aux, torch.Tensor)
    aux_in = tuple(t.detach() for t in aux_t)

    def one(th: dict[str, torch.Tensor], aux_b: tuple[torch.Tensor, ...], *sample: torch.Tensor):
        def tr(p: dict[str, torch.Tensor], a: tuple[torch.Tensor, ...]) -> torch.Tensor:
            return _scalar(train_loss(p, a[0] if single else a, *sample), "train_loss")

        def vl(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return _scalar(val_loss(p, *sample), "val_loss")

        if exact:
            (g, loss), vjp_fn = vjp(lambda a: grad_and_value(tr)(th, a), aux_b)
        elif forward:
            (g, at_theta), loss = grad_and_value(tr, argnums=(0, 1))(th, aux_b)
        else:
            g, loss = grad_and_value(tr)(th, aux_b)
        theta_p = {k: th[k] - lr * g[k] for k in th}
        v, val = grad_and_value(vl)(theta_p)
        g_ok = torch.stack([torch.isfinite(t).all() for t in g.values()]).all()
        sq = sum((t.double() ** 2).sum() for t in v.values())
        norm = torch.sqrt(sq)
        ok = g_ok & torch.isfinite(norm) & (norm > 0)
        if exact:
            (h,) = vjp_fn((v, torch.zeros_like(loss)))
            hyper = tuple(-lr * t for t in h)
        else:
            radius = (r / torch.where(ok, norm, torch.ones_like(norm))).to(next(iter(v.values())).dtype)
            plus = grad(tr, argnums=1)({k: th[k] + radius * v[k] for k in th}, aux_b)
            if forward:
                hyper = tuple(-lr * (a - b) / radius for a, b in zip(plus, at_theta, strict=True))
            else:
                minus = grad(tr, argnums=1)({k: th[k] - radius * v[k] for k in th}, aux_b)
                hyper = tuple(-lr * (a - b) / (2.0 * radius) for a, b in zip(plus, minus, strict=True))
        return hyper, loss.detach(), val.detach(), norm, g_ok, ok

    in_dims = (None, 0, *([0] * len(batch)))
    with torch.enable_grad(), _preserve_module_state(model):
        hyper, loss, val, norm, g_ok, ok = vmap(one, in_dims=in_dims, chunk_size=chunk_size)(theta, aux_in, *batch)
    finite = torch.stack([torch.isfinite(h.flatten(1)).all(1) for h in hyper]).all(0)
    keep = ok & finite
    grads = tuple(torch.where(keep.view(-1, *([1] * (h.ndim - 1))), h, torch.zeros_like(h)) for h in hyper)
    grads = tuple(h.to(t.dtype) for h, t in zip(grads, aux_t, strict=True))
    reasons = []
    for b in range(keep.numel()):
        if not bool(g_ok[b]):
            reasons.append(f"sample {b}: nonfinite_train_grad")
        elif not bool(torch.isfinite(norm[b])):
            reasons.append(f"sample {b}: nonfinite_val_grad")
        elif float(norm[b]) == 0.0:
            reasons.append(f"sample {b}: zero_val_grad")
        elif not bool(finite[b]):
            reasons.append(f"sample {b}: nonfinite_hypergrad")
    val = torch.where(g_ok, val, torch.full_like(val, float("nan")))
    return LookaheadResult(
        grads=grads,
        skipped=not bool(keep.any()),
        reason="; ".join(reasons) or None,
        train_loss=loss,
        val_loss=val,
        val_grad_norm=norm,
        skipped_samples=~keep,
    )


def apply_hypergradient(aux: AuxLike, grads: torch.Tensor | Sequence[torch.Tensor], retain_graph: bool = False) -> None:
    """Accumulate hypergradients into the ``.grad`` of the auxiliary parameters, as ``backward`` would.

    Leaf tensors (a generator's parameters, a policy's logits) get ``grad`` added to their ``.grad`` (set when it is
    ``None``); non-leaf tensors (soft labels ``softmax(gen(x))``, per-sample weights of a policy) backpropagate
    ``grad`` through their graph into the leaves upstream (``d L_val / d phi = (d aux / d phi)^T grad``), one
    ``torch.autograd.backward`` call for all of them. Call ``optimizer.zero_grad()`` first to replace rather than
    accumulate, and skip this (and the optimiser step) when the :class:`LookaheadResult` says ``skipped``.

    Args:
        aux: the auxiliary tensors given to :func:`lookahead_hypergradient` (or the generator module).
        grads: one hypergradient per auxiliary tensor, same shape (``LookaheadResult.grads``).
        retain_graph: keep the graph upstream of non-leaf ``aux`` for another backward pass.

    Raises:
        ValueError: a count or shape mismatch, or an auxiliary tensor without ``requires_grad``.
    """
    aux_t = _aux_tensors(aux)
    grads_t = (grads,) if isinstance(grads, torch.Tensor) else tuple(grads)
    if len(grads_t) != len(aux_t):
        raise ValueError(f"got {len(grads_t)} gradients for {len(aux_t)} auxiliary tensors.")
    for i, (a, g) in enumerate(zip(aux_t, grads_t, strict=True)):
        if not a.requires_grad:
            raise ValueError(f"aux[{i}] does not require grad.")
        if tuple(g.shape) != tuple(a.shape):
            raise ValueError(f"grads[{i}] has shape {tuple(g.shape)}, aux[{i}] has shape {tuple(a.shape)}.")
    torch.autograd.backward(
        list(aux_t), [g.detach().to(a.dtype) for a, g in zip(aux_t, grads_t, strict=True)], retain_graph=retain_graph
    )


# -- the normal step from the look-ahead's pass at theta (reuse_lookahead_gradient) ----------------------------------
@dataclasses.dataclass
class LookaheadTrainStep:
    """The look-ahead's training pass at ``theta``, kept for the trainer's normal step.

    Attributes:
        pred: the segmenter's output at ``theta`` on the batch, detached (``(B, K, *spatial)``, or stacked deep
            supervision heads).
        loss: ``L_tr(theta, aux)``, the batch-mean training loss of the look-ahead, detached scalar.
        grads: ``grad_theta L_tr(theta, aux)`` by parameter name (of the unwrapped segmenter), detached, finite.
        buffers: the segmenter's buffers right after that forward pass, by name (BatchNorm running statistics
            updated once, as the normal step's forward pass would leave them; the look-ahead itself restores the
            buffers), or ``None`` to leave them.
    """

    pred: Any
    loss: torch.Tensor
    grads: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor] | None = None


class LookaheadTrainPass:
    """Keeps the first ``train_loss`` call of :func:`lookahead_hypergradient` (the one at ``theta``).

    A learner's ``train_loss`` closure calls :meth:`keep` with the segmenter's output; the first call stores the
    detached output and the segmenter's buffers after it. :meth:`step` combines them with the look-ahead's
    ``train_loss`` and ``train_grads`` into a :class:`LookaheadTrainStep`.

    Args:
        model: the segmenter the closure runs (unwrapped).
        enabled: keep nothing when ``False`` (:meth:`step` returns ``None``).
    """

    def __init__(self, model: nn.Module, enabled: bool = True) -> None:
        self.model = model
        self.enabled = bool(enabled)
        self.pred: Any = None
        self.buffers: dict[str, torch.Tensor] | None = None
        self.kept = False

    def keep(self, pred: Any) -> None:
        """Store ``pred`` (a tensor or a list / tuple of tensors) and the buffers, on the first call only."""
        if not self.enabled or self.kept:
            return
        self.kept = True
        self.pred = pred.detach() if isinstance(pred, torch.Tensor) else [t.detach() for t in pred]
        self.buffers = {name: b.detach().clone() for name, b in self.model.named_buffers()}

    def step(self, result: LookaheadResult) -> LookaheadTrainStep | None:
        """The kept pass with the look-ahead's loss and gradient at ``theta``; ``None`` when unusable.

        Unusable: nothing kept, no ``train_grads``, or a gradient that is not finite (the normal step then runs as
        usual and meets the same non-finite loss itself).
        """
        if not self.kept or result.train_grads is None or result.reason == "nonfinite_train_grad":
            return None
        return LookaheadTrainStep(self.pred, result.train_loss, result.train_grads, self.buffers)


def lookahead_step_blockers(engine: SupervisedTrainer) -> list[str]:
    """The trainer settings under which a kept look-ahead pass cannot replace the normal step.

    The reused step replaces ``SupervisedTrainer``'s forward/backward pass, so it needs an inferer that calls the
    segmenter directly (a ``SimpleInferer``, as the look-ahead does), ``accumulation_steps=1`` and a trainer whose
    iteration is that pass alone (a trainer declaring extra steps in ``extra_steps`` blocks it).

    Args:
        engine: the trainer.

    Returns:
        a description of each blocker (empty when the reuse is possible).
    """
    blockers = []
    if type(engine.inferer) is not SimpleInferer:
        blockers.append(
            f"inferer {type(engine.inferer).__name__} (the look-ahead calls the segmenter directly: a "
            "monai.inferers.SimpleInferer is needed)"
        )
    accumulation_steps = getattr(engine, "accumulation_steps", 1)
    if accumulation_steps != 1:
        blockers.append(f"accumulation_steps={accumulation_steps!r}")
    extra = tuple(getattr(engine, "extra_steps", ()))
    if extra:
        blockers.append(f"the trainer's extra steps ({', '.join(extra)})")
    return blockers


def step_from_lookahead(engine: SupervisedTrainer, inputs: Any, targets: Any, step: LookaheadTrainStep) -> Any:
    """The trainer's normal step from a kept look-ahead pass at ``theta``; returns ``engine.state.output``.

    ``SupervisedTrainer``'s events and output keys (``image``, ``label``, ``pred``, ``loss``), with the kept prediction
    and loss instead of a forward pass and the kept gradient (averaged over the ranks under DDP, as DDP's backward
    pass does) instead of a backward pass, and the kept buffers (BatchNorm running statistics after the pass at
    ``theta``); then the optimizer steps (float32, no ``GradScaler``).

    Args:
        engine: the trainer.
        inputs: the batch's image ``(B, C_in, *spatial)``, as ``prepare_batch`` gives it.
        targets: the batch's label ``(B, 1, *spatial)``.
        step: the kept pass.
    """
    engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.PRED: step.pred}
    engine.network.train()
    engine.fire_event(IterationEvents.FORWARD_COMPLETED)
    engine.state.output[Keys.LOSS] = step.loss
    engine.fire_event(IterationEvents.LOSS_COMPLETED)
    engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
    params = dict(unwrap_module(engine.network).named_parameters())
    names = list(step.grads)
    grads = average_over_ranks([step.grads[k] for k in names])
    with torch.no_grad():
        if step.buffers:
            buffers = dict(unwrap_module(engine.network).named_buffers())
            for name, value in step.buffers.items():
                buffers[name].copy_(value)
        for name, grad in zip(names, grads, strict=True):
            param = params[name]
            if param.grad is None:
                param.grad = grad.to(param.dtype)
            else:  # keep the existing tensor (it may be a view into DDP's gradient bucket)
                param.grad.copy_(grad)
    engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
    engine.optimizer.step()
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
    return engine.state.output
