"""Tests for ``python -m monai_imbalance.bundle verify``: passes on the shipped bundle, names each problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from monai_imbalance.bundle import SCHEMA_PATH, VerificationError, check_configs, check_metadata, verify_bundle
from monai_imbalance.bundle.__main__ import main

pytestmark = pytest.mark.slow  # every shipped bundle

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "asymmetric_segmentation"


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / BUNDLE.name
    shutil.copytree(BUNDLE, dst, ignore=shutil.ignore_patterns("eval", "*.pt", "*.ts"))
    return dst


def _edit_meta(bundle: Path, edit: Any) -> None:
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    edit(meta)
    meta_file.write_text(json.dumps(meta, indent=4))


def _set_spatial_shape(meta: dict, value: str) -> None:
    for section in ("inputs", "outputs"):
        for spec in meta["network_data_format"][section].values():
            spec["spatial_shape"] = [value] * len(spec["spatial_shape"])


def _failures(results: list) -> dict[str, str]:
    return {r.name: r.message for r in results if not r.passed}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A copy of the shipped bundle, its metadata spatial_shape at ``16*n`` (see ``test_shipped_bundle_passes``)."""
    dst = _copy(tmp_path)
    _edit_meta(dst, lambda m: _set_spatial_shape(m, "16*n"))
    return dst


def test_schema_is_valid_and_ships() -> None:
    import jsonschema

    jsonschema.Draft7Validator.check_schema(json.loads(SCHEMA_PATH.read_text()))
    pyproject = (BUNDLE.parents[1] / "pyproject.toml").read_text()
    assert '"bundle/schemas/*.json"' in pyproject


def test_verify_passes(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    for name in ("metadata", "net_in_out", "torchscript", "configs"):
        assert f"PASS {name}" in out
    assert "skipped train.json+multi_gpu_train.json" in out


@pytest.mark.parametrize("name", sorted(p.name for p in BUNDLE.parent.iterdir() if (p / "configs").is_dir()))
def test_every_shipped_bundle_passes(name: str, tmp_path: Path) -> None:
    """The Model Zoo's checks, offline, on every bundle of the repository (a copy: nothing is written into it)."""
    dst = tmp_path / name
    shutil.copytree(BUNDLE.parent / name, dst, ignore=shutil.ignore_patterns("eval", "*.pt", "*.ts"))
    results = verify_bundle(dst)
    assert not _failures(results), _failures(results)


@pytest.mark.parametrize("key", ["task", "monai_version", "network_data_format"])
def test_missing_mandatory_key(bundle: Path, key: str) -> None:
    _edit_meta(bundle, lambda m: m.pop(key))
    with pytest.raises(VerificationError, match=f"'{key}' is a required property"):
        check_metadata(bundle)


def test_missing_tensor_spec_key(bundle: Path) -> None:
    _edit_meta(bundle, lambda m: m["network_data_format"]["outputs"]["pred"].pop("channel_def"))
    with pytest.raises(VerificationError, match=r"network_data_format#outputs#pred: 'channel_def' is a required"):
        check_metadata(bundle)


def test_version_not_in_changelog(bundle: Path) -> None:
    _edit_meta(bundle, lambda m: m.update(version="0.2.0"))
    with pytest.raises(VerificationError, match=r"version `0.2.0` is not a key of `changelog`"):
        check_metadata(bundle)


def test_channel_def_count_differs_from_num_channels(bundle: Path) -> None:
    def edit(meta: dict) -> None:
        meta["network_data_format"]["outputs"]["pred"]["channel_def"]["2"] = "extra"

    _edit_meta(bundle, edit)
    with pytest.raises(VerificationError, match=r"outputs#pred#channel_def has 3 entries but num_channels is 2"):
        check_metadata(bundle)


def test_channel_def_differs_from_network_output(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Metadata self-consistent at 3 classes, but the network outputs 2 channels."""

    def edit(meta: dict) -> None:
        pred = meta["network_data_format"]["outputs"]["pred"]
        pred["num_channels"] = 3
        pred["channel_def"]["2"] = "extra"

    _edit_meta(bundle, edit)
    assert main(["verify", str(bundle), "--checks", "metadata,net_in_out"]) == 1
    out = capsys.readouterr().out
    assert "PASS metadata" in out
    assert "FAIL net_in_out" in out and "output channel number `2` doesn't match: `3`" in out


def _add_variant(bundle: Path, name: str, content: dict) -> None:
    (bundle / "configs" / "variants" / name).write_text(json.dumps(content, indent=4))


def test_config_id_bad_target(bundle: Path) -> None:
    _add_variant(bundle, "bad_target.json", {"loss": {"_target_": "monai_imbalance.losses.NoSuchLoss"}})
    with pytest.raises(VerificationError) as err:
        check_configs(bundle)
    msg = str(err.value)
    assert "train.json+variants/bad_target.json" in msg
    assert "id `loss` failed" in msg and "NoSuchLoss" in msg


def test_config_id_bad_argument_value(bundle: Path) -> None:
    _add_variant(bundle, "bad_value.json", {"loss#reduction": "not_a_reduction"})
    with pytest.raises(VerificationError, match=r"variants/bad_value.json: id `loss` failed"):
        check_configs(bundle)


def test_config_id_nested_and_missing_reference(bundle: Path) -> None:
    _add_variant(bundle, "bad_ref.json", {"train#random_transforms#1#spatial_size": "$@no_such_id"})
    with pytest.raises(VerificationError, match=r"id `train#random_transforms#1#spatial_size` failed"):
        check_configs(bundle)


def test_cli_reports_failing_config_id(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _add_variant(bundle, "bad_target.json", {"optimizer#_target_": "torch.optim.NoSuchOptimizer"})
    assert main(["verify", str(bundle), "--checks", "configs"]) == 1
    out = capsys.readouterr().out
    assert "FAIL configs" in out and "id `optimizer` failed" in out
