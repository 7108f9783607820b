# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of :class:`monai_imbalance.evaluation.SegmentationReport`: rows, summaries, Markdown and CSV files."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest

from monai_imbalance.evaluation import (
    CASE_COLUMNS,
    METRIC_NAMES,
    SUMMARY_COLUMNS,
    SegmentationReport,
    segmentation_case_metrics,
)

LABELS = {"0": "background", "1": "liver", "2": "tumour"}
SPACING = (0.8, 0.8, 2.0)


def _case(k: int) -> tuple[np.ndarray, np.ndarray]:
    """8x8x8 label maps: liver blocks shifted by k voxels; a tumour that is missed, spurious, or both empty."""
    pred = np.zeros((8, 8, 8), dtype=np.int64)
    label = np.zeros_like(pred)
    label[1:5, 1:5, 1:5] = 1
    pred[1:5, 1:5, 1 + k % 3 : 5 + k % 3] = 1
    if k % 4 == 0:
        label[6, 6, 6] = 2  # missed tumour: SEN 0, PRC and HD95 undefined
    elif k % 4 == 1:
        pred[6, 6, 6] = 2  # spurious tumour: PRC 0, SEN and HD95 undefined
    elif k % 4 == 2:
        label[6:8, 6:8, 6:8] = 2
        pred[6:8, 6:8, 7:8] = 2
    return pred, label


def _filled(n_val: int = 5, n_test: int = 3, **kwargs) -> SegmentationReport:
    report = SegmentationReport(LABELS, **kwargs)
    for k in range(n_val):
        report.add_case(f"val_{k}", "validation", *_case(k), spacing=SPACING)
    for k in range(n_test):
        report.add_case(f"test_{k}", "test", *_case(k + 1), spacing=SPACING)
    return report


