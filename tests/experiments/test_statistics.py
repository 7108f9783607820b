# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Mean ± sd over seeds, paired Wilcoxon tests against vanilla and their marks in the Markdown table."""

from __future__ import annotations

import math

import pytest
import scipy.stats

from monai_imbalance.experiments import format_table, paired_values, table_statistics, wilcoxon_p
from monai_imbalance.experiments.markdown import WORSE
from monai_imbalance.experiments.statistics import mean_sd, seed_mean, significance_mark


def _cell(variant, seed, dice, fraction=0.5, hd95=None):
    """A cell result with per-case rows: ``dice`` one value per case (``case_0``, ``case_1``, ...)."""
    hd95 = [5.0] * len(dice) if hd95 is None else hd95
    cases = [
        {"case": f"case_{i}", "split": "test", "dice": d, "sensitivity": d, "precision": d, "hd95": h}
        for i, (d, h) in enumerate(zip(dice, hd95, strict=True))
    ]
    return {"variant": variant, "fraction": fraction, "seed": seed, "class": "fg", "cases": cases}


def _row(table, variant):
    return next(line for line in table.splitlines() if line.startswith(f"| {variant} |")).split(" | ")


def test_mean_over_cases_then_mean_sd_over_seeds():
    results = [
        _cell("vanilla", 0, [0.6, 0.8]),  # seed mean 0.7
        _cell("vanilla", 1, [0.7, 0.9]),  # 0.8
        _cell("vanilla", 2, [0.8, 1.0, math.nan]),  # 0.9 (the undefined case left out)
    ]
    stats = table_statistics(results, ["vanilla"], [0.5])[("vanilla", 0.5, "dice")]
    # by hand: mean (0.7 + 0.8 + 0.9) / 3 = 0.8; sd sqrt(((-0.1)^2 + 0 + 0.1^2) / (3 - 1)) = 0.1
    assert stats.mean == pytest.approx(0.8) and stats.sd == pytest.approx(0.1) and stats.n_seeds == 3
    assert _row(format_table(results, ["vanilla"], [0.5]), "vanilla")[1] == "**80.0 ± 10.0**"
    # one seed: the mean alone, no ±; a result without per-case rows gives its summary mean
    assert mean_sd([0.7]) == (0.7, None) and math.isnan(mean_sd([math.nan])[0]) and mean_sd([])[1] is None
    assert seed_mean({"dice_mean": 0.25}, "dice") == 0.25
    assert _row(format_table(results[:1], ["vanilla"], [0.5]), "vanilla")[1] == "**70.0**"


def test_wilcoxon_equals_scipy_on_the_same_pairs():
    rng = [0.11, 0.52, 0.33, 0.74, 0.25, 0.66, 0.47, 0.18, 0.89]
    vanilla = [_cell("vanilla", s, [rng[(i + 2 * s) % 9] for i in range(7)]) for s in range(3)]
    ce = [_cell("ce", s, [rng[(i + 2 * s) % 9] + 0.05 * ((i * s) % 3 - 0.8) for i in range(7)]) for s in range(3)]
    ce[1]["cases"][3]["dice"] = math.nan  # undefined: no pair
    del ce[2]["cases"][6]  # missing case: no pair
    results = vanilla + ce
    # independently: the (case, seed) pairs both define
    x, y = [], []
    for s in range(3):
        for i in range(7):
            if (s, i) in ((1, 3), (2, 6)):
                continue
            x.append(rng[(i + 2 * s) % 9] + 0.05 * ((i * s) % 3 - 0.8))
            y.append(rng[(i + 2 * s) % 9])
    expected = scipy.stats.wilcoxon(x, y).pvalue
    stats = table_statistics(results, ["vanilla", "ce"], [0.5])[("ce", 0.5, "dice")]
    assert stats.n_pairs == 19 and stats.p_value == pytest.approx(expected, rel=1e-12)
    assert sorted(paired_values(results, "ce", "vanilla", 0.5, "dice")[0]) == pytest.approx(sorted(x))
    assert table_statistics(results, ["vanilla", "ce"], [0.5])[("vanilla", 0.5, "dice")].p_value is None
    # no difference at all: p = 1 (scipy raises); no pair: no test
    assert wilcoxon_p([0.5, 0.6], [0.5, 0.6]) == 1.0 and wilcoxon_p([], []) is None


