# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Logit margins, the class-balanced reservoir, and the handler on real MONAI engines (Li et al., IEEE TMI 2021)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import Activationsd, AsDiscreted, Compose
from monai.utils import set_determinism
from scipy import stats

from monai_imbalance.handlers.logit_distribution import (
    LogitDistributionHandler,
    LogitMarginSampler,
    logit_margins,
    summarize_margins,
)


def _direct(logits: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """Reference margins by explicit loops over voxels: fold context channels into 0, then z_y - max_{k!=y} z_k."""
    b, k = logits.shape[:2]
    flat = logits.reshape(b, k, -1)
    lab = label.reshape(b, -1)
    out = np.empty(lab.shape, dtype=np.float64)
    for i in range(b):
        for v in range(flat.shape[2]):
            z = list(flat[i, :num_classes, v].astype(np.float64))
            z[0] = max([z[0]] + list(flat[i, num_classes:, v].astype(np.float64)))
            y = int(lab[i, v])
            out[i, v] = z[y] - max(z[j] for j in range(num_classes) if j != y)
    return out.reshape(label.shape)


def test_binary_margin_is_fg_minus_bg_signed_by_label():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 5, 4, 3, generator=g)
    label = torch.randint(0, 2, (2, 1, 5, 4, 3), generator=g)
    m = logit_margins(logits, label)
    diff = logits[:, 1] - logits[:, 0]
    expected = torch.where(label[:, 0] == 1, diff, -diff)
    torch.testing.assert_close(m, expected)


@pytest.mark.parametrize("channels", [3, 5])  # 3 classes, plus 0 or 2 context channels (CoLab: K = C + t - 1)
def test_multiclass_margins_match_direct_loops(channels):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, channels, 4, 3, 3, generator=g) * 3
    label = torch.randint(0, 3, (2, 1, 4, 3, 3), generator=g)
    expected = _direct(logits.numpy(), label[:, 0].numpy(), 3)
    np.testing.assert_allclose(logit_margins(logits, label, num_classes=3).numpy(), expected, rtol=1e-6, atol=1e-6)
    onehot = torch.nn.functional.one_hot(label[:, 0], 3).movedim(-1, 1)
    np.testing.assert_allclose(logit_margins(logits, onehot, num_classes=3).numpy(), expected, rtol=1e-6, atol=1e-6)
    # the sampler keeps exactly these values when its capacity holds every voxel (also for a deep-supervision output)
    sampler = LogitMarginSampler(3, capacity=10_000)  # MetaTensors (as MONAI engines give) and deep supervision
    sampler.update(MetaTensor(torch.stack([logits, torch.zeros_like(logits)], 1)), MetaTensor(label))
    for c, values in sampler.samples().items():
        np.testing.assert_allclose(np.sort(values), np.sort(expected[label[:, 0].numpy() == c]), rtol=1e-6, atol=1e-6)


def test_sampler_is_class_balanced_and_bounded_on_a_999_permille_background_volume():
    label = torch.zeros(1, 1, 100, 100, 100, dtype=torch.uint8)
    label.view(-1)[torch.randperm(label.numel(), generator=torch.Generator().manual_seed(0))[:1000]] = 1  # 0.1 %
    logits = torch.randn(1, 2, 100, 100, 100, generator=torch.Generator().manual_seed(1))
    sampler = LogitMarginSampler(2, capacity=500)
    for _ in range(3):
        sampler.update(logits, label)
    counts = {c: v.size for c, v in sampler.samples().items()}
    assert counts == {0: 500, 1: 500}
    assert sampler.seen == [3 * 999_000, 3 * 1000]
    small = LogitMarginSampler(2, capacity=5000)
    small.update(logits, label)
    assert {c: v.size for c, v in small.samples().items()} == {0: 5000, 1: 1000}  # fewer seen than the cap: all kept


def test_reservoir_is_a_uniform_sample_of_the_stream():
    """Each voxel's margin is its position in a 20 000-voxel stream; 2 000 kept should cover it uniformly."""
    sampler = LogitMarginSampler(2, capacity=2000, seed=3)
    label = torch.ones(1, 1, 10, 10, 10, dtype=torch.long)
    for batch in range(20):
        z = torch.zeros(1, 2, 10, 10, 10)
        z[:, 1] = torch.arange(batch * 1000, (batch + 1) * 1000, dtype=torch.float32).reshape(10, 10, 10)
        sampler.update(z, label)
    positions = sampler.samples()[1]
    assert positions.size == 2000 and np.unique(positions).size == 2000  # without replacement
    counts = np.histogram(positions, bins=20, range=(0, 20_000))[0]  # one bin per batch: early == late batches
    assert stats.chisquare(counts).pvalue > 0.001
    assert stats.kstest(positions / 20_000, "uniform").pvalue > 0.001


