"""Tests for ``python -m monai_imbalance.bundle verify``: each defect the Model Zoo's checks catch is planted in a copy
of a shipped bundle, and the check at fault fails naming it.

The metadata tests run MONAI's own ``verify_metadata`` offline; the config tests instantiate every id of every
config file of a bundle copy on phantoms (a second or two each). The passing run of every check on every trained
bundle, and MONAI's command line on it, are in ``tests/bundles/test_zoo_checks.py`` (slow: it trains).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from monai_imbalance.bundle import (
    SCHEMA_PATH,
    VerificationError,
    check_configs,
    check_metadata,
    check_torchscript,
    config_combinations,
)
from monai_imbalance.bundle.__main__ import main

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
BUNDLE = BUNDLES / "asymmetric_segmentation"
ESTIMATION = BUNDLES / "performance_estimation"
#: the keys the Model Zoo's meta_schema_20240725.json requires, and a value of the wrong type for each
ZOO_REQUIRED = {
    "schema": 1,
    "version": 1,
    "monai_version": 1,
    "pytorch_version": 1,
    "numpy_version": 1,
    "required_packages_version": ["monai"],
    "task": ["a"],
    "description": ["a"],
    "authors": ["A", "B"],
    "copyright": ["c"],
    "network_data_format": "image",
}


def _copy(tmp_path: Path, source: Path = BUNDLE) -> Path:
    dst = tmp_path / source.name
    shutil.copytree(source, dst, ignore=shutil.ignore_patterns("eval", "*.pt", "*.ts"))
    return dst


def _edit_json(path: Path, edit: Any) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content, indent=4))


def _edit_meta(bundle: Path, edit: Any) -> None:
    _edit_json(bundle / "configs" / "metadata.json", edit)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A copy of the shipped ``asymmetric_segmentation`` bundle (no weights)."""
    return _copy(tmp_path)


# ---------------------------------------------------------------------------------------------------------- metadata
def test_offline_schema_is_valid_and_ships() -> None:
    import jsonschema

    jsonschema.Draft7Validator.check_schema(json.loads(SCHEMA_PATH.read_text()))
    pyproject = (BUNDLES.parent / "pyproject.toml").read_text()
    assert '"bundle/schemas/*.json"' in pyproject


def test_offline_schema_requires_every_key_the_zoo_schema_requires() -> None:
    required = set(json.loads(SCHEMA_PATH.read_text())["required"])
    assert set(ZOO_REQUIRED) <= required


@pytest.mark.parametrize("name", sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()))
def test_shipped_metadata_passes_monai_verify_metadata(name: str) -> None:
    assert "verify_metadata passed" in check_metadata(BUNDLES / name)


def test_metadata_without_schema_fails(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit_meta(bundle, lambda m: m.pop("schema"))
    assert main(["verify", str(bundle), "--checks", "metadata"]) == 1
    out = capsys.readouterr().out
    assert "FAIL metadata" in out and "must provide the `schema` field" in out  # MONAI's own message
    assert "<root>: 'schema' is a required property" in out


def test_metadata_authors_as_a_list_fails(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit_meta(bundle, lambda m: m.update(authors=["A", "B"]))
    assert main(["verify", str(bundle), "--checks", "metadata"]) == 1
    out = capsys.readouterr().out
    assert "FAIL metadata" in out and "authors: ['A', 'B'] is not of type 'string'" in out


@pytest.mark.parametrize("key", sorted(ZOO_REQUIRED))
def test_missing_zoo_required_key_fails(bundle: Path, key: str) -> None:
    _edit_meta(bundle, lambda m: m.pop(key))
    with pytest.raises(VerificationError, match=f"'{key}' is a required property"):
        check_metadata(bundle)


@pytest.mark.parametrize("key", sorted(ZOO_REQUIRED))
def test_zoo_required_key_of_the_wrong_type_fails(bundle: Path, key: str) -> None:
    _edit_meta(bundle, lambda m: m.update({key: ZOO_REQUIRED[key]}))
    with pytest.raises(VerificationError, match=rf"{key}: .* is not of type"):
        check_metadata(bundle)


def test_schema_other_than_the_one_the_offline_schema_stands_for_fails(bundle: Path) -> None:
    def edit(meta: dict) -> None:
        meta["schema"] = meta["schema"].replace("meta_schema_20240725.json", "meta_schema_20220324.json")

    _edit_meta(bundle, edit)
    with pytest.raises(VerificationError, match=r"schema: .*meta_schema_20220324.json' does not match"):
        check_metadata(bundle)


def test_given_schema_file_is_used(bundle: Path, tmp_path: Path) -> None:
    """``--schema`` reaches verify_metadata: a schema that requires a key the metadata lacks fails it."""
    schema = tmp_path / "zoo_schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["no_such_key"]}))
    with pytest.raises(VerificationError, match=r"with zoo_schema.json failed: .*'no_such_key' is a required"):
        check_metadata(bundle, schema)
    with pytest.raises(VerificationError, match=r"schema file .*absent.json does not exist"):
        check_metadata(bundle, tmp_path / "absent.json")


def test_deprecated_optional_packages_version_fails(bundle: Path) -> None:
    _edit_meta(bundle, lambda m: m.update(optional_packages_version={"nibabel": "5.4.2"}))
    with pytest.raises(VerificationError, match=r"`optional_packages_version` is deprecated"):
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


# ------------------------------------------------------------------------------------------------ net / torchscript
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


def test_missing_model_pt_fails_as_untrained(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(bundle), "--checks", "torchscript"]) == 1
    out = capsys.readouterr().out
    assert "FAIL torchscript" in out and "UNTRAINED" in out and str(bundle / "models" / "model.pt") in out


def test_untrained_flag_exports_a_fresh_network_and_says_so(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(bundle), "--checks", "torchscript", "--untrained"]) == 0
    out = capsys.readouterr().out
    assert "PASS torchscript" in out and "UNTRAINED (no models/model.pt" in out
    assert "all checks passed (UNTRAINED" in out


