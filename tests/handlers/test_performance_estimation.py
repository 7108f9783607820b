# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""PerformanceEstimationHandler on real MONAI engines with a tiny fixed 2D network: fit mode against the estimators'
own ``fit``, estimate mode against ``estimate_case`` on the same logits, track mode during training, bad input
(Li, Kamnitsas, Islam, Chen, Glocker, MICCAI 2022)."""

from __future__ import annotations

import csv
import json
import logging

import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler

from monai_imbalance.estimation import (
    ESTIMATOR_SPECS,
    create_estimators,
    load_estimators,
    prediction_dice,
    read_estimator_file,
)
from monai_imbalance.handlers import PerformanceEstimationHandler

SPECS = ["ac", "cs-ts", "atc", "cs-doc"]
# The handler's logits come from the engine's batches, the references' one case at a time: the two paths take other
# floating-point kernels (and other BLAS builds on other machines) and agree to about 1e-7, not to the last bit.
# Estimates are Dice values in [0, 1]; each comparison also asserts that the estimates from perturbed logits fall
# outside the tolerance, so it still catches a handler that estimated from the wrong logits.
ESTIMATE_TOL = 1e-5
PARAM_REL, PARAM_ABS = 1e-5, 1e-6


def _cases(n: int, seed: int, labelled: bool = True, names: bool = False, gain: float = 1.0) -> list[dict]:
    """2D cases: a random rectangle (class 1) in noise, image = gain * 2 * label + noise."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        label = torch.zeros(1, 16, 16)
        r, c = torch.randint(2, 8, (2,), generator=g).tolist()
        h, w = torch.randint(3, 7, (2,), generator=g).tolist()
        label[0, r : r + h, c : c + w] = 1
        image = gain * 2.0 * label + 0.8 * torch.randn(1, 16, 16, generator=g)
        if names:
            image = MetaTensor(image, meta={"filename_or_obj": f"/data/images/img_{seed}_{i:02d}.nii.gz"})
        out.append({"image": image, "label": label} if labelled else {"image": image})
    return out


def _network(channels: int = 2) -> torch.nn.Module:
    net = torch.nn.Conv2d(1, channels, 3, padding=1)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[:, 0, 1, 1] = torch.linspace(-1.5, 1.5, channels)
        net.bias.copy_(torch.linspace(1.0, -1.0, channels))
    return net


def _evaluator(cases: list[dict], net: torch.nn.Module, batch_size: int = 2) -> SupervisedEvaluator:
    loader = DataLoader(cases, batch_size=batch_size, shuffle=False, num_workers=0)
    return SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=loader, network=net)


