# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""One-step look-ahead hypergradient (CoLab methods.md 2.4, JCSAugment 3.4, 6.4) against independent computations."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import DynUNet
from torch import nn

from monai_imbalance.engines import (
    DEFAULT_RADIUS,
    LookaheadResult,
    apply_hypergradient,
    check_lookahead_settings,
    functional_forward,
    lookahead_hypergradient,
    per_sample_lookahead_hypergradient,
)

K = 3  # segmenter channels (background/context 0, foreground 1, context 2)
SHAPE = (8, 8, 8)
LR = 0.1
F64 = torch.float64
METHODS = ["exact", "finite_difference", "forward_difference"]
#: radius per method: the one-sided difference is first order in r and needs a smaller one for the same accuracy
RADIUS = {"exact": 1e-2, "finite_difference": 1e-2, "forward_difference": 1e-4}
#: relative error against the unrolled reference (float64)
TOLERANCE = {"exact": 1e-8, "finite_difference": 1e-3, "forward_difference": 1e-2}


class TinyNet(nn.Module):
    """Two 3D convolutions with a smooth (tanh) or piecewise-linear activation, optional BatchNorm / dropout."""

    def __init__(self, act: str = "tanh", norm: bool = False, dropout: float = 0.0, out_channels: int = K) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm3d(4) if norm else nn.Identity()
        self.act = nn.Tanh() if act == "tanh" else nn.LeakyReLU(0.01)
        self.drop = nn.Dropout3d(dropout)
        self.conv2 = nn.Conv3d(4, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.drop(self.act(self.norm(self.conv1(x)))))


def _tiny(seed: int = 0, dtype: torch.dtype = F64, **kwargs) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(**kwargs).to(dtype)


def _dynunet(seed: int = 0, dtype: torch.dtype = F64, act="leakyrelu", out_channels: int = K) -> DynUNet:
    """The smallest DynUNet (3 levels, as MONAI requires), instance norm, 8^3 input -> 2^3 bottleneck."""
    torch.manual_seed(seed)
    net = DynUNet(3, 1, out_channels, [3, 3, 3], [1, 2, 2], [2, 2], filters=[4, 8, 8], act_name=act)
    return net.to(dtype)


def _data(batch: int = 2, seed: int = 1, dtype: torch.dtype = F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, *SHAPE, generator=g).to(dtype)
    y = torch.randint(0, 2, (batch, 1, *SHAPE), generator=g)
    logits = torch.randn(batch, K, *SHAPE, generator=g).to(dtype)
    return x, y, logits


