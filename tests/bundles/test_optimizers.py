# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Optimiser override files (``configs/optimizers/*.json``): one file shared by every bundle that replaces the
segmenter's optimiser and adds its gradient clipping, stacked after ``train.json`` (and after a preset and a
variant); it keeps every handler of ``train.json`` and composes with ``track.json`` and ``multi_gpu_train.json``,
which rewrite ``train#trainer#train_handlers`` from ``train#handlers``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from monai_imbalance.data import make_phantom_dataset
from monai_imbalance.handlers import GradientNormClipping

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())
SGD = "optimizers/sgd_nnunet.json"
#: the segmenter optimiser of the authors' code (nnU-Net's)
AUTHORS = {"lr": 1e-2, "momentum": 0.99, "nesterov": True, "weight_decay": 3e-5, "dampening": 0}
TINY_NETWORK = {"patch_size": [16, 16, 16], "filters": [8, 16, 32]}


def _parser(name: str, *files: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / name / "configs" / f) for f in files])
    for key, value in {**TINY_NETWORK, **overrides}.items():
        parser[key] = value
    return parser


#: the entry the file appends to ``train#handlers`` (a component, not a reference: MONAI's ``check_properties``
#: reads ``_target_`` of every entry)
CLIPPING = {"_target_": "monai_imbalance.handlers.GradientNormClipping", "max_norm": "@gradient_clip_norm"}


def _train_handlers(name: str) -> list:
    return json.loads((BUNDLES / name / "configs" / "train.json").read_text())["train"]["handlers"]


def _last_handler(parser: ConfigParser) -> dict:
    """The last entry of ``train#handlers`` as written (MONAI writes ``#`` as ``::`` once a config is parsed)."""
    return {k: v.replace("::", "#") for k, v in parser["train#handlers"][-1].items()}


def test_sgd_nnunet_exists_in_every_bundle():
    for name in NAMES:
        assert (BUNDLES / name / "configs" / SGD).is_file(), name


@pytest.mark.parametrize("name", NAMES)
def test_sgd_nnunet_builds_the_authors_optimizer_and_keeps_the_poly_schedule(name, dataset):
    parser = _parser(name, "train.json", SGD, dataset_dir=str(dataset))  # the network's classes come from the data
    optimizer = parser.get_parsed_content("optimizer")
    assert type(optimizer) is torch.optim.SGD
    group = optimizer.param_groups[0]
    for key, value in AUTHORS.items():
        assert group[key] == pytest.approx(value), key
    network = parser.get_parsed_content("network")
    assert {id(p) for p in group["params"]} == {id(p) for p in network.parameters()}
    scheduler = parser.get_parsed_content("lr_scheduler")
    assert type(scheduler) is torch.optim.lr_scheduler.PolynomialLR and scheduler.optimizer is optimizer
    assert scheduler.power == 0.9 and scheduler.total_iters == parser.get_parsed_content("epochs")
    train = json.loads((BUNDLES / name / "configs" / "train.json").read_text())
    assert parser["lr_scheduler"] == train["lr_scheduler"]  # train.json's per-epoch poly, not a new schedule
    clipping = parser.get_parsed_content(f"train#handlers#{len(train['train']['handlers'])}")
    assert type(clipping) is GradientNormClipping and clipping.max_norm == 12.0


@pytest.mark.parametrize("name", NAMES)
def test_sgd_nnunet_appends_the_clipping_to_train_handlers_and_keeps_the_others(name):
    assert _parser(name, "train.json", SGD)["train#handlers"] == [*_train_handlers(name), CLIPPING]
    assert _parser(name, "train.json", SGD)["train#trainer#train_handlers"] == "@train#handlers"


@pytest.mark.parametrize("name", NAMES)
def test_stacked_after_the_preset_and_a_variant_the_authors_learning_rate_wins(name, dataset):
    variants = sorted((BUNDLES / name / "configs" / "variants").glob("*.json"))
    files = ["train.json", "presets/cpu_fast.json", *[f"variants/{v.name}" for v in variants[:1]], SGD]
    parser = _parser(name, *files, dataset_dir=str(dataset))
    assert parser.get_parsed_content("learning_rate") == 1e-2
    assert parser.get_parsed_content("optimizer").param_groups[0]["lr"] == 1e-2
    assert _last_handler(parser) == CLIPPING


@pytest.mark.parametrize("order", [("track.json", SGD), (SGD, "track.json")])
def test_composes_with_track_json_in_either_order(order):
    """track.json gives the trainer ``train#handlers`` plus its handler; the clipping is in ``train#handlers``."""
    parser = _parser("performance_estimation", "train.json", *order)
    assert parser["train#trainer#train_handlers"] == "$@train#handlers + [@track#handler]"
    assert _last_handler(parser) == CLIPPING


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("order", [("multi_gpu_train.json", SGD), (SGD, "multi_gpu_train.json")])
def test_composes_with_multi_gpu_train_json_in_either_order(name, order):
    """multi_gpu_train.json drops the logging handlers on ranks > 0 from ``train#handlers``; the clipping must stay on
    every rank (each rank clips the same averaged gradient, or the weights of the ranks part)."""
    parser = _parser(name, "train.json", *order)
    assert parser["train#trainer#train_handlers"].startswith("$[h for h in @train#handlers if")
    assert _last_handler(parser) == CLIPPING
    assert not issubclass(GradientNormClipping, parser.get_parsed_content("rank_zero_only_handlers"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=4, num_validation=1, seed=7)


def _grad_norm(network: torch.nn.Module) -> float:
    grads = [p.grad.flatten() for p in network.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.cat(grads))) if grads else 0.0