def test_sampler_does_not_touch_the_global_rng_or_its_inputs():
    logits = torch.randn(2, 3, 6, 6, 6)
    label = torch.randint(0, 3, (2, 1, 6, 6, 6))
    before, copy_logits, copy_label = torch.get_rng_state(), logits.clone(), label.clone()
    sampler = LogitMarginSampler(3, capacity=20)
    for _ in range(4):
        sampler.update(logits, label)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(logits, copy_logits) and torch.equal(label, copy_label)


def test_summary_figures():
    samples = {
        "train": {0: np.array([2.0, 4.0]), 1: np.array([3.0, 1.0])},
        "validation": {0: np.array([3.0]), 1: np.array([-1.0, 1.0, -2.0, 2.0])},
    }
    s = summarize_margins(samples, ["bg", "fg"])
    assert s["stats"]["train"]["fg"]["mean"] == 2.0 and s["stats"]["validation"]["fg"]["mean"] == 0.0
    assert s["shift"]["train-validation"] == {"bg": 0.0, "fg": 2.0}
    assert s["wrong_side_rare"]["validation"] == {"fg": 0.5}


def _engines(seed: int, handler: LogitDistributionHandler | None, with_evaluator: bool = False):
    set_determinism(seed=seed)
    g = torch.Generator().manual_seed(123)
    images = torch.randn(8, 1, 16, 16, 16, generator=g)
    labels = (images > 1.2).to(torch.long)  # ~ 12 % foreground
    data = [{"image": images[i], "label": labels[i]} for i in range(8)]
    loader = torch.utils.data.DataLoader(data, batch_size=2, shuffle=True)
    net = UNet(3, 1, 2, channels=(4, 8), strides=(2,), num_res_units=0)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    post = Compose(
        [Activationsd("pred", softmax=True), AsDiscreted(["pred", "label"], argmax=[True, False], to_onehot=2)]
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=lambda pred, target: torch.nn.functional.cross_entropy(pred, target[:, 0]),
        inferer=SimpleInferer(),
        postprocessing=None,
    )
    evaluator = None
    if with_evaluator:
        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=torch.utils.data.DataLoader(data[:2], batch_size=1),
            network=net,
            inferer=SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2),
            postprocessing=post,
        )
        ValidationHandler(validator=evaluator, interval=1, epoch_level=True).attach(trainer)
    if handler is not None:
        if with_evaluator:
            handler.evaluator = evaluator
        handler.attach(trainer)
    return trainer, net


def test_handler_does_not_change_training():
    trainer, net = _engines(0, None)
    trainer.run()
    reference = {k: v.clone() for k, v in net.state_dict().items()}
    rng_reference = torch.get_rng_state()
    handler = LogitDistributionHandler(num_classes=2, interval=1, samples_per_class=100)
    trainer, net = _engines(0, handler)
    trainer.run()
    assert trainer.state.iteration == 8
    assert handler.samplers["train"].seen[1] > 0 and handler.last_summary is not None
    for k, v in net.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert torch.equal(torch.get_rng_state(), rng_reference)


def test_handler_on_trainer_and_sliding_window_evaluator_writes_report(tmp_path, caplog):
    handler = LogitDistributionHandler(
        num_classes=2, output_dir=tmp_path / "logits", log_dir=tmp_path / "tb", interval=1, samples_per_class=300,
        class_names=["background", "lesion"],
    )  # fmt: skip
    trainer, _ = _engines(1, handler, with_evaluator=True)
    with caplog.at_level(logging.INFO):
        trainer.run()
    for epoch in (1, 2):
        for c, name in enumerate(["background", "lesion"]):
            png = tmp_path / "logits" / f"logit_margins_epoch{epoch:04d}_{c}_{name}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        npz = np.load(tmp_path / "logits" / f"logit_margins_epoch{epoch:04d}.npz")
        assert {"train_0", "train_1", "validation_0", "validation_1"} <= set(npz.files)
        assert npz["train_0"].size == 300 and npz["validation_0"].size == 300
        # validation samples are raw sliding-window logits, not the postprocessed one-hot (whose margins are +-1)
        assert not np.all(np.isin(npz["validation_1"], [-1.0, 1.0]))
    assert not list((tmp_path / "logits").glob(".*tmp*"))
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    text = caplog.text
    assert "logit_margins_epoch0002" in text and "shift train-validation" in text and "wrong side validation" in text
    summary = handler.last_summary
    assert summary["splits"] == ["train", "validation"]
    assert 0.0 <= summary["wrong_side_rare"]["validation"]["lesion"] <= 1.0
    assert f"{summary['stats']['validation']['lesion']['mean']:.3f}" in text


def test_only_report_epochs_are_sampled(tmp_path):
    handler = LogitDistributionHandler(num_classes=2, output_dir=tmp_path, interval=5, samples_per_class=50)
    trainer, _ = _engines(2, handler)
    trainer.run()  # 2 epochs, interval 5: only the last epoch is sampled and reported
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["logit_margins_epoch0002.npz"]
    assert sum(handler.samplers["train"].seen) == 4 * 2 * 16**3
