# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of :class:`SegmentationReportHandler` on a real :class:`monai.engines.SupervisedEvaluator`."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.transforms import AsDiscreted

from monai_imbalance.evaluation import SegmentationReport
from monai_imbalance.handlers.segmentation_report import SegmentationReportHandler

LABELS = {"0": "background", "1": "organ", "2": "lesion"}
SPACING = (1.0, 1.5, 2.5)


class FixedLogits(torch.nn.Module):
    """Returns its input times ``scale``: the test images are the one-hot logits of the wanted predictions."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, pred, label) 8x8x8 label maps with hand-computed metrics (see EXPECTED)."""
    cases = []
    pred, label = np.zeros((8, 8, 8), np.int64), np.zeros((8, 8, 8), np.int64)
    pred[2:4, 2:4, 2:4] = 1
    label[2:4, 2:4, 2:5] = 1  # organ: TP 8, FN 4; HD95 = one z-step = 2.5 mm
    label[6, 6, 6] = 2  # lesion missed
    cases.append(("case_a", pred, label))
    pred, label = np.zeros((8, 8, 8), np.int64), np.zeros((8, 8, 8), np.int64)
    pred[1:5, 1:5, 1:5] = 1
    label[1:5, 1:5, 1:5] = 1  # organ perfect
    pred[6, 6, 6] = 2  # lesion spurious
    cases.append(("case_b", pred, label))
    pred, label = np.zeros((8, 8, 8), np.int64), np.zeros((8, 8, 8), np.int64)
    pred[5:7, 5:7, 5:7] = 2
    label[5:7, 5:7, 6:8] = 2  # lesion: TP 4, FP 4, FN 4, HD95 one z-step; organ both empty
    cases.append(("case_c", pred, label))
    return cases


NAN = math.nan
EXPECTED = {  # (case, class): (dice, sensitivity, precision, hd95 in mm)
    ("case_a", 1): (0.8, 8 / 12, 1.0, 2.5),
    ("case_a", 2): (0.0, 0.0, NAN, NAN),
    ("case_b", 1): (1.0, 1.0, 1.0, 0.0),
    ("case_b", 2): (0.0, NAN, 0.0, NAN),
    ("case_c", 1): (1.0, NAN, NAN, 0.0),
    ("case_c", 2): (0.5, 0.5, 0.5, 2.5),
}


def _data(folder: str = "/data/imagesTs", splits: tuple[str, ...] | None = None) -> list[dict]:
    affine = torch.diag(torch.tensor([*SPACING, 1.0], dtype=torch.float64))
    data = []
    for k, (name, pred, label) in enumerate(_cases()):
        logits = np.stack([pred == c for c in range(3)]).astype(np.float32)  # argmax gives `pred`
        meta = {"filename_or_obj": f"{folder}/{name}.nii.gz"}
        data.append(
            {
                "image": MetaTensor(torch.from_numpy(logits), affine=affine, meta=dict(meta)),
                "label": MetaTensor(torch.from_numpy(label)[None].float(), affine=affine, meta=dict(meta)),
            }
        )
        if splits is not None:
            data[-1]["split"] = splits[k]
    return data


def _evaluator(
    handler: SegmentationReportHandler,
    decollate: bool = True,
    discrete: bool = True,
    scale: float = 1.0,
    data: list[dict] | None = None,
):
    return SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(_data() if data is None else data), batch_size=2, num_workers=0),
        network=FixedLogits(scale),
        postprocessing=AsDiscreted(keys="pred", argmax=True) if discrete else None,
        val_handlers=[handler],
        decollate=decollate,
    )


def _check_rows(rows: list[dict], split: str) -> None:
    got = {(r["case"], r["class_index"]): r for r in rows if r["split"] == split}
    assert set(got) == set(EXPECTED)
    for key, values in EXPECTED.items():
        row = got[key]
        assert row["class"] == LABELS[str(key[1])]
        for m, value in zip(("dice", "sensitivity", "precision", "hd95"), values, strict=True):
            assert row[m] == pytest.approx(value, nan_ok=True), (key, m)


def test_handler_records_the_cases(caplog):
    report = SegmentationReport(LABELS)
    evaluator = _evaluator(SegmentationReportHandler(report, split="test"))
    with caplog.at_level(logging.INFO, logger=evaluator.logger.name):
        evaluator.run()
    _check_rows(report.rows, "test")
    assert len(report.rows) == 6 and report.hd95_unit == "mm"
    assert report.rows[0]["n_label"] == 12 and report.rows[0]["n_pred"] == 8
    assert "split 'test' (3 cases)" in caplog.text
    assert "| test | organ | " in caplog.text and "HD95 (mm)" in caplog.text


