# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Seeds, presets, committed results folders, provenance and README rendering of the table (stubbed cell runs)."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import pytest

from monai_imbalance.experiments import cell_dir, config_files, load_cells, results_markdown, run_table
from monai_imbalance.experiments.__main__ import main
from monai_imbalance.experiments.render import GENERATED, markers
from monai_imbalance.experiments.results import table_command

REPO = Path(__file__).resolve().parents[2]


def _trainings(calls):
    return sorted((c["folder"].name, c["seed"]) for c in calls if c["stage"] == "training")


def test_seeds_make_separate_cells_and_mean_sd_over_seeds(fake_bundle, fake_runs, fake_eval, tmp_path, capsys):
    names, case_dice = fake_eval.cases, fake_eval.case_dice
    out = tmp_path / "table"
    table = run_table(fake_bundle, ["vanilla", "ce"], [0.5], out, seeds=[0, 1, 2])
    assert _trainings(fake_runs) == sorted(
        (f"{v}__f0.5__s{s}", s) for v in ("vanilla", "ce") for s in (0, 1, 2)
    )  # one cell per seed, the seed passed as --seed
    assert "cell 6/6: ce @ 0.5, seed 2" in capsys.readouterr().out
    # per seed the mean over the 8 cases, then mean ± sd over seeds: by hand with case_dice
    seed_means = [sum(case_dice("ce", s, i) for i in range(len(names))) / len(names) for s in (0, 1, 2)]
    mean = sum(seed_means) / 3
    sd = (sum((m - mean) ** 2 for m in seed_means) / 2) ** 0.5
    assert round(100 * mean, 1) == 72.2 and round(100 * sd, 1) == 1.0  # 0.712, 0.722, 0.732
    row = next(line for line in table.splitlines() if line.startswith("| ce |")).split(" | ")
    assert row[1] == f"**{100 * mean:.1f} ± {100 * sd:.1f}** \\*\\*"
    # the cell keeps its per-case rows of the rarest class (class 1 'fg')
    with open(cell_dir(out, "ce", 0.5, 2) / "cases.csv") as f:
        cases = list(csv.DictReader(f))
    assert [c["case"] for c in cases] == names and float(cases[3]["dice"]) == pytest.approx(case_dice("ce", 2, 3))
    with open(out / "summary.csv") as f:
        summary = {(r["variant"], r["metric"]): r for r in csv.DictReader(f)}
    assert float(summary[("ce", "dice")]["sd"]) == pytest.approx(sd) and summary[("ce", "dice")]["n_pairs"] == "24"


def test_collect_with_partial_seeds(fake_bundle, fake_runs, tmp_path):
    out = tmp_path / "table"
    run_table(fake_bundle, ["vanilla", "ce"], [0.5], out, seeds=[0, 1])
    run_table(fake_bundle, ["same"], [0.5], out, seeds=[0])  # 'same' has 1 of the 2 seeds
    fake_runs.clear()
    table = run_table(fake_bundle, ["vanilla", "ce", "same", "worse"], [0.5], out, seeds=[0, 1], collect_only=True)
    assert fake_runs == []
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines() if line.startswith("| ")}
    assert rows["same"][1].endswith("(n=1)") and "n=" not in rows["vanilla"][1] and rows["worse"][1] == "-"
    assert rows["ce"][1].count("±") == 1 and "±" not in rows["same"][1]


def test_failure_isolated_and_worse_mark(fake_bundle, fake_runs, tmp_path):
    out = tmp_path / "table"
    with pytest.raises(RuntimeError, match=r"1 of 4 cells failed[\s\S]*broken @ 0.5, seed 0: command failed"):
        run_table(fake_bundle, ["vanilla", "worse", "broken", "same"], [0.5], out, jobs=2)
    table = (out / "results.md").read_text()
    assert "| worse | 40.5 \\*\\* ↓ |" in table and "| broken | - |" in table and "| same | **60.5** |" in table


