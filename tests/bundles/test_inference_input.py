# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Every bundle's inference.json names a missing or empty input folder, or one without NIfTI files, instead of
exiting 0 with nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from monai_imbalance.data import DataValidationError

pytestmark = pytest.mark.slow  # bundle configs end to end

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "inference.json").is_file())


def _causes(error: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while error is not None:
        out.append(error)
        error = error.__cause__
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("content", [None, [], ["scan.nrrd"]], ids=["missing", "empty", "nrrd"])
def test_inference_on_a_folder_without_images_is_a_clear_error(name, content, tmp_path, bundle_harness):
    dataset = tmp_path / "data"
    if content is not None:
        (dataset / "imagesTs").mkdir(parents=True)
        for f in content:
            (dataset / "imagesTs" / f).write_bytes(b"")
    wf = bundle_harness(name).inference_workflow(dataset, tmp_path / "bundle", tmp_path / "out")
    with pytest.raises(Exception) as info:
        wf.initialize()
        wf.run()
    errors = [c for c in _causes(info.value) if isinstance(c, DataValidationError)]
    assert errors and f"'{dataset / 'imagesTs'}'" in str(errors[0]) and "*.nii.gz" in str(errors[0])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