def test_handler_one_hot_batched_output_without_decollate():
    # no postprocessing: the "logits" are already one-hot; the handler decollates the batch dict itself
    report = SegmentationReport(LABELS)
    _evaluator(SegmentationReportHandler(report, split="test"), decollate=False, discrete=False).run()
    _check_rows(report.rows, "test")


def test_handlers_of_several_evaluators_share_one_report(tmp_path, caplog):
    report = SegmentationReport(LABELS, output_dir=tmp_path)
    validation = _evaluator(SegmentationReportHandler(report, split="validation"))
    test = _evaluator(SegmentationReportHandler(report, split="test", log_table=False))
    with caplog.at_level(logging.INFO, logger=validation.logger.name):
        validation.run()
        test.run()
        validation.run()  # a repeated run replaces the split's rows instead of adding them twice
    assert sorted(report.splits) == ["test", "validation"] and len(report.rows) == 12
    _check_rows(report.rows, "validation")
    _check_rows(report.rows, "test")
    assert caplog.text.count("segmentation report, split 'validation'") == 2
    assert "split 'test'" not in caplog.text
    saved = (tmp_path / "metrics_summary.md").read_text(encoding="utf-8")
    assert saved == report.to_markdown() and "| test | lesion |" in saved and "| validation | lesion |" in saved
    assert (tmp_path / "metrics_per_case.csv").read_text().count("\n") == 13  # header + 12 rows


@pytest.mark.parametrize("decollate", [True, False])
def test_handler_reads_the_split_of_each_case(decollate, caplog):
    # one evaluator over a datalist tagged with splits (as load_evaluation_datalist makes); the split key stays in
    # engine.state.batch, not in the output
    report = SegmentationReport(LABELS)
    data = _data(splits=("test", "external", "test"))
    handler = SegmentationReportHandler(report, split=None)
    evaluator = _evaluator(handler, decollate=decollate, discrete=decollate, data=data)
    with caplog.at_level(logging.INFO, logger=evaluator.logger.name):
        evaluator.run()
        evaluator.run()  # the rerun replaces both splits' rows
    assert report.splits == ["test", "external"]
    by_split = {(r["split"], r["case"]) for r in report.rows}
    assert by_split == {("test", "case_a"), ("external", "case_b"), ("test", "case_c")}
    for row in report.rows:
        expected = EXPECTED[(row["case"], row["class_index"])]
        assert row["dice"] == pytest.approx(expected[0]) and row["hd95"] == pytest.approx(expected[3], nan_ok=True)
    assert "split 'test', 'external' (3 cases)" in caplog.text
    assert "| external | lesion |" in caplog.text

    untagged = _evaluator(SegmentationReportHandler(SegmentationReport(LABELS), split=None))
    with pytest.raises(KeyError, match="'split' item"):
        untagged.run()


def test_handler_without_file_names_generates_ids():
    report = SegmentationReport(LABELS, include_background=True)
    data = [{k: v.as_tensor() for k, v in item.items()} for item in _data()]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(Dataset(data), batch_size=3, num_workers=0),
        network=FixedLogits(),
        postprocessing=AsDiscreted(keys="pred", argmax=True),
        val_handlers=[SegmentationReportHandler(report, split="val", log_table=False)],
    )
    evaluator.run()
    assert sorted({r["case"] for r in report.rows}) == ["val_0001", "val_0002", "val_0003"]
    # MONAI's collation makes MetaTensors with an identity affine: spacing 1 mm, so HD95 is one z-step = 1 mm
    assert report.hd95_unit == "mm"
    organ_a = next(r for r in report.rows if r["case"] == "val_0001" and r["class_index"] == 1)
    assert organ_a["hd95"] == pytest.approx(1.0)
    assert {r["class_index"] for r in report.rows} == {0, 1, 2}


def test_handler_errors_name_the_case():
    report = SegmentationReport(LABELS)
    with pytest.raises(ValueError, match=r"case 'case_a' \(test\).*AsDiscreted"):
        _evaluator(SegmentationReportHandler(report, split="test"), discrete=False, scale=0.7).run()  # raw logits
    twice = _data()[:1] * 2  # the same file twice in one split
    with pytest.raises(ValueError, match=r"^case 'case_a' \(test\): case 'case_a' is already in split 'test' .*\.$"):
        _evaluator(SegmentationReportHandler(SegmentationReport(LABELS), split="test"), data=twice).run()
    with pytest.raises(KeyError, match="'seg'"):
        _evaluator(SegmentationReportHandler(report, split="test", label_key="seg")).run()
    with pytest.raises(TypeError, match="SegmentationReport"):
        SegmentationReportHandler({"0": "bg"}, split="test")


