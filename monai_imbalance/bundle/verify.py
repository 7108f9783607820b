"""The MONAI Model Zoo's bundle checks (``ci/verify_bundle.py``), run offline with MONAI's own functions, plus a
per-id check of every config file.

``verify_bundle(path)`` runs, in order:

1. ``metadata``: MONAI's ``monai.bundle.verify_metadata`` on ``configs/metadata.json`` with ``filepath`` naming a
   local schema file, so nothing is downloaded (the Zoo's CI does the same after downloading the file that the
   metadata's ``"schema"`` names). The default file is the offline schema of this package
   (``schemas/meta_schema.json``): the Zoo's own file is a release asset that no package registry ships, so the
   offline one requires every key and type the Zoo's requires, and more; pass the Zoo's file as ``schema_file``
   (``--schema``) where you have it. Then, as the Zoo's CI: ``version`` a key of ``changelog``; and
   ``len(channel_def) == num_channels`` for every input and output tensor spec; and no deprecated
   ``optional_packages_version`` (MONAI 1.6 replaces ``required_packages_version`` with it on reading).
2. ``net_in_out``: MONAI's ``verify_net_in_out`` on ``network_def`` of ``configs/inference.json`` (CPU), so the
   network's output channels equal ``outputs#pred#num_channels``.
3. ``torchscript``: MONAI's ``ckpt_export`` of the trained ``models/model.pt`` to TorchScript, then
   ``torch.jit.load``, a forward pass, and the exported output compared with ``network_def`` holding the same
   weights (plus ``torch.jit.load`` of a shipped ``models/model.ts``). Without ``models/model.pt`` the check fails
   as UNTRAINED, unless ``allow_untrained`` (``--untrained``) exports a freshly initialised ``network_def`` and
   says so in the result.
4. ``configs``: every config file of the bundle (``configs/**/*.json``, YAML too) is parsed, in the combination
   it is run with (override files on top of ``train.json``), against a tiny phantom dataset, and every id is
   instantiated on its own, dependencies first, so the first failure names the file and the id at fault. The
   multi-GPU files run in a one-process ``gloo`` group. Files that read what another config writes (the
   ``estimators_path`` that ``fit.json`` writes) get it from a real run of that config on the phantom.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).parent / "schemas" / "meta_schema.json"

#: the checks, in the order they run.
CHECKS = ("metadata", "net_in_out", "torchscript", "configs")
#: ids whose content runs the workflow (and everything under them); never instantiated by the config check.
RUN_IDS = (
    "initialize",
    "run",
    "finalize",
    "training",
    "evaluating",
    "fitting",
    "estimating",
    "benchmarking",
    "learning_tta",
)
#: ids that hold no component to instantiate.
SKIPPED_TOP_IDS = ("_meta_", "imports", "_desc_")
#: config file suffixes the config check reads.
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
#: small values for the config check, applied only to keys the config already has.
TINY_OVERRIDES: dict[str, Any] = {
    "patch_size": [16, 16, 16],
    "filters": [8, 16, 32],
    "num_workers": 0,
    "cache_rate": 0.0,
    "epochs": 1,
    "num_samples": 1,
    "batch_size": 1,
    "keep_margin": 2.0,
    "background_samples": 256,
}
#: files some configs read when instantiated and another config of the bundle writes:
#: ``{config key: (the override file that writes it, its run id)}``.
ARTEFACTS: dict[str, tuple[str, str]] = {"estimators_path": ("fit.json", "fitting")}


class VerificationError(Exception):
    """A bundle check failed; the message names the problem."""


@dataclass
class CheckResult:
    """Outcome of one check.

    Attributes:
        name: check name (one of :data:`CHECKS`).
        passed: whether the check passed.
        seconds: wall time of the check.
        message: failure reason, or a short summary when it passed.
        notes: extra lines (e.g. a config run to produce what another config reads).
    """

    name: str
    passed: bool
    seconds: float
    message: str = ""
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        """One-line summary: ``PASS``/``FAIL``, name, time and message."""
        status = "PASS" if self.passed else "FAIL"
        text = f"{status} {self.name:<12} {self.seconds:7.2f}s"
        return f"{text}  {self.message}" if self.message else text


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError as e:
        raise VerificationError(f"missing file {path}") from e
    except json.JSONDecodeError as e:
        raise VerificationError(f"{path} is not valid JSON: {e}") from e


def _format_path(path: Sequence[Any]) -> str:
    return "#".join(str(p) for p in path) or "<root>"


def _one_line(text: str, limit: int = 600) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------------------- metadata
def _schema_errors(instance: Any, schema: Any) -> list[str]:
    """Every violation of ``schema`` as ``key#path: message``, shallowest first."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    return [f"{_format_path(e.absolute_path)}: {e.message}" for e in errors]


