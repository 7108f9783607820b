# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The trainer with extra adversarial / mixup steps (Li, Kamnitsas, Glocker, IEEE TMI 2021; methods.md 1.8)."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import MeanDice, from_engine
from monai.losses import DiceCELoss
from monai.transforms import Activationsd, AsDiscreted, Compose
from torch import nn

from monai_imbalance.engines import RegularisedSupervisedTrainer, mixup_labels

C = 3  # 0 background, 1 common, 2 rare
SHAPE = (8, 8, 8)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.norm = nn.InstanceNorm3d(4, affine=True)
        self.conv2 = nn.Conv3d(4, C, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.norm(self.conv1(x))))


class BNNet(TinyNet):
    """TinyNet with BatchNorm and an InstanceNorm that track running statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm3d(4)
        self.norm = nn.InstanceNorm3d(4, affine=True, track_running_stats=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.norm(self.bn(self.conv1(x)))))


class MaskedCE(nn.Module):
    """Cross-entropy with label or one-hot/soft targets and an optional voxel mask (the mixup loss's signature)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((target.detach().clone(), None if mask is None else mask.detach().clone()))
        if target.shape[1] == 1:
            target = torch.nn.functional.one_hot(target[:, 0].long(), input.shape[1]).movedim(-1, 1).float()
        ce = -(target * torch.log_softmax(input, dim=1)).sum(1, keepdim=True)
        if mask is None:
            return ce.mean()
        return (ce * mask).sum() / mask.sum().clamp_min(1.0)


def _batches(n: int = 3, seed: int = 0, raw_keys: tuple[str, str] | None = None) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of 2 random 8^3 volumes; ``raw_keys`` adds a constant raw image and a one-cube raw label."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        b = {"image": torch.randn(2, 1, *SHAPE, generator=g), "label": torch.randint(0, C, (2, 1, *SHAPE), generator=g)}
        if raw_keys is not None:
            label_raw = torch.zeros(2, 1, *SHAPE, dtype=torch.long)
            label_raw[0, :, 2:5, 2:5, 2:5] = 2  # rare cube
            label_raw[1, :, 4:7, 4:7, 4:7] = 1  # common cube only
            b[raw_keys[0]], b[raw_keys[1]] = torch.full((2, 1, *SHAPE), 0.5), label_raw
        out.append(b)
    return out


def _trainer(data, cls=RegularisedSupervisedTrainer, epochs: int = 1, seed: int = 0, **kwargs):
    torch.manual_seed(seed)
    net = kwargs.pop("net_cls", TinyNet)()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    steps: list[int] = []
    opt.register_step_post_hook(lambda *_: steps.append(1))
    trainer = cls(
        device="cpu",
        max_epochs=epochs,
        train_data_loader=data,
        network=net,
        optimizer=opt,
        loss_function=kwargs.pop("loss_function", DiceCELoss(to_onehot_y=True, softmax=True)),
        **kwargs,
    )
    return trainer, net, steps


def _record_inputs(net: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    return seen


def _run(trainer):
    torch.manual_seed(123)
    trainer.run()


ADV = {"eps": 10.0, "xi": 1e-5, "rare_classes": [2]}
MIX = {"alpha": 0.2, "margin": 0.2, "rare_classes": [2]}


def test_without_extras_same_weights_as_supervised_trainer():
    data = _batches()
    ref, ref_net, ref_steps = _trainer(data, cls=SupervisedTrainer, epochs=2)
    ours, net, steps = _trainer(data, epochs=2, adversarial=None, mixup=None)
    _run(ref)
    _run(ours)
    assert len(steps) == len(ref_steps) == 6
    for (k, a), b in zip(ref_net.state_dict().items(), net.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


@pytest.mark.parametrize(
    "extras, steps_per_iteration",
    [({"adversarial": ADV}, 2), ({"mixup": MIX}, 2), ({"adversarial": ADV, "mixup": MIX}, 3)],
)
def test_extra_steps_count_outputs_and_weights(extras, steps_per_iteration):
    data = _batches()
    ref, ref_net, _ = _trainer(data, cls=SupervisedTrainer)
    ours, net, steps = _trainer(
        data,
        extra_loss_function=MaskedCE(),
        postprocessing=Compose(
            [Activationsd(keys="pred", softmax=True), AsDiscreted(keys=("pred", "label"), argmax=(True, False))]
        ),
        key_train_metric={"dice": MeanDice(include_background=False, output_transform=from_engine(["pred", "label"]))},
        **extras,
    )
    logged: dict[str, list] = {"ref": [], "ours": []}
    ref.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: logged["ref"].append(e.state.output[0]["loss"]))
    ours.add_event_handler(IterationEvents.MODEL_COMPLETED, lambda e: logged["ours"].append(e.state.output[0]["loss"]))
    _run(ref)
    _run(ours)
    assert len(steps) == steps_per_iteration * len(data)
    assert any(
        not torch.equal(a, b) for a, b in zip(ref_net.state_dict().values(), net.state_dict().values(), strict=True)
    )
    # only step 1's loss is "loss": identical to the vanilla trainer's at the first iteration (same weights, data)
    torch.testing.assert_close(logged["ours"][0], logged["ref"][0])
    out = ours.state.output
    assert isinstance(out, list) and len(out) == 2  # decollated as SupervisedTrainer's
    for key in ("adversarial", "mixup"):
        loss_key = f"loss_{key}"
        if key in extras:
            assert all(isinstance(item[loss_key], float) and item[loss_key] == item[loss_key] for item in out)
            assert type(out[0][loss_key]) is type(out[0]["loss"]) and out[0][loss_key] != out[0]["loss"]
        else:
            assert loss_key not in out[0]
    if "mixup" in extras:
        assert 0.0 <= out[0]["mixup_lambda"] <= 0.8
    assert "dice" in ours.state.metrics


def _count_iteration_events(trainer) -> Counter:
    counter: Counter = Counter()
    for event in IterationEvents:
        trainer.add_event_handler(event, lambda _e, ev=event: counter.update([ev.value]))
    _run(trainer)
    return counter


def test_same_iteration_events_as_supervised_trainer():
    data = _batches(n=2)
    ref = _count_iteration_events(_trainer(data, cls=SupervisedTrainer)[0])
    ours = _count_iteration_events(_trainer(data, adversarial=ADV, mixup=MIX, extra_loss_function=MaskedCE())[0])
    assert ours == ref
    assert ours["model_completed"] == 2


def test_adversarial_step_trains_on_perturbed_augmented_batch():
    data = _batches(n=1)
    trainer, net, _ = _trainer(data, adversarial=ADV)
    seen = _record_inputs(net)
    _run(trainer)
    x = data[0]["image"]
    assert torch.equal(seen[0], x)
    assert len(seen) == 3  # step 1, the probe, the adversarial step
    torch.testing.assert_close(seen[1], x, rtol=0, atol=1e-4)  # x + xi * d
    torch.testing.assert_close((seen[-1] - x).flatten(1).norm(dim=1), torch.full((2,), 10.0), rtol=1e-4, atol=0)


def test_iteration_update_that_calls_the_trainer_iteration_runs_the_extra_steps():
    """A method plugged in as ``iteration_update`` (MONAI's hook) composes with the extra steps when it calls
    ``engine._iteration``: same weights as the trainer alone, and its own output key next to the extra losses."""
    data = _batches(n=2)
    calls = []

    def hook(engine, batchdata):
        calls.append(engine.state.iteration)
        output = engine._iteration(engine, batchdata)  # decollated: one dict per sample
        for item in output:
            item["hook"] = float(engine.state.iteration)
        return output

    plain, plain_net, _ = _trainer(data, adversarial=ADV, mixup=MIX, extra_loss_function=MaskedCE())
    hooked, hooked_net, steps = _trainer(
        data, adversarial=ADV, mixup=MIX, extra_loss_function=MaskedCE(), iteration_update=hook
    )
    assert hooked.extra_steps == ("adversarial", "mixup")
    _run(plain)
    _run(hooked)
    assert calls == [1, 2] and len(steps) == 6  # three optimizer steps per iteration
    out = hooked.state.output[0]
    assert out["hook"] == 2.0 and {"loss_adversarial", "loss_mixup", "mixup_lambda"} <= set(out)
    for a, b in zip(plain_net.parameters(), hooked_net.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("image_key, label_key", [("image_raw", "label_raw"), ("orig_image", "orig_label")])
def test_raw_batch_path_uses_raw_keys(image_key, label_key):
    data = _batches(n=2, raw_keys=(image_key, label_key))
    keys = {} if image_key == "image_raw" else {"raw_image_key": image_key, "raw_label_key": label_key}
    mix_loss = MaskedCE()
    trainer, net, _ = _trainer(
        data,
        adversarial={**ADV, "raw": True},
        mixup={**MIX, "raw": True, "loss_function": mix_loss},
        **keys,
    )
    seen = _record_inputs(net)
    lams: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: lams.append(e.state.output[0]["mixup_lambda"]))
    _run(trainer)
    assert len(seen) == 4 * len(data)  # step 1, probe, adversarial step, mixup step
    for i, batch in enumerate(data):
        x_raw, y_raw = batch[image_key], batch[label_key]
        step1, probe, adv, mix = seen[4 * i : 4 * i + 4]
        assert torch.equal(step1, batch["image"])
        torch.testing.assert_close(probe, x_raw, rtol=0, atol=1e-4)
        # the direction comes from the raw labels: sample 1's raw patch has no rare voxel, so it is not perturbed
        torch.testing.assert_close((adv - x_raw).flatten(1).norm(dim=1), torch.tensor([10.0, 0.0]), rtol=1e-4, atol=0)
        torch.testing.assert_close(mix, torch.full_like(x_raw, 0.5))  # lam * 0.5 + (1 - lam) * 0.5
        target, mask = mix_loss.calls[i]
        ref_target, ref_mask = mixup_labels(y_raw, y_raw.flip(0), lams[i], C, rare_classes=[2], margin=0.2)
        assert torch.equal(target, ref_target) and torch.equal(mask, ref_mask)


def test_symmetric_mixup_passes_soft_target_without_mask():
    mix_loss = MaskedCE()
    trainer, _, _ = _trainer(_batches(n=1), mixup={"alpha": 1.0, "margin": 0.0}, extra_loss_function=mix_loss)
    _run(trainer)
    target, mask = mix_loss.calls[0]
    assert mask is None and target.shape == (2, C, *SHAPE)
    torch.testing.assert_close(target.sum(1), torch.ones(2, *SHAPE))


def test_missing_raw_keys_name_the_key():
    trainer, _, _ = _trainer(_batches(n=1), mixup={**MIX, "raw": True}, extra_loss_function=MaskedCE())
    with pytest.raises(ValueError, match="'image_raw'.*CopyItemsd"):
        trainer.run()


def test_optim_set_to_none_and_amp_scaler_as_supervised_trainer():
    data = _batches(n=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler / autocast("cuda") without CUDA: disabled, with a warning
        trainer, _, steps = _trainer(
            data, adversarial=ADV, mixup=MIX, extra_loss_function=MaskedCE(), optim_set_to_none=True, amp=True
        )
        zero_grad_args: list[bool] = []
        original = trainer.optimizer.zero_grad
        trainer.optimizer.zero_grad = lambda set_to_none=True: (
            zero_grad_args.append(set_to_none),
            original(set_to_none),
        )

        class RecordingScaler:
            def __init__(self) -> None:
                self.calls: Counter = Counter()

            def scale(self, loss):
                self.calls["scale"] += 1
                return loss

            def step(self, optimizer):
                self.calls["step"] += 1
                optimizer.step()

            def update(self):
                self.calls["update"] += 1

        scaler = RecordingScaler()
        trainer.add_event_handler(Events.STARTED, lambda e: setattr(e, "scaler", scaler))  # run() creates the scaler
        _run(trainer)
    assert len(steps) == 6
    assert zero_grad_args == [True] * 6
    assert trainer.scaler is scaler and scaler.calls == Counter({"scale": 6, "step": 6, "update": 6})


def test_rare_classes_out_of_range_at_run_time():
    trainer, _, _ = _trainer(_batches(n=1), adversarial={"rare_classes": [5]})
    with pytest.raises(ValueError, match=r"rare_classes=\[5\].*3 classes"):
        trainer.run()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"adversarial": {"eps": -1}}, "eps=-1"),
        ({"adversarial": {"xi": -1e-5}}, "xi=-1e-05"),
        ({"adversarial": {"epsilon": 10}}, "epsilon"),
        ({"adversarial": {"rare_classes": [-1]}}, r"rare_classes=\[-1\]"),
        ({"adversarial": {"distribution": "laplace"}}, "laplace"),
        ({"adversarial": {"reuse_forward": True}}, "reuse_forward"),
        ({"adversarial": 10.0}, "adversarial"),
        ({"mixup": {"alpha": 0}}, "alpha=0"),
        ({"mixup": {"alpha": -0.2}}, "alpha=-0.2"),
        ({"mixup": {"margin": -0.1}}, "margin=-0.1"),
        ({"mixup": {"margin": 1.0}}, "margin=1.0"),
        ({"mixup": {"rare_classes": "1"}}, "rare_classes='1'"),
        ({"mixup": {}, "accumulation_steps": 2}, "accumulation_steps=2"),
    ],
)
def test_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _trainer(_batches(n=1), **kwargs)


