# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Dice estimation for segmentation from calibrated voxel confidences: AC, TS, VS, NORCAL, DoC, ATC, TS-ATC and the
class-specific CS-TS, CS-DoC, CS-ATC, CS-TS-ATC, for binary and multi-class models.

Reference: Z. Li, K. Kamnitsas, M. Islam, C. Chen, B. Glocker, "Estimating model performance under domain shifts with
class-specific confidence scores", MICCAI 2022, method section: class-specific confidence scores for segmentation; the
authors' ``Prostate.ipynb`` (binary) and MOVAL 0.3.25 (multi-class).

The estimated Dice of foreground class ``c`` in case ``n`` is a soft Dice between calibrated probabilities ``p~`` and
the model's **own hard prediction** ``y_hat = argmax_c z`` (labels are never used by :meth:`estimate`)::

    DSC_est[n, c] = (2 A_nc + s) / (P_nc + n_nc + s),      s = 1e-5 (``smooth``)
    A_nc = sum_{v: y_hat_v = c} p~_vc,   n_nc = #{v: y_hat_v = c}

with ``P_nc`` depending on the ``convention``:

- ``"paper"`` (default; the MICCAI notebook): ``P_nc = A_nc + B_nc``, ``B_nc = sum_{v: y_hat_v != c} p~_vc`` the
  calibrated probability of ``c`` at the voxels predicted otherwise (the expected false negatives): TS
  ``softmax(z_v / T)``; ATC / TS-ATC ``1[softmax(z_v / T)_c > tau]`` on every channel; DoC ``p - delta`` on the
  predicted channel and ``p + delta / (C - 1)`` on the others, clipped to ``[0, 1]``; AC / VS / NORCAL their
  softmax. As the number of voxels grows, this is the expected Dice when the calibrated probabilities are right (the
  labels drawn from them).
