# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Classification estimators against closed forms and independent computations (methods.md 4.2)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from monai_imbalance.estimation import ClassificationEstimator, create_estimator, load_estimator

CS_NAMES = ("ts", "doc", "atc", "ts-atc")
ALL = [(n, False) for n in ("ac", "ts", "vs", "norcal", "doc", "atc", "ts-atc", "qc")] + [(n, True) for n in CS_NAMES]


def calibrated(n: int, c: int, seed: int, scale: float = 2.0):
    """Logits and labels drawn from softmax(logits): perfectly calibrated."""
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z, y


def test_ac_exact_on_calibrated_logits():
    z, y = calibrated(60_000, 4, 0)
    p = torch.softmax(z, 1)
    s, pred = p.max(1)
    acc = float((pred == y).double().mean())
    sigma = float((s * (1 - s)).sum().sqrt()) / len(s)  # std of the empirical accuracy given the logits
    out = create_estimator("ac", task="classification").fit(z, y).estimate(z)
    assert out["overall"] == pytest.approx(float(s.mean()), abs=1e-12)
    assert abs(out["overall"] - acc) < 4 * sigma
    for k in range(4):
        m = pred == k
        sk = s[m]
        prec = float((y[m] == k).double().mean())
        assert abs(float(out["per_class"][k]) - prec) < 4 * float((sk * (1 - sk)).sum().sqrt()) / int(m.sum())
    # calibrated data: the fitted temperatures are close to 1
    for cs in (False, True):
        t = create_estimator("ts", cs, task="classification").fit(z, y).params["temperature"]
        assert all(abs(v - 1) < 0.05 for v in t)


def test_doc_recovers_constant_offset():
    g = torch.Generator().manual_seed(1)
    n, c, delta0 = 100_000, 3, 0.12
    z = 3.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    z[:, 0] += 4.0  # confident predictions: s >= delta0 for almost every sample
    s, pred = torch.softmax(z, 1).max(1)
    correct = torch.rand(n, generator=g, dtype=torch.float64) < (s - delta0).clamp(0, 1)
    wrong = (pred + torch.randint(1, c, (n,), generator=g)) % c
    y = torch.where(correct, pred, wrong)
    est = create_estimator("doc", task="classification").fit(z, y)
    delta = est.params["shift"][0]
    acc = float((pred == y).double().mean())
    assert delta == pytest.approx(float(s.mean()) - acc, abs=1e-12)  # the closed form
    assert abs(delta - delta0) < 4 * math.sqrt(0.25 / n) + float((delta0 - s).clamp_min(0).mean())
    zt = z[:1000] * 0.5
    assert est.estimate(zt)["overall"] == pytest.approx(float(torch.softmax(zt, 1).max(1).values.mean()) - delta)
    cs = create_estimator("doc", True, task="classification").fit(z, y)
    for k in range(c):
        m = pred == k
        assert cs.params["shift"][k] == pytest.approx(float(s[m].mean() - (y[m] == k).double().mean()), abs=1e-12)


@pytest.mark.parametrize("name", CS_NAMES)
def test_class_specific_equals_global_with_one_predicted_class(name):
    g = torch.Generator().manual_seed(2)
    z = torch.randn(3000, 4, generator=g)
    z[:, 1] += 6.0  # every sample predicted as class 1
    y = torch.randint(0, 4, (3000,), generator=g)
    y[:2000] = 1
    glob = create_estimator(name, task="classification").fit(z, y)
    with pytest.warns(UserWarning, match=r"class\(es\) \[0, 2, 3\] never predicted"):
        cs = create_estimator(name, True, task="classification").fit(z, y)
    for key, values in glob.params.items():
        assert cs.params[key] == pytest.approx(values, rel=1e-9)
    zt = z * 0.7
    assert cs.estimate(zt)["overall"] == pytest.approx(glob.estimate(zt)["overall"], abs=1e-12)