def _logits(cases: list[dict], net: torch.nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        return [net(torch.as_tensor(c["image"])[None])[0] for c in cases]


def _noisy_logits(cases: list[dict], net: torch.nn.Module, seed: int = 5) -> list[torch.Tensor]:
    """The logits of the cases at 70 % contrast with a little more noise: wrong logits a broken handler might use."""
    g = torch.Generator().manual_seed(seed)
    noisy = [{"image": 0.7 * torch.as_tensor(c["image"]) + 0.05 * torch.randn(1, 16, 16, generator=g)} for c in cases]
    return _logits(noisy, net)


def _assert_estimates(got: dict[str, list], estimators: dict, logits: list[torch.Tensor], wrong: list[torch.Tensor]):
    """``got[name]`` (one list per case) are ``estimators[name]``'s estimates from ``logits`` within the tolerance,
    and the estimates from the ``wrong`` logits are not (a saturated estimator may not move: some estimate must)."""

    def estimates(zs: list[torch.Tensor]) -> dict[str, list]:
        return {
            name: [pytest.approx(est.estimate_case(z).tolist(), abs=ESTIMATE_TOL) for z in zs]
            for name, est in estimators.items()
        }

    assert got == estimates(logits)
    assert got != estimates(wrong)


def _flat(params, prefix: str = "") -> dict[str, float]:
    """Nested parameter dicts / lists flattened to ``{path: float}``."""
    if isinstance(params, dict):
        return {k: v for key, val in sorted(params.items()) for k, v in _flat(val, f"{prefix}/{key}").items()}
    if isinstance(params, list):
        return {k: v for i, val in enumerate(params) for k, v in _flat(val, f"{prefix}[{i}]").items()}
    return {prefix: float(params)}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Every estimator of the study fitted by the handler on 5 labelled cases (batches of 2, 2, 1)."""
    path = tmp_path_factory.mktemp("fit") / "models" / "estimators.json"
    cases, net = _cases(5, seed=0), _network()
    handler = PerformanceEstimationHandler(mode="fit", estimators_path=path, class_names={0: "background", 1: "box"})
    evaluator = _evaluator(cases, net)
    handler.attach(evaluator)
    evaluator.run()
    return path, cases, net, handler


def test_fit_mode_writes_every_estimator_as_its_own_fit_on_the_same_logits(fitted):
    path, cases, net, _ = fitted
    data = read_estimator_file(path)
    assert data["labels"] == {0: "background", 1: "box"} and data["num_classes"] == 2
    assert data["info"]["validation_cases"] == 5
    loaded = load_estimators(path)
    assert list(loaded) == list(ESTIMATOR_SPECS)
    logits, labels = _logits(cases, net), [c["label"] for c in cases]
    true = prediction_dice(logits, labels)
    assert data["info"]["validation_true_dice"] == pytest.approx(true.mean(0).tolist())
    direct = create_estimators(ESTIMATOR_SPECS)
    for name, est in direct.items():
        est.fit(logits, labels)  # all voxels of these cases in memory: the reference
        assert loaded[name].fitted and loaded[name].num_classes == 2
        mine, theirs = _flat(loaded[name].params), _flat(est.params)
        assert list(mine) == list(theirs), name
        assert list(mine.values()) == pytest.approx(list(theirs.values()), rel=PARAM_REL, abs=PARAM_ABS), name
    # and so they estimate alike
    got = {name: [est.estimate_case(z).tolist() for z in logits] for name, est in loaded.items()}
    _assert_estimates(got, direct, logits, _noisy_logits(cases, net))


def test_estimate_mode_matches_the_estimators_on_the_same_logits(fitted, tmp_path):
    path, _, net, _ = fitted
    target = _cases(3, seed=5, labelled=False, names=True, gain=0.6)  # a weaker contrast: a shifted domain
    handler = PerformanceEstimationHandler(
        mode="estimate", estimators_path=path, estimators=["cs-ts", "atc", "qc"], output_dir=tmp_path
    )
    evaluator = _evaluator(target, net)
    handler.attach(evaluator)
    evaluator.run()
    loaded = load_estimators(path, ["cs-ts", "atc", "qc"])
    logits, wrong = _logits(target, net), _noisy_logits(target, net)
    results = json.loads((tmp_path / "estimates.json").read_text())
    assert results["classes"] == ["box"] and results["estimators"] == ["cs-ts", "atc", "qc"]
    res = results["targets"]["target"]
    assert [c["case"] for c in res["cases"]] == ["img_5_00", "img_5_01", "img_5_02"]
    _assert_estimates(
        {name: [case["estimated"][name] for case in res["cases"]] for name in loaded}, loaded, logits, wrong
    )
    for case in res["cases"]:
        assert case["true"] is None
        assert all(0.0 <= case["estimated"][name][0] <= 1.0 for name in loaded)
    with open(tmp_path / "estimates.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 3 + 3  # cases x estimators (one class), then the means
    for name in loaded:
        per_case = [float(r["estimated_dice"]) for r in rows if r["estimator"] == name and r["case"] != "mean"]
        mean = [float(r["estimated_dice"]) for r in rows if r["estimator"] == name and r["case"] == "mean"]
        assert mean == pytest.approx([sum(per_case) / 3], abs=1e-6)
    assert all(r["true_dice"] == "" for r in rows)


def test_estimate_mode_with_labels_reports_the_true_dice_and_the_error(fitted, tmp_path):
    path, _, net, _ = fitted
    target = _cases(4, seed=6, gain=0.6)
    handler = PerformanceEstimationHandler(mode="estimate", estimators_path=path, estimators="cs-ts")
    evaluator = _evaluator(target, net, batch_size=3)
    handler.attach(evaluator)
    evaluator.run()
    mean = handler.last_results["targets"]["target"]["mean"]
    true = prediction_dice(_logits(target, net), [c["label"] for c in target]).mean(0).tolist()
    assert mean["true"] == pytest.approx(true) and mean["num_labelled"] == 4
    assert mean["abs_error"]["cs-ts"] == pytest.approx([abs(mean["estimated"]["cs-ts"][0] - true[0])])


def test_context_channels_are_merged_into_the_background(fitted):
    path, _, _, _ = fitted
    net3 = _network(3)
    target = _cases(2, seed=7, labelled=False)
    handler = PerformanceEstimationHandler(mode="estimate", estimators_path=path, estimators=["ac"], num_classes=2)
    evaluator = _evaluator(target, net3)
    handler.attach(evaluator)
    evaluator.run()
    est = load_estimators(path, ["ac"])["ac"]
    logits = _logits(target, net3)
    folded = [torch.stack([torch.logsumexp(z[[0, 2]], 0), z[1]]) for z in logits]  # p_bg + p_context = background
    dropped = [z[:2] for z in logits]  # the wrong rule: the context channel ignored
    got = {"ac": [case["estimated"]["ac"] for case in handler.last_results["targets"]["target"]["cases"]]}
    _assert_estimates(got, {"ac": est}, folded, dropped)


class _Recorder:
    def __init__(self) -> None:
        self.scalars: dict[str, dict[int, float]] = {}

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, {})[step] = float(value)

    def flush(self) -> None:
        pass


def test_track_mode_fits_on_validation_and_logs_the_targets_during_training(tmp_path, caplog):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    train = DataLoader(_cases(4, seed=1), batch_size=2, shuffle=False, num_workers=0)
    validation = _evaluator(_cases(3, seed=2), net)
    shifted = DataLoader(_cases(2, seed=3, gain=0.5, names=True), batch_size=1, num_workers=0)  # labelled
    unlabelled = _evaluator(_cases(2, seed=4, labelled=False), net)
    writer = _Recorder()
    handler = PerformanceEstimationHandler(
        mode="track",
        estimators=SPECS,
        evaluator=validation,
        targets={"shifted": shifted, "unlabelled": unlabelled},
        interval=2,
        output_dir=tmp_path,
        summary_writer=writer,
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=3,
        train_data_loader=train,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=lambda pred, label: torch.nn.functional.cross_entropy(pred, label[:, 0].long()),
        train_handlers=[ValidationHandler(validator=validation, interval=1, epoch_level=True)],
    )
    handler.attach(trainer)  # after ValidationHandler
    with caplog.at_level(logging.INFO, logger="monai_imbalance.handlers.performance_estimation"):
        trainer.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "estimates_epoch0002.csv",
        "estimates_epoch0002.json",
        "estimates_epoch0003.csv",  # the last epoch always reports
        "estimates_epoch0003.json",
    ]
    assert "Estimated Dice (estimates_epoch0003)" in caplog.text and "| cs-ts |" in caplog.text
    # the last report is the estimators fitted on the final network's validation logits, applied to the targets
    direct = create_estimators(SPECS)
    val_cases = _cases(3, seed=2)
    for est in direct.values():
        est.fit(_logits(val_cases, net), [c["label"] for c in val_cases])
    results = json.loads((tmp_path / "estimates_epoch0003.json").read_text())
    assert results["step"] == 3
    for target, cases in (("shifted", _cases(2, seed=3, gain=0.5)), ("unlabelled", _cases(2, seed=4))):
        res = results["targets"][target]
        logits = _logits(cases, net)
        got = {name: [record["estimated"][name] for record in res["cases"]] for name in direct}
        _assert_estimates(got, direct, logits, _noisy_logits(cases, net))
        if target == "shifted":
            true = prediction_dice(logits, [c["label"] for c in cases]).mean(0).tolist()
            assert res["mean"]["true"] == pytest.approx(true)
            assert [c["case"] for c in res["cases"]] == ["img_3_00", "img_3_01"]
            assert writer.scalars["true_dice/shifted/class_1"][3] == pytest.approx(true[0])
            err = writer.scalars["estimation_error/shifted/class_1/cs-ts"][3]
            assert err == pytest.approx(abs(res["mean"]["estimated"]["cs-ts"][0] - true[0]))
        else:
            assert res["mean"]["true"] is None and res["mean"]["abs_error"] is None
    for name in SPECS:
        assert set(writer.scalars[f"estimated_dice/unlabelled/class_1/{name}"]) == {2, 3}
    assert "true_dice/unlabelled/class_1" not in writer.scalars


def test_track_mode_writes_tensorboard_events(tmp_path):
    net = _network()
    validation = _evaluator(_cases(2, seed=2), net)
    handler = PerformanceEstimationHandler(
        mode="track", estimators=["ac"], evaluator=validation, targets={"t": validation}, log_dir=tmp_path / "tb"
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(_cases(2, seed=1), batch_size=2, num_workers=0),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
        loss_function=lambda pred, label: pred.mean() * 0.0,
        train_handlers=[ValidationHandler(validator=validation, interval=1, epoch_level=True)],
    )
    handler.attach(trainer)
    trainer.run()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
    # the target here is the validation set itself: its estimate is in-sample and its true Dice is known
    assert handler.last_results["targets"]["t"]["mean"]["num_labelled"] == 2


def test_estimate_mode_without_fitted_file_names_the_path(tmp_path):
    missing = tmp_path / "models" / "estimators.json"
    handler = PerformanceEstimationHandler(mode="estimate", estimators_path=missing)
    evaluator = _evaluator(_cases(1, seed=0, labelled=False), _network())
    handler.attach(evaluator)
    with pytest.raises(FileNotFoundError, match="no fitted estimator file at .*models/estimators.json"):
        evaluator.run()


def test_fit_without_labels_or_cases_is_a_clear_error(tmp_path):
    handler = PerformanceEstimationHandler(mode="fit", estimators=["ac"], estimators_path=tmp_path / "e.json")
    with pytest.raises(ValueError, match="no labelled validation case"):
        handler.fit()
    evaluator = _evaluator(_cases(2, seed=0, labelled=False), _network())
    handler.attach(evaluator)
    with pytest.raises(ValueError, match="fitting needs labelled cases.*'label'"):
        evaluator.run()
    assert not (tmp_path / "e.json").exists()


def test_estimator_file_errors(fitted, tmp_path):
    path = fitted[0]
    handler = PerformanceEstimationHandler(mode="estimate", estimators_path=path, estimators=["cs-vs"])
    with pytest.raises(ValueError, match="no class-specific variant"):
        handler.load()
    subset = tmp_path / "subset.json"
    data = json.loads(path.read_text())
    data["estimators"] = {"ac": data["estimators"]["ac"]}
    subset.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"estimator\(s\) \['cs-ts'\] are not in .*subset.json'; it holds \['ac'\]"):
        PerformanceEstimationHandler(mode="estimate", estimators_path=subset, estimators=["cs-ts"]).load()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"estimators": {}}))
    with pytest.raises(ValueError, match="is not a fitted-estimator file"):
        PerformanceEstimationHandler(mode="estimate", estimators_path=bad).load()


def test_channel_mismatch_between_fitted_estimators_and_logits(fitted):
    path = fitted[0]
    handler = PerformanceEstimationHandler(mode="estimate", estimators_path=path, estimators=["ac"])
    evaluator = _evaluator(_cases(1, seed=0, labelled=False), _network(3))
    handler.attach(evaluator)
    with pytest.raises(ValueError, match=r"fitted on logits with C=2 channels, target 'target' gives 3"):
        evaluator.run()


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mode 'predict'"):
        PerformanceEstimationHandler(mode="predict")
    with pytest.raises(ValueError, match="needs the validation evaluator"):
        PerformanceEstimationHandler(mode="track", targets={"t": []})
    with pytest.raises(ValueError, match="at least one target"):
        PerformanceEstimationHandler(mode="track", evaluator=_evaluator(_cases(1, 0), _network()))
    with pytest.raises(ValueError, match="needs estimators_path"):
        PerformanceEstimationHandler(mode="estimate")
    with pytest.raises(ValueError, match="unknown estimator spec 'cs-ac'|no class-specific variant"):
        PerformanceEstimationHandler(mode="fit", estimators=["cs-ac"])
    with pytest.raises(ValueError, match="keep_margin must be > 0"):
        PerformanceEstimationHandler(mode="fit", keep_margin=0.0)
    with pytest.raises(ValueError, match="interval must be an integer >= 1"):
        PerformanceEstimationHandler(mode="fit", interval=0)
