# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The scalar fits: Nelder-Mead with the authors' restarts, and bisection, on smooth and step residuals."""

from __future__ import annotations

import math

import pytest
import torch

from monai_imbalance.estimation.solver import ScalarSpec, check_solver, fit_scalar

TEMP = ScalarSpec(x0=1.0, bounds=(1e-6, None), bracket=(1e-3, 1e3), log_scale=True, restarts=(0.1, 5.0))
THRESH = ScalarSpec(x0=1.0, bounds=(1e-6, None), bracket=(0.0, 1.0))


def test_smooth_monotone_residual():
    for solver in ("nelder-mead", "bisect"):
        x, f = fit_scalar(lambda t: 1 / (1 + t) - 0.2, TEMP, solver)
        assert x == pytest.approx(4.0, rel=1e-5) and f < 1e-6


def test_step_residual_needs_the_restarts():
    scores = torch.linspace(0.0, 0.5, 1001)
    target = 0.37

    def residual(tau: float) -> float:
        return float((scores > tau).double().mean()) - target

    stuck, f_stuck = fit_scalar(residual, THRESH, restarts=[], restart_threshold=0.01)
    assert f_stuck > 0.3  # around tau = 1 no score is above: flat, Nelder-Mead cannot move
    pct = [float(torch.quantile(scores, q / 100)) for q in (20, 40, 50, 60, 80)]
    tau, f = fit_scalar(residual, THRESH, restarts=pct)
    assert f < 2e-3 and tau == pytest.approx(0.5 * (1 - target), abs=2e-3)
    tau_b, f_b = fit_scalar(residual, THRESH, "bisect")  # the better plateau around the jump
    assert f_b <= 1e-3 + 1e-12 and f_b <= f + 1e-12


def test_target_out_of_range_returns_the_nearest_end():
    x, f = fit_scalar(lambda t: math.exp(-t) - 2.0, TEMP, "bisect")
    assert x == TEMP.bracket[0] and f == pytest.approx(2 - math.exp(-1e-3))


def test_check_solver():
    assert check_solver("Nelder_Mead", "x") == "nelder-mead"
    with pytest.raises(ValueError, match="unknown solver 'brent'"):
        check_solver("brent", "x")