- ``"moval"`` (MOVAL's ``calculate_probability(appr=True)``, ``full=False``): only the predicted channel carries
  probability, ``B = 0``, so ``DSC_est = (2 A + s) / (A + n + s)`` and a class's estimate depends only on the voxels
  predicted as that class. With TS its value cannot go below ``2 / (C + 1)`` (confidence ``>= 1 / C``).

Fits (``=`` is "minimise the absolute difference", :mod:`~monai_imbalance.estimation.solver`):

- Global TS / ATC / TS-ATC: one parameter fitted at voxel level, the mean calibrated confidence of all validation
  voxels = their accuracy (both conventions, as the authors). Global DoC: ``"paper"`` closed form ``delta = mean s -
  accuracy``; ``"moval"`` MOVAL's clipped shift ``mean clip(s - delta, 0, 1) = accuracy``.
- Class-specific, ``"paper"``: the documented two-step fit, generalised one foreground class against the rest. For
  each foreground class ``c``: (1) a *leak* parameter (``leak_temperature[c]`` / ``leak_threshold[c]``) at voxel
  level on the voxels predicted otherwise, their confidence in "not ``c``", ``1 - p~_vc``, matched to the fraction
  of them not labelled ``c`` (for TS: ``B_c`` = the number of false negatives of ``c``); it sets ``B_nc``. (2) the
  class's own parameter (``temperature[c]`` / ``threshold[c]``) on the voxels predicted ``c``, so that
  ``mean_n DSC_est[n, c] = mean_n DSC[n, c]`` over the validation cases whose labels contain ``c`` (MOVAL's rule).
  Estimation then uses ``p~_vc = softmax(z_v / T_c)_c`` where ``y_hat_v = c`` and ``softmax(z_v / T'_c)_c``
  elsewhere (ATC: thresholded by ``tau_c`` / ``tau'_c``). For a binary model (1) is exactly the paper's background
  step (the mean confidence of the voxels predicted background = their accuracy; ``leak_temperature[1]`` is the
  paper's ``T_BG``) and (2) its foreground step. Why not one parameter per *predicted* class for ``C > 2``: the
  temperature of a large class, fitted to its own Dice, also sets how much probability its voxels leak to a small
  class, and can put the small class's validation Dice out of reach (synthetic 3-class data: an organ ``T = 1.7``
  capped the lesion estimate at 0.75 against a true 0.81); one leak parameter per class decouples the classes, so
  the fitting order is immaterial. ``temperature[0]`` / ``threshold[0]`` keep the global value (unused).
- Class-specific, ``"moval"``: as MOVAL with ``metric="f1score"``: the background stays uncalibrated (the global
  value is stored; it does not enter a foreground estimate), each foreground class fitted on its Dice as in (2) with
  ``B = 0``. CS-DoC is MOVAL's per-class confidence shift ``clip(s - delta_{y_hat}, 0, 1)`` fitted on the Dice.
- CS-DoC, ``"paper"`` (the MICCAI version): ``Delta_c = mean_n softDSC[n, c] - mean_n DSC[n, c]`` (soft Dice of the
  uncalibrated softmax, ``"paper"`` form, cases whose labels contain ``c``); estimate ``clip(softDSC - Delta_c, 0,
  1)``. Closed form.
- VS / NORCAL: NLL over all validation voxels (:mod:`~monai_imbalance.estimation.calibration`), then the AC Dice of
  their probabilities; NORCAL leaves the background logit untouched, its counts are the validation label counts
  unless ``class_counts`` is given.

Absent classes: a foreground class never predicted on the validation set or absent from all its labels keeps the
global parameter (a warning says so); for ``"paper"`` CS-DoC its ``Delta`` is the pooled offset over the fitted
classes (0 if none). Its estimate is still computed, from the model's prediction.

Memory: :meth:`fit` reduces the validation set case by case (:mod:`~monai_imbalance.estimation.reduction`: foreground
and uncertain voxels kept exactly, confident background voxels by a weighted systematic sample, confusion counts at
full resolution) so a 3D set is never held at full resolution in float32; that module states what is exact and what
is approximate. :meth:`estimate` reads one case at a time at full resolution and is exact.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import PerformanceEstimator
from .calibration import (
    channel_argmax,
    fit_norcal,
    fit_vector_scaling,
    norcal,
    predicted_confidence,
    temperature_softmax,
    vector_scaling,
)
from .classification import THRESHOLD_RESTART_PERCENTILES, THRESHOLD_SPEC, check_method, weighted_percentiles
from .inputs import check_cases, check_segmentation_case
from .reduction import ReducedSegmentationSet, reduce_segmentation_set
from .solver import ScalarSpec, check_solver, fit_scalar

__all__ = ["SegmentationEstimator", "SEGMENTATION_METHODS", "CONVENTIONS"]

SEGMENTATION_METHODS: tuple[str, ...] = ("ac", "ts", "vs", "norcal", "doc", "atc", "ts-atc")
CONVENTIONS: tuple[str, ...] = ("paper", "moval")

#: The fitted parameter of each kind of class-specific fit.
PARAMETER_NAMES = {"ts": "temperature", "atc": "threshold", "doc": "shift"}
#: A class-specific fit that leaves the mean estimated Dice further than this from the validation Dice warns.
UNREACHED_DICE = 0.01
SEG_TEMPERATURE_SPEC = ScalarSpec(x0=1.0, bounds=(1e-6, None), bracket=(1e-3, 1e3), log_scale=True, restarts=(0.1, 5.0))
#: DoC shift ``delta = 1 - p`` (MOVAL's parameter ``p``, started at 1 and restarted at 0.01 and 1.5).
SEG_SHIFT_SPEC = ScalarSpec(x0=0.0, bounds=(None, 1.0 - 1e-6), bracket=(-1.0, 1.0), restarts=(0.99, -0.5))


class _FitData:
    """The reduced validation set with the derived tensors every objective reads."""

    def __init__(self, data: ReducedSegmentationSet) -> None:
        self.z = data.logits
        self.pred = data.pred.long()  # gather and index need int64
        self.case = data.case.long()
        self.label = data.label
        self.w = data.weight.to(torch.float64)
        self.num_cases = data.num_cases
        self.num_classes = data.num_classes
        self.n_pred = data.n_pred.to(torch.float64)
        self.n_true = data.n_true.to(torch.float64)
        self.n_voxels = data.confusion.sum((1, 2)).to(torch.float64)
        self.tp = data.true_positives.to(torch.float64)
        self.true_dice = data.true_dice
        self.present = data.n_true > 0
        self.acc_all = float(self.tp.sum() / self.n_voxels.sum())

    def zeros(self) -> torch.Tensor:
        return torch.zeros(self.num_cases, dtype=torch.float64, device=self.z.device)


def _class_probability(z: torch.Tensor, c: int, temperature: float) -> torch.Tensor:
    """``softmax(z / T)_c`` of ``(C, V)`` logits (``1 / sum_k exp((z_k - z_c) / T)``; an overflow gives 0, the
    limit)."""
    return 1.0 / torch.exp((z - z[c : c + 1]) / temperature).sum(0)


class SegmentationEstimator(PerformanceEstimator):
    """Estimates the per-case Dice of each foreground class of a segmentation model from its logits.

    Args:
        method: ``"ac"``, ``"ts"``, ``"vs"``, ``"norcal"``, ``"doc"``, ``"atc"`` or ``"ts-atc"``.
        class_specific: one parameter per class (``ts``, ``doc``, ``atc``, ``ts-atc`` only), fitted as the module
            docstring says.
        convention: ``"paper"`` (soft Dice over all channels, two-step fit, MICCAI CS-DoC) or ``"moval"``
            (predicted channel only, background uncalibrated, MOVAL's CS-DoC).
        solver: ``"nelder-mead"`` (the authors', with restarts) or ``"bisect"`` (exact for monotone residuals).
        keep_margin: logit margin below which a background voxel is kept exactly at fit (``None``: keep all).
        background_samples: per-case sample of the other background voxels at fit.
        smooth: ``s`` of the soft Dice (the authors' ``1e-5``).
        class_counts: NORCAL's ``n_c`` (e.g. training voxel counts); default: the validation label counts.

    Shapes:
        ``fit(logits, labels)``: ``N`` per-case ``(C, *spatial)`` logits and ``(*spatial)`` or ``(1, *spatial)``
        labels. ``estimate(logits)`` returns ``{"mean": (C - 1,), "per_case": (N, C - 1)}`` float64 tensors (the
        foreground classes ``1..C-1``).

    Raises:
        ValueError: unknown method / convention / solver, ``class_specific`` for a method without that variant, bad
            ``keep_margin``, ``background_samples``, ``smooth`` or ``class_counts``; at fit / estimate: mismatched
            lengths or shapes, labels out of range, non-finite logits, a class count other than the fitted one.
        RuntimeError: ``estimate`` before ``fit``.
    """

    task = "segmentation"

    def __init__(
        self,
        method: str = "ts",
        class_specific: bool = False,
        convention: str = "paper",
        solver: str = "nelder-mead",
        keep_margin: float | None = 10.0,
        background_samples: int = 4096,
        smooth: float = 1e-5,
        class_counts: Sequence[float] | None = None,
    ) -> None:
        name = type(self).__name__
        key = check_method(method, class_specific, SEGMENTATION_METHODS, name)
        conv = str(convention).lower()
        if conv not in CONVENTIONS:
            raise ValueError(f"{name}: unknown convention {convention!r}; choose one of {list(CONVENTIONS)}.")
        solver = check_solver(solver, name)
        margin = None if keep_margin is None or math.isinf(float(keep_margin)) else float(keep_margin)
        if margin is not None and not margin > 0:
            raise ValueError(f"{name}: keep_margin must be > 0 (or None to keep every voxel), got {keep_margin}.")
        if isinstance(background_samples, bool) or int(background_samples) != background_samples:
            raise ValueError(f"{name}: background_samples must be an integer >= 1, got {background_samples!r}.")
        if int(background_samples) < 1:
            raise ValueError(f"{name}: background_samples must be >= 1, got {background_samples}.")
        smooth = float(smooth)
        if not (smooth >= 0 and math.isfinite(smooth)):
            raise ValueError(f"{name}: smooth must be a finite number >= 0, got {smooth}.")
        counts = None
        if class_counts is not None:
            if key != "norcal":
                raise ValueError(f"{name}: class_counts is only used by 'norcal', got method {key!r}.")
            counts = [float(v) for v in torch.as_tensor(class_counts, dtype=torch.float64).reshape(-1).tolist()]
            if len(counts) < 2 or any(not (v > 0) for v in counts):
                raise ValueError(f"{name}: class_counts must hold >= 2 positive counts, got {class_counts!r}.")
        config = {
            "convention": conv,
            "solver": solver,
            "keep_margin": margin,
            "background_samples": int(background_samples),
            "smooth": smooth,
            "class_counts": counts,
        }
        super().__init__(key, class_specific, config)
        self.convention = conv
        self.solver = solver
        self.keep_margin = margin
        self.background_samples = int(background_samples)
        self.smooth = smooth
        self.class_counts = counts

    # ------------------------------------------------------------------ fit
    def fit(self, logits: Sequence[Any], labels: Sequence[Any]) -> SegmentationEstimator:
        """Fit on labelled validation cases (reduced case by case, see the module docstring). Returns ``self``."""
        data = reduce_segmentation_set(logits, labels, self.keep_margin, self.background_samples, name=self._name())
        return self.fit_reduced(data)

    def fit_reduced(self, data: ReducedSegmentationSet) -> SegmentationEstimator:
        """Fit on an already reduced validation set (e.g. built by a handler with
        :class:`~monai_imbalance.estimation.reduction.SegmentationSetReducer`). Returns ``self``."""
        if not isinstance(data, ReducedSegmentationSet):
            raise ValueError(f"{self._name()}: fit_reduced expects a ReducedSegmentationSet, got {type(data).__name__}")
        d = _FitData(data)
        params: dict[str, Any] = {}
        m = self.method
        if m in ("ts", "ts-atc"):
            params.update(self._fit_kind("ts", d, params))
        if m == "doc":
            if self.class_specific and self.convention == "paper":
                params["dice_offset"] = self._fit_dice_offset(d)
            else:
                params.update(self._fit_kind("doc", d, params))
        if m in ("atc", "ts-atc"):
            params.update(self._fit_kind("atc", d, params))
        if m in ("vs", "norcal"):
            present = d.n_true.sum(0) > 0
            absent = (~present).nonzero().flatten().tolist()
            if m == "vs":
                self._warn(absent, "absent from the validation labels", "W_c = 1, b_c = 0")
                w, b = fit_vector_scaling(d.z, d.label.long(), weight=d.w, present=present)
                params["vs_weight"], params["vs_bias"] = w.tolist(), b.tolist()
            else:
                params.update(self._fit_norcal(d, absent))
        self._set_fitted(d.num_classes, params)
        return self

    def _warn(self, classes: list[int], why: str, fallback: str) -> None:
        if classes:
            warnings.warn(f"{self._name()}: class(es) {classes} {why}: {fallback}.", UserWarning, stacklevel=4)

    def _fit_norcal(self, d: _FitData, absent: list[int]) -> dict[str, Any]:
        c = d.num_classes
        if self.class_counts is not None:
            if len(self.class_counts) != c:
                raise ValueError(f"{self._name()}: class_counts has {len(self.class_counts)} entries, logits C={c}.")
            counts = torch.tensor(self.class_counts, dtype=torch.float64, device=d.z.device)
        else:
            self._warn(absent, "absent from the validation labels", "counted as 1 voxel")
            counts = d.n_true.sum(0).clamp_min(1.0)
        log_counts = counts.log()
        adjust = torch.ones(c, dtype=torch.bool, device=d.z.device)
        adjust[0] = False
        gamma = fit_norcal(d.z, d.label.long(), log_counts, adjust, weight=d.w)
        return {"norcal_gamma": gamma, "log_counts": log_counts.tolist(), "norcal_adjust": adjust.double().tolist()}

    def _spec(self, kind: str) -> ScalarSpec:
        return {"ts": SEG_TEMPERATURE_SPEC, "atc": THRESHOLD_SPEC, "doc": SEG_SHIFT_SPEC}[kind]

    def _own_fn(
        self, kind: str, d: _FitData, idx: torch.Tensor | slice, temps: list[float] | None
    ) -> tuple[Callable[[float], torch.Tensor], list[float] | None]:
        """``x -> calibrated confidence`` (predicted channel) of the voxels ``idx`` for a temperature, a threshold
        (on the confidence at the per-class ``temps``, 1 if ``None``) or a shift; and the threshold restarts."""
        zi, pi = d.z[:, idx], d.pred[idx]
        if kind == "ts":
            rel = zi - zi.gather(0, pi[None])  # <= 0
            return (lambda t: 1.0 / torch.exp(rel / t).sum(0)), None
        if kind == "atc":
            t = torch.tensor(temps if temps is not None else [1.0] * d.num_classes, dtype=zi.dtype, device=zi.device)
            base = predicted_confidence(zi, pi, t[pi])
            restarts = weighted_percentiles(base, THRESHOLD_RESTART_PERCENTILES, d.w[idx])
            return (lambda tau: (base > tau).to(zi.dtype)), restarts
        base = predicted_confidence(zi, pi)
        return (lambda delta: (base - delta).clamp(0.0, 1.0)), None

    def _fit_mean(self, fn, restarts, kind: str, w: torch.Tensor, target: float) -> float:
        """The weighted mean of ``fn(x)`` = ``target``."""
        wsum = float(w.sum())

        def residual(x: float) -> float:
            return float((fn(x).to(torch.float64) * w).sum()) / wsum - target

        return fit_scalar(residual, self._spec(kind), self.solver, restarts=restarts)[0]

    def _fit_voxels(self, kind: str, d: _FitData, idx: torch.Tensor | slice, target: float, temps) -> float:
        """Voxel level: the weighted mean calibrated confidence of the voxels ``idx`` = ``target`` (their accuracy)."""
        w = d.w[idx]
        if kind == "doc" and self.convention == "paper":  # closed form
            s = predicted_confidence(d.z[:, idx], d.pred[idx]).to(torch.float64)
            return float((s * w).sum() / w.sum()) - target
        fn, restarts = self._own_fn(kind, d, idx, temps)
        return self._fit_mean(fn, restarts, kind, w, target)

    def _leak_fn(
        self, kind: str, d: _FitData, c: int, idx: torch.Tensor, leak_temp: float
    ) -> tuple[Callable[[float], torch.Tensor], Callable[[float], torch.Tensor], list[float] | None]:
        """For the voxels ``idx`` (predicted otherwise) and class ``c``: ``x -> calibrated confidence in "not c"``
        (fitted to their fraction not labelled ``c``), ``x -> calibrated probability of c`` (the ``B`` term) and the
        threshold restarts. TS: ``1 - softmax(z / x)_c`` and ``softmax(z / x)_c``; ATC (as the paper's binarised
        channels, with ``p = softmax(z / leak_temp)``): ``1[1 - p_c > x]`` and ``1[p_c > x]``."""
        zi = d.z[:, idx]
        if kind == "ts":
            return (lambda t: 1.0 - _class_probability(zi, c, t)), (lambda t: _class_probability(zi, c, t)), None
        prob = _class_probability(zi, c, leak_temp)
        not_c = 1.0 - prob
        restarts = weighted_percentiles(not_c, THRESHOLD_RESTART_PERCENTILES, d.w[idx])
        return (lambda tau: (not_c > tau).to(zi.dtype)), (lambda tau: (prob > tau).to(zi.dtype)), restarts

    def _fit_class_paper(
        self, kind: str, d: _FitData, c: int, temps: list[float] | None, leak_temps: list[float] | None
    ) -> tuple[float, float]:
        """Two-step fit of foreground class ``c`` (``"paper"``): the leak parameter on the voxels predicted
        otherwise, then the own parameter on the Dice. Returns ``(own, leak)``."""
        rest = (d.pred != c).nonzero().squeeze(1)
        leak_temp = 1.0 if leak_temps is None else float(leak_temps[c])
        confidence, probability, restarts = self._leak_fn(kind, d, c, rest, leak_temp)
        w = d.w[rest]
        n_rest = float((d.n_voxels - d.n_pred[:, c]).sum())
        false_neg = float((d.n_true[:, c] - d.tp[:, c]).sum())
        leak = self._fit_mean(confidence, restarts, kind, w, 1.0 - false_neg / n_rest) if n_rest > 0 else 1.0
        other = d.zeros().index_add_(0, d.case[rest], probability(leak).to(torch.float64) * w)
        own = self._fit_dice_class(kind, d, c, other, temps)
        return own, leak

    def _fit_dice_class(self, kind: str, d: _FitData, c: int, other: torch.Tensor, temps: list[float] | None) -> float:
        """Class ``c``: mean estimated Dice = mean true Dice over the cases whose labels contain ``c``; ``other`` is
        ``B_nc`` (0 under ``"moval"``)."""
        idx = (d.pred == c).nonzero().squeeze(1)
        cases, w = d.case[idx], d.w[idx]
        fn, restarts = self._own_fn(kind, d, idx, temps)
        rows = d.present[:, c]
        target = float(d.true_dice[rows, c].mean())
        n = d.n_pred[:, c]
        s = self.smooth
        zeros = d.zeros()

        def residual(x: float) -> float:
            a = zeros.index_add(0, cases, fn(x).to(torch.float64) * w)
            dice = (2 * a + s) / (a + other + n + s)
            return float(dice[rows].mean()) - target

        x, miss = fit_scalar(residual, self._spec(kind), self.solver, restarts=restarts)
        if miss > UNREACHED_DICE:
            key = PARAMETER_NAMES[kind]
            warnings.warn(
                f"{self._name()}: class {c}: its validation Dice {target:.3f} is out of reach of the fit (closest mean "
                f"estimate {target + residual(x):.3f} at {key} {x:.4g}); the estimates of class {c} are biased.",
                UserWarning,
                stacklevel=4,
            )
        return x

    def _fit_kind(self, kind: str, d: _FitData, params: dict[str, Any]) -> dict[str, list[float]]:
        """The parameters of one kind: ``"ts"`` (temperature), ``"atc"`` (threshold on the confidence at
        ``params["temperature"]``, 1 for ATC) or ``"doc"`` (confidence shift); global, or per class."""
        c = d.num_classes
        key = PARAMETER_NAMES[kind]
        temps = params.get("temperature") if kind == "atc" else None
        leak_temps = params.get("leak_temperature", temps) if kind == "atc" else None
        glob = self._fit_voxels(kind, d, slice(None), d.acc_all, temps)  # all voxels (a view, no copy)
        if not self.class_specific:
            return {key: [glob] * c}
        own, leak = [glob] * c, [glob] * c
        totals = d.n_pred.sum(0)
        absent = []
        for k in sorted(range(1, c), key=lambda k: (-float(totals[k]), k)):  # MOVAL's order
            if float(totals[k]) == 0 or not bool(d.present[:, k].any()):
                absent.append(k)
                continue
            if self.convention == "paper":
                own[k], leak[k] = self._fit_class_paper(kind, d, k, temps, leak_temps)
            else:
                own[k] = self._fit_dice_class(kind, d, k, d.zeros(), temps)
        self._warn(
            sorted(absent), "never predicted on, or absent from the labels of, the validation set", "global parameter"
        )
        out = {key: own}
        if self.convention == "paper":
            out[f"leak_{key}"] = leak
        return out

    def _fit_dice_offset(self, d: _FitData) -> list[float]:
        """MICCAI CS-DoC: ``Delta_c = mean softDSC - mean DSC`` per foreground class (background 0)."""
        c = d.num_classes
        soft = self._dice_sums(d.z, d.pred, d.case, d.w, d.num_cases, {}, "ac", n_pred=d.n_pred)
        diff = soft - d.true_dice
        totals = d.n_pred.sum(0)
        out = [0.0] * c
        fitted, absent = [], []
        for k in range(1, c):
            rows = d.present[:, k]
            if float(totals[k]) == 0 or not bool(rows.any()):
                absent.append(k)
                continue
            out[k] = float(soft[rows, k].mean() - d.true_dice[rows, k].mean())
            fitted.append(diff[rows, k])
        pooled = float(torch.cat(fitted).mean()) if fitted else 0.0
        for k in absent:
            out[k] = pooled
        self._warn(
            absent,
            "never predicted on, or absent from the labels of, the validation set",
            "pooled Dice offset of the fitted classes used",
        )
        return out

    # ------------------------------------------------------------- estimate
    def _calibrated(self, z: torch.Tensor, pred: torch.Tensor, params: dict[str, Any], method: str) -> torch.Tensor:
        """``(C, V)`` calibrated probabilities ``p~`` of channel-first ``(C, V)`` logits with one parameter per
        *predicted* class (the predicted channel of every method; the other channels of the methods without leak
        parameters)."""

        def vec(key: str) -> torch.Tensor:
            return torch.tensor(params[key], dtype=z.dtype, device=z.device)

        if method == "ts":
            return temperature_softmax(z, vec("temperature")[pred])
        if method in ("atc", "ts-atc"):
            t = vec("temperature")[pred] if method == "ts-atc" else 1.0
            probs = temperature_softmax(z, t)
            return (probs > vec("threshold")[pred][None]).to(z.dtype)
        if method == "doc" and "shift" in params:
            probs = torch.softmax(z, dim=0)
            delta = vec("shift")[pred][None]
            c = z.shape[0]
            shifted = probs + delta / (c - 1)
            top = probs.gather(0, pred[None]) - delta
            return shifted.scatter(0, pred[None], top).clamp(0.0, 1.0)
        if method == "vs":
            return torch.softmax(vector_scaling(z, vec("vs_weight"), vec("vs_bias")), dim=0)
        if method == "norcal":
            return torch.softmax(norcal(z, params["norcal_gamma"], vec("log_counts"), vec("norcal_adjust") > 0), dim=0)
        return torch.softmax(z, dim=0)  # ac, and the paper's CS-DoC (offset applied to the Dice)

    def _leak(self, z: torch.Tensor, c: int, params: dict[str, Any], method: str) -> torch.Tensor:
        """``(V,)`` calibrated probability of class ``c`` with the class's leak parameters (``"paper"`` CS)."""
        if method == "ts":
            return _class_probability(z, c, params["leak_temperature"][c])
        t = params["leak_temperature"][c] if method == "ts-atc" else 1.0
        return (_class_probability(z, c, t) > params["leak_threshold"][c]).to(z.dtype)

    def _dice_sums(
        self,
        z: torch.Tensor,
        pred: torch.Tensor,
        case: torch.Tensor,
        weight: torch.Tensor | None,
        num_cases: int,
        params: dict[str, Any],
        method: str,
        n_pred: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(N, C)`` estimated Dice from channel-first ``(C, V)`` logits (before the CS-DoC offset)."""
        c = z.shape[0]
        probs = self._calibrated(z, pred, params, method)
        top = probs.gather(0, pred[None]).squeeze(0).to(torch.float64)
        w = torch.ones_like(top) if weight is None else weight
        flat = case * c + pred
        a = torch.zeros(num_cases * c, dtype=torch.float64, device=z.device).index_add_(0, flat, top * w)
        a = a.reshape(num_cases, c)
        if n_pred is None:
            n_pred = torch.bincount(flat, weights=w, minlength=num_cases * c).reshape(num_cases, c)
        if self.convention == "moval":
            total = a
        elif "leak_temperature" in params or "leak_threshold" in params:
            total = a.clone()
            for k in range(1, c):
                rest = pred != k
                leak = self._leak(z, k, params, method).to(torch.float64) * w * rest
                total[:, k] += torch.zeros(num_cases, dtype=torch.float64, device=z.device).index_add_(0, case, leak)
        else:
            total = torch.zeros(c, num_cases, dtype=torch.float64, device=z.device)
            total = total.index_add_(1, case, probs.to(torch.float64) * w[None]).T
        return (2 * a + self.smooth) / (total + n_pred + self.smooth)

    def estimate_case(self, logits: Any) -> torch.Tensor:
        """Estimated Dice of one case's ``(C, *spatial)`` logits: ``(C - 1,)`` float64 in ``[0, 1]``."""
        self._require_fitted()
        z, _ = check_segmentation_case(logits, None, 0, self._name(), self._num_classes)
        return self._case_estimate(z)

    def _case_estimate(self, z: torch.Tensor) -> torch.Tensor:
        c = z.shape[0]
        zf = z.reshape(c, -1)
        pred = channel_argmax(zf)
        case = torch.zeros_like(pred)
        dice = self._dice_sums(zf, pred, case, None, 1, self._params, self.method)[0]
        if "dice_offset" in self._params:
            dice = dice - torch.tensor(self._params["dice_offset"], dtype=torch.float64, device=dice.device)
        return dice.clamp(0.0, 1.0)[1:].cpu()

    def estimate(self, logits: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Estimated Dice of the argmax prediction of each case, read one case at a time.

        Args:
            logits: ``N`` per-case ``(C, *spatial)`` logits (no labels: the estimate is of the model's own
                prediction).

        Returns:
            ``{"mean": (C - 1,), "per_case": (N, C - 1)}`` float64 tensors in ``[0, 1]``.
        """
        self._require_fitted()
        name = self._name()
        n = check_cases(logits, None, name)
        rows = []
        for i in range(n):
            z, _ = check_segmentation_case(logits[i], None, i, name, self._num_classes)
            rows.append(self._case_estimate(z))
        per_case = torch.stack(rows)
        return {"mean": per_case.mean(0), "per_case": per_case}

    def _after_load(self) -> None:
        c = self._num_classes
        for key, value in self._params.items():
            if isinstance(value, list) and len(value) != c:
                raise ValueError(f"{self._name()}: loaded parameter {key!r} has {len(value)} entries, C={c}.")
