# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Every bundle's ``docs/README.md`` follows the Model Zoo readme template (the sections reviewers ask for)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # bundle configs end to end

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir())
SECTIONS = ("Model overview", "Data", "Training", "Performance", "System configuration", "Limitations", "Citation")


@pytest.mark.parametrize("name", NAMES)
def test_readme_has_the_model_zoo_sections(name):
    readme = BUNDLES / name / "docs" / "README.md"
    assert readme.is_file(), f"{readme} is missing"
    text = readme.read_text()
    headers = [h.strip() for h in re.findall(r"^##\s+(.+)$", text, flags=re.MULTILINE)]
    for section in SECTIONS:
        assert any(h.startswith(section) for h in headers), f"{name}: no '## {section}' section"
    if (BUNDLES / name / "configs" / "evaluate.json").is_file():
        assert any(h.startswith("Evaluation") for h in headers), f"{name}: no '## Evaluation' section"
    if (BUNDLES / name / "configs" / "multi_gpu_train.json").is_file():
        assert "multi_gpu_train.json" in text and "torchrun" in text, f"{name}: no multi-GPU training command"
    if (BUNDLES / name / "configs" / "multi_gpu_evaluate.json").is_file():
        assert "multi_gpu_evaluate.json" in text, f"{name}: no multi-GPU evaluation command"
    assert "PLACEHOLDER" not in text and "TODO" not in text, f"{name}: unfinished README"
    meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
