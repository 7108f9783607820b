# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""create_estimator: every name and task, the class-specific combinations, and the JSON form's checks."""

from __future__ import annotations

import json

import pytest
import torch

from monai_imbalance.estimation import (
    CLASS_SPECIFIC_NAMES,
    ESTIMATOR_NAMES,
    ClassificationEstimator,
    PerformanceEstimator,
    QualityRegressionEstimator,
    SegmentationEstimator,
    create_estimator,
    load_estimator,
)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
@pytest.mark.parametrize("name", ESTIMATOR_NAMES)
def test_every_name_and_combination(name, task):
    est = create_estimator(name, task=task)
    expected = (
        QualityRegressionEstimator
        if name == "qc"
        else {
            "classification": ClassificationEstimator,
            "segmentation": SegmentationEstimator,
        }[task]
    )
    assert type(est) is expected and est.method == name and est.task == task and not est.fitted
    if name in CLASS_SPECIFIC_NAMES:
        assert create_estimator(name, True, task=task).class_specific
    else:
        with pytest.raises(ValueError, match=f"class_specific=True is not defined for '{name}'"):
            create_estimator(name, True, task=task)
    data = json.loads(json.dumps(est.to_dict()))  # unfitted estimators serialise too
    again = load_estimator(data)
    assert type(again) is expected and not again.fitted and again.to_dict() == data


def test_names_are_normalised_and_kwargs_checked():
    assert create_estimator("TS_ATC", True).method == "ts-atc"
    assert create_estimator("ts", convention="moval", solver="bisect").convention == "moval"
    with pytest.raises(ValueError, match="unknown estimator name 'temperature'"):
        create_estimator("temperature")
    with pytest.raises(ValueError, match="unknown task 'detection'"):
        create_estimator("ts", task="detection")
    with pytest.raises(ValueError, match=r"takes no keyword\(s\) \['convention'\]"):
        create_estimator("ts", task="classification", convention="paper")
    with pytest.raises(ValueError, match="class_counts is only used by 'norcal'"):
        create_estimator("ts", class_counts=[1, 2])


def test_from_dict_checks():
    est = create_estimator("ts", True).fit([torch.randn(2, 4, 4)], [torch.randint(0, 2, (4, 4))])
    data = est.to_dict()
    with pytest.raises(ValueError, match="expects the dict"):
        PerformanceEstimator.from_dict([data])
    with pytest.raises(ValueError, match="lacks the keys"):
        PerformanceEstimator.from_dict({"type": "SegmentationEstimator"})
    with pytest.raises(ValueError, match="unknown estimator type"):
        PerformanceEstimator.from_dict({**data, "type": "Nope"})
    with pytest.raises(ValueError, match="ClassificationEstimator.from_dict got a dict of type"):
        ClassificationEstimator.from_dict(data)
    with pytest.raises(ValueError, match="has 3 entries, C=2"):
        SegmentationEstimator.from_dict({**data, "params": {**data["params"], "temperature": [1.0, 1.0, 1.0]}})
    assert SegmentationEstimator.from_dict(data).params == est.params