@pytest.mark.parametrize("name, cs", ALL)
def test_estimates_in_unit_interval(name, cs):
    z, y = calibrated(2000, 5, 3, scale=3.0)
    y[:600] = (y[:600] + 1) % 5  # overconfident model: DoC shifts far
    est = create_estimator(name, cs, task="classification").fit(z, y)
    for zt in (z, 0.1 * z, 10 * z, z[:7]):
        out = est.estimate(zt)
        assert 0.0 <= out["overall"] <= 1.0
        pc = out["per_class"]
        assert pc.dtype == torch.float64 and pc.shape == (5,)
        assert bool(((pc >= 0) & (pc <= 1) | pc.isnan()).all())
    counts = torch.bincount(z[:7].argmax(1), minlength=5)
    assert bool((est.estimate(z[:7])["per_class"].isnan() == (counts == 0)).all())


@pytest.mark.parametrize("solver", ["nelder-mead", "bisect"])
def test_fits_match_validation_accuracy(solver):
    z, y = calibrated(5000, 3, 4, scale=3.0)
    y[:800] = (y[:800] + 1) % 3
    pred = z.argmax(1)
    ts = create_estimator("ts", True, task="classification", solver=solver).fit(z, y)
    atc = create_estimator("atc", True, task="classification", solver=solver).fit(z, y)
    for k in range(3):
        m = pred == k
        prec = float((y[m] == k).double().mean())
        s_t = torch.softmax(z[m] / ts.params["temperature"][k], 1).max(1).values  # independent
        assert float(s_t.mean()) == pytest.approx(prec, abs=1e-6)
        s = torch.softmax(z[m], 1).max(1).values
        assert float((s > atc.params["threshold"][k]).double().mean()) == pytest.approx(prec, abs=2.0 / int(m.sum()))


def test_solvers_agree():
    z, y = calibrated(4000, 3, 5)
    y[:500] = (y[:500] + 1) % 3
    for name in ("ts", "ts-atc"):
        a = create_estimator(name, True, task="classification", solver="nelder-mead").fit(z, y)
        b = create_estimator(name, True, task="classification", solver="bisect").fit(z, y)
        assert a.params["temperature"] == pytest.approx(b.params["temperature"], rel=1e-4)


def test_vector_scaling_recovers_known_calibration():
    g = torch.Generator().manual_seed(6)
    z = 2.0 * torch.randn(100_000, 3, generator=g, dtype=torch.float64)
    w0, b0 = torch.tensor([0.5, 1.5, 1.0], dtype=torch.float64), torch.tensor([0.3, -0.2, -0.1], dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z * w0 + b0, 1), 1, generator=g).squeeze(1)
    p = create_estimator("vs", task="classification").fit(z, y).params
    assert p["vs_weight"] == pytest.approx(w0.tolist(), abs=0.05)
    assert p["vs_bias"] == pytest.approx((b0 - b0.mean()).tolist(), abs=0.05)


def test_norcal_recovers_known_gamma():
    g = torch.Generator().manual_seed(7)
    counts = [1000.0, 100.0, 10.0]
    z = 2.0 * torch.randn(100_000, 3, generator=g, dtype=torch.float64)
    y = torch.multinomial(torch.softmax(z - 0.5 * torch.tensor(counts).log(), 1), 1, generator=g).squeeze(1)
    est = create_estimator("norcal", task="classification", class_counts=counts).fit(z, y)
    assert est.params["norcal_gamma"] == pytest.approx(0.5, abs=0.05)
    scores = est.calibrated_scores(z)  # the probability of the model's own prediction after NORCAL
    q = torch.softmax(z - est.params["norcal_gamma"] * torch.tensor(counts).log(), 1)
    assert torch.allclose(scores, q.gather(1, z.argmax(1, keepdim=True)).squeeze(1))