def check_metadata(bundle_dir: str | Path, schema_file: str | Path | None = None) -> str:
    """Run MONAI's ``verify_metadata`` on ``configs/metadata.json`` offline, then the changelog and channel checks.

    Args:
        bundle_dir: bundle folder.
        schema_file: the schema ``verify_metadata`` validates against (its ``filepath``, so nothing is downloaded):
            the Zoo's file that the metadata's ``"schema"`` names, where you have it; default: the offline schema
            shipped in this package (:data:`SCHEMA_PATH`).

    Returns:
        A short summary.

    Raises:
        VerificationError: naming the file and MONAI's message, with every schema violation as ``key: problem``;
            or the version missing from ``changelog``, or a ``channel_def`` whose size is not ``num_channels``.
    """
    from monai.bundle import verify_metadata

    meta_file = Path(bundle_dir) / "configs" / "metadata.json"
    meta = _load_json(meta_file)
    schema_path = Path(schema_file) if schema_file is not None else SCHEMA_PATH
    if not schema_path.is_file():  # verify_metadata would try to download the metadata's URL to it
        raise VerificationError(f"schema file {schema_path} does not exist (download the Zoo's schema there first)")
    schema = _load_json(schema_path)
    if not isinstance(meta, dict):
        raise VerificationError(f"{meta_file} must hold a JSON object, got {type(meta).__name__}")
    try:
        verify_metadata(meta_file=str(meta_file), filepath=str(schema_path))
    except Exception as e:
        found = _schema_errors(meta, schema)
        where = f"; {'; '.join(found)}" if found else ""
        raise VerificationError(
            f"{meta_file}: monai.bundle.verify_metadata with {schema_path.name} failed: "
            f"{type(e).__name__}: {_one_line(str(e), 300)}{where}"
        ) from e
    if "optional_packages_version" in meta:
        raise VerificationError(
            f"{meta_file}: `optional_packages_version` is deprecated (MONAI 1.6 reads it as "
            "`required_packages_version` and drops the real one); put those packages in `required_packages_version`"
        )
    version = meta.get("version")
    changelog = meta.get("changelog")
    if not isinstance(changelog, dict):
        raise VerificationError(f"{meta_file}: `changelog` is missing (the Model Zoo requires it)")
    if version not in changelog:
        raise VerificationError(
            f"{meta_file}: version `{version}` is not a key of `changelog` (keys: {sorted(changelog)})"
        )
    for section in ("inputs", "outputs"):
        for name, spec in meta["network_data_format"][section].items():
            count, num = len(spec.get("channel_def", {})), spec["num_channels"]
            if count != num:
                raise VerificationError(
                    f"{meta_file}: network_data_format#{section}#{name}#channel_def has {count} entries "
                    f"but num_channels is {num}"
                )
    which = f"{schema_path}" if schema_file is not None else f"the offline schema {SCHEMA_PATH.name}"
    zoo = Path(str(meta["schema"])).name
    return f"monai.bundle.verify_metadata passed with {which} (metadata names {zoo}), version {version}"


