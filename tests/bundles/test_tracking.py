# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Experiment tracking: every training bundle logs to MLflow with MONAI's ``--tracking mlflow`` and to TensorBoard.

MONAI 1.6's ``MLFlowHandler`` refuses MLflow's file store, so the local store is SQLite
(``--tracking_uri sqlite:///<folder>/mlruns.db``; ``mlflow-skinny`` + ``sqlalchemy`` + ``alembic`` from the
requirements).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from monai_imbalance.data import make_phantom_dataset

pytestmark = pytest.mark.slow  # bundle configs end to end

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
TRAINING_BUNDLES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "train.json").is_file())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=2, num_validation=1, seed=6)


@pytest.mark.parametrize("name", TRAINING_BUNDLES)
def test_mlflow_and_tensorboard(name, dataset, tmp_path, bundle_harness):
    mlflow = pytest.importorskip("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    wf = bundle_harness(name).workflow(
        ["train.json"],
        dataset,
        tmp_path / "bundle",
        tracking="mlflow",
        tracking_uri=uri,
        experiment_name=f"test_{name}",
        epochs=1,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(f"test_{name}")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    metrics = runs[0].data.metrics
    assert {"train_loss", "val_mean_dice"} <= set(metrics), sorted(metrics)
    assert 0.0 <= metrics["val_mean_dice"] <= 1.0
    events = list((tmp_path / "bundle" / "eval" / "tensorboard").glob("*/events.out.tfevents*"))  # a folder per run
    assert events, "no TensorBoard event file"
