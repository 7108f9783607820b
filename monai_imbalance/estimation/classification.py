# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Accuracy estimation for classification from calibrated confidences: AC, TS, VS, NORCAL, DoC, ATC, TS-ATC and the
class-specific CS-TS, CS-DoC, CS-ATC, CS-TS-ATC.

Reference: Z. Li, K. Kamnitsas, M. Islam, C. Chen, B. Glocker, "Estimating model performance under domain shifts with
class-specific confidence scores", MICCAI 2022, method section: class-specific confidence scores for classification; the
authors' ``ImbalanceCIFAR10.ipynb`` and MOVAL). With ``y_hat = argmax z``, ``s_i(T) = max_c softmax(z_i / T)_c`` and
``V_c = {i : y_hat_i = c}`` (validation samples *predicted* as ``c``; ``Acc(V_c)`` is the precision of ``c``):

=========  ================================================  ==================================================
method     fit on the validation set                         calibrated score of a test sample ``i``
=========  ================================================  ==================================================
AC         --                                                ``s_i(1)``
TS         ``T: mean_V s(T) = Acc_V``                         ``s_i(T)``
CS-TS      ``T_c: mean_{V_c} s(T) = Acc(V_c)``               ``s_i(T_{y_hat_i})``
DoC        ``delta = mean_V s - Acc_V``                      ``s_i - delta``
CS-DoC     ``delta_c = mean_{V_c} s - Acc(V_c)``             ``s_i - delta_{y_hat_i}``
ATC        ``tau: mean_V 1[s > tau] = Acc_V``                ``1[s_i > tau]``
CS-ATC     ``tau_c`` on ``V_c``                              ``1[s_i > tau_{y_hat_i}]``
TS-ATC     ``T``, then ``tau`` on ``s(T)``                   ``1[s_i(T) > tau]``
CS-TS-ATC  ``T_c``, then ``tau_c`` on ``s(T_c)``             ``1[s_i(T_c) > tau_c]``, ``c = y_hat_i``
VS         ``W, b`` by NLL (diagonal vector scaling)          ``softmax(W z_i + b)_{y_hat_i}``
NORCAL     ``gamma`` by NLL, ``z_c - gamma log n_c``         ``softmax(z_i - gamma log n)_{y_hat_i}``
=========  ================================================  ==================================================

The estimated accuracy is the mean calibrated score over the test set (``"overall"``) and over the test samples
predicted as ``c`` (``"per_class"``, the estimated precision of ``c``), clipped to ``[0, 1]`` (only DoC can leave
the range: the clip is applied to the mean, so the closed form ``mean s - delta`` holds inside the range).
``=`` means "minimise the absolute difference" (:mod:`~monai_imbalance.estimation.solver`); DoC is closed form.

Absent classes: a class-specific parameter is fitted only for a class that is both predicted on the validation set
and present in its labels (MOVAL's rule); any other class warns and uses the global parameter (fitted on all
validation samples). VS keeps ``W_c = 1, b_c = 0`` for a class absent from the labels; NORCAL counts such a class as
1 sample (both warn).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from .base import PerformanceEstimator
from .calibration import (
    channel_argmax,
    fit_norcal,
    fit_vector_scaling,
    norcal,
    predicted_confidence,
    vector_scaling,
)
from .inputs import check_classification_inputs
from .solver import ScalarSpec, check_solver, fit_scalar

__all__ = ["ClassificationEstimator", "CLASSIFICATION_METHODS", "CLASS_SPECIFIC_METHODS"]

CLASSIFICATION_METHODS: tuple[str, ...] = ("ac", "ts", "vs", "norcal", "doc", "atc", "ts-atc")
#: Methods with a class-specific variant in the paper.
CLASS_SPECIFIC_METHODS: tuple[str, ...] = ("ts", "doc", "atc", "ts-atc")