# ------------------------------------------------------------------------------------------------------ net in/out
def _meta_io(bundle_dir: Path) -> tuple[int, list[int], int]:
    """Input channels, a small input spatial shape and output channels from the metadata."""
    from monai.bundle.scripts import _get_fake_spatial_shape

    meta = _load_json(bundle_dir / "configs" / "metadata.json")
    try:
        image = meta["network_data_format"]["inputs"]["image"]
        pred = meta["network_data_format"]["outputs"]["pred"]
    except (KeyError, TypeError) as e:
        raise VerificationError(
            f"metadata.json: network_data_format needs `inputs#image` and `outputs#pred` (missing {e})"
        ) from e
    shape = list(_get_fake_spatial_shape(image["spatial_shape"], p=1, n=1, any=1))
    return int(image["num_channels"]), shape, int(pred["num_channels"])


def check_net_in_out(bundle_dir: str | Path) -> str:
    """Run ``monai.bundle.verify_net_in_out`` on ``network_def`` of ``configs/inference.json`` on the CPU.

    Args:
        bundle_dir: bundle folder.

    Returns:
        A short summary.

    Raises:
        VerificationError: when the network cannot be built or its output channels or dtype differ from the metadata.
    """
    from monai.bundle import verify_net_in_out

    bundle_dir = Path(bundle_dir).resolve()
    config_file = bundle_dir / "configs" / "inference.json"
    if not config_file.exists():
        raise VerificationError(f"missing file {config_file}")
    in_channels, shape, out_channels = _meta_io(bundle_dir)
    try:
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(bundle_dir / "configs" / "metadata.json"),
            config_file=str(config_file),
            device="cpu",
            bundle_root=str(bundle_dir),
        )
    except Exception as e:
        raise VerificationError(
            f"verify_net_in_out on inference.json network_def with input {(1, in_channels, *shape)} (metadata "
            f"spatial_shape at n=p=any=1, as the Model Zoo runs it; outputs#pred#num_channels {out_channels}): "
            f"{type(e).__name__}: {e}"
        ) from e
    return f"input {shape}, {out_channels} output channels"


# ----------------------------------------------------------------------------------------------------- torchscript
def _network_def(config_file: Path, bundle_dir: Path) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(bundle_dir)
    try:
        return parser.get_parsed_content("network_def")
    except Exception as e:
        raise VerificationError(f"{config_file.name} network_def: {type(e).__name__}: {_short(e)}") from e


def _state_dict(ckpt: Path) -> tuple[dict, str]:
    """The weights of a checkpoint (a bare state dict, or one under ``model``) and the key they were under."""
    import torch

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VerificationError(f"{ckpt} cannot be loaded with torch.load: {type(e).__name__}: {_short(e)}") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        return state["model"], "model"
    if not isinstance(state, dict):
        raise VerificationError(f"{ckpt} holds a {type(state).__name__}, not a state dict")
    return state, ""


