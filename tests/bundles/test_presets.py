# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Presets (``configs/presets/*.json``): one file shared by every bundle, sizes and schedules only, and every
variant of every bundle trains under it (stacked as the experiments command stacks it: train.json, preset,
variant)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser

from monai_imbalance.data import make_phantom_dataset
from monai_imbalance.experiments.table import config_files

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())
PRESETS = sorted({p.stem for name in NAMES for p in (BUNDLES / name / "configs" / "presets").glob("*.json")})
#: what a preset may set: sizes and schedules, never a method's setting
SIZE_AND_SCHEDULE = {
    "_desc_", "pixdim", "patch_size", "filters", "batch_size", "num_samples", "epochs", "iterations_per_epoch",
    "val_interval", "learning_rate", "num_workers", "cache_rate",
}  # fmt: skip
CELLS = [
    (name, variant)
    for name in NAMES
    for variant in ["vanilla", *sorted(p.stem for p in (BUNDLES / name / "configs" / "variants").glob("*.json"))]
]


def test_cpu_fast_exists_and_every_preset_is_one_file_shared_by_all_bundles():
    assert "cpu_fast" in PRESETS
    for preset in PRESETS:
        texts = {name: (BUNDLES / name / "configs" / "presets" / f"{preset}.json").read_text() for name in NAMES}
        assert len(set(texts.values())) == 1, f"presets/{preset}.json differs between bundles: {sorted(texts)}"


@pytest.mark.parametrize("preset", PRESETS)
def test_a_preset_sets_sizes_and_schedules_that_train_json_has(preset):
    content = json.loads((BUNDLES / NAMES[0] / "configs" / "presets" / f"{preset}.json").read_text())
    assert set(content) <= SIZE_AND_SCHEDULE, set(content) - SIZE_AND_SCHEDULE
    assert content.get("_desc_"), "a preset says what it is in _desc_"
    for name in NAMES:
        parser = ConfigParser()
        parser.read_config(str(BUNDLES / name / "configs" / "train.json"))
        for key in content:
            if key != "_desc_":
                assert key in parser, f"{name}: the preset sets {key!r}, which train.json does not have"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Phantoms large enough for the preset's patches at its spacing (48 voxels of 2 mm = 32 of 3 mm)."""
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=4, num_validation=1, shape=(48,) * 3)


@pytest.mark.slow  # every variant of every bundle, a few iterations each
@pytest.mark.parametrize("name, variant", CELLS, ids=[f"{n}-{v}" for n, v in CELLS])
def test_every_variant_trains_under_cpu_fast(name, variant, dataset, tmp_path, bundle_harness):
    files = config_files(BUNDLES / name, variant, "cpu_fast")
    harness = bundle_harness(name)
    harness.settings = {"num_workers": 0}  # the preset's sizes, not the tests' tiny ones
    wf = harness.run(files, dataset, tmp_path, epochs=1, iterations_per_epoch=2, val_interval=1)
    assert wf.parser.get_parsed_content("patch_size") == [24, 24, 24]
    assert np.isfinite(float(wf.trainer.state.output[0]["loss"]))
    assert (tmp_path / "models" / "model.pt").is_file()
