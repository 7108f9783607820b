# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from monai_imbalance.handlers import ContextLabelMontageHandler
from monai_imbalance.visualize import montage_slices, plot_context_montage


class _ThresholdGenerator(torch.nn.Module):
    """Context 1 where the image is bright, else context 0: a known map to compare against."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-self.scale * x, self.scale * x], 1)


def _case(shape=(12, 10, 9)):
    g = torch.Generator().manual_seed(0)
    image = torch.rand((1, *shape), generator=g) - 0.5
    label = torch.zeros((1, *shape), dtype=torch.long)
    label[0, 3:6, 2:5, 4:7] = 1
    return image, label


def test_montage_slices_centre_of_foreground_or_volume():
    label = np.zeros((9, 8, 7), dtype=np.int64)
    assert montage_slices(label) == (4, 4, 3)  # (8/2, 7/2, 6/2) rounded half to even
    label[1:4, 5, 2] = 2
    assert montage_slices(label) == (2, 5, 2)
    with pytest.raises(ValueError, match="label must be"):
        montage_slices(np.zeros((3, 3)))


def test_plot_context_montage_draws_foreground_over_context():
    image, label = _case()
    context = (image[0] > 0).long()
    fig = plot_context_montage(image[0].numpy(), label[0].numpy(), context.numpy(), num_classes=2, num_context=2)
    axes = fig.axes
    assert len(axes) == 9
    _, j, _ = montage_slices(label[0].numpy())
    shown = np.rot90(axes[5].images[0].get_array())  # coronal row, context column
    expected = np.where(label[0, :, j, :].numpy() > 0, 2, context[:, j, :].numpy())
    np.testing.assert_array_equal(np.rot90(shown, -2), expected)
    with pytest.raises(ValueError, match="one shape"):
        plot_context_montage(image[0].numpy(), label[0, :5].numpy(), context.numpy(), 2, 2)


def test_handler_writes_montage_at_interval_and_last_epoch(tmp_path):
    image, label = _case()
    generator = _ThresholdGenerator()
    handler = ContextLabelMontageHandler(
        generator,
        [{"image": image, "label": label}],
        num_classes=2,
        output_dir=tmp_path,
        roi_size=(8, 8, 8),
        interval=2,
    )
    context, t = handler.context_map(image)
    assert t == 2
    torch.testing.assert_close(context, (image[0] > 0).long())
    generator.train()
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "context_labels_epoch0002.png",
        "context_labels_epoch0003.png",
    ]
    assert generator.training  # mode restored


def test_handler_rejects_bad_arguments(tmp_path):
    image, label = _case()
    with pytest.raises(ValueError, match="interval"):
        ContextLabelMontageHandler(_ThresholdGenerator(), [{"image": image}], 2, tmp_path, (8, 8, 8), interval=0)
    with pytest.raises(ValueError, match="empty"):
        ContextLabelMontageHandler(_ThresholdGenerator(), [], 2, tmp_path, (8, 8, 8))
    handler = ContextLabelMontageHandler(_ThresholdGenerator(), [{"image": image}], 2, tmp_path, (8, 8, 8))
    with pytest.raises(KeyError, match="'label'"):
        handler._case()


def test_handler_reports_how_far_the_generator_moved(tmp_path):
    """Parameter change since the start of the run, context entropy over background, context class shares."""
    image, label = _case()
    generator = _ThresholdGenerator()
    handler = ContextLabelMontageHandler(
        generator, [{"image": image, "label": label}], num_classes=2, output_dir=tmp_path, roi_size=(8, 8, 8)
    )
    engine = Engine(lambda e, b: None)
    handler.attach(engine)

    @engine.on(Events.EPOCH_STARTED)
    def learn(_):  # the "meta step": the generator's scale goes 10 -> 12 -> 14
        with torch.no_grad():
            generator.scale += 2.0

    engine.run([0], max_epochs=2)
    assert [h["epoch"] for h in handler.history] == [2]  # interval 5: only the last epoch
    stats = handler.history[-1]
    assert stats["parameter_change"] == pytest.approx(0.4)  # |14 - 10| / 10
    # independent: binary entropy of softmax([-s x, s x]) over background voxels, normalised by log 2
    background = label[0] == 0
    p = torch.sigmoid(2 * 14.0 * image[0][background].double())
    h = -(p * torch.log(p) + (1 - p) * torch.log(1 - p)) / np.log(2)
    assert stats["entropy"] == pytest.approx(float(h.mean()), rel=1e-4)
    share_bright = float((image[0][background] > 0).double().mean())
    assert stats["shares"] == pytest.approx([1 - share_bright, share_bright])
    # hard (scale 1e3) labels: entropy near 0; a frozen generator: no parameter change
    frozen = handler.statistics(torch.cat([-1e3 * image, 1e3 * image]), label)
    assert frozen["parameter_change"] == pytest.approx(0.4) and frozen["entropy"] < 0.01
    handler._remember_start(engine)
    assert handler.statistics(handler.context_logits(image), label)["parameter_change"] == 0.0