def check_torchscript(bundle_dir: str | Path, allow_untrained: bool = False) -> str:
    """Export the trained ``models/model.pt`` with ``monai.bundle.ckpt_export``, reload it and compare its output.

    The weights must fit ``network_def`` of ``configs/inference.json`` exactly (``load_state_dict(strict=True)``),
    and the exported module must give the same output as ``network_def`` holding them. A shipped ``models/model.ts``
    is reloaded and run too, as the Zoo's CI does.

    Args:
        bundle_dir: bundle folder.
        allow_untrained: without ``models/model.pt``, export a freshly initialised ``network_def`` (checks that it
            exports, not the weights) and start the summary with ``UNTRAINED``; otherwise fail.

    Returns:
        A short summary.

    Raises:
        VerificationError: no ``models/model.pt`` (UNTRAINED), weights that do not fit the network, or a failed
            export, reload, forward pass or comparison.
    """
    import torch
    from monai.bundle import ckpt_export

    bundle_dir = Path(bundle_dir).resolve()
    config_file = bundle_dir / "configs" / "inference.json"
    meta_file = bundle_dir / "configs" / "metadata.json"
    if not config_file.exists():
        raise VerificationError(f"missing file {config_file}")
    in_channels, shape, out_channels = _meta_io(bundle_dir)
    ckpt = bundle_dir / "models" / "model.pt"
    trained = ckpt.is_file()
    if not trained and not allow_untrained:
        raise VerificationError(
            f"UNTRAINED: {ckpt} does not exist, so there are no trained weights for ckpt_export; train the bundle "
            "first (python -m monai.bundle run training --config_file configs/train.json ...), or pass --untrained "
            "to export a freshly initialised network_def"
        )
    net = _network_def(config_file, bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if trained:
            state, key = _state_dict(ckpt)
            source = "models/model.pt"
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as e:
                raise VerificationError(
                    f"{ckpt} does not fit inference.json network_def: {_one_line(str(e), 500)}"
                ) from e
        else:
            ckpt, key, source = Path(tmp) / "model.pt", "", "a freshly initialised network_def"
            torch.save(net.state_dict(), ckpt)
        ts_file = Path(tmp) / "model.ts"
        try:
            ckpt_export(
                net_id="network_def",
                filepath=str(ts_file),
                ckpt_file=str(ckpt),
                meta_file=str(meta_file),
                config_file=str(config_file),
                key_in_ckpt=key,
                bundle_root=str(bundle_dir),
            )
        except Exception as e:
            raise VerificationError(f"ckpt_export of {source}: {type(e).__name__}: {_short(e)}") from e
        x = torch.rand(1, in_channels, *shape, generator=torch.Generator().manual_seed(0))
        try:
            module = torch.jit.load(str(ts_file), map_location="cpu").eval()
            with torch.no_grad():
                out = module(x)
        except Exception as e:
            raise VerificationError(
                f"torch.jit.load/forward of the exported {source} on input {tuple(x.shape)}: "
                f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1]}"
            ) from e
        if not isinstance(out, torch.Tensor) or out.shape[1] != out_channels:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise VerificationError(f"TorchScript output {got} does not have {out_channels} channels")
        with torch.no_grad():
            expected = net.eval()(x)
        diff = float((out - expected).abs().max())
        if diff > 1e-4 * max(1.0, float(expected.abs().max())):
            raise VerificationError(
                f"the TorchScript export of {source} differs from network_def with the same weights "
                f"(max abs difference {diff:.3g}): the export did not carry the weights"
            )
        size_kb = ts_file.stat().st_size / 1024
    shipped = bundle_dir / "models" / "model.ts"
    if shipped.is_file():
        try:
            with torch.no_grad():
                torch.jit.load(str(shipped), map_location="cpu").eval()(x)
        except Exception as e:
            raise VerificationError(f"{shipped}: torch.jit.load/forward failed: {type(e).__name__}: {_short(e)}") from e
    summary = f"ckpt_export of {source} -> TorchScript ({size_kb:.0f} KiB), reload and forward {tuple(out.shape)}"
    summary += " equal to network_def" + (", models/model.ts reloaded" if shipped.is_file() else "")
    if not trained:
        summary = f"UNTRAINED (no models/model.pt; exportability only): {summary}"
    return summary


# ---------------------------------------------------------------------------------------------------------- configs
def _config_files(configs: Path) -> list[Path]:
    """Every config file under ``configs/`` but the metadata, sorted."""
    return sorted(
        p for p in configs.rglob("*") if p.is_file() and p.suffix in CONFIG_SUFFIXES and p.name != "metadata.json"
    )


