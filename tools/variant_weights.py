# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Fingerprints of the weights every bundle variant reaches after a few seeded CPU iterations.

A refactoring check: run it on two commits and compare, to show that a change of the engines left every variant's
training unchanged. Each variant (``train.json`` alone, named ``train``, each ``variants/*.json``, and the
performance-estimation bundle's ``track.json``) trains for ``--epochs`` x ``--iterations`` on a phantom dataset with
tiny sizes, no loader workers and the bundle's own seed; the network's weights (and, when a variant has one, the
CoLab generator's and the augmentation policies') are summarised by their sha256 and float64 sums.

Usage::

    PYTHONPATH=<checkout A> python tools/variant_weights.py --bundles <checkout A>/bundles --out a.json
    PYTHONPATH=<checkout B> python tools/variant_weights.py --bundles <checkout B>/bundles --out b.json
    python tools/variant_weights.py --compare a.json b.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: sizes of the bundle tests (tests/bundles/conftest.py) and a schedule that reaches every meta step
SETTINGS: dict[str, Any] = {
    "patch_size": [16, 16, 16],
    "filters": [8, 16, 32],
    "batch_size": 2,
    "num_samples": 2,
    "num_workers": 0,
}
#: per bundle: settings that make a meta step (CoLab every ``meta_interval`` iterations) happen in a short run
BUNDLE_SETTINGS: dict[str, dict[str, Any]] = {"context_label_segmentation": {"meta_interval": 2}}
#: config ids whose state is fingerprinted besides the network, when the run defines them
AUXILIARY_IDS = ("generator", "policy", "test_time_policy")


def _variants(bundle: Path) -> list[tuple[str, list[Path]]]:
    configs = bundle / "configs"
    out = [("train", [configs / "train.json"])]
    out += [(p.stem, [configs / "train.json", p]) for p in sorted((configs / "variants").glob("*.json"))]
    if (configs / "track.json").is_file():
        out.append(("track", [configs / "train.json", configs / "track.json"]))
    return out


def _flatten(state: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted name: leaf}`` of a (nested) state dict."""
    if isinstance(state, dict):
        out: dict[str, Any] = {}
        for key, value in state.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): state}


def _fingerprint(state: Any) -> dict[str, Any]:
    digest = hashlib.sha256()
    total, absolute = 0.0, 0.0
    flat = _flatten(state)
    for name in sorted(flat):
        digest.update(name.encode())
        value = flat[name]
        if not isinstance(value, torch.Tensor):
            digest.update(repr(value).encode())
            continue
        value = value.detach().cpu()
        digest.update(value.contiguous().numpy().tobytes())
        if value.is_floating_point():
            total += float(value.double().sum())
            absolute += float(value.double().abs().sum())
    return {"sha256": digest.hexdigest(), "sum": total, "abs_sum": absolute}


def _state(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, torch.nn.Module):
        return obj.state_dict()
    return None


def run_variant(files: list[Path], dataset: Path, root: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Train one variant and return the fingerprints of its network (and auxiliary modules)."""
    from monai.bundle import ConfigWorkflow

    configs = files[0].parent
    wf = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        workflow_type="train",
        dataset_dir=str(dataset),
        bundle_root=str(root),
        **settings,
    )
    wf.initialize()
    wf.run()
    wf.finalize()
    out = {"network": _fingerprint(wf.parser.get_parsed_content("network").state_dict())}
    for key in AUXILIARY_IDS:
        if key in wf.parser:
            state = _state(wf.parser.get_parsed_content(key))
            if state is not None:
                out[key] = _fingerprint(state)
    return out


def fingerprints(bundles: Path, epochs: int, iterations: int, only: list[str] | None) -> dict[str, Any]:
    """``{"<bundle>/<variant>": fingerprints}`` of every bundle under ``bundles``."""
    from monai_imbalance.data import make_phantom_dataset

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        dataset = make_phantom_dataset(Path(tmp) / "data", num_training=4, num_validation=1, shape=(32,) * 3)
        for bundle in sorted(p for p in bundles.iterdir() if (p / "configs" / "train.json").is_file()):
            for variant, files in _variants(bundle):
                name = f"{bundle.name}/{variant}"
                if only and not any(o in name for o in only):
                    continue
                settings = {
                    **SETTINGS,
                    **BUNDLE_SETTINGS.get(bundle.name, {}),
                    "epochs": epochs,
                    "iterations_per_epoch": iterations,
                    "val_interval": epochs,
                }
                start = time.time()
                with tempfile.TemporaryDirectory() as root:
                    try:
                        results[name] = run_variant(files, dataset, Path(root), settings)
                    except Exception as e:  # a variant that fails is reported, the others still run
                        results[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
                print(f"{name}: {time.time() - start:.1f} s {results[name]}", flush=True)
    return results


def compare(a: dict[str, Any], b: dict[str, Any]) -> int:
    """Print the variants whose fingerprints differ; return the number of differences (missing ones included)."""
    differences = 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'the first' if name in a else 'the second'}")
            differences += 1
            continue
        for part in sorted(set(a[name]) | set(b[name])):
            x, y = a[name].get(part), b[name].get(part)
            if x == y:
                continue
            differences += 1
            if isinstance(x, dict) and isinstance(y, dict) and "sum" in x and "sum" in y:
                rel = abs(x["abs_sum"] - y["abs_sum"]) / max(abs(x["abs_sum"]), 1e-30)
                print(f"{name} {part}: differs (relative change of the absolute sum {rel:.3g})")
            else:
                print(f"{name} {part}: {x} vs {y}")
    print(f"{len(set(a) | set(b))} variants compared, {differences} differences")
    return differences


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=Path, help="the bundles folder of the checkout to fingerprint")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=3, help="iterations per epoch")
    parser.add_argument("--only", nargs="*", help="run only variants whose '<bundle>/<variant>' contains one of these")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"), help="compare two fingerprint files")
    args = parser.parse_args(argv)
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        return 1 if compare(a, b) else 0
    if args.bundles is None or args.out is None:
        parser.error("--bundles and --out are needed (or --compare A B)")
    results = fingerprints(args.bundles, args.epochs, args.iterations, args.only)
    args.out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
