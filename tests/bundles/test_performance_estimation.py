# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The ``performance_estimation`` bundle through ``ConfigWorkflow`` on tiny phantoms: train, fit the estimators on the
validation split, estimate on a folder of images, and the shift benchmark with a reduced list of shifts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_imbalance.data import make_phantom_dataset
from monai_imbalance.estimation import ESTIMATOR_SPECS, load_estimators, prediction_dice, read_estimator_file

pytestmark = pytest.mark.slow  # bundle configs end to end


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), num_training=4, num_validation=2, seed=2)


@pytest.fixture(scope="module")
def bundle(bundle_harness):
    return bundle_harness("performance_estimation")


#: after training on 16^3 patches, infer each 32^3 phantom in one window, and fit on fewer voxels
FAST = {"validate#inferer#roi_size": [32, 32, 32]}


@pytest.fixture(scope="module")
def fitted(dataset, tmp_path_factory, bundle):
    root = tmp_path_factory.mktemp("bundle")
    bundle.run(["train.json"], dataset, root)
    wf = bundle.run(["train.json", "fit.json"], dataset, root, keep_margin=2.0, background_samples=256, **FAST)
    return root, wf


def test_fit_writes_every_estimator(fitted):
    root, wf = fitted
    path = root / "models" / "estimators.json"
    data = read_estimator_file(path)
    assert data["labels"] == {0: "background", 1: "class_1"} and data["num_classes"] == 2
    assert data["info"]["validation_cases"] == 2  # the validation split of the phantoms
    estimators = load_estimators(path)
    assert list(estimators) == list(ESTIMATOR_SPECS)
    assert all(e.fitted and e.num_classes == 2 for e in estimators.values())
    assert estimators["cs-ts"].class_specific and not estimators["ts"].class_specific
    # the validation true Dice stored is the evaluator's own Dice of the argmax prediction
    assert data["info"]["validation_true_dice"][0] == pytest.approx(wf.evaluator.state.metrics["val_mean_dice"])


def test_estimate_on_a_folder_of_images(fitted, dataset, tmp_path, bundle):
    root, _ = fitted
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for f in sorted((Path(dataset) / "imagesTs").glob("*.nii.gz")):
        (folder / f.name).write_bytes(f.read_bytes())
    wf = bundle.run(
        ["train.json", "estimate.json"],
        dataset,
        root,
        input_dir=str(folder),
        output_dir=str(tmp_path / "out"),
        estimator_names=["cs-ts", "atc", "qc"],
        **FAST,
    )
    results = json.loads((tmp_path / "out" / "estimates.json").read_text())
    cases = results["targets"]["unlabelled"]["cases"]
    assert [c["case"] for c in cases] == sorted(f.name[: -len(".nii.gz")] for f in folder.iterdir())
    assert results["estimators"] == ["cs-ts", "atc", "qc"] and results["classes"] == ["class_1"]
    rows = bundle.read_csv(tmp_path / "out" / "estimates.csv")
    assert len(rows) == (len(cases) + 1) * 3
    for r in rows:
        assert 0.0 <= float(r["estimated_dice"]) <= 1.0 and r["true_dice"] == "" and r["class"] == "class_1"
    # the same as the estimators applied to the network's logits of the preprocessed images
    net = wf.parser.get_parsed_content("network")
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    net.eval()
    prep = wf.parser.get_parsed_content("estimate#preprocessing")
    inferer = wf.parser.get_parsed_content("validate#inferer")
    est = load_estimators(root / "models" / "estimators.json", ["cs-ts"])["cs-ts"]
    first = prep({"image": str(sorted(folder.iterdir())[0])})["image"]
    with torch.no_grad():
        z = inferer(first[None].as_tensor(), net)[0]
    assert cases[0]["estimated"]["cs-ts"] == pytest.approx(est.estimate_case(z).tolist(), abs=1e-5)