def config_combinations(bundle_dir: str | Path) -> tuple[list[tuple[str, list[Path]]], list[str]]:
    """The config combinations the config check runs: one for every config file of the bundle.

    ``train.json`` and ``inference.json`` alone; every other file on top of ``train.json`` (as the bundle's
    README runs them), ``multi_gpu_evaluate.json`` on top of ``train.json`` + ``evaluate.json``. The files that
    write an artefact of :data:`ARTEFACTS` come before the others of their folder.

    Args:
        bundle_dir: bundle folder.

    Returns:
        ``([(label, [files...]), ...], notes)``; the notes name files left alone (no ``train.json`` to stack on).
    """
    configs = Path(bundle_dir) / "configs"
    files = _config_files(configs)
    train, evaluate = configs / "train.json", configs / "evaluate.json"
    producers = {configs / producer for producer, _ in ARTEFACTS.values()}

    def order(p: Path) -> tuple:
        rel = p.relative_to(configs)
        return (p.name.startswith("multi_gpu_"), len(rel.parts), p not in producers, str(rel))

    combos: list[tuple[str, list[Path]]] = []
    notes: list[str] = []
    for f in sorted(files, key=order):
        rel = f.relative_to(configs).as_posix()
        if f in (train, configs / "inference.json") or not train.exists():
            if not train.exists() and f.name != "inference.json":
                notes.append(f"{rel} checked alone: the bundle has no train.json")
            combos.append((rel, [f]))
        elif f.name == "multi_gpu_evaluate.json" and evaluate.exists():
            combos.append((f"train.json+evaluate.json+{rel}", [train, evaluate, f]))
        else:
            combos.append((f"train.json+{rel}", [train, f]))
    return combos, notes


