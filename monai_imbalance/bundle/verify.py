"""Offline versions of the MONAI Model Zoo's bundle checks (``ci/verify_bundle.py``) plus a per-id config check.

``verify_bundle(path)`` runs, in order:

1. ``metadata``: ``configs/metadata.json`` against the schema shipped in this package
   (``schemas/meta_schema.json``), ``version`` a key of ``changelog``, and ``len(channel_def) == num_channels``
   for every input and output tensor spec.
2. ``net_in_out``: ``monai.bundle.verify_net_in_out`` on ``network_def`` of ``configs/inference.json`` (CPU), so
   the network's output channels equal ``outputs.pred.num_channels``.
3. ``torchscript``: ``monai.bundle.ckpt_export`` of ``models/model.pt`` (or, when absent, of the freshly
   initialised ``network_def``) to TorchScript, then ``torch.jit.load`` and a forward pass on a small input.
4. ``configs``: every config combination is parsed with ``ConfigParser`` against a tiny phantom dataset and every
   id is instantiated on its own, dependencies first, so the first failure names the id at fault.
"""

from __future__ import annotations

import json
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).parent / "schemas" / "meta_schema.json"

#: ids whose content runs the workflow (and everything under them); never instantiated by the config check.
RUN_IDS = ("initialize", "run", "finalize", "training", "evaluating")
#: ids that hold no component to instantiate.
SKIPPED_TOP_IDS = ("_meta_", "imports", "_desc_")
#: small values for the config check, applied only to keys the config already has.
TINY_OVERRIDES: dict[str, Any] = {
    "patch_size": [16, 16, 16],
    "filters": [8, 16, 32],
    "num_workers": 0,
    "cache_rate": 0.0,
    "epochs": 1,
    "num_samples": 1,
    "batch_size": 1,
}


class VerificationError(Exception):
    """A bundle check failed; the message names the problem."""


