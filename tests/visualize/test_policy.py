# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The policy-evolution figure (JCSAugment, Li et al., IEEE TMI 2023): one panel per class group, one line per op."""

from __future__ import annotations

import numpy as np
import pytest

from monai_imbalance.visualize import plot_policy_evolution, save_figure


def test_panels_and_lines_hold_the_given_series(tmp_path):
    epochs = [1, 2, 3]
    applied = {
        "background": {"scale": [0.2, 0.15, 0.1], "gamma": [0.3, 0.3, 0.25]},
        "foreground": {"scale": [0.2, 0.3, 0.4], "gamma": [0.3, 0.35, 0.45]},
    }
    test_time = {"identity": [0.1, 0.2, 0.3], "mirror_x": [0.1, 0.1, 0.05]}
    fig = plot_policy_evolution(epochs, applied, test_time, title="epoch 3")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [
        "background policy",
        "foreground policy",
        "test-time policy (probability)",
    ]
    for ax, series in zip(axes, [applied["background"], applied["foreground"], test_time], strict=True):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == set(series)
        for name, values in series.items():
            np.testing.assert_array_equal(lines[name].get_xdata(), epochs)
            np.testing.assert_allclose(lines[name].get_ydata(), values)
    # the same op has the same colour in every group panel
    colour = {ax.get_title(): {ln.get_label(): ln.get_color() for ln in ax.get_lines()} for ax in axes[:2]}
    assert colour["background policy"] == colour["foreground policy"]
    path = save_figure(fig, tmp_path / "policy.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_epoch_and_no_test_time_panel():
    fig = plot_policy_evolution([4], {"all": {"noise": [0.1]}})
    assert len(fig.axes) == 1 and fig.axes[0].get_lines()[0].get_marker() == "o"  # one point is still visible


@pytest.mark.parametrize(
    "epochs, applied, match",
    [
        ([], {"all": {"noise": []}}, "epochs is empty"),
        ([1], {}, "no class group"),
        ([1], {"all": {}}, "'all' has no operation"),
        ([1, 2], {"all": {"noise": [0.1]}}, "all/noise has 1 values but there are 2 epochs"),
    ],
)
def test_bad_input_is_named(epochs, applied, match):
    with pytest.raises(ValueError, match=match):
        plot_policy_evolution(epochs, applied)
