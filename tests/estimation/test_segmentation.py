# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Segmentation estimators against closed forms and independent computations (methods.md 4.3)."""

from __future__ import annotations

import inspect
import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from monai_imbalance.estimation import SegmentationEstimator, create_estimator, load_estimator, prediction_dice

CS_NAMES = ("ts", "doc", "atc", "ts-atc")
ALL = [(n, False) for n in ("ac", "ts", "vs", "norcal", "doc", "atc", "ts-atc")] + [(n, True) for n in CS_NAMES]


def phantoms(n: int, size: int = 16, classes: int = 3, seed: int = 0, shift: float = 0.0, scale: float = 12.0):
    """3D cases: a ball (class 1) with a smaller ball (class 2) inside, noisy smooth logits, confident far
    background (margin up to ``scale``)."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    logits, labels = [], []
    for _ in range(n):
        c0 = size / 2 + (torch.rand(3, generator=g) - 0.5) * 2
        r0 = size * (0.25 + 0.1 * float(torch.rand(1, generator=g)))
        sd0 = r0 - ((grid - c0[:, None, None, None]) ** 2).sum(0).sqrt()
        sd1 = 0.45 * r0 - ((grid - c0[:, None, None, None] - 1) ** 2).sum(0).sqrt()
        noise = F.avg_pool3d(torch.randn(2, 1, size, size, size, generator=g), 3, 1, 1)[:, 0] * (3 + 3 * shift)
        s = scale / (1 + shift)
        z1 = s * torch.tanh((sd0 + noise[0]) / 4)
        chans = [torch.zeros_like(z1), z1]
        y = (sd0 > 0).long()
        if classes == 3:
            chans.append(z1 + 0.5 * s * torch.tanh((sd1 + noise[1] - shift) / 2))
            y[(sd1 > 0) & (sd0 > 0)] = 2
        logits.append(torch.stack(chans))
        labels.append(y)
    return logits, labels


def soft_dice(z, t_pred=1.0):
    """Independent paper-form soft Dice of one case vs its own argmax: (C,) with one temperature per predicted
    class (``t_pred`` a (C,) tensor) or a float."""
    c = z.shape[0]
    pred = z.argmax(0)
    t = t_pred[pred] if isinstance(t_pred, torch.Tensor) else t_pred
    p = torch.softmax(z.double() / t, 0)
    onehot = F.one_hot(pred, c).movedim(-1, 0).double()
    return (2 * (p * onehot).sum((1, 2, 3)) + 1e-5) / (p.sum((1, 2, 3)) + onehot.sum((1, 2, 3)) + 1e-5)


def test_prediction_dice_matches_monai():
    from monai.metrics import compute_dice

    logits, labels = phantoms(3, classes=3, seed=1)
    logits[2][2] -= 100.0  # class 2 never predicted in case 2: DSC 0 (its label is not empty)
    labels[1][labels[1] == 2] = 1  # class 2 absent from the labels of case 1
    ours = prediction_dice(logits, [y[None] for y in labels])
    pred = torch.stack([F.one_hot(z.argmax(0), 3).movedim(-1, 0) for z in logits])
    ref = torch.stack([F.one_hot(y, 3).movedim(-1, 0) for y in labels])
    expected = compute_dice(pred, ref, include_background=False, ignore_empty=False)
    assert torch.allclose(ours, expected.double(), atol=1e-6)
    assert ours[2, 1] == 0.0


def test_ac_paper_form_is_exact_for_calibrated_voxels():
    """Labels drawn from softmax(logits) per voxel: the soft Dice against the own prediction is the Dice's
    expectation (law of large numbers), so AC is exact up to sampling noise."""
    g = torch.Generator().manual_seed(3)
    size = (96, 96, 12)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in size], indexing="ij"))
    sd = 30 - ((grid[:2] - 48) ** 2).sum(0).sqrt()
    z = torch.stack([torch.zeros(size), sd / 3 + F.avg_pool3d(torch.randn(1, *size, generator=g), 3, 1, 1)[0]])
    y = torch.multinomial(torch.softmax(z, 0).reshape(2, -1).T, 1, generator=g).reshape(size)
    est = create_estimator("ac").fit([z], [y])
    assert float(est.estimate([z])["mean"][0]) == pytest.approx(float(prediction_dice([z], [y])[0, 0]), abs=0.01)
    # the estimator's softmax is float32 (the logits' dtype), the reference's float64: they differ by ~3e-10 here,
    # more with another CPU's float32 exp; a 1 % temperature change already moves this soft Dice by ~1e-3
    estimate = float(est.estimate([z])["mean"][0])
    assert estimate == pytest.approx(float(soft_dice(z)[1]), abs=1e-6)
    assert estimate != pytest.approx(float(soft_dice(z, 1.01)[1]), abs=1e-6)


@pytest.mark.parametrize("convention", ["paper", "moval"])
@pytest.mark.parametrize("name", CS_NAMES)
def test_class_specific_fit_matches_validation_dice(name, convention):
    logits, labels = phantoms(4, seed=4)
    est = create_estimator(name, True, convention=convention, keep_margin=None, solver="bisect").fit(logits, labels)
    true = prediction_dice(logits, labels).mean(0)
    assert torch.allclose(est.estimate(logits)["mean"], true, atol=2e-3)


def test_global_fit_matches_voxel_accuracy():
    logits, labels = phantoms(3, seed=5)
    est = create_estimator("ts", keep_margin=None).fit(logits, labels)
    t = est.params["temperature"][0]
    z = torch.cat([x.reshape(3, -1) for x in logits], 1)
    y = torch.cat([v.reshape(-1) for v in labels])
    conf = torch.softmax(z.double() / t, 0).max(0).values.mean()
    assert float(conf) == pytest.approx(float((z.argmax(0) == y).double().mean()), abs=1e-6)
    # the estimate is the independent soft Dice against the own prediction at that temperature
    for z_case, row in zip(logits, est.estimate(logits)["per_case"], strict=True):
        assert torch.allclose(row, soft_dice(z_case, t)[1:], atol=1e-6)


def test_binary_paper_two_step_is_the_notebook_fit():
    """Binary CS-TS (``"paper"``) = the notebook: T_BG at voxel level on voxels predicted BG, then T_FG on Dice."""
    from scipy.optimize import brentq

    logits, labels = phantoms(4, classes=2, seed=6)
    est = create_estimator("ts", True, keep_margin=None, solver="bisect").fit(logits, labels)
    z = torch.cat([x.reshape(2, -1) for x in logits], 1).double()
    y = torch.cat([v.reshape(-1) for v in labels])
    bg = z.argmax(0) == 0
    acc_bg = float((y[bg] == 0).double().mean())
    t_bg = brentq(lambda t: float(torch.softmax(z[:, bg] / t, 0)[0].mean()) - acc_bg, 1e-2, 1e2, xtol=1e-12)
    true = float(prediction_dice(logits, labels)[:, 0].mean())

    def dice(t_fg):
        t = torch.tensor([t_bg, t_fg], dtype=torch.float64)
        return sum(float(soft_dice(x, t)[1]) for x in logits) / len(logits)

    t_fg = brentq(lambda t: dice(t) - true, 1e-2, 1e2, xtol=1e-12)
    # T_BG is fitted on float32 confidences, brentq on float64 ones; the residual changes by only 0.016 per unit of
    # relative temperature, so the confidences' CPU-dependent float32 rounding moves T_BG 60 times as much (7e-8)
    assert est.params["leak_temperature"][1] == pytest.approx(t_bg, rel=1e-5)
    assert est.params["temperature"][1] == pytest.approx(t_fg, rel=1e-5)
    t = torch.tensor([t_bg, t_fg], dtype=torch.float64)
    shifted, _ = phantoms(2, classes=2, seed=7, shift=0.5)
    expected = torch.stack([soft_dice(x, t)[1:] for x in shifted])
    assert torch.allclose(est.estimate(shifted)["per_case"], expected, atol=1e-6)


def test_paper_cs_doc_is_the_dice_offset():
    logits, labels = phantoms(4, seed=8)
    est = create_estimator("doc", True, keep_margin=None).fit(logits, labels)
    soft = torch.stack([soft_dice(x)[1:] for x in logits])
    offset = soft.mean(0) - prediction_dice(logits, labels).mean(0)
    assert est.params["dice_offset"][1:] == pytest.approx(offset.tolist(), abs=1e-6)  # float32 softmax
    shifted, _ = phantoms(2, seed=9, shift=0.5)
    expected = (torch.stack([soft_dice(x)[1:] for x in shifted]) - offset).clamp(0, 1)
    assert torch.allclose(est.estimate(shifted)["per_case"], expected, atol=1e-6)


def test_moval_form_uses_only_the_predicted_channel():
    logits, labels = phantoms(2, seed=10)
    est = create_estimator("ac", convention="moval").fit(logits, labels)
    for z, row in zip(logits, est.estimate(logits)["per_case"], strict=True):
        s, pred = torch.softmax(z.double(), 0).max(0)
        a = torch.stack([s[pred == k].sum() for k in (1, 2)])
        n = torch.stack([(pred == k).sum() for k in (1, 2)]).double()
        assert torch.allclose(row, (2 * a + 1e-5) / (a + n + 1e-5))


def test_estimates_use_the_own_prediction_not_the_labels():
    assert list(inspect.signature(SegmentationEstimator.estimate).parameters) == ["self", "logits"]
    logits, labels = phantoms(3, seed=11)
    est = create_estimator("ts", True).fit(logits, labels)
    before = est.estimate(logits)["per_case"].clone()
    dice_before = prediction_dice(logits, labels)
    labels[1].zero_()  # change the labels of a validation case after fitting
    assert torch.equal(est.estimate(logits)["per_case"], before)
    assert not torch.allclose(prediction_dice(logits, labels)[1], dice_before[1])


@pytest.mark.parametrize("name, cs", [("ts", True), ("atc", True), ("ts-atc", True), ("ts", False), ("vs", False)])
def test_reduced_fit_equals_full_resolution_fit(name, cs):
    logits, labels = phantoms(4, size=24, seed=12)
    kw = {"solver": "bisect"}
    reduced = create_estimator(name, cs, keep_margin=10.0, background_samples=512, **kw).fit(logits, labels)
    full = create_estimator(name, cs, keep_margin=None, **kw).fit(logits, labels)
    for key, value in full.params.items():
        tol = 2e-3 if "threshold" in key else 1e-3
        assert reduced.params[key] == pytest.approx(value, rel=tol, abs=tol), key
    shifted, _ = phantoms(2, size=24, seed=13, shift=0.5)
    assert torch.allclose(reduced.estimate(shifted)["per_case"], full.estimate(shifted)["per_case"], atol=1e-3)


@pytest.mark.parametrize("convention", ["paper", "moval"])
@pytest.mark.parametrize("name, cs", ALL)
def test_estimates_in_unit_interval(name, cs, convention):
    logits, labels = phantoms(3, size=12, seed=14)
    for y in labels:
        y[:2] = 1 - y[:2].clamp(max=1)  # a badly overconfident model
    est = create_estimator(name, cs, convention=convention).fit(logits, labels)
    shifted, _ = phantoms(2, size=12, seed=15, shift=1.0)
    for data in (logits, shifted, [0.05 * x for x in shifted], [20 * x for x in shifted]):
        out = est.estimate(data)
        assert out["per_case"].shape == (len(data), 2) and out["per_case"].dtype == torch.float64
        assert bool(((out["per_case"] >= 0) & (out["per_case"] <= 1)).all())
        assert torch.allclose(out["mean"], out["per_case"].mean(0))


@pytest.mark.parametrize("name, cs", ALL + [("qc", False)])
def test_json_round_trip(name, cs):
    logits, labels = phantoms(3, size=12, seed=16)
    kw = {} if name == "qc" else {"keep_margin": None}
    est = create_estimator(name, cs, **kw).fit(logits, labels)
    data = json.loads(json.dumps(est.to_dict()))
    again = load_estimator(data)
    assert again.fitted and again.to_dict() == data
    assert torch.allclose(again.estimate(logits)["per_case"], est.estimate(logits)["per_case"], atol=1e-12)


def test_absent_class_warns_and_falls_back_to_global():
    logits, labels = phantoms(3, seed=17)
    for z, y in zip(logits, labels, strict=True):
        z[2] -= 100.0  # class 2 never predicted ...
        y[y == 2] = 1  # ... nor labelled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        glob = create_estimator("ts").fit(logits, labels).params["temperature"][0]
    with pytest.warns(UserWarning, match=r"class\(es\) \[2\] never predicted"):
        est = create_estimator("ts", True).fit(logits, labels)
    assert est.params["temperature"][2] == pytest.approx(glob)
    assert est.params["leak_temperature"][2] == pytest.approx(glob)
    assert est.estimate(logits)["per_case"].shape == (3, 2)
    with pytest.warns(UserWarning, match=r"\[2\].*pooled Dice offset"):
        create_estimator("doc", True).fit(logits, labels)


def test_unreachable_validation_dice_warns():
    """A confident model with a low validation Dice: temperature scaling's soft Dice cannot fall that low (its floor
    as T grows), so the class temperature runs to the bound; the fit says so instead of failing silently."""
    logits, labels = phantoms(4, classes=2, seed=6)
    shifted = [torch.roll(y, shifts=8, dims=0) for y in labels]  # the labels moved away: true Dice about 0.12
    true = float(prediction_dice(logits, shifted).mean())
    with pytest.warns(UserWarning, match=rf"class 1: its validation Dice {true:.3f} is out of reach.*temperature"):
        est = create_estimator("ts", True).fit(logits, shifted)
    assert est.params["temperature"][1] > 1e3
    assert float(est.estimate(logits)["mean"][0]) - true > 0.2  # the bias the warning announces
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a reachable target: no warning
        create_estimator("ts", True).fit(logits, labels)


def test_bad_inputs():
    logits, labels = phantoms(2, size=8, seed=18)
    est = SegmentationEstimator("ts", class_specific=True)
    with pytest.raises(RuntimeError, match="not fitted"):
        est.estimate(logits)
    with pytest.raises(ValueError, match="different lengths"):
        est.fit(logits, labels[:1])
    with pytest.raises(ValueError, match=r"labels of case 1 have shape \(8, 8, 7\)"):
        est.fit(logits, [labels[0], labels[1][..., :7]])
    bad = [logits[0], logits[1].clone()]
    bad[1][0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="logits of case 1 hold 1 non-finite"):
        est.fit(bad, labels)
    with pytest.raises(ValueError, match="class index 3, out of range"):
        est.fit(logits, [labels[0], labels[1] * 0 + 3])
    with pytest.raises(ValueError, match="no case"):
        est.fit([], [])
    est.fit(logits, [y[None] for y in labels])  # (1, *spatial) labels are accepted
    with pytest.raises(ValueError, match="C=2 channels, expected 3"):
        est.estimate([logits[0][:2]])
    with pytest.raises(ValueError, match="non-finite"):
        est.estimate([torch.full((3, 4, 4, 4), float("inf"))])
    with pytest.raises(ValueError, match="unknown convention"):
        SegmentationEstimator("ts", convention="nnunet")
    with pytest.raises(ValueError, match="keep_margin must be > 0"):
        SegmentationEstimator("ts", keep_margin=0)
    with pytest.raises(ValueError, match="class_specific=True is not defined for 'ac'"):
        SegmentationEstimator("ac", class_specific=True)