def test_benchmark_mae_table(fitted, dataset, tmp_path, bundle):
    root, _ = fitted
    out = tmp_path / "bench"
    wf = bundle.run(
        ["train.json", "benchmark.json"],
        dataset,
        root,
        output_dir=str(out),
        shifts=["noise", "contrast"],
        severities=[1, 4],
        estimator_names=["ac", "cs-ts", "cs-atc", "qc"],
        **FAST,
    )
    for name in ("cases.csv", "conditions.csv", "results.csv", "results.md", "results.json", "scatter.png"):
        assert (out / name).is_file(), name
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cases = bundle.read_csv(out / "cases.csv")
    conditions = bundle.read_csv(out / "conditions.csv")
    table = {r["estimator"]: r for r in bundle.read_csv(out / "results.csv")}
    expected = {"identity", "noise-1", "noise-4", "contrast-1", "contrast-4", "external"}
    assert {r["condition"] for r in conditions} == expected
    assert len(cases) == (5 * 2 + 1) * 4  # (5 conditions x 2 test cases + 1 external case) x 4 estimators
    for r in cases:
        assert 0.0 <= float(r["estimated"]) <= 1.0 and 0.0 <= float(r["true"]) <= 1.0
    for r in conditions:  # each condition: the means over its cases, and their absolute difference
        mine = [c for c in cases if (c["condition"], c["estimator"]) == (r["condition"], r["estimator"])]
        assert len(mine) == int(r["num_cases"]) == (1 if r["condition"] == "external" else 2)
        est = np.mean([float(c["estimated"]) for c in mine])
        true = np.mean([float(c["true"]) for c in mine])
        assert float(r["estimated"]) == pytest.approx(est, abs=1e-6)
        assert float(r["true"]) == pytest.approx(true, abs=1e-6)
        assert float(r["abs_error"]) == pytest.approx(abs(est - true), abs=2e-6)
    assert list(table) == ["ac", "cs-ts", "cs-atc", "qc"]
    for name, row in table.items():
        mine = [r for r in conditions if r["estimator"] == name]
        synthetic = [float(r["abs_error"]) for r in mine if r["kind"] == "synthetic"]
        assert len(synthetic) == 4
        assert float(row["synthetic"]) == pytest.approx(np.mean(synthetic), abs=1e-6)
        noise = [float(r["abs_error"]) for r in mine if r["shift"] == "noise"]
        assert float(row["noise"]) == pytest.approx(np.mean(noise), abs=1e-6)
        natural = [float(r["abs_error"]) for r in mine if r["kind"] == "natural"]
        assert float(row["natural"]) == pytest.approx(natural[0], abs=1e-6)
    # the true Dice of the unshifted test cases: the model's own prediction against the label, on the network grid
    net = wf.parser.get_parsed_content("network")
    net.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))
    net.eval()
    prep = wf.parser.get_parsed_content("benchmark#preprocessing")
    inferer = wf.parser.get_parsed_content("validate#inferer")
    identity = {c["case"]: float(c["true"]) for c in cases if c["condition"] == "identity" and c["estimator"] == "ac"}
    for entry in wf.parser.get_parsed_content("benchmark#datalist"):
        data = prep(entry)
        with torch.no_grad():
            z = inferer(data["image"][None].as_tensor(), net)[0]
        name = Path(entry["image"]).name[: -len(".nii.gz")]
        assert identity[name] == pytest.approx(float(prediction_dice([z], [data["label"]])[0, 0]), abs=1e-6)
    assert "synthetic (all)" in (out / "results.md").read_text()
    summary = json.loads((out / "results.json").read_text())
    assert summary["settings"]["inferences"] == 5 * 2 + 1
    assert summary["settings"]["shifts"] == ["noise", "contrast"]


def test_track_estimates_the_external_split_during_training(dataset, tmp_path, bundle):
    bundle.run(["train.json", "track.json"], dataset, tmp_path, track_estimators=["ac", "cs-ts"], **FAST)
    files = sorted((tmp_path / "eval" / "estimates").glob("*.json"))
    assert [f.name for f in files] == ["estimates_epoch0001.json", "estimates_epoch0002.json"]  # val_interval 1
    results = json.loads(files[-1].read_text())
    assert results["estimators"] == ["ac", "cs-ts"]
    external = results["targets"]["external"]
    assert len(external["cases"]) == 1 and external["mean"]["num_labelled"] == 1
    for name in ("ac", "cs-ts"):
        est, true = external["mean"]["estimated"][name][0], external["mean"]["true"][0]
        assert 0.0 <= est <= 1.0 and 0.0 <= true <= 1.0
        assert external["mean"]["abs_error"][name][0] == pytest.approx(abs(est - true))


def test_estimate_without_fitted_file_names_the_path(dataset, tmp_path, bundle):
    wf = bundle.workflow(["train.json", "estimate.json"], dataset, tmp_path)
    wf.initialize()
    with pytest.raises(Exception) as err:
        wf.run()
    cause = err.value
    while cause is not None and not isinstance(cause, FileNotFoundError):
        cause = cause.__cause__ or cause.__context__
    assert cause is not None and str(tmp_path / "models" / "estimators.json") in str(cause)
