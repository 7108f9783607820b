# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The headline table ("Does it work?") is read from the results folders it names (stubbed cell runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_imbalance.experiments import load_cells, render_readme, run_table
from monai_imbalance.experiments.headline import headline_markdown
from monai_imbalance.experiments.statistics import table_statistics


def _spec(root: Path, rows: list[dict]) -> Path:
    folder = root / "results" / "headline"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "headline.json").write_text(json.dumps({"rows": rows}))
    return folder


def test_rows_follow_the_results(fake_bundle, fake_runs, tmp_path):
    results = tmp_path / "results" / "t2"
    run_table(fake_bundle, ["vanilla", "ce", "worse"], [0.5], tmp_path / "runs", seeds=[0, 1], results_dir=results)
    rows = [
        {"table": "II", "results": "results/t2", "variant": "ce", "fraction": 0.5, "seed": "63.4 DSC"},
        {"table": "II", "results": "results/t2", "variant": "worse", "fraction": 0.5, "metrics": ["dice"], "seed": "-"},
        {"table": "aug", "results": "results/none", "variant": "joint", "fraction": 0.5, "seed": "79.3"},
        {"table": "est", "results": "results/none", "estimator": "cs-atc", "seed": "1.6"},
    ]
    folder = _spec(tmp_path, rows)
    md = headline_markdown(folder)
    lines = [line for line in md.splitlines() if line.startswith("| ")][2:]

    stats = table_statistics(load_cells(results), ["vanilla", "ce", "worse"], [0.5])
    ce = stats[("ce", 0.5, "dice")]
    assert lines[0].startswith("| II | ce @ 0.5 | ")
    assert f"DSC {100 * ce.mean:.1f} ± {100 * ce.sd:.1f} (above vanilla, \\*\\*)" in lines[0]
    assert "SEN" in lines[0] and "PRC" in lines[0] and "HD95" not in lines[0] and lines[0].endswith("| 63.4 DSC |")
    assert "(below vanilla, \\*\\*)" in lines[1] and "SEN" not in lines[1] and "2 seeds |" in lines[1]
    assert "| not run yet |" in lines[2] and "| not run yet |" in lines[3]
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:headline -->\n<!-- /results:headline -->\n")
    assert render_readme(folder, readme, "headline") and md.splitlines()[0] in readme.read_text()
    assert not render_readme(folder, readme, "headline", check=True)
    run_table(fake_bundle, ["vanilla", "ce"], [0.5], tmp_path / "runs", seeds=[2], results_dir=results)
    assert render_readme(folder, readme, "headline", check=True)  # a new seed makes the README stale


def test_bad_spec_names_the_file(tmp_path):
    folder = _spec(tmp_path, [{"table": "II", "results": "results/t2", "seed": "x"}])
    with pytest.raises(ValueError, match=r"headline\.json': row 0 needs .* variant or estimator"):
        headline_markdown(folder)
    with pytest.raises(FileNotFoundError, match="headline.json"):
        headline_markdown(tmp_path / "elsewhere")