def test_qc_is_ridge_on_the_features():
    z, y = calibrated(3000, 4, 8)
    est = create_estimator("qc", task="classification", ridge=0.5).fit(z, y)
    p = torch.softmax(z, 1)
    top2 = p.topk(2, 1).values
    feats = torch.stack([top2[:, 0], 1 + (p * p.log()).sum(1) / math.log(4), top2[:, 0] - top2[:, 1]], 1).numpy()
    mu, sd = feats.mean(0), feats.std(0)
    a = np.c_[np.ones(len(feats)), (feats - mu) / sd]
    target = (z.argmax(1) == y).double().numpy()
    pred = z.argmax(1).numpy()

    def expected(ridge: float) -> list[float]:
        """The overall and per-class estimates of the ridge regressor, by the normal equations (numpy's LAPACK)."""
        coef = np.linalg.solve(a.T @ a + ridge * np.diag([0, 1, 1, 1]), a.T @ target)
        scores = np.clip(a @ coef, 0, 1)
        return [scores.mean(), *(scores[pred == k].mean() for k in range(4))]

    out = est.estimate(z)
    got = [out["overall"], *out["per_class"].tolist()]
    # two solvers (torch's lstsq, numpy's solve) in float64 on a well-conditioned system (cond ~300): they agree to
    # ~1e-14; the tolerance still resolves the ridge penalty, which moves the per-class estimates by ~1e-5
    assert got == pytest.approx(expected(0.5), abs=1e-7)
    assert got != pytest.approx(expected(0.0), abs=1e-7)


@pytest.mark.parametrize("name, cs", ALL)
def test_json_round_trip(name, cs):
    z, y = calibrated(1000, 3, 9)
    est = create_estimator(name, cs, task="classification").fit(z, y)
    again = load_estimator(json.loads(json.dumps(est.to_dict())))
    assert again.fitted and type(again) is type(est)
    zt = 0.8 * z
    assert again.estimate(zt)["overall"] == pytest.approx(est.estimate(zt)["overall"], abs=1e-12)
    assert torch.equal(again.estimate(zt)["per_class"].isnan(), est.estimate(zt)["per_class"].isnan())


def test_absent_class_warns_and_uses_global():
    z, y = calibrated(2000, 3, 10)
    z[:, 2] -= 1.0
    y[y == 2] = 0  # class 2 is predicted but never in the labels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        glob = create_estimator("ts", task="classification").fit(z, y).params["temperature"][0]
    with pytest.warns(UserWarning, match=r"\[2\].*global parameter"):
        cs = create_estimator("ts", True, task="classification").fit(z, y)
    assert cs.params["temperature"][2] == pytest.approx(glob)
    with pytest.warns(UserWarning, match=r"\[2\] absent from the validation labels"):
        vs = create_estimator("vs", task="classification").fit(z, y)
    assert vs.params["vs_weight"][2] == 1.0 and vs.params["vs_bias"][2] == 0.0


def test_bad_inputs():
    z, y = calibrated(100, 3, 11)
    est = ClassificationEstimator("ts")
    with pytest.raises(RuntimeError, match="not fitted"):
        est.estimate(z)
    assert not est.fitted
    with pytest.raises(ValueError, match="different lengths"):
        est.fit(z, y[:-1])
    with pytest.raises(ValueError, match=r"must be \(N,\)"):
        est.fit(z, y[:, None])
    with pytest.raises(ValueError, match=r"must be \(N, C\)"):
        est.fit(z[:, :, None], y)
    for bad in (float("nan"), float("inf")):
        zz = z.clone()
        zz[3, 1] = bad
        with pytest.raises(ValueError, match="non-finite"):
            est.fit(zz, y)
    with pytest.raises(ValueError, match="class index 3, out of range"):
        est.fit(z, torch.full((100,), 3))
    est.fit(z, y)
    with pytest.raises(ValueError, match="fitted with 3"):
        est.estimate(torch.randn(10, 4))
    with pytest.raises(ValueError, match="non-finite"):
        est.estimate(torch.full((2, 3), float("nan")))
    with pytest.raises(ValueError, match="unknown method"):
        ClassificationEstimator("temperature")
    with pytest.raises(ValueError, match="class_specific=True is not defined for 'vs'"):
        ClassificationEstimator("vs", class_specific=True)
    with pytest.raises(ValueError, match="unknown solver"):
        ClassificationEstimator("ts", solver="lbfgs")