TEMPERATURE_SPEC = ScalarSpec(
    x0=1.0, bounds=(1e-6, None), bracket=(1e-3, 1e3), log_scale=True, restarts=(0.1, 0.5, 3.0, 5.0, 10.0)
)
THRESHOLD_SPEC = ScalarSpec(x0=1.0, bounds=(1e-6, None), bracket=(0.0, 1.0))
#: Percentiles of the scores that restart an ATC threshold fit (MOVAL).
THRESHOLD_RESTART_PERCENTILES: tuple[float, ...] = (20.0, 40.0, 50.0, 60.0, 80.0)


def check_method(method: str, class_specific: bool, allowed: tuple[str, ...], name: str) -> str:
    """Normalise a method name and check the class-specific flag.

    Raises:
        ValueError: unknown method, or ``class_specific=True`` for a method without a class-specific variant.
    """
    key = str(method).lower().replace("_", "-")
    if key not in allowed:
        raise ValueError(f"{name}: unknown method {method!r}; choose one of {list(allowed)}.")
    if class_specific and key not in CLASS_SPECIFIC_METHODS:
        raise ValueError(
            f"{name}: class_specific=True is not defined for {key!r}; the paper defines class-specific variants of "
            f"{list(CLASS_SPECIFIC_METHODS)} only."
        )
    return key


def weighted_percentiles(values: torch.Tensor, percentiles, weight: torch.Tensor | None = None) -> list[float]:
    """Percentiles (0-100) of ``values`` (optionally weighted), by sorting; used only for restart points."""
    v, order = torch.sort(values.reshape(-1).to(torch.float64))
    if v.numel() == 0:
        return []
    w = torch.ones_like(v) if weight is None else weight.reshape(-1).to(torch.float64)[order]
    cum = torch.cumsum(w, 0)
    total = float(cum[-1])
    out = []
    for q in percentiles:
        i = int(torch.searchsorted(cum, torch.tensor(total * q / 100.0, dtype=cum.dtype, device=cum.device)))
        out.append(float(v[min(i, v.numel() - 1)]))
    return out