def _parse_markdown(text: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert set(lines[1].replace("|", "")) <= set("-:")
    return split[0], split[2:]


def _parse_cell(cell: str) -> tuple[float, float, int | None]:
    """``"12.34 ± 5.67 (3/5)"`` -> (12.34, 5.67, 3); count None without the suffix."""
    count = None
    if "(" in cell:
        cell, suffix = cell.split("(")
        count = int(suffix.rstrip(")").split("/")[0])
    mean, std = cell.split("±")
    return float(mean), float(std), count


def test_class_names_mapping_sequence_and_validation():
    assert SegmentationReport(LABELS).class_names == ["background", "liver", "tumour"]
    assert SegmentationReport({2: "b", 0: "bg", 1: "a"}).class_names == ["bg", "a", "b"]
    assert SegmentationReport(["bg", "organ"]).num_classes == 2
    with pytest.raises(ValueError, match="0..C-1"):
        SegmentationReport({"0": "bg", "2": "tumour"})
    with pytest.raises(ValueError, match="integers"):
        SegmentationReport({"bg": "x", "1": "y"})
    with pytest.raises(ValueError, match="at least one class"):
        SegmentationReport(["bg"])


def test_add_case_rows():
    report = SegmentationReport(LABELS)
    pred, label = _case(0)
    returned = report.add_case("liver_7", "test", pred, label, spacing=SPACING)
    rows = report.rows
    assert [r["class"] for r in rows] == ["liver", "tumour"]
    assert all(tuple(r) == CASE_COLUMNS for r in rows)
    expected = segmentation_case_metrics(pred, label, 3, spacing=SPACING)
    assert returned == expected
    for r in rows:
        assert r["case"] == "liver_7" and r["split"] == "test"
        for key, value in expected[r["class_index"]].items():
            assert r[key] == pytest.approx(value, nan_ok=True)
    liver = rows[0]
    assert liver["dice"] == pytest.approx(1.0) and liver["n_label"] == 64 and liver["hd95"] == 0.0
    tumour = rows[1]
    assert tumour["dice"] == 0.0 and tumour["sensitivity"] == 0.0 and math.isnan(tumour["hd95"])
    rows[0]["dice"] = -1.0  # rows are copies
    assert report.rows[0]["dice"] == pytest.approx(1.0)

    with_bg = SegmentationReport(LABELS, include_background=True)
    with_bg.add_case("liver_7", "test", pred, label)
    assert [r["class_index"] for r in with_bg.rows] == [0, 1, 2]
    assert with_bg.hd95_unit == "voxels"


def test_add_case_rejects_duplicates_and_mixed_units():
    report = SegmentationReport(LABELS)
    report.add_case("a", "test", *_case(0), spacing=SPACING)
    with pytest.raises(ValueError, match="already in split"):
        report.add_case("a", "test", *_case(1), spacing=SPACING)
    report.add_case("a", "validation", *_case(1), spacing=SPACING)  # same id in another split is fine
    with pytest.raises(ValueError, match="mm"):
        report.add_case("b", "test", *_case(1))
    assert len(report) == 4


def test_add_rows_of_another_report():
    # what distributed evaluation does: the rows computed by another report (another rank's) join this one's
    whole, first, other = SegmentationReport(LABELS), SegmentationReport(LABELS), SegmentationReport(LABELS)
    for k in range(3):
        whole.add_case(f"c{k}", "test", *_case(k), spacing=SPACING)
        (first if k == 0 else other).add_case(f"c{k}", "test", *_case(k), spacing=SPACING)
    first.add_rows(other.rows, other.hd95_unit)
    assert _nan_repr(first.rows) == _nan_repr(whole.rows) and first.to_markdown() == whole.to_markdown()
    before = _nan_repr(first.rows)
    new = {**other.rows[0], "case": "new"}
    with pytest.raises(ValueError, match="'c1' is already in split 'test'"):
        first.add_rows([new, *other.rows], "mm")
    with pytest.raises(ValueError, match="voxels"):
        first.add_rows([new], "voxels")
    with pytest.raises(ValueError, match="hd95_unit"):
        first.add_rows([new], "cm")
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['dice'\]"):
        first.add_rows([{k: v for k, v in new.items() if k != "dice"}], "mm")
    with pytest.raises(ValueError, match="class 0"):
        first.add_rows([{**new, "class_index": 0, "class": "background"}], "mm")
    assert _nan_repr(first.rows) == before  # a failed call adds nothing


def _nan_repr(rows: list[dict]) -> str:
    """Rows as text, so that NaN compares equal to NaN."""
    return repr(rows)


def test_summary_matches_numpy():
    report = _filled()
    summary = report.summary()
    assert [(e["split"], e["class"]) for e in summary] == [
        ("validation", "liver"),
        ("validation", "tumour"),
        ("test", "liver"),
        ("test", "tumour"),
    ]
    some_undefined = False
    for entry in summary:
        assert tuple(entry) == SUMMARY_COLUMNS
        rows = [r for r in report.rows if r["split"] == entry["split"] and r["class_index"] == entry["class_index"]]
        assert entry["n"] == len(rows) == (5 if entry["split"] == "validation" else 3)
        for m in METRIC_NAMES:
            values = np.array([r[m] for r in rows], dtype=float)
            count = int(np.sum(~np.isnan(values)))
            assert entry[f"{m}_count"] == count
            some_undefined |= count < len(rows)
            if count:
                assert entry[f"{m}_mean"] == pytest.approx(np.nanmean(values))
                assert entry[f"{m}_std"] == pytest.approx(np.nanstd(values))
            else:
                assert math.isnan(entry[f"{m}_mean"]) and math.isnan(entry[f"{m}_std"])
    assert some_undefined
    # hand check: validation tumour over k = 0..4 is missed, spurious, overlap, both empty, missed
    tumour = summary[1]
    assert tumour["dice_count"] == 5 and tumour["sensitivity_count"] == 3 and tumour["hd95_count"] == 2
    dice_k2 = 2 * 4 / (8 + 4)
    assert tumour["dice_mean"] == pytest.approx((0 + 0 + dice_k2 + 1 + 0) / 5)
    assert report.summary(splits=["test"])[0]["split"] == "test"


def test_markdown_table():
    report = _filled()
    header, rows = _parse_markdown(report.to_markdown())
    assert header == ["Split", "Class", "DSC (%)", "SEN (%)", "PRC (%)", "HD95 (mm)", "n"]
    summary = report.summary()
    assert len(rows) == len(summary)
    for cells, entry in zip(rows, summary, strict=True):
        assert cells[0] == entry["split"] and cells[1] == entry["class"] and int(cells[6]) == entry["n"]
        for cell, m, scale in zip(cells[2:6], METRIC_NAMES, (100, 100, 100, 1), strict=True):
            if entry[f"{m}_count"] == 0:
                assert cell == "n/a"
                continue
            mean, std, count = _parse_cell(cell)
            assert mean == pytest.approx(entry[f"{m}_mean"] * scale, abs=0.005)
            assert std == pytest.approx(entry[f"{m}_std"] * scale, abs=0.005)
            assert count == (entry[f"{m}_count"] if entry[f"{m}_count"] < entry["n"] else None)
    assert "(2/5)" in report.to_markdown()  # validation tumour HD95 defined in 2 of 5 cases
    _, only_test = _parse_markdown(report.to_markdown(splits=["test"]))
    assert {r[0] for r in only_test} == {"test"}

    voxels = SegmentationReport(LABELS)
    voxels.add_case("a", "test", *_case(1))  # spurious tumour only: SEN and HD95 undefined
    header, (liver, tumour) = _parse_markdown(voxels.to_markdown())
    assert header[5] == "HD95 (voxels)"
    assert tumour[3] == "n/a" and tumour[5] == "n/a" and tumour[4] == "0.00 ± 0.00"


def test_save_writes_parsable_files(tmp_path):
    report = _filled(output_dir=tmp_path / "eval")
    markdown = report.save()
    folder = tmp_path / "eval"
    assert sorted(os.listdir(folder)) == ["metrics_per_case.csv", "metrics_summary.csv", "metrics_summary.md"]
    assert (folder / "metrics_summary.md").read_text(encoding="utf-8") == markdown == report.to_markdown()

    with open(folder / "metrics_per_case.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CASE_COLUMNS
        parsed = list(reader)
    assert len(parsed) == len(report.rows) == 16
    for got, row in zip(parsed, report.rows, strict=True):
        assert (got["case"], got["split"], got["class"]) == (row["case"], row["split"], row["class"])
        assert int(got["class_index"]) == row["class_index"]
        assert (int(got["n_label"]), int(got["n_pred"])) == (row["n_label"], row["n_pred"])
        for m in METRIC_NAMES:
            assert float(got[m]) == pytest.approx(row[m], nan_ok=True)  # full precision, "nan" for undefined

    with open(folder / "metrics_summary.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
        parsed = list(reader)
    for got, entry in zip(parsed, report.summary(), strict=True):
        assert int(got["n"]) == entry["n"] and got["hd95_unit"] == "mm"
        for m in METRIC_NAMES:
            assert float(got[f"{m}_mean"]) == pytest.approx(entry[f"{m}_mean"], nan_ok=True)
            assert float(got[f"{m}_std"]) == pytest.approx(entry[f"{m}_std"], nan_ok=True)
            assert int(got[f"{m}_count"]) == entry[f"{m}_count"]

    other = tmp_path / "other"
    report.save(other)
    assert (other / "metrics_per_case.csv").read_text() == (folder / "metrics_per_case.csv").read_text()
    with pytest.raises(ValueError, match="output_dir"):
        SegmentationReport(LABELS).save()


def test_save_is_atomic(tmp_path, monkeypatch):
    report = _filled(n_val=1, n_test=0, output_dir=tmp_path)
    report.save()
    before = (tmp_path / "metrics_per_case.csv").read_text()
    report.add_case("val_9", "validation", *_case(2), spacing=SPACING)

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        report.save()
    assert (tmp_path / "metrics_per_case.csv").read_text() == before  # old file intact
    assert sorted(os.listdir(tmp_path)) == ["metrics_per_case.csv", "metrics_summary.csv", "metrics_summary.md"]
    monkeypatch.undo()
    report.save()
    assert (tmp_path / "metrics_per_case.csv").read_text() != before
    assert (tmp_path / "metrics_summary.md").stat().st_mode & 0o777 == 0o644


def test_reset():
    report = _filled()
    report.reset(split="validation")
    assert report.splits == ["test"] and len(report) == 6
    report.add_case("val_0", "validation", *_case(0), spacing=SPACING)  # no longer a duplicate
    report.reset()
    assert report.rows == [] and report.summary() == []
    report.add_case("a", "test", *_case(0))  # the unit is free again after a full reset
    assert report.hd95_unit == "voxels"