def test_model_pt_that_does_not_fit_the_network_fails(bundle: Path) -> None:
    import torch

    (bundle / "models").mkdir(exist_ok=True)
    torch.save({"conv.weight": torch.zeros(1)}, bundle / "models" / "model.pt")
    with pytest.raises(VerificationError, match=r"model.pt does not fit inference.json network_def: .*Missing key"):
        check_torchscript(bundle)


# ----------------------------------------------------------------------------------------------------------- configs
def test_every_config_file_has_a_combination() -> None:
    for bundle in sorted(p for p in BUNDLES.iterdir() if (p / "configs").is_dir()):
        configs = bundle / "configs"
        combos, _ = config_combinations(bundle)
        checked = {f for _, files in combos for f in files}
        on_disk = {p for p in configs.rglob("*.json") if p.name != "metadata.json"}
        assert on_disk == checked, bundle.name
        assert len(combos) == len(on_disk)


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


@pytest.mark.parametrize(
    "file, config_id",
    [("presets/cpu_fast.json", "optimizer"), ("multi_gpu_train.json", "network"), ("inference.json", "network_def")],
)
def test_bad_target_in_preset_multi_gpu_and_inference(bundle: Path, file: str, config_id: str) -> None:
    _edit_json(bundle / "configs" / file, lambda c: c.update({config_id: {"_target_": "torch.nn.NoSuchThing"}}))
    with pytest.raises(VerificationError, match=rf"{file}: id `{config_id}` failed: .*NoSuchThing"):
        check_configs(bundle)


#: a component of each performance-estimation config file (as its JSON keys) and its config id
ESTIMATION_COMPONENTS = {
    "track.json": (["track", "handler"], "track#handler"),
    "fit.json": (["validate#handlers", 2], "validate#handlers#2"),
    "estimate.json": (["estimate", "dataset"], "estimate#dataset"),
    "benchmark.json": (["benchmark", "runner"], "benchmark#runner"),
}


@pytest.mark.parametrize("file", sorted(ESTIMATION_COMPONENTS))
def test_bad_target_in_each_performance_estimation_config(tmp_path: Path, file: str) -> None:
    """The files run on top of ``train.json`` (tracking, fit, estimate, benchmark) are checked too."""
    bundle = _copy(tmp_path, ESTIMATION)
    keys, config_id = ESTIMATION_COMPONENTS[file]

    def edit(config: dict) -> None:
        node: Any = config
        for key in keys:
            node = node[key]
        node["_target_"] = "monai_imbalance.handlers.NoSuchComponent"

    _edit_json(bundle / "configs" / file, edit)
    with pytest.raises(VerificationError) as err:
        check_configs(bundle)
    msg = str(err.value)
    assert msg.startswith(f"train.json+{file}: id `{config_id}` failed") and "NoSuchComponent" in msg, msg


def test_estimate_and_benchmark_get_the_estimators_fit_writes(tmp_path: Path) -> None:
    bundle = _copy(tmp_path, ESTIMATION)
    summary, notes = check_configs(bundle)
    assert f"{len(list((bundle / 'configs').rglob('*.json'))) - 1} config files" in summary
    assert any("ran fit.json" in n and "benchmark.json" in n and "estimate.json" in n for n in notes), notes
    assert not (bundle / "models" / "estimators.json").exists()  # nothing written into the bundle


def test_cli_reports_failing_config_id(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _add_variant(bundle, "bad_target.json", {"optimizer#_target_": "torch.optim.NoSuchOptimizer"})
    assert main(["verify", str(bundle), "--checks", "configs"]) == 1
    out = capsys.readouterr().out
    assert "FAIL configs" in out and "id `optimizer` failed" in out