def _is_run_expression(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("$") and ".run(" in value


def _children(parser: Any, id_: str, value: Any) -> Iterator[str]:
    from monai.bundle.reference_resolver import ReferenceResolver

    if isinstance(value, (dict, list)):
        for _, sub_id, _ in ReferenceResolver.iter_subconfigs(id_, value):
            yield sub_id
    elif isinstance(value, str):
        yield from ReferenceResolver.match_refs_pattern(value)


def instantiate_ids(parser: Any) -> int:
    """Instantiate every id of a parsed config, dependencies first.

    Before an id is evaluated, its sub-ids and the ids it references (``@x``) are evaluated, so the first failure is
    the id whose own content is at fault. Run lists (:data:`RUN_IDS`), ``imports``, ``_meta_``, the children of
    disabled components and expressions that call ``.run(`` are skipped.

    Args:
        parser: a ``monai.bundle.ConfigParser`` with its config read and overrides set.

    Returns:
        The number of ids instantiated.

    Raises:
        VerificationError: naming the first id that fails, with its exception.
    """
    parser.parse(reset=True)
    done: set[str] = set()
    count = 0

    def visit(id_: str) -> None:
        nonlocal count
        id_ = id_.replace("::", "#")  # MONAI's internal separator; report ids as written in configs
        if id_ in done:
            return
        done.add(id_)
        top = id_.split("#", 1)[0]
        if top in RUN_IDS or top in SKIPPED_TOP_IDS:
            return
        try:
            value = parser[id_]
        except KeyError:
            return  # a reference to a missing id: the referring id fails with MONAI's own message
        if _is_run_expression(value):
            return
        if isinstance(value, dict) and "_disabled_" in value:
            visit(f"{id_}#_disabled_")
            if _evaluate(f"{id_}#_disabled_"):
                return
        for child in _children(parser, id_, value):
            visit(child)
        _evaluate(id_)
        count += 1

    def _evaluate(id_: str) -> Any:
        try:
            return parser.get_parsed_content(id_)
        except Exception as e:
            raise VerificationError(f"id `{id_}` failed: {type(e).__name__}: {_short(e)}") from e

    for key in list(parser.get().keys()):
        visit(str(key))
    return count


def _short(exc: BaseException, limit: int = 600) -> str:
    """The exception message plus its innermost cause, shortened."""
    text = str(exc).strip().replace("\n", " ")
    inner = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    if inner is not exc:
        text += f" (caused by {type(inner).__name__}: {str(inner).strip()})".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def _process_group(folder: Path) -> Iterator[None]:
    """A one-process ``gloo`` group (file store in ``folder``) for the multi-GPU configs, unless one exists, with the
    rank variables torchrun would set (``LOCAL_RANK`` etc., read by the configs on GPU machines) where unset."""
    import os

    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    ranks = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    added = [k for k in ranks if k not in os.environ]
    os.environ.update({k: ranks[k] for k in added})
    dist.init_process_group("gloo", init_method=(folder / "process_group").resolve().as_uri(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        for k in added:
            os.environ.pop(k, None)


def _parser(files: Sequence[Path], meta: Path, overrides: dict[str, Any]) -> Any:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    if meta.exists():
        parser.read_meta(str(meta))
    for key, val in overrides.items():
        if key in parser.get():
            parser[key] = val
    return parser


def _produce(key: str, configs: Path, work: Path, overrides: dict[str, Any], meta: Path) -> Path:
    """Write the artefact ``key`` of :data:`ARTEFACTS` by running its config on the phantom; returns its path.

    The run loads ``<ckpt_dir>/model.pt``: the freshly initialised ``network_def`` is saved there first.
    """
    import logging

    import torch
    from monai.bundle import ConfigWorkflow

    producer, run_id = ARTEFACTS[key]
    label = f"train.json+{producer}"
    path = work / "artefacts" / f"{key}.json"
    settings = {**overrides, key: str(path)}
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # the run's own log lines (it is a means here, not a result)
    try:
        net = _parser([configs / "train.json", configs / producer], meta, settings).get_parsed_content("network_def")
        Path(settings["ckpt_dir"]).mkdir(parents=True, exist_ok=True)
        torch.save(net.state_dict(), Path(settings["ckpt_dir"]) / "model.pt")
        wf = ConfigWorkflow(
            config_file=[str(configs / "train.json"), str(configs / producer)],
            meta_file=str(meta) if meta.exists() else None,
            logging_file=False,
            run_id=run_id,
            workflow_type=None,
            **settings,
        )
        wf.initialize()
        wf.run()
        wf.finalize()
    except Exception as e:
        raise VerificationError(
            f"{label}: running `{run_id}` on the phantom to write `{key}` failed: {type(e).__name__}: {_short(e)}"
        ) from e
    finally:
        logging.disable(previous)
    if not path.is_file():
        raise VerificationError(f"{label}: `{run_id}` ran but did not write `{key}` ({path})")
    return path


def check_configs(bundle_dir: str | Path, dataset_dir: str | Path | None = None) -> tuple[str, list[str]]:
    """Parse every config file in its combination and instantiate every id, reporting the first id that fails.

    Args:
        bundle_dir: bundle folder.
        dataset_dir: dataset for ``dataset_dir``; defaults to a tiny phantom dataset in a temporary folder.

    Returns:
        ``(summary, notes)``.

    Raises:
        VerificationError: naming the config combination and the failing id.
    """
    bundle_dir = Path(bundle_dir).resolve()
    configs = bundle_dir / "configs"
    meta = configs / "metadata.json"
    combos, notes = config_combinations(bundle_dir)
    if not combos:
        raise VerificationError(f"no config file under {configs}")
    total = 0
    produced: dict[str, Path] = {}
    readers: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if dataset_dir is None:
            from monai_imbalance.data import make_phantom_dataset

            dataset_dir = make_phantom_dataset(Path(tmp) / "phantom", num_training=2, num_validation=1, num_test=1)
        for label, files in combos:
            work = Path(tmp) / label.replace("/", "_").replace("+", "_")
            work.mkdir(parents=True)
            overrides: dict[str, Any] = {
                "bundle_root": str(bundle_dir),
                "dataset_dir": str(dataset_dir),
                "output_dir": str(work / "eval"),
                "ckpt_dir": str(work / "models"),
                **TINY_OVERRIDES,
                **{k: str(p) for k, p in produced.items()},
            }
            try:
                content = _parser(files, meta, {}).get()
            except Exception as e:  # not JSON/YAML, a bad macro...
                raise VerificationError(f"{label}: parsing failed: {type(e).__name__}: {_short(e)}") from e
            for key, (producer, _) in ARTEFACTS.items():
                if key not in content or configs / producer in files:
                    continue
                if key not in produced:
                    if not (configs / producer).exists():
                        raise VerificationError(f"{label}: reads `{key}`, which only {producer} writes; no such file")
                    produced[key] = _produce(key, configs, Path(tmp) / "produce", {**overrides}, meta)
                    overrides[key] = str(produced[key])
                readers.setdefault(key, []).append(label)
            distributed = any(f.name.startswith("multi_gpu_") for f in files)
            try:
                with _process_group(work) if distributed else contextlib.nullcontext():
                    total += instantiate_ids(_parser(files, meta, overrides))
            except VerificationError as e:
                raise VerificationError(f"{label}: {e}") from e
            except Exception as e:  # parsing itself failed (bad macro, bad import...)
                raise VerificationError(f"{label}: parsing failed: {type(e).__name__}: {_short(e)}") from e
    for key, labels in readers.items():
        notes.append(f"ran {ARTEFACTS[key][0]} on the phantom to write the `{key}` read by {', '.join(labels)}")
    return f"{len(combos)} config files, {total} ids instantiated", notes


# ------------------------------------------------------------------------------------------------------------ driver
def verify_bundle(
    bundle_dir: str | Path,
    checks: Sequence[str] | None = None,
    echo: Callable[[str], None] | None = None,
    schema_file: str | Path | None = None,
    allow_untrained: bool = False,
) -> list[CheckResult]:
    """Run the bundle checks and return one result per check; every check runs even after a failure.

    Args:
        bundle_dir: bundle folder (``configs/metadata.json``, ``configs/inference.json``, ``models/model.pt``...).
        checks: names from :data:`CHECKS` to run (default: all, in order).
        echo: called with each result line as soon as the check ends (e.g. ``print``).
        schema_file: the metadata schema (see :func:`check_metadata`); default the offline one.
        allow_untrained: let the ``torchscript`` check export an untrained network (see :func:`check_torchscript`).

    Returns:
        The results, in order.
    """
    bundle_dir = Path(bundle_dir)
    run: dict[str, Callable[[], Any]] = {
        "metadata": lambda: check_metadata(bundle_dir, schema_file),
        "net_in_out": lambda: check_net_in_out(bundle_dir),
        "torchscript": lambda: check_torchscript(bundle_dir, allow_untrained),
        "configs": lambda: check_configs(bundle_dir),
    }
    results = []
    for name in checks or list(CHECKS):
        if name not in run:
            raise ValueError(f"unknown check {name!r}; choose from {list(CHECKS)}")
        start = time.perf_counter()
        notes: list[str] = []
        try:
            out = run[name]()
            if isinstance(out, tuple):
                out, notes = out
            result = CheckResult(name, True, time.perf_counter() - start, str(out), notes)
        except VerificationError as e:
            result = CheckResult(name, False, time.perf_counter() - start, str(e))
        except Exception as e:  # a bug or an unexpected failure: still one line, with the traceback's last frame
            where = traceback.extract_tb(e.__traceback__)[-1]
            msg = f"unexpected {type(e).__name__}: {_short(e)} (at {where.filename}:{where.lineno})"
            result = CheckResult(name, False, time.perf_counter() - start, msg)
        results.append(result)
        if echo is not None:
            echo(result.line())
            for note in result.notes:
                echo(f"     {'':<12} {'':>8}  note: {note}")
    return results
