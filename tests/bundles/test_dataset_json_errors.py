# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""A missing or malformed ``dataset.json`` is reported in one line at the top of the error output of
``python -m monai.bundle run training``, before MONAI's ``ConfigExpression`` traceback, naming the file and the
problem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from monai_imbalance.data import make_phantom_dataset

pytestmark = pytest.mark.slow  # one `python -m monai.bundle run` per case


def _pop(split: str, key: str) -> Any:
    def edit(content: dict) -> None:
        content[split][0].pop(key)

    return edit


#: case -> (what is done to the phantom's dataset.json: None deletes it, a str replaces its text, else an edit of
#: its content), the problem the one line must name
CASES = {
    "missing": (None, "not found: a dataset folder needs a dataset.json"),
    "invalid_json": ('{"labels": {"0": "background"}, "training": [', "is not valid JSON: Expecting value at line 1"),
    "no_training": (lambda c: c.pop("training"), "has no 'training' key"),
    "entry_without_image": (_pop("training", "image"), "entry 0 of 'training' has no 'image' path"),
    "entry_without_label": (_pop("training", "label"), "(training): entry 0 has no 'label'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_dataset_json_is_one_line_at_the_top(case: str, tmp_path: Path, bundle_harness) -> None:
    dataset = make_phantom_dataset(tmp_path / "data", num_training=2, num_validation=1, num_test=0, num_external=0)
    dataset_json = Path(dataset) / "dataset.json"
    change, problem = CASES[case]
    if change is None:
        dataset_json.unlink()
    elif isinstance(change, str):
        dataset_json.write_text(change)
    else:
        content = json.loads(dataset_json.read_text())
        change(content)
        dataset_json.write_text(json.dumps(content))
    args = bundle_harness("asymmetric_segmentation").command("training", ["train.json"], dataset, tmp_path / "bundle")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode != 0
    lines = out.stderr.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("ERROR: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    line = lines[errors[0]]
    assert f"'{dataset_json}'" in line and problem in line, line
    first_traceback = next(i for i, text in enumerate(lines) if text.startswith("Traceback"))
    assert errors[0] < first_traceback  # at the top of the error report, not in the middle of the traceback
    assert "Failed to evaluate ConfigExpression" in out.stderr  # MONAI's traceback still follows, for debugging
    assert not (tmp_path / "bundle" / "models" / "model.pt").exists()
