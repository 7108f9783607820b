# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The final learned policies of a table's cells in its results folder (``experiments/policies.py``)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from monai_imbalance.augment import AugmentationPolicy, TestTimePolicy, save_policy
from monai_imbalance.experiments.policies import cell_policies, policies_markdown, save_cell_policies
from monai_imbalance.experiments.results import merge_results_dirs, results_markdown
from monai_imbalance.experiments.table import run_table
from monai_imbalance.handlers import PolicyPlotHandler

GROUPS = {"background": [0], "foreground": None}


def _trained_cell(models: Path, seed: int = 0, history: bool = True) -> tuple[AugmentationPolicy, TestTimePolicy]:
    """A cell's ``models`` folder as training leaves it: policy files and a checkpoint with the policy history,
    recorded after epoch 1 (the initial policies) and epoch 2 (foreground logits of identity lowered)."""
    torch.manual_seed(seed)
    policy, test_time = AugmentationPolicy(groups=GROUPS, init="nnunet"), TestTimePolicy(init="nnunet")
    handler = PolicyPlotHandler(policy, models / "plots", test_time_policy=test_time)
    handler.record(1)
    with torch.no_grad():
        for op, logits in policy.logits["foreground"].items():
            logits[0] -= 0.5 + 0.1 * seed + 0.01 * len(op)  # identity less likely: the op applied more often
        test_time.logits.add_(torch.randn_like(test_time.logits))
    handler.record(2)
    models.mkdir(parents=True, exist_ok=True)
    save_policy(policy, models / "policy")
    save_policy(test_time, models / "test_time_policy")
    state = {"model": {"w": torch.zeros(2)}, **({"policy_history": handler.state_dict()} if history else {})}
    torch.save(state, models / "latest.pt")
    return policy, test_time


def test_cell_policies_are_the_saved_policies_probabilities(tmp_path: Path) -> None:
    policy, test_time = _trained_cell(tmp_path / "models")
    initial = AugmentationPolicy(groups=GROUPS, init="nnunet").probabilities()
    summary = cell_policies(tmp_path / "models")
    assert summary is not None
    assert summary["training"]["groups"] == GROUPS
    probs = policy.probabilities()
    for group in GROUPS:
        for op in policy.pool.op_names:
            assert summary["training"]["applied"][group][op] == pytest.approx(1 - float(probs[group][op][0]), abs=1e-5)
            start = summary["training"]["first_epoch"][group][op]
            assert start == pytest.approx(1 - float(initial[group][op][0]), abs=1e-5)
    fg, bg = summary["training"]["applied"]["foreground"], summary["training"]["applied"]["background"]
    assert all(fg[op] > bg[op] for op in fg)  # the foreground's identity logits were lowered
    expected = dict(zip(test_time.pool.names, test_time.probabilities().tolist(), strict=True))
    assert summary["test_time"]["probabilities"] == pytest.approx(expected, abs=1e-5)
    assert set(summary["test_time"]["first_epoch"]) == set(expected)