def test_bundle_style_config_with_copyitemsd_raw_copy(tmp_path):
    """The documented wiring: CopyItemsd after the crop and before the random augmentations, trainer from JSON."""
    images = [{"image": torch.randn(1, 12, 12, 12), "label": torch.randint(0, C, (1, 12, 12, 12))} for _ in range(4)]
    config = {
        "imports": ["$import torch"],
        "network": "$torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Conv3d(4, 3, 1))",
        "loss": {"_target_": "monai.losses.DiceCELoss", "to_onehot_y": True, "softmax": True},
        "mixup_loss": "$@extra_loss",
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 1e-3},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {
                    "_target_": "RandSpatialCropd",
                    "keys": ["image", "label"],
                    "roi_size": [8, 8, 8],
                    "random_size": False,
                },
                {"_target_": "CopyItemsd", "keys": ["image", "label"], "times": 1, "names": ["image_raw", "label_raw"]},
                {"_target_": "RandFlipd", "keys": ["image", "label"], "spatial_axis": 0, "prob": 1.0},
                {"_target_": "RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 1.0},
            ],
        },
        "dataset": {"_target_": "Dataset", "data": "@data", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 2, "num_workers": 0},
        "trainer": {
            "_target_": "monai_imbalance.engines.RegularisedSupervisedTrainer",
            "device": "cpu",
            "max_epochs": 1,
            "train_data_loader": "@dataloader",
            "network": "@network",
            "loss_function": "@loss",
            "optimizer": "@optimizer",
            "adversarial": {"eps": 10.0, "xi": 1e-5, "rare_classes": [2], "raw": True},
            "mixup": {"alpha": 0.2, "margin": 0.2, "rare_classes": [2], "raw": True, "loss_function": "@mixup_loss"},
        },
    }
    parser = ConfigParser(config)
    parser["data"] = images
    parser["extra_loss"] = MaskedCE()
    batch = next(iter(parser.get_parsed_content("dataloader")))
    assert torch.equal(batch["label_raw"].flip(2), batch["label"])  # the raw copy is the same patch, unflipped
    assert not torch.equal(batch["image_raw"].flip(2), batch["image"])  # ... without the intensity augmentation
    trainer = parser.get_parsed_content("trainer")
    assert trainer.adversarial.raw and trainer.adversarial.rare_classes == (2,) and trainer.mixup.alpha == 0.2
    steps: list[int] = []
    trainer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    trainer.run()
    assert len(steps) == 3 * 2
    assert {"loss", "loss_adversarial", "loss_mixup", "mixup_lambda"} <= set(trainer.state.output[0])