def test_preset_order_and_missing_preset(fake_bundle, fake_runs, tmp_path, capsys):
    configs = fake_bundle / "configs"
    assert config_files(fake_bundle, "ce", "fast") == [
        str(configs / "train.json"), str(configs / "presets" / "fast.json"), str(configs / "variants" / "ce.json")
    ]  # fmt: skip
    assert config_files(fake_bundle, "vanilla", "fast") == [
        str(configs / "train.json"), str(configs / "presets" / "fast.json")
    ]  # fmt: skip
    out = tmp_path / "table"
    run_table(fake_bundle, ["ce"], [0.5], out, preset="fast")
    train, evaluate = fake_runs
    assert train["files"] == config_files(fake_bundle, "ce", "fast")
    assert evaluate["files"] == [*config_files(fake_bundle, "ce", "fast"), str(configs / "evaluate.json")]
    assert json.loads((cell_dir(out, "ce", 0.5) / "result.json").read_text())["preset"] == "fast"
    assert "preset `fast`" in (out / "results.md").read_text()
    # the same folder with another preset: refused, not mixed
    with pytest.raises(ValueError, match="run with preset 'fast', this table has None"):
        run_table(fake_bundle, ["ce"], [0.5], out, collect_only=True)

    fake_runs.clear()
    args = [
        "table",
        "--bundle",
        str(fake_bundle),
        "--variants",
        "ce",
        "--fractions",
        "0.5",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--preset", "nope"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: preset 'nope': config file '{configs / 'presets' / 'nope.json'}' not found."
    assert fake_runs == [] and not (tmp_path / "o").exists()


def test_optimizer_is_stacked_last_recorded_and_not_mixed(fake_bundle, fake_runs, tmp_path, capsys):
    configs = fake_bundle / "configs"
    assert config_files(fake_bundle, "ce", "fast", "sgd") == [
        str(configs / "train.json"), str(configs / "presets" / "fast.json"), str(configs / "variants" / "ce.json"),
        str(configs / "optimizers" / "sgd.json"),
    ]  # fmt: skip
    results = tmp_path / "results" / "t"
    out = tmp_path / "table"
    run_table(fake_bundle, ["ce"], [0.5], out, preset="fast", optimizer="sgd", results_dir=results)
    train, _ = fake_runs
    assert train["files"][-1] == str(configs / "optimizers" / "sgd.json")
    assert json.loads((cell_dir(out, "ce", 0.5) / "result.json").read_text())["optimizer"] == "sgd"
    assert json.loads((results / "provenance.json").read_text())["optimizer"] == "sgd"
    with pytest.raises(ValueError, match="run with optimizer 'sgd', this table has None"):
        run_table(fake_bundle, ["ce"], [0.5], out, preset="fast", collect_only=True)
    with pytest.raises(ValueError, match="holds cells with optimizer 'sgd', this table has None"):
        run_table(fake_bundle, ["ce"], [0.5], tmp_path / "other", preset="fast", results_dir=results)
    args = [
        "table",
        "--bundle",
        str(fake_bundle),
        "--variants",
        "ce",
        "--fractions",
        "0.5",
        "--out",
        str(tmp_path / "o"),
    ]
    assert main([*args, "--optimizer", "adam"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: optimizer 'adam': config file '{configs / 'optimizers' / 'adam.json'}' not found."


def test_a_variant_with_a_post_hoc_stage_runs_it_between_training_and_evaluation(fake_bundle, fake_runs, tmp_path):
    configs = fake_bundle / "configs"
    (configs / "variants" / "posthoc.json").write_text(json.dumps({"learn_tta_after_training": True}))
    (configs / "learn_tta.json").write_text(json.dumps({"name": "learn_tta"}))
    out = tmp_path / "table"
    run_table(fake_bundle, ["ce", "posthoc"], [0.5], out)
    stages = {c["folder"].name: [] for c in fake_runs}
    for call in fake_runs:
        stages[call["folder"].name].append(call["stage"])
    assert stages == {"ce__f0.5__s0": ["training", "evaluating"],
                      "posthoc__f0.5__s0": ["training", "learning_tta", "evaluating"]}  # fmt: skip
    (tta,) = [c for c in fake_runs if c["stage"] == "learning_tta"]
    assert tta["files"] == [*config_files(fake_bundle, "posthoc"), str(configs / "learn_tta.json")]
    assert tta["seed"] == 0 and "--training_fraction" in tta["cmd"] and "--resume" not in tta["cmd"]
    result = json.loads((cell_dir(out, "posthoc", 0.5) / "result.json").read_text())
    assert "tta_seconds" in result and "tta_seconds" not in json.loads(
        (cell_dir(out, "ce", 0.5) / "result.json").read_text()
    )


def test_results_folder_resume_and_provenance(fake_bundle, fake_runs, fake_eval, tmp_path):
    results = tmp_path / "results" / "t2"
    base = ["table", "--bundle", str(fake_bundle), "--variants", "vanilla", "ce", "--fractions", "0.5",
            "--results", str(results)]  # fmt: skip
    assert main([*base, "--out", str(tmp_path / "machine_a"), "--seeds", "0", "--", "--epochs", "2"]) == 0
    assert _trainings(fake_runs) == [("ce__f0.5__s0", 0), ("vanilla__f0.5__s0", 0)]
    first = (results / "cells" / "ce__f0.5__s0.json").read_text()

    # another machine, a fresh --out: the committed cells count as finished, only the new seed trains
    fake_runs.clear()
    assert main([*base, "--out", str(tmp_path / "machine_b"), "--seeds", "0", "1"]) == 0
    assert _trainings(fake_runs) == [("ce__f0.5__s1", 1), ("vanilla__f0.5__s1", 1)]
    assert (results / "cells" / "ce__f0.5__s0.json").read_text() == first  # committed cells are never rewritten
    assert sorted(p.name for p in (results / "cells").iterdir()) == [
        "ce__f0.5__s0.json", "ce__f0.5__s1.json", "vanilla__f0.5__s0.json", "vanilla__f0.5__s1.json"
    ]  # fmt: skip
    assert sorted(p.name for p in results.iterdir()) == [
        "cells", "provenance.json", "results.csv", "results.md", "summary.csv"
    ]  # fmt: skip
    cell = json.loads(first)
    assert {"commit", "dirty", "machine", "finished", "train_seconds", "eval_seconds", "preset"} <= set(cell)
    assert len(cell["cases"]) == len(fake_eval.cases) and set(cell["cases"][0]) == {
        "case", "split", "dice", "sensitivity", "precision", "hd95"
    }  # fmt: skip

    prov = json.loads((results / "provenance.json").read_text())
    assert prov["command"].startswith("python -m monai_imbalance.experiments table --bundle")
    assert "--seeds 0 1" in prov["command"] and prov["bundle"] == str(fake_bundle) and prov["preset"] is None
    assert prov["variants"] == ["vanilla", "ce"] and prov["fractions"] == [0.5] and prov["seeds"] == [0, 1]
    assert prov["overrides"] == [] and prov["cells"] == 4 and prov["compute_seconds"] >= 0
    assert {"commit", "dirty", "date"} <= set(prov)
    assert {"name", "platform", "cpu", "cores", "torch", "gpus"} <= set(prov["machine"])
    assert [r["cells"] for r in prov["runs"]] == [
        ["vanilla__f0.5__s0", "ce__f0.5__s0"], ["vanilla__f0.5__s1", "ce__f0.5__s1"]
    ]  # fmt: skip
    assert prov["runs"][0]["overrides"] == ["--epochs", "2"] and "--seeds 0 --" in prov["runs"][0]["command"]
    with open(results / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    # results.md is generated from the committed files alone
    assert (results / "results.md").read_text() == results_markdown(results)
    assert "Command (the whole table; finished cells are skipped): `python -m monai_imbalance.experiments table" in (
        results_markdown(results)
    )
    assert "; 4 cells, 0.0 h of training and evaluation." in results_markdown(results)
    assert len(load_cells(results)) == 4

    # a results folder holds one bundle / preset / split / class
    with pytest.raises(ValueError, match="holds cells with preset None, this table has 'fast'"):
        run_table(fake_bundle, ["ce"], [0.5], tmp_path / "c", preset="fast", results_dir=results)


def test_table_command_is_the_union_of_the_runs(fake_bundle, fake_runs, tmp_path):
    """Runs that each added some variants or seeds render as one command that makes the whole table."""
    results = tmp_path / "results"
    head = "python -m monai_imbalance.experiments table --bundle b"
    tail = "--out o --results r -- --classes \"['lesion']\" --seeds 9"
    run_table(fake_bundle, ["vanilla"], [0.5], tmp_path / "o", seeds=[0], results_dir=results,
              command=f"{head} --variants vanilla --seeds 0 --fractions 0.5 {tail}")  # fmt: skip
    run_table(fake_bundle, ["ce"], [0.25], tmp_path / "o", seeds=[1, 2], results_dir=results,
              command=f"{head} --variants ce --seeds 1 2 --fractions 0.25 {tail}")  # fmt: skip
    provenance = json.loads((results / "provenance.json").read_text())
    whole = table_command(provenance)
    assert shlex.split(whole) == [
        *shlex.split(head), "--variants", "vanilla", "ce", "--seeds", "0", "1", "2", "--fractions", "0.25", "0.5",
        *shlex.split(tail),  # the overrides after -- are copied, their own --seeds included
    ]  # fmt: skip
    assert f"`{whole}`" in (results / "results.md").read_text() and provenance["command"].endswith(tail)
    assert table_command({**provenance, "command": "table --variants 'open"}) == "table --variants 'open"
    assert table_command({"command": None}) is None


def test_collect_fills_the_results_folder(fake_bundle, fake_runs, tmp_path):
    out = tmp_path / "table"
    run_table(fake_bundle, ["vanilla", "ce"], [0.5], out, seeds=[0, 1])
    fake_runs.clear()
    results = tmp_path / "results"
    run_table(fake_bundle, ["vanilla", "ce"], [0.5], out, seeds=[0, 1], collect_only=True, results_dir=results)
    assert fake_runs == [] and len(load_cells(results)) == 4


def test_seedless_cell_folder_read_as_its_seed(fake_bundle, fake_runs, tmp_path):
    out = tmp_path / "table"
    run_table(fake_bundle, ["ce"], [0.5], out)
    cell_dir(out, "ce", 0.5, 0).rename(out / "cells" / "ce__f0.5")  # a cell of the earlier naming
    fake_runs.clear()
    table = run_table(fake_bundle, ["ce"], [0.5], out, seeds=[0, 1])
    assert _trainings(fake_runs) == [("ce__f0.5__s1", 1)] and "| **71.7 ± 0.7** |" in table


def test_render_between_markers_and_check(fake_bundle, fake_runs, tmp_path, capsys):
    results = tmp_path / "results"
    run_table(fake_bundle, ["vanilla", "ce"], [0.5], tmp_path / "out", seeds=[0, 1], results_dir=results)
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nbefore\n<!-- results:t2 -->\nold table\n<!-- /results:t2 -->\nafter\n")
    args = ["render", "--results", str(results), "--readme", str(readme), "--marker", "t2"]
    assert main([*args, "--check"]) == 1
    assert "differs" in capsys.readouterr().err and "old table" in readme.read_text()
    assert main(args) == 0
    text = readme.read_text()
    block = text.split("<!-- results:t2 -->\n")[1].split("<!-- /results:t2 -->")[0]
    assert block == f"{GENERATED}\n{results_markdown(results)}"
    assert text.startswith("# Title\n\nbefore\n") and text.endswith("<!-- /results:t2 -->\nafter\n")
    assert "| ce | **" in block and "Command (the whole table" in block
    assert "preset: none" in block and "commit: " in block
    assert main([*args, "--check"]) == 0 and markers(text) == ["t2"]
    # a new cell makes the block stale
    run_table(fake_bundle, ["vanilla", "ce"], [0.5], tmp_path / "out", seeds=[0, 1, 2], results_dir=results)
    assert main([*args, "--check"]) == 1
    capsys.readouterr()
    assert main([*args[:-1], "other"]) == 1
    err = capsys.readouterr().err
    assert f"'{readme}'" in err and "<!-- results:other -->" in err and "<!-- /results:other -->" in err


def test_readme_tables_match_committed_results():
    """Every ``<!-- results:NAME -->`` block of the READMEs is what ``render`` writes from ``results/NAME``."""
    from monai_imbalance.experiments import render_readme

    for readme in [REPO / "README.md", *sorted(REPO.glob("bundles/*/docs/README.md"))]:
        for name in markers(readme.read_text()):
            assert not render_readme(REPO / "results" / name, readme, name, check=True), (
                f"{readme}: block results:{name} is stale; run python -m monai_imbalance.experiments render "
                f"--results results/{name} --readme {readme.relative_to(REPO)} --marker {name}"
            )


def test_fractions_are_tabulated_in_ascending_order_across_runs():
    """Runs that added fractions in another order (0.05 and 1 first, then 0.1-0.5) still give ascending columns."""
    from monai_imbalance.experiments.results import _axes

    cells = [{"variant": "vanilla", "fraction": 0.5, "seed": 0}]
    assert _axes(cells, {"fractions": [0.05, 1.0, 0.1]})[1] == [0.05, 0.1, 0.5, 1.0]


def test_interrupted_cell_resumes_and_says_so(fake_bundle, fake_runs, tmp_path):
    """A cell with a ``latest.pt`` resumes (``--resume true``); its result says ``resumed`` (its train_seconds count
    the last attempt only) and the table's provenance line counts such cells."""
    out, results = tmp_path / "table", tmp_path / "results"
    folder = cell_dir(out, "ce", 0.5, 0)
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "latest.pt").write_bytes(b"state")
    run_table(fake_bundle, ["vanilla", "ce"], [0.5], out, seeds=[0], results_dir=results)
    train = {c["folder"].name: c["cmd"] for c in fake_runs if c["stage"] == "training"}
    assert "--resume" in train["ce__f0.5__s0"] and "--resume" not in train["vanilla__f0.5__s0"]
    cells = {c["variant"]: c for c in load_cells(results)}
    assert cells["ce"]["resumed"] is True and "resumed" not in cells["vanilla"]
    assert "(1 resumed cell counts its last attempt only)." in results_markdown(results)


def test_git_state_excludes_the_results_folder(tmp_path):
    """A modified file in the excluded folder is not dirty, whichever line of ``git status`` it is on (the first
    line starts with a space for an unstaged change); one outside is."""
    import subprocess

    from monai_imbalance.experiments.provenance import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results" / "t").mkdir(parents=True)
    (tmp_path / "results" / "t" / "a.json").write_text("1")
    (tmp_path / "z.py").write_text("1")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    (tmp_path / "results" / "t" / "a.json").write_text("2")
    commit, dirty = git_state(tmp_path, [tmp_path / "results" / "t"])
    assert len(commit) == 40 and dirty is False
    (tmp_path / "z.py").write_text("2")
    assert git_state(tmp_path, [tmp_path / "results" / "t"])[1] is True


def test_merge_two_folders_of_one_table(fake_bundle, fake_runs, tmp_path, capsys):
    """Seeds run in two places (two worktrees) into two results folders: merged, the target holds every cell once,
    both runs, and the same tables as one folder that ran all the cells."""
    a, b, whole = tmp_path / "a", tmp_path / "b", tmp_path / "whole"
    run_table(fake_bundle, ["vanilla", "ce"], [0.5], tmp_path / "ra", seeds=[0, 1], results_dir=a, command="run a")
    run_table(fake_bundle, ["vanilla", "ce"], [0.5], tmp_path / "rb", seeds=[1, 2], results_dir=b, command="run b")
    run_table(fake_bundle, ["vanilla", "ce"], [0.5], tmp_path / "rw", seeds=[0, 1, 2], results_dir=whole)
    seed1 = (a / "cells" / "ce__f0.5__s1.json").read_text()
    assert main(["merge", "--from", str(b), "--into", str(a)]) == 0
    assert "2 cells added" in capsys.readouterr().out  # vanilla and ce of seed 2; seed 1 was there
    assert sorted(p.name for p in (a / "cells").iterdir()) == sorted(p.name for p in (whole / "cells").iterdir())
    assert (a / "cells" / "ce__f0.5__s1.json").read_text() == seed1  # never rewritten
    provenance = json.loads((a / "provenance.json").read_text())
    assert [r["command"] for r in provenance["runs"]] == ["run a", "run b"] and provenance["seeds"] == [0, 1, 2]
    assert provenance["cells"] == 6
    table = (a / "results.md").read_text().split("\n\n")[0]
    assert table == (whole / "results.md").read_text().split("\n\n")[0]
    assert (a / "summary.csv").read_text() == (whole / "summary.csv").read_text()
    assert main(["merge", "--from", str(b), "--into", str(a)]) == 0 and "0 cells added" in capsys.readouterr().out
    (a / "cells" / "ce__f0.5__s2.json").unlink()
    assert main(["merge", "--from", str(b), "--into", str(a)]) == 0
    assert ": 1 cell added from " in capsys.readouterr().out and (a / "cells" / "ce__f0.5__s2.json").is_file()
    other = tmp_path / "other"
    run_table(fake_bundle, ["vanilla"], [0.5], tmp_path / "ro", seeds=[0], results_dir=other, preset="fast")
    assert main(["merge", "--from", str(other), "--into", str(a)]) == 1
    assert "preset" in capsys.readouterr().err