def test_cell_policies_without_history_or_files(tmp_path: Path) -> None:
    assert cell_policies(tmp_path / "empty") is None
    _trained_cell(tmp_path / "models", history=False)
    summary = cell_policies(tmp_path / "models")
    assert "first_epoch" not in summary["training"] and "first_epoch" not in summary["test_time"]
    (tmp_path / "models" / "policy.json").write_text(json.dumps({"type": "TestTimePolicy"}))
    with pytest.raises(ValueError, match=r"policy\.json' describes a 'TestTimePolicy'"):
        cell_policies(tmp_path / "models")
    bad = {"type": "AugmentationPolicy", "probabilities": {"background": {"scale": {"0.05": 1.0}}}}
    (tmp_path / "models" / "policy.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"policy\.json': no 'identity' probability for \['background/scale'\]"):
        cell_policies(tmp_path / "models")
    (tmp_path / "models" / "policy.json").write_text("{")
    with pytest.raises(ValueError, match=r"policy\.json' is not valid JSON"):
        cell_policies(tmp_path / "models")


def test_save_cell_policies_never_rewrites(tmp_path: Path) -> None:
    _trained_cell(tmp_path / "a", seed=0)
    _trained_cell(tmp_path / "b", seed=1)
    path = save_cell_policies(tmp_path / "results", "joint__f0.5__s0", tmp_path / "a")
    assert path == tmp_path / "results" / "policies" / "joint__f0.5__s0.json"
    before = path.read_text()
    assert save_cell_policies(tmp_path / "results", "joint__f0.5__s0", tmp_path / "b") is None
    assert path.read_text() == before
    assert save_cell_policies(tmp_path / "results", "vanilla__f0.5__s0", tmp_path / "none") is None


def _write(folder: Path, name: str, applied: dict, test_time: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"training": {"groups": GROUPS, "applied": applied}}
    if test_time is not None:
        data["test_time"] = {"probabilities": test_time}
    (folder / f"{name}.json").write_text(json.dumps(data))


def test_policies_markdown_mean_sd_difference_and_ranking(tmp_path: Path) -> None:
    folder = tmp_path / "results"
    assert policies_markdown(folder) == ""
    pol = folder / "policies"
    tt = {"identity": 0.5, "flip_x": 0.3, "flip_y": 0.2}
    for seed, (bg_scale, fg_scale, fg_gamma) in enumerate([(0.1, 0.3, 0.2), (0.3, 0.7, 0.4)]):
        applied = {
            "background": {"scale": bg_scale, "gamma": 0.2, "noise": 0.1004},
            "foreground": {"scale": fg_scale, "gamma": fg_gamma, "noise": 0.1},
        }
        _write(pol, f"joint__f0.5__s{seed}", applied, tt)
    text = policies_markdown(folder)
    assert "**joint @ 0.5** (2 seeds)" in text
    # scale: background 20 ± 14.1, foreground 50 ± 28.3, difference (20, 40) -> 30 ± 14.1
    assert "| `scale` | 20.0 ± 14.1 | 50.0 ± 28.3 | 30.0 ± 14.1 |" in text
    assert "| `gamma` | 20.0 ± 0.0 | 30.0 ± 14.1 | 10.0 ± 14.1 |" in text
    # expected operations per patch: background (0.4004, 0.6004), foreground (0.6, 1.2)
    assert "| `noise` | 10.0 ± 0.0 | 10.0 ± 0.0 | 0.0 ± 0.0 |" in text  # -0.04 points: no negative zero
    assert "| expected operations per patch | 0.50 ± 0.14 | 0.90 ± 0.42 | 0.40 ± 0.28 |" in text
    assert "uniform 33.3): `identity` 50.0, `flip_x` 30.0, `flip_y` 20.0." in text


def test_run_table_commits_the_policies_and_merge_carries_them(
    fake_bundle: Path, fake_runs: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import monai_imbalance.experiments.table as table_module

    stub = table_module._run  # fake_runs' stub; the variant "ce" also learns policies here

    def run_and_learn(cmd: list[str], log: Path, threads: int | None = None) -> None:
        stub(cmd, log, threads)
        if cmd[4] == "training" and any(
            Path(f).stem == "ce" for f in ast.literal_eval(cmd[cmd.index("--config_file") + 1])
        ):
            _trained_cell(Path(cmd[cmd.index("--bundle_root") + 1]) / "models")

    monkeypatch.setattr(table_module, "_run", run_and_learn)
    run_table(fake_bundle, ["vanilla", "ce"], [1.0], tmp_path / "runs", seeds=[0], results_dir=tmp_path / "res")
    assert sorted(p.name for p in (tmp_path / "res" / "policies").iterdir()) == ["ce__f1__s0.json"]
    markdown = (tmp_path / "res" / "results.md").read_text()
    assert markdown == results_markdown(tmp_path / "res")
    assert "**ce @ 1** (1 seed)" in markdown and "expected operations per patch" in markdown
    assert "vanilla @" not in markdown.split("Final learned policies")[1]

    (tmp_path / "other" / "cells").mkdir(parents=True)
    (tmp_path / "other" / "provenance.json").write_text((tmp_path / "res" / "provenance.json").read_text())
    merge_results_dirs(tmp_path / "res", tmp_path / "other")
    assert (tmp_path / "other" / "policies" / "ce__f1__s0.json").read_text() == (
        tmp_path / "res" / "policies" / "ce__f1__s0.json"
    ).read_text()
    assert "**ce @ 1**" in (tmp_path / "other" / "results.md").read_text()