@dataclass
class CheckResult:
    """Outcome of one check.

    Attributes:
        name: check name (``metadata``, ``net_in_out``, ``torchscript``, ``configs``).
        passed: whether the check passed.
        seconds: wall time of the check.
        message: failure reason, or a short summary when it passed.
        notes: extra lines (e.g. skipped config combinations).
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


# --------------------------------------------------------------------------------------------------------- metadata
def check_metadata(bundle_dir: str | Path, schema_file: str | Path | None = None) -> str:
    """Validate ``configs/metadata.json`` against the shipped schema, the changelog and the ``channel_def`` counts.

    Args:
        bundle_dir: bundle folder.
        schema_file: JSON schema; defaults to the one shipped in this package.

    Returns:
        A short summary.

    Raises:
        VerificationError: naming the missing key, the schema violation, the version or the tensor spec at fault.
    """
    import jsonschema

    meta_file = Path(bundle_dir) / "configs" / "metadata.json"
    meta = _load_json(meta_file)
    schema = _load_json(Path(schema_file) if schema_file is not None else SCHEMA_PATH)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(meta), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        lines = [f"{_format_path(e.absolute_path)}: {e.message}" for e in errors]
        raise VerificationError(f"{meta_file.name} does not match the metadata schema: " + "; ".join(lines))
    version = meta["version"]
    changelog = meta.get("changelog")
    if not isinstance(changelog, dict):
        raise VerificationError(f"{meta_file.name}: `changelog` is missing (the Model Zoo requires it)")
    if version not in changelog:
        raise VerificationError(
            f"{meta_file.name}: version `{version}` is not a key of `changelog` (keys: {sorted(changelog)})"
        )
    for section in ("inputs", "outputs"):
        for name, spec in meta["network_data_format"][section].items():
            count, num = len(spec["channel_def"]), spec["num_channels"]
            if count != num:
                raise VerificationError(
                    f"{meta_file.name}: network_data_format#{section}#{name}#channel_def has {count} entries "
                    f"but num_channels is {num}"
                )
    return f"version {version}, schema {Path(schema_file).name if schema_file else SCHEMA_PATH.name}"


# ------------------------------------------------------------------------------------------------------ net in/out
def _meta_io(bundle_dir: Path) -> tuple[int, list[int], int]:
    """Input channels, a small input spatial shape and output channels from the metadata."""
    from monai.bundle.scripts import _get_fake_spatial_shape

    meta = _load_json(bundle_dir / "configs" / "metadata.json")
    try:
        image = meta["network_data_format"]["inputs"]["image"]
        pred = meta["network_data_format"]["outputs"]["pred"]
    except KeyError as e:
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
def check_torchscript(bundle_dir: str | Path) -> str:
    """Export a checkpoint with ``monai.bundle.ckpt_export``, reload it with ``torch.jit.load`` and run it.

    Uses ``models/model.pt`` when present (a plain state dict, or a dict with a ``model`` entry); otherwise the
    state dict of a freshly initialised ``network_def``.

    Args:
        bundle_dir: bundle folder.

    Returns:
        A short summary.

    Raises:
        VerificationError: when export, reload or the forward pass fails.
    """
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    bundle_dir = Path(bundle_dir).resolve()
    config_file = bundle_dir / "configs" / "inference.json"
    meta_file = bundle_dir / "configs" / "metadata.json"
    in_channels, shape, out_channels = _meta_io(bundle_dir)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = bundle_dir / "models" / "model.pt"
        source = "models/model.pt"
        if not ckpt.exists():
            source = "fresh network_def"
            parser = ConfigParser()
            parser.read_config(str(config_file))
            parser["bundle_root"] = str(bundle_dir)
            try:
                net = parser.get_parsed_content("network_def")
            except Exception as e:
                raise VerificationError(f"inference.json network_def: {type(e).__name__}: {e}") from e
            ckpt = Path(tmp) / "model.pt"
            torch.save(net.state_dict(), ckpt)
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        key = "model" if isinstance(state, dict) and isinstance(state.get("model"), dict) else ""
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
            raise VerificationError(f"ckpt_export of {source}: {type(e).__name__}: {e}") from e
        try:
            module = torch.jit.load(str(ts_file), map_location="cpu")
            module.eval()
            with torch.no_grad():
                out = module(torch.rand(1, in_channels, *shape))
        except Exception as e:
            raise VerificationError(
                f"torch.jit.load/forward of the exported {source} on input {(1, in_channels, *shape)}: "
                f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1]}"
            ) from e
        if not isinstance(out, torch.Tensor) or out.shape[1] != out_channels:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise VerificationError(f"TorchScript output {got} does not have {out_channels} channels")
        size_kb = ts_file.stat().st_size / 1024
    return f"{source} -> TorchScript ({size_kb:.0f} KiB), reload and forward {tuple(out.shape)}"


# ---------------------------------------------------------------------------------------------------------- configs
def config_combinations(bundle_dir: str | Path) -> tuple[list[tuple[str, list[Path]]], list[str]]:
    """The config combinations the config check runs, and notes on those it skips.

    Args:
        bundle_dir: bundle folder.

    Returns:
        ``([(label, [files...]), ...], notes)``.
    """
    configs = Path(bundle_dir) / "configs"
    train, combos, notes = configs / "train.json", [], []
    if train.exists():
        combos.append(("train.json", [train]))
        for name in ("evaluate.json",):
            if (configs / name).exists():
                combos.append((f"train.json+{name}", [train, configs / name]))
        for variant in sorted((configs / "variants").glob("*.json")):
            combos.append((f"train.json+variants/{variant.name}", [train, variant]))
    if (configs / "inference.json").exists():
        combos.append(("inference.json", [configs / "inference.json"]))
    for name in sorted(p.name for p in configs.glob("multi_gpu_*.json")):
        notes.append(f"skipped train.json+{name}: it needs an initialised torch.distributed process group")
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


def check_configs(bundle_dir: str | Path, dataset_dir: str | Path | None = None) -> tuple[str, list[str]]:
    """Parse every config combination and instantiate every id, reporting the first id that fails.

    Args:
        bundle_dir: bundle folder.
        dataset_dir: dataset for ``dataset_dir``; defaults to a tiny phantom dataset in a temporary folder.

    Returns:
        ``(summary, notes)``.

    Raises:
        VerificationError: naming the config combination and the failing id.
    """
    from monai.bundle import ConfigParser

    bundle_dir = Path(bundle_dir).resolve()
    combos, notes = config_combinations(bundle_dir)
    if not combos:
        raise VerificationError(f"no train.json or inference.json under {bundle_dir / 'configs'}")
    total = 0
    with tempfile.TemporaryDirectory() as tmp:
        if dataset_dir is None:
            from monai_imbalance.data import make_phantom_dataset

            dataset_dir = make_phantom_dataset(Path(tmp) / "phantom", num_training=2, num_validation=1, num_test=1)
        for label, files in combos:
            work = Path(tmp) / label.replace("/", "_").replace("+", "_")
            parser = ConfigParser()
            parser.read_config([str(f) for f in files])
            meta = bundle_dir / "configs" / "metadata.json"
            if meta.exists():
                parser.read_meta(str(meta))
            overrides: dict[str, Any] = {
                "bundle_root": str(bundle_dir),
                "dataset_dir": str(dataset_dir),
                "output_dir": str(work / "eval"),
                "ckpt_dir": str(work / "models"),
                **TINY_OVERRIDES,
            }
            for key, val in overrides.items():
                if key in parser.get():
                    parser[key] = val
            try:
                total += instantiate_ids(parser)
            except VerificationError as e:
                raise VerificationError(f"{label}: {e}") from e
            except Exception as e:  # parsing itself failed (bad macro, bad import...)
                raise VerificationError(f"{label}: parsing failed: {type(e).__name__}: {_short(e)}") from e
    return f"{len(combos)} config combinations, {total} ids instantiated", notes


# ------------------------------------------------------------------------------------------------------------ driver
CHECKS: dict[str, Callable[[Path], Any]] = {
    "metadata": check_metadata,
    "net_in_out": check_net_in_out,
    "torchscript": check_torchscript,
    "configs": check_configs,
}


def verify_bundle(
    bundle_dir: str | Path,
    checks: Sequence[str] | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[CheckResult]:
    """Run the bundle checks and return one result per check; every check runs even after a failure.

    Args:
        bundle_dir: bundle folder (``configs/metadata.json``, ``configs/inference.json``, ...).
        checks: names from :data:`CHECKS` to run (default: all, in order).
        echo: called with each result line as soon as the check ends (e.g. ``print``).

    Returns:
        The results, in order.
    """
    bundle_dir = Path(bundle_dir)
    results = []
    for name in checks or list(CHECKS):
        if name not in CHECKS:
            raise ValueError(f"unknown check {name!r}; choose from {list(CHECKS)}")
        start = time.perf_counter()
        notes: list[str] = []
        try:
            out = CHECKS[name](bundle_dir)
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