def test_marks_thresholds_worse_and_bold():
    base = [0.50, 0.52, 0.55, 0.57, 0.60, 0.62, 0.65, 0.67]
    vanilla = [_cell("vanilla", s, [b + 0.01 * s for b in base], hd95=[4.0] * 8) for s in range(3)]
    # strong effect: every one of the 24 pairs better by 0.05-0.12 -> p < 0.01
    strong = [_cell("strong", s, [b + 0.01 * s + 0.05 + 0.01 * i for i, b in enumerate(base)]) for s in range(3)]
    # no effect: +-0.01 alternating, as many up as down -> p = 1, mean equal (no worse mark)
    none_ = [
        _cell("none", s, [b + 0.01 * s + (0.01 if i % 2 else -0.01) for i, b in enumerate(base)]) for s in range(3)
    ]
    # 8 pairs (one seed), differences ranked 1..8, the smallest one negative: exact p = 2 * 2 / 256 = 0.0156
    moderate = [_cell("moderate", 0, [b + 0.0005 + (-0.01 if i == 0 else 0.01 * (i + 1)) for i, b in enumerate(base)])]
    # worse: lower DSC everywhere -> p < 0.01 and the worse mark
    worse = [_cell("worse", s, [b + 0.01 * s - 0.1 for b in base], hd95=[3.0] * 8) for s in range(3)]
    results = vanilla + strong + none_ + moderate + worse
    variants = ["vanilla", "strong", "none", "moderate", "worse"]
    stats = table_statistics(results, variants, [0.5])
    assert stats[("strong", 0.5, "dice")].p_value < 0.01
    assert stats[("none", 0.5, "dice")].p_value > 0.05
    assert 0.01 < stats[("moderate", 0.5, "dice")].p_value < 0.05
    assert [significance_mark(p) for p in (0.009, 0.01, 0.049, 0.05, None)] == ["**", "*", "*", "", ""]

    table = format_table(results, variants, [0.5], seeds=[0, 1, 2])
    dsc = {v: _row(table, v)[1] for v in variants}
    # by hand: mean(base) = 0.585; seeds add 0, 0.01, 0.02 (mean 0.01, sd 0.01); strong adds 0.05 + 0.035
    assert dsc["vanilla"] == "59.5 ± 1.0"  # the reference gets no marks
    assert dsc["strong"] == "**68.0 ± 1.0** \\*\\*"  # best of the column in bold, then the marks
    assert dsc["none"] == "59.5 ± 1.0"
    assert dsc["moderate"] == "62.8 \\* (n=1)"  # 0.585 + 0.0005 + (0.35 - 0.01) / 8; one of three seeds
    assert dsc["worse"] == f"49.5 ± 1.0 \\*\\* {WORSE}"
    hd95 = {v: _row(table, v)[4].rstrip(" |") for v in variants}
    assert hd95["worse"] == "**3.00 ± 0.00** \\*\\*" and hd95["vanilla"] == "4.00 ± 0.00"  # HD95: lowest is best
    legend = table.splitlines()[-1]
    assert "\\* p < 0.05, \\*\\* p < 0.01" in legend and f"{WORSE}: mean DSC below `vanilla`'s" in legend
    assert "(n=k): k of the 3 seeds finished" in legend


def test_missing_and_undefined_entries():
    results = [_cell("vanilla", 0, [0.5, 0.6], hd95=[math.nan, math.nan])]
    table = format_table(results, ["vanilla", "ce"], [0.5, 1.0])
    assert _row(table, "vanilla")[4] == "n/a" and _row(table, "ce")[1] == "-" and _row(table, "vanilla")[5] == "-"
