# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Scalar fits of the estimators: find ``x`` with ``|residual(x)|`` minimal, ``residual = estimate(x) - target``.

Two solvers, chosen by name:

- ``"nelder-mead"`` (default), the authors' procedure (MOVAL ``solver.py``):
  ``scipy.optimize.minimize(|residual|, x0, method="Nelder-Mead", tol=1e-7)`` with the parameter's bounds, and when
  the best residual is above ``restart_threshold`` (0.01) a restart from each of the parameter's restart points
  (temperatures ``0.1, 0.5, 3, 5, 10`` for classification and ``0.1, 5`` for segmentation; for ATC thresholds the 20,
  40, 50, 60 and 80 % percentiles of the scores in scope, for both tasks, where MOVAL uses only 20 and 50 % for
  segmentation; for DoC shifts ``delta = 1 - p`` with MOVAL's ``p = 0.01, 0.1, 0.5, 1.5, 1.8`` / ``0.01, 1.5``),
  keeping the smallest residual (earliest on ties).
- ``"bisect"``: the residuals of this package are monotone in their parameter (mean confidence decreases with the
  temperature; the thresholded count decreases with the threshold; the shifted confidence decreases with the shift;
  the soft Dice increases with the summed confidence; the one exception is the probability of a non-predicted class
  against the temperature with ``C > 2``, which can pass ``1 / C``), so bisection on the parameter's bracket
  (geometric for temperatures) finds the exact minimiser of ``|residual|`` once the ends bracket a sign change; for a
  step function (ATC) it returns the better of the two plateaus around the jump. No restarts are needed. If the ends
  do not bracket a sign change, the nearer end is returned.

The residual itself is one vectorised torch evaluation over all samples / voxels (on their device); only the
scalar goes back to the solver.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["SOLVERS", "ScalarSpec", "fit_scalar", "check_solver"]

SOLVERS: tuple[str, ...] = ("nelder-mead", "bisect")


@dataclass(frozen=True)
class ScalarSpec:
    """How to fit one scalar parameter.

    Attributes:
        x0: Nelder-Mead start (the uncalibrated value: ``T = 1``, MOVAL's ``tau = 1``, ``delta = 0``).
        bounds: Nelder-Mead bounds, ``None`` for an open side (MOVAL: ``(1e-6, None)`` for ``T`` and ``tau``).
        bracket: finite search interval of ``"bisect"``.
        log_scale: bisect geometrically (temperatures).
        restarts: Nelder-Mead restart points when the first residual exceeds the threshold.
    """

    x0: float
    bounds: tuple[float | None, float | None]
    bracket: tuple[float, float]
    log_scale: bool = False
    restarts: tuple[float, ...] = ()


def check_solver(solver: str, name: str) -> str:
    """Normalise and check a solver name.

    Raises:
        ValueError: not one of :data:`SOLVERS`.
    """
    key = str(solver).lower().replace("_", "-")
    if key not in SOLVERS:
        raise ValueError(f"{name}: unknown solver {solver!r}; choose one of {list(SOLVERS)}.")
    return key


def fit_scalar(
    residual: Callable[[float], float],
    spec: ScalarSpec,
    solver: str = "nelder-mead",
    restarts: Sequence[float] | None = None,
    restart_threshold: float = 0.01,
    tol: float = 1e-7,
) -> tuple[float, float]:
    """Minimise ``|residual(x)|`` over the scalar ``x``.

    Args:
        residual: ``x -> estimate(x) - target`` (a python float; evaluated with vectorised torch by the caller).
        spec: start, bounds, bracket and default restarts of the parameter.
        solver: ``"nelder-mead"`` or ``"bisect"`` (see the module docstring).
        restarts: restart points overriding ``spec.restarts`` (ATC: score percentiles).
        restart_threshold: Nelder-Mead restarts when the best ``|residual|`` is above this (MOVAL: 0.01).
        tol: Nelder-Mead ``tol`` (the authors' ``1e-7``).

    Returns:
        ``(x, |residual(x)|)``.
    """
    if solver == "bisect":
        return _bisect(residual, spec)
    from scipy.optimize import minimize

    lo, hi = spec.bounds

    def clip(x: float) -> float:
        if lo is not None:
            x = max(x, lo)
        if hi is not None:
            x = min(x, hi)
        return float(x)

    def objective(x) -> float:
        return abs(float(residual(clip(float(x[0])))))

    def run(x0: float) -> tuple[float, float]:
        res = minimize(objective, x0=[clip(x0)], method="Nelder-Mead", bounds=[(lo, hi)], tol=tol)
        x = clip(float(res.x[0]))
        return abs(float(residual(x))), x

    best_f, best_x = run(spec.x0)
    if best_f > restart_threshold:
        for start in spec.restarts if restarts is None else restarts:
            f, x = run(float(start))
            if f < best_f:
                best_f, best_x = f, x
    return best_x, best_f


def _bisect(residual: Callable[[float], float], spec: ScalarSpec, max_iter: int = 200) -> tuple[float, float]:
    lo, hi = (float(v) for v in spec.bracket)
    r_lo, r_hi = float(residual(lo)), float(residual(hi))
    if r_lo == 0.0:
        return lo, 0.0
    if r_hi == 0.0:
        return hi, 0.0
    if (r_lo > 0) == (r_hi > 0):  # the target is outside the attainable range: the nearer end
        return (lo, abs(r_lo)) if abs(r_lo) <= abs(r_hi) else (hi, abs(r_hi))
    for _ in range(max_iter):
        mid = math.sqrt(lo * hi) if spec.log_scale else 0.5 * (lo + hi)
        if not lo < mid < hi:  # the interval cannot shrink any more in floating point
            break
        r_mid = float(residual(mid))
        if r_mid == 0.0:
            return mid, 0.0
        if (r_mid > 0) == (r_lo > 0):
            lo, r_lo = mid, r_mid
        else:
            hi, r_hi = mid, r_mid
        width = math.log(hi / lo) if spec.log_scale else hi - lo
        if width <= 1e-13:
            break
    return (lo, abs(r_lo)) if abs(r_lo) <= abs(r_hi) else (hi, abs(r_hi))