def _rank_main(rank: int, out_dir: str, even_divisible: bool, gather: bool) -> None:
    """One of two gloo ranks: evaluate the rank's shard of ``_data`` and dump its report rows and log lines."""
    from datetime import timedelta

    import torch.distributed as dist
    from monai.data import DistributedSampler

    os.environ["LOCAL_RANK"] = str(rank)
    dist.init_process_group(
        "gloo", init_method=f"file://{out_dir}/init", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        report = SegmentationReport(LABELS, output_dir=f"{out_dir}/tables")
        dataset = Dataset(_data(splits=("test", "external", "test")))
        sampler = DistributedSampler(dataset, even_divisible=even_divisible, shuffle=False)
        evaluator = SupervisedEvaluator(
            device=torch.device("cpu"),
            val_data_loader=DataLoader(dataset, batch_size=1, sampler=sampler, num_workers=0),
            network=FixedLogits(),
            postprocessing=AsDiscreted(keys="pred", argmax=True),
            val_handlers=[SegmentationReportHandler(report, split=None, gather=gather)],
        )
        messages: list[str] = []
        log = logging.Handler()
        log.emit = lambda record: messages.append(record.getMessage())
        evaluator.logger.addHandler(log)
        evaluator.logger.setLevel(logging.INFO)
        result: dict = {"messages": messages}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                evaluator.run()
                result.update(rows=report.rows, iterations=evaluator.state.iteration)
            except ValueError as e:
                result["error"] = str(e)
        result["warnings"] = [str(w.message) for w in caught]
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


#: two-rank runs: (DistributedSampler even_divisible, handler gather)
SCENARIOS = {"gathered": (False, True), "padded": (True, True), "shards": (False, False)}


def _run_scenarios(out_dir: str) -> None:
    """Fork two ranks per scenario; run in a fresh interpreter, as a forked OpenMP thread pool can hang the ranks."""
    import torch.multiprocessing as mp

    for name, (even_divisible, gather) in SCENARIOS.items():
        folder = Path(out_dir) / name
        folder.mkdir(parents=True)
        mp.start_processes(_rank_main, args=(str(folder), even_divisible, gather), nprocs=2, start_method="fork")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """The folder of the scenarios' results (``<scenario>/rank<r>.json``, ``<scenario>/tables/``)."""
    out = tmp_path_factory.mktemp("two_ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return out


def _ranks(folder: Path) -> list[dict]:
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


def _same_rows(got: list[dict], expected: list[dict]) -> bool:
    """Equal row lists, NaN equal to NaN (the rows went through JSON)."""

    def same(a, b) -> bool:
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))

    return len(got) == len(expected) and all(
        g.keys() == e.keys() and all(same(g[k], e[k]) for k in g) for g, e in zip(got, expected, strict=True)
    )


@pytest.mark.slow  # torchrun, 2 processes
def test_distributed_evaluation_gathers_every_case_once(two_ranks, tmp_path):
    # the single-process reference: same data, same handler, one evaluator over all three cases
    single = SegmentationReport(LABELS, output_dir=tmp_path)
    data = _data(splits=("test", "external", "test"))
    _evaluator(SegmentationReportHandler(single, split=None, log_table=False), data=data).run()
    ranks = _ranks(two_ranks / "gathered")
    assert [r["iterations"] for r in ranks] == [2, 1]  # rank 0: case_a, case_c; rank 1: case_b
    for r in ranks:  # every rank ends with every case once, in the single-process order
        assert _same_rows(r["rows"], single.rows), r["rows"]
        assert not r["warnings"]
    assert not [m for m in ranks[1]["messages"] if "segmentation report" in m]  # rank 0 alone logs the table
    assert any("split 'test', 'external' (3 cases)" in m for m in ranks[0]["messages"])
    for name in ("metrics_per_case.csv", "metrics_summary.csv", "metrics_summary.md"):  # written by rank 0
        assert (two_ranks / "gathered" / "tables" / name).read_text() == (tmp_path / name).read_text(), name


def test_distributed_evaluation_rejects_padded_shards_and_can_keep_shards(two_ranks):
    for r in _ranks(two_ranks / "padded"):  # rank 1 gets case_b and, as padding, case_a
        assert "case 'case_a' (test) was evaluated by ranks 0 and 1" in r["error"]
        assert "even_divisible=False" in r["error"]
    shards = _ranks(two_ranks / "shards")
    assert [sorted({row["case"] for row in r["rows"]}) for r in shards] == [["case_a", "case_c"], ["case_b"]]
    assert all(any("gather=False" in w for w in r["warnings"]) for r in shards)
    saved = (two_ranks / "shards" / "tables" / "metrics_per_case.csv").read_text()
    assert saved.count("\n") == 5 and "case_b" not in saved  # header + rank 0's 2 cases x 2 classes


if __name__ == "__main__":  # the two-rank scenarios, started by the ``two_ranks`` fixture
    _run_scenarios(sys.argv[1])