CELLS = [(name, None, {}) for name in NAMES] + [
    ("asymmetric_segmentation", "asymmetric_combination", {}),  # extra adversarial and mixup steps per iteration
    ("context_label_segmentation", "colab_t2", {"meta_interval": 1}),  # a meta step before every normal step
    ("context_label_segmentation", "colab_t2_fast", {"meta_interval": 1}),  # steps from the look-ahead's gradient
]


@pytest.mark.slow  # trains every bundle
@pytest.mark.parametrize("name, variant, settings", CELLS, ids=[f"{n}-{v or 'train'}" for n, v, _ in CELLS])
def test_every_bundle_trains_with_sgd_nnunet_and_clips(name, variant, settings, dataset, tmp_path, bundle_harness):
    """A bound far below the gradient norm: every step of the run is clipped, so the gradient the last step used
    is on the bound, and the weights move."""
    bound = 1e-3
    files = ["train.json", *([f"variants/{variant}.json"] if variant else []), SGD]
    wf = bundle_harness(name).workflow(
        files, dataset, tmp_path, epochs=1, iterations_per_epoch=2, val_interval=1, gradient_clip_norm=bound, **settings
    )
    wf.initialize()
    assert not wf.check_properties()
    trainer = wf.trainer
    assert type(trainer.optimizer) is torch.optim.SGD
    for key, value in AUTHORS.items():
        assert trainer.optimizer.param_groups[0][key] == pytest.approx(value), key
    clipping = wf.parser.get_parsed_content(f"train#handlers#{len(_train_handlers(name))}")
    assert type(clipping) is GradientNormClipping and clipping.max_norm == bound
    network = wf.parser.get_parsed_content("network_def")
    before = [p.detach().clone() for p in network.parameters()]
    wf.run()
    wf.finalize()
    assert trainer.state.iteration == 2
    assert clipping.optimizer is trainer.optimizer  # attached by the trainer, through train#handlers
    assert len(trainer.optimizer._optimizer_step_pre_hooks) == 1
    assert np.isfinite(float(trainer.state.output[0]["loss"]))
    assert float(clipping.total_norm) > bound
    assert 0.0 < _grad_norm(network) <= bound * (1 + 1e-4)
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, network.parameters(), strict=True))


@pytest.mark.slow  # trains the bundle, with tracking
def test_performance_estimation_trains_with_track_json_and_sgd_nnunet(dataset, tmp_path, bundle_harness):
    bundle = bundle_harness("performance_estimation")
    wf = bundle.run(
        ["train.json", "track.json", SGD],
        dataset,
        tmp_path,
        epochs=1,
        iterations_per_epoch=2,
        track_estimators=["ac"],
        **{"validate#inferer#roi_size": [32, 32, 32]},
    )
    handlers = wf.parser.get_parsed_content("train#trainer#train_handlers")
    assert type(handlers[-2]) is GradientNormClipping and handlers[-2].total_norm is not None
    assert type(wf.trainer.optimizer) is torch.optim.SGD
    assert sorted(p.name for p in (tmp_path / "eval" / "estimates").glob("*.json")) == ["estimates_epoch0001.json"]


@pytest.mark.slow  # torchrun, 2 processes
def test_two_ranks_clip_the_same_gradient_and_agree(tmp_path, bundle_harness):
    """Under DDP with multi_gpu_train.json: every rank clips (the logging handlers stay on rank 0), the weights stay
    equal."""
    data = make_phantom_dataset(tmp_path / "phantom", num_training=4, num_validation=2, seed=4)
    bundle = bundle_harness("asymmetric_segmentation")
    dump = bundle.rank_dump_file(
        tmp_path,
        network=bundle.state_dict("network_def"),
        optimizer="type(@optimizer).__name__",
        clipped="[float(h.total_norm) for h in @train#handlers if type(h).__name__ == 'GradientNormClipping']",
        attached="[type(h).__name__ for h in @train#trainer#train_handlers]",
    )
    configs = ["train.json", "multi_gpu_train.json", SGD, dump]
    bundle.torchrun("training", configs, data, tmp_path / "bundle", gradient_clip_norm=1e-3)
    dumps = bundle.rank_dumps(tmp_path)
    for rank in dumps:
        assert rank["optimizer"] == "SGD"
        assert len(rank["clipped"]) == 1 and rank["clipped"][0] > 1e-3
        assert "GradientNormClipping" in rank["attached"]
    assert "StatsHandler" in dumps[0]["attached"] and "StatsHandler" not in dumps[1]["attached"]
    latest = torch.load(tmp_path / "bundle" / "models" / "latest.pt", weights_only=True)
    bundle.assert_same_tensors([r["network"] for r in dumps] + [latest["model"]])