class ClassificationEstimator(PerformanceEstimator):
    """Estimates the accuracy (overall and per predicted class) of a classifier from its logits.

    Args:
        method: ``"ac"``, ``"ts"``, ``"vs"``, ``"norcal"``, ``"doc"``, ``"atc"`` or ``"ts-atc"``.
        class_specific: one parameter per predicted class (``ts``, ``doc``, ``atc``, ``ts-atc`` only).
        solver: ``"nelder-mead"`` (the authors', with restarts) or ``"bisect"`` (exact, the residuals are monotone).
        class_counts: NORCAL's class counts ``n_c`` (e.g. of the training set); default: the validation labels'.

    Shapes:
        ``fit(logits (N, C), labels (N,))``; ``estimate(logits (M, C))`` returns ``{"overall": float,
        "per_class": (C,) float64}`` (NaN for a class never predicted in ``logits``).

    Raises:
        ValueError: unknown method or solver, ``class_specific`` for a method without that variant, bad
            ``class_counts``; at fit / estimate: see
            :func:`~monai_imbalance.estimation.inputs.check_classification_inputs`.
        RuntimeError: ``estimate`` before ``fit``.
    """

    task = "classification"

    def __init__(
        self,
        method: str = "ac",
        class_specific: bool = False,
        solver: str = "nelder-mead",
        class_counts: list[float] | None = None,
    ) -> None:
        name = type(self).__name__
        key = check_method(method, class_specific, CLASSIFICATION_METHODS, name)
        solver = check_solver(solver, name)
        counts = None
        if class_counts is not None:
            counts = [float(v) for v in torch.as_tensor(class_counts, dtype=torch.float64).reshape(-1).tolist()]
            if key != "norcal":
                raise ValueError(f"{name}: class_counts is only used by 'norcal', got method {key!r}.")
            if len(counts) < 2 or any(not (v > 0) for v in counts):
                raise ValueError(f"{name}: class_counts must hold >= 2 positive counts, got {class_counts!r}.")
        super().__init__(key, class_specific, {"solver": solver, "class_counts": counts})
        self.solver = solver
        self.class_counts = counts

    # ------------------------------------------------------------------ fit
    def fit(self, logits: Any, labels: Any) -> ClassificationEstimator:
        """Fit on labelled validation data: ``logits (N, C)``, ``labels (N,)``. Returns ``self``."""
        z, y = check_classification_inputs(logits, labels, self._name())
        z = z.T.contiguous()  # channel-first (C, N): the class reductions are fastest there
        c = z.shape[0]
        pred = channel_argmax(z)
        correct = (pred == y).to(torch.float64)
        present = torch.bincount(y, minlength=c) > 0
        params: dict[str, Any] = {}
        if self.method in ("ts", "ts-atc"):
            params["temperature"] = self._fit_groups("ts", z, pred, correct, present)
        if self.method == "doc":
            params["shift"] = self._fit_groups("doc", z, pred, correct, present)
        if self.method in ("atc", "ts-atc"):
            temps = params.get("temperature", [1.0] * c)
            params["threshold"] = self._fit_groups("atc", z, pred, correct, present, temps)
        if self.method == "vs":
            self._warn_absent(
                (~present).nonzero().flatten().tolist(), "absent from the validation labels", "W_c = 1, b_c = 0"
            )
            w, b = fit_vector_scaling(z, y, present=present)
            params["vs_weight"], params["vs_bias"] = w.tolist(), b.tolist()
        if self.method == "norcal":
            params.update(self._fit_norcal(z, y, present))
        self._set_fitted(c, params)
        return self

    def _warn_absent(self, classes: list[int], why: str, fallback: str) -> None:
        if classes:
            warnings.warn(f"{self._name()}: class(es) {classes} {why}: {fallback}.", UserWarning, stacklevel=3)

    def _fit_norcal(self, z: torch.Tensor, y: torch.Tensor, present: torch.Tensor) -> dict[str, Any]:
        c = z.shape[0]
        if self.class_counts is not None:
            if len(self.class_counts) != c:
                raise ValueError(f"{self._name()}: class_counts has {len(self.class_counts)} entries, logits C={c}.")
            counts = torch.tensor(self.class_counts, dtype=torch.float64, device=z.device)
        else:
            counts = torch.bincount(y, minlength=c).to(torch.float64)
            self._warn_absent(
                (~present).nonzero().flatten().tolist(), "absent from the validation labels", "counted as 1 sample"
            )
            counts = counts.clamp_min(1.0)
        log_counts = counts.log()
        adjust = torch.ones(c, dtype=torch.bool, device=z.device)
        gamma = fit_norcal(z, y, log_counts, adjust)
        return {"norcal_gamma": gamma, "log_counts": log_counts.tolist(), "norcal_adjust": [1.0] * c}

    def _score_fn(
        self, kind: str, z: torch.Tensor, pred: torch.Tensor, idx: torch.Tensor, temps: list[float] | None
    ) -> tuple[Callable[[float], torch.Tensor], list[float] | None]:
        """``x -> scores`` of the samples ``idx`` for a temperature (``ts``) or a threshold (``atc``), and the ATC
        restart points."""
        zi, pi = z[:, idx], pred[idx]
        if kind == "ts":
            rel = zi - zi.gather(0, pi[None])  # <= 0
            return (lambda t: 1.0 / torch.exp(rel / t).sum(0)), None
        t = torch.tensor(temps, dtype=z.dtype, device=z.device)[pi]
        base = predicted_confidence(zi, pi, t)
        return (lambda tau: (base > tau).to(z.dtype)), weighted_percentiles(base, THRESHOLD_RESTART_PERCENTILES)

    def _fit_one(self, kind, z, pred, correct, idx, temps) -> float:
        target = float(correct[idx].mean())
        if kind == "doc":
            s = predicted_confidence(z[:, idx], pred[idx])
            return float(s.to(torch.float64).mean()) - target
        fn, restarts = self._score_fn(kind, z, pred, idx, temps)
        spec = TEMPERATURE_SPEC if kind == "ts" else THRESHOLD_SPEC

        count = int(idx.numel())

        def residual(x: float) -> float:
            return float(fn(x).sum(dtype=torch.float64)) / count - target

        x, _ = fit_scalar(residual, spec, self.solver, restarts=restarts)
        return x

    def _fit_groups(self, kind, z, pred, correct, present, temps=None) -> list[float]:
        c = z.shape[0]
        if temps is not None and not self.class_specific:
            temps = [temps[0]] * c
        glob = self._fit_one(kind, z, pred, correct, torch.arange(pred.numel(), device=pred.device), temps)
        if not self.class_specific:
            return [glob] * c
        out = [glob] * c
        absent = []
        for k in range(c):
            idx = (pred == k).nonzero().squeeze(1)
            if idx.numel() == 0 or not bool(present[k]):
                absent.append(k)
                continue
            out[k] = self._fit_one(kind, z, pred, correct, idx, temps)
        self._warn_absent(
            absent, "never predicted on, or absent from the labels of, the validation set", "global parameter used"
        )
        return out

    # ------------------------------------------------------------- estimate
    def calibrated_scores(self, logits: Any) -> torch.Tensor:
        """Per-sample calibrated confidence of the predicted class, ``(M,)`` (DoC: ``s - delta``, not clipped).

        Raises:
            RuntimeError: not fitted. ValueError: bad logits or a class count other than the fitted one.
        """
        self._require_fitted()
        z, _ = check_classification_inputs(logits, None, self._name(), self._num_classes)
        z = z.T.contiguous()
        return self._scores(z, channel_argmax(z))

    def _scores(self, z: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """Calibrated scores of channel-first ``(C, M)`` logits."""
        p = self._params

        def vec(key: str) -> torch.Tensor:
            return torch.tensor(p[key], dtype=z.dtype, device=z.device)

        m = self.method
        if m == "ac":
            return predicted_confidence(z, pred)
        if m == "ts":
            return predicted_confidence(z, pred, vec("temperature")[pred])
        if m == "doc":
            return predicted_confidence(z, pred) - vec("shift")[pred]
        if m in ("atc", "ts-atc"):
            t = vec("temperature")[pred] if m == "ts-atc" else 1.0
            return (predicted_confidence(z, pred, t) > vec("threshold")[pred]).to(z.dtype)
        if m == "vs":
            zz = vector_scaling(z, vec("vs_weight"), vec("vs_bias"))
        else:
            zz = norcal(z, p["norcal_gamma"], vec("log_counts"), vec("norcal_adjust") > 0)
        return torch.softmax(zz, dim=0).gather(0, pred[None]).squeeze(0)

    def estimate(self, logits: Any) -> dict[str, Any]:
        """Estimated accuracy of the argmax prediction of ``logits (M, C)``.

        Returns:
            ``{"overall": float, "per_class": (C,) float64}``: the mean calibrated score over all samples and over
            the samples predicted as each class (NaN for a class never predicted), clipped to ``[0, 1]``.
        """
        self._require_fitted()
        z, _ = check_classification_inputs(logits, None, self._name(), self._num_classes)
        z = z.T.contiguous()
        pred = channel_argmax(z)
        scores = self._scores(z, pred).to(torch.float64)
        c = z.shape[0]
        sums = torch.zeros(c, dtype=torch.float64, device=scores.device).index_add_(0, pred, scores)
        counts = torch.bincount(pred, minlength=c).to(torch.float64)
        per_class = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
        return {
            "overall": float(scores.mean().clamp(0.0, 1.0)),
            "per_class": per_class.clamp(0.0, 1.0).cpu(),
        }