def _soft_ce(out: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-target cross-entropy, per sample ``(B,)`` when ``weights`` is given (weighted mean), else the mean."""
    per_voxel = -(target * torch.log_softmax(out, 1)).sum(1)
    if weights is None:
        return per_voxel.mean()
    return (weights * per_voxel.flatten(1).mean(1)).mean()


def _fg_bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CoLab's meta loss: BCE of the foreground channel of softmax over all K channels (methods.md 2.4)."""
    p = torch.softmax(out, 1)[:, 1:2].clamp(1e-6, 1 - 1e-6)
    return nn.functional.binary_cross_entropy(p, (y == 1).to(p.dtype))


def _colab_closures(net: nn.Module, x: torch.Tensor, y: torch.Tensor, q: torch.Tensor):
    """L_tr with the soft target q (K channels), L_val the foreground BCE after the step."""

    def train(p):
        return _soft_ce(functional_forward(net, p, x), q)

    def val(p):
        return _fg_bce(functional_forward(net, p, x), y)

    return train, val


def _unrolled(model: nn.Module, train, val, aux, lr: float = LR) -> tuple[torch.Tensor, ...]:
    """Independent reference: differentiate L_val(theta - lr grad L_tr(theta, aux)) through the unrolled step."""
    theta = {k: p.detach().requires_grad_(True) for k, p in model.named_parameters()}
    g = torch.autograd.grad(train(theta), list(theta.values()), create_graph=True)
    theta_p = {k: t - lr * gi for (k, t), gi in zip(theta.items(), g, strict=True)}
    aux = (aux,) if isinstance(aux, torch.Tensor) else tuple(aux)
    return torch.autograd.grad(val(theta_p), aux, retain_graph=True)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _state(model: nn.Module) -> dict:
    return {
        "objects": [(n, id(p), type(p)) for n, p in model.named_parameters(remove_duplicate=False)],
        "values": {n: p.detach().clone() for n, p in model.state_dict().items()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
    }


def _assert_same_state(model: nn.Module, before: dict) -> None:
    after = _state(model)
    assert after["objects"] == before["objects"]
    for n, v in before["values"].items():
        assert torch.equal(after["values"][n], v), n
    for n, g in before["grads"].items():
        assert (after["grads"][n] is None) == (g is None) and (g is None or torch.equal(after["grads"][n], g)), n


# --- exact method against the fully unrolled differentiation ------------------------------------------------------


@pytest.mark.parametrize("make", [_tiny, _dynunet], ids=["tiny", "dynunet"])
def test_exact_matches_unrolled_autograd(make):
    """Must hold: the double-backward hypergradient equals autograd through the unrolled virtual step."""
    net = make()
    x, y, logits = _data()
    q = torch.softmax(logits, 1).requires_grad_(True)
    train, val = _colab_closures(net, x, y, q)
    res = lookahead_hypergradient(net, train, val, q, LR, method="exact")
    (ref,) = _unrolled(net, train, val, q)
    assert isinstance(res, LookaheadResult) and not res.skipped and res.reason is None
    assert res.grads[0].shape == q.shape and ref.norm() > 0
    assert _rel(res.grads[0], ref) < 1e-8


def test_exact_and_finite_difference_match_central_differences_on_linear_model():
    """A linear least-squares model with per-sample weights: closed-form virtual step, central differences over w."""
    g = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, generator=g, dtype=F64)
    xv, yv = torch.randn(4, 3, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    model = nn.Linear(3, 1, bias=False).double()
    w0 = torch.rand(5, generator=g, dtype=F64) + 0.5

    def objective(w: torch.Tensor) -> torch.Tensor:  # L_val(theta'(w)), written out
        theta = model.weight.detach()[0]
        grad = (2.0 / 5) * ((w * (xs @ theta - ys))[:, None] * xs).sum(0)
        theta_p = theta - LR * grad
        return ((xv @ theta_p - yv) ** 2).mean()

    eps = 1e-6
    basis = torch.eye(5, dtype=F64)
    ref = torch.stack([(objective(w0 + eps * e) - objective(w0 - eps * e)) / (2 * eps) for e in basis])

    w = w0.clone().requires_grad_(True)

    def train(p):
        return (w * (functional_forward(model, p, xs)[:, 0] - ys) ** 2).mean()

    def val(p):
        return ((functional_forward(model, p, xv)[:, 0] - yv) ** 2).mean()

    exact = lookahead_hypergradient(model, train, val, w, LR, method="exact")
    fd = lookahead_hypergradient(model, train, val, w, LR)
    torch.testing.assert_close(exact.grads[0], ref, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(fd.grads[0], ref, rtol=1e-7, atol=1e-10)  # quadratic L_tr: the difference is exact
    torch.testing.assert_close(exact.val_loss, objective(w0))


# --- finite differences against exact --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,dtype,r,tol",
    [
        (_tiny, F64, 1e-2, 1e-3),
        (_tiny, torch.float32, 1e-2, 1e-2),  # the default radius, in float32
        (lambda **kw: _dynunet(act="tanh", **kw), F64, 1e-2, 1e-2),
        (_dynunet, F64, 1e-6, 1e-6),  # LeakyReLU: only a radius that crosses no kink matches exact
    ],
    ids=["tiny-f64", "tiny-f32", "dynunet-tanh-f64", "dynunet-leakyrelu-f64-small-r"],
)
@pytest.mark.parametrize("method", ["finite_difference", "forward_difference"])
def test_finite_difference_matches_exact(make, dtype, r, tol, method):
    """Must hold: the finite-difference hypergradients against the double backward, relative error < 1e-2.

    The one-sided difference is first order in ``r``: it runs at a tenth of the radius for the same tolerance."""
    net = make(dtype=dtype)
    x, y, logits = _data(dtype=dtype)
    q = torch.softmax(logits, 1).requires_grad_(True)
    train, val = _colab_closures(net, x, y, q)
    exact = lookahead_hypergradient(net, train, val, q, LR, method="exact")
    fd = lookahead_hypergradient(
        net, train, val, q, LR, method=method, r=r if method == "finite_difference" else r / 10
    )
    assert _rel(fd.grads[0], exact.grads[0]) < tol
    torch.testing.assert_close(fd.val_loss, exact.val_loss)
    torch.testing.assert_close(fd.val_grad_norm, exact.val_grad_norm)
    torch.testing.assert_close(fd.train_loss, exact.train_loss)


@pytest.mark.parametrize("method,order", [("finite_difference", 2), ("forward_difference", 1)])
def test_finite_difference_error_order_in_r_for_smooth_net(method, order):
    net = _dynunet(act="tanh")
    x, y, logits = _data()
    q = torch.softmax(logits, 1).requires_grad_(True)
    train, val = _colab_closures(net, x, y, q)
    exact = lookahead_hypergradient(net, train, val, q, LR, method="exact").grads[0]
    errors = [_rel(lookahead_hypergradient(net, train, val, q, LR, method, r=r).grads[0], exact) for r in (1e-1, 1e-2)]
    assert 10**order / 2 < errors[0] / errors[1] < 10**order * 2  # (1e-1 / 1e-2)^order


def test_dropout_masks_repeat_between_virtual_passes():
    """With dropout active, theta + Rv and theta - Rv see the same masks, so the difference still matches exact."""
    net = _tiny(dropout=0.5).train()
    x, y, logits = _data()
    q = torch.softmax(logits, 1).requires_grad_(True)
    train, val = _colab_closures(net, x, y, q)
    torch.manual_seed(3)
    exact = lookahead_hypergradient(net, train, val, q, LR, method="exact")
    torch.manual_seed(3)
    fd = lookahead_hypergradient(net, train, val, q, LR)
    assert _rel(fd.grads[0], exact.grads[0]) < 1e-3


# --- auxiliary tensors: per-sample weights of a policy, generator parameters ---------------------------------------


def _policy_weights(alpha: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
    """Straight-through weights w_b = 1 - sg(y_k) + y_k (value 1, carries d/d alpha), methods.md 3.2."""
    y_soft = torch.softmax(alpha, 0)[choice]
    return 1.0 - y_soft.detach() + y_soft


@pytest.mark.parametrize("method", METHODS)
def test_per_sample_weights_of_a_policy(method):
    """aux = w (non-leaf output of a policy): hypergradient of w, then backprop to alpha == hypergradient of alpha."""
    net = _tiny()
    x, y, logits = _data(batch=3)
    target = torch.softmax(logits, 1)
    alpha = torch.tensor([0.3, -0.2, 0.5, 0.1], dtype=F64, requires_grad=True)
    choice = torch.tensor([0, 2, 2])
    w = _policy_weights(alpha, choice)

    def train(p):
        return _soft_ce(functional_forward(net, p, x), target, weights=w)

    def val(p):
        return _fg_bce(functional_forward(net, p, x), y)

    res = lookahead_hypergradient(net, train, val, w, LR, method=method, r=RADIUS[method])
    (ref_w,) = _unrolled(net, train, val, w)
    assert res.grads[0].shape == (3,)
    assert _rel(res.grads[0], ref_w) < TOLERANCE[method]

    apply_hypergradient(w, res.grads, retain_graph=True)
    (ref_alpha,) = _unrolled(net, train, val, alpha)  # the same objective, differentiated to alpha directly
    (chain,) = torch.autograd.grad(w, alpha, res.grads[0])
    torch.testing.assert_close(alpha.grad, chain)
    assert _rel(alpha.grad, ref_alpha) < TOLERANCE[method]


class Generator(nn.Module):
    """Context-label generator: 1x1 conv to t = 2 context logits; soft target = (q_0, onehot fg, q_1) for K = 3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)

    def soft_target(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        q = torch.softmax(self.conv(x), 1)
        fg = (y == 1).to(q.dtype)
        return torch.cat([q[:, :1] * (1 - fg), fg, q[:, 1:] * (1 - fg)], 1)


@pytest.mark.parametrize("method", METHODS)
def test_generator_parameters_as_aux(method):
    """aux = generator parameters (generator -> softmax -> soft target -> L_tr), the generator run inside L_tr or
    once outside, and aux = its soft target routed back with apply_hypergradient: all equal the unrolled reference."""
    net = _dynunet() if method == "exact" else _dynunet(act="tanh")  # LeakyReLU: see test_finite_difference_...
    x, y, _ = _data()
    torch.manual_seed(7)
    gen = Generator().double()

    def train_inside(p):
        return _soft_ce(functional_forward(net, p, x), gen.soft_target(x, y))

    def val(p):
        return _fg_bce(functional_forward(net, p, x), y)

    ref = _unrolled(net, train_inside, val, list(gen.parameters()))
    tol = max(TOLERANCE[method], 1e-2 if method == "finite_difference" else 0.0)
    res = lookahead_hypergradient(net, train_inside, val, gen, LR, method=method, r=RADIUS[method])
    assert len(res.grads) == 2 and all(_rel(a, b) < tol for a, b in zip(res.grads, ref, strict=True))

    target = gen.soft_target(x, y)  # generator run once; its graph is shared by all closure calls

    def train_outside(p):
        return _soft_ce(functional_forward(net, p, x), target)

    params = list(gen.parameters())
    res_out = lookahead_hypergradient(net, train_outside, val, params, LR, method=method, r=RADIUS[method])
    res_q = lookahead_hypergradient(net, train_outside, val, target, LR, method=method, r=RADIUS[method])
    gen.zero_grad(set_to_none=True)
    apply_hypergradient(target, res_q.grads)
    for a, b, p in zip(res_out.grads, res.grads, gen.parameters(), strict=True):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(p.grad, b)


def test_apply_hypergradient_accumulates_into_leaves():
    a = torch.zeros(3, dtype=F64, requires_grad=True)
    b = torch.zeros(2, dtype=F64, requires_grad=True)
    a.grad = torch.ones(3, dtype=F64)
    apply_hypergradient([a, b], [torch.full((3,), 2.0, dtype=F64), torch.tensor([1.0, -1.0], dtype=F64)])
    torch.testing.assert_close(a.grad, torch.full((3,), 3.0, dtype=F64))
    torch.testing.assert_close(b.grad, torch.tensor([1.0, -1.0], dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        apply_hypergradient(a, torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match="gradients for"):
        apply_hypergradient([a, b], [torch.zeros(3, dtype=F64)])


# --- model state -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("plain_functional_call", [False, True])
def test_model_and_aux_state_unchanged(method, plain_functional_call):
    """Parameters (objects and values), their .grad, BatchNorm running stats and aux .grad are left as they were,
    even when the closures use torch.func.functional_call directly on a DynUNet (pytorch/pytorch#164759)."""
    nets = [_dynunet(), _tiny(norm=True).train()]
    x, y, logits = _data()
    for net in nets:
        for i, p in enumerate(net.parameters()):
            p.grad = torch.full_like(p, float(i)) if i % 2 else None
        before = _state(net)
        q = torch.softmax(logits.clone().requires_grad_(True), 1)
        q.retain_grad()

        def forward(p, net=net):
            if plain_functional_call:
                return torch.func.functional_call(net, p, (x,))
            return functional_forward(net, p, x)

        res = lookahead_hypergradient(
            net,
            lambda p, f=forward, q=q: _soft_ce(f(p), q),
            lambda p, f=forward: _fg_bce(f(p), y),
            q,
            LR,
            method=method,
        )
        assert not res.skipped
        _assert_same_state(net, before)
        assert q.grad is None


def test_functional_forward_on_dynunet():
    """Uses the given values on every path of DynUNet's shared submodules and leaves the module intact."""
    net, (x, _, _) = _dynunet(), _data()
    before = _state(net)
    doubled = {k: 2 * p.detach() for k, p in net.named_parameters()}
    out = functional_forward(net, doubled, x)
    _assert_same_state(net, before)
    ref_net = copy.deepcopy(net)
    with torch.no_grad():
        for p in ref_net.parameters():
            p.mul_(2)
    torch.testing.assert_close(out, ref_net(x))
    with pytest.raises(ValueError, match="neither a parameter nor a buffer"):
        functional_forward(net, {"nope": x}, x)


def test_train_grads_equal_a_normal_backward():
    net, (x, y, logits) = _tiny(), _data()
    q = torch.softmax(logits, 1).requires_grad_(True)
    train, val = _colab_closures(net, x, y, q)
    res = lookahead_hypergradient(net, train, val, q, LR)
    ref = copy.deepcopy(net)
    _soft_ce(ref(x), q.detach()).backward()
    for n, p in ref.named_parameters():
        torch.testing.assert_close(res.train_grads[n], p.grad)


# --- skip signalling ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "case,reason",
    [
        ("zero_val", "zero_val_grad"),
        ("nan_val", "nonfinite_val_grad"),
        ("nan_train", "nonfinite_train_grad"),
        ("inf_hyper", "nonfinite_hypergrad"),
    ],
)
def test_skip_paths(method, case, reason):
    net, (x, y, logits) = _tiny(), _data()
    q = torch.softmax(logits, 1).requires_grad_(True)
    a = torch.zeros((), dtype=F64, requires_grad=True)  # d sqrt(a) / da = inf at 0, sqrt(a) = 0

    def train(p):
        out = functional_forward(net, p, x)
        loss = _soft_ce(out, q)
        if case == "nan_train":
            loss = loss * float("nan")
        if case == "inf_hyper":
            loss = loss + torch.sqrt(a) * out.mean()
        return loss

    def val(p):
        loss = _fg_bce(functional_forward(net, p, x), y)
        return loss * {"zero_val": 0.0, "nan_val": float("nan")}.get(case, 1.0)

    before = _state(net)
    res = lookahead_hypergradient(net, train, val, [q, a], LR, method=method)
    assert res.skipped and res.reason == reason
    assert all(torch.equal(g, torch.zeros_like(g)) for g in res.grads)
    _assert_same_state(net, before)


# --- per sample (vmap) ---------------------------------------------------------------------------------------------


def _per_sample_closures(net):
    def train(p, q_b, x_b, y_b):
        return _soft_ce(functional_forward(net, p, x_b[None]), q_b[None])

    def val(p, x_b, y_b):
        return _fg_bce(functional_forward(net, p, x_b[None]), y_b[None])

    return train, val


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("chunk_size", [None, 1])
def test_per_sample_equals_batch_of_one(method, chunk_size):
    """vmap over DynUNet (instance norm): sample b's hypergradient == the batched look-ahead on sample b alone."""
    net = _dynunet(act="tanh")
    x, y, logits = _data(batch=3)
    q = torch.softmax(logits.requires_grad_(True), 1)
    train, val = _per_sample_closures(net)
    before = _state(net)
    res = per_sample_lookahead_hypergradient(net, train, val, q, (x, y), LR, method=method, chunk_size=chunk_size)
    _assert_same_state(net, before)
    assert not res.skipped and res.grads[0].shape == q.shape and not res.skipped_samples.any()
    for b in range(3):
        qb = q[b : b + 1]
        one = lookahead_hypergradient(
            net,
            lambda p, b=b, qb=qb: _soft_ce(functional_forward(net, p, x[b : b + 1]), qb),
            lambda p, b=b: _fg_bce(functional_forward(net, p, x[b : b + 1]), y[b : b + 1]),
            qb,
            LR,
            method=method,
        )
        torch.testing.assert_close(res.grads[0][b : b + 1], one.grads[0], rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(res.val_loss[b], one.val_loss)
        torch.testing.assert_close(res.train_loss[b], one.train_loss)
    apply_hypergradient(q, res.grads)  # routed through the softmax to the logits
    (chain,) = torch.autograd.grad(torch.softmax(logits, 1), logits, res.grads[0])
    torch.testing.assert_close(logits.grad, chain)


def test_per_sample_skips_only_the_bad_sample():
    net = _tiny()
    x, y, logits = _data(batch=2)
    y = y.clone()
    q = torch.softmax(logits, 1).requires_grad_(True)
    train, _ = _per_sample_closures(net)

    def val(p, x_b, y_b):  # sample 0 has a zero validation loss (and gradient)
        return _fg_bce(functional_forward(net, p, x_b[None]), y_b[None]) * (y_b.sum() < y[0].sum()).to(F64)

    y[1].zero_()
    res = per_sample_lookahead_hypergradient(net, train, val, q, (x, y), LR)
    assert res.skipped_samples.tolist() == [True, False] and not res.skipped
    assert res.reason == "sample 0: zero_val_grad"
    assert torch.equal(res.grads[0][0], torch.zeros_like(res.grads[0][0])) and res.grads[0][1].norm() > 0


def test_per_sample_refuses_running_stats():
    net = _tiny(norm=True).train()
    x, y, logits = _data()
    train, val = _per_sample_closures(net)
    with pytest.raises(ValueError, match="running statistics"):
        per_sample_lookahead_hypergradient(net, train, val, torch.softmax(logits, 1), (x, y), LR)
    with pytest.raises(ValueError, match="same B"):
        per_sample_lookahead_hypergradient(_tiny(), train, val, torch.softmax(logits, 1), (x[:1], y), LR)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_bad_input():
    net, (x, y, logits) = _tiny(), _data()
    q = torch.softmax(logits, 1).requires_grad_(True)
    train, val = _colab_closures(net, x, y, q)
    with pytest.raises(ValueError, match="method"):
        lookahead_hypergradient(net, train, val, q, LR, method="unrolled")
    with pytest.raises(ValueError, match="lr"):
        lookahead_hypergradient(net, train, val, q, -1.0)
    with pytest.raises(ValueError, match="r must"):
        lookahead_hypergradient(net, train, val, q, LR, r=0.0)
    with pytest.raises(ValueError, match="does not require grad"):
        lookahead_hypergradient(net, train, val, q.detach(), LR)
    with pytest.raises(ValueError, match="at least one"):
        lookahead_hypergradient(net, train, val, [], LR)
    with pytest.raises(ValueError, match="scalar"):
        lookahead_hypergradient(net, lambda p: functional_forward(net, p, x), val, q, LR)
    with pytest.raises(ValueError, match="does not depend on params"):
        lookahead_hypergradient(net, lambda p: (q**2).sum(), val, q, LR)
    with pytest.raises(ValueError, match="does not depend on params"):
        lookahead_hypergradient(net, train, lambda p: x.sum(), q, LR)


def test_default_radius_per_method():
    """r=None is the method's DEFAULT_RADIUS (the one-sided difference's smaller), bit for bit."""
    net, (x, y, logits) = _dynunet(act="tanh"), _data()
    q = torch.softmax(logits, 1).requires_grad_(True)
    train, val = _colab_closures(net, x, y, q)
    assert DEFAULT_RADIUS["forward_difference"] < DEFAULT_RADIUS["finite_difference"] == 1e-2
    for method in ("finite_difference", "forward_difference"):
        a = lookahead_hypergradient(net, train, val, q, LR, method=method)
        b = lookahead_hypergradient(net, train, val, q, LR, method=method, r=DEFAULT_RADIUS[method])
        c = lookahead_hypergradient(net, train, val, q, LR, method=method, r=DEFAULT_RADIUS[method] * 10)
        torch.testing.assert_close(a.grads[0], b.grads[0], rtol=0, atol=0)
        assert not torch.equal(a.grads[0], c.grads[0])


@pytest.mark.parametrize(
    "settings, match",
    [
        (("newton", None, None), "learner method must be one of"),
        (("forward_difference", 0, None), "learner r must be a number > 0"),
        (("forward_difference", float("nan"), None), "learner r must"),
        (("forward_difference", "0.01", None), "learner r must"),
        (("exact", None, True), "learner meta_lr must"),
        (("exact", None, -1e-3), "learner meta_lr must"),
    ],
)
def test_check_lookahead_settings_names_the_key(settings, match):
    with pytest.raises(ValueError, match=match):
        check_lookahead_settings("learner", *settings)
    check_lookahead_settings("learner", "forward_difference", 1e-3, 0.01)  # valid settings pass
