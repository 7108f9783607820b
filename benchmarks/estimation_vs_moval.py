# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Fit and estimate time of the segmentation estimators against MOVAL, the authors' reference library, on the same
3D logits, with the difference of the estimates (issue 7).

Data: synthetic but realistic 3-class (background, organ, lesion inside the organ) or 2-class 3D logits: an
ellipsoidal organ and a spherical lesion at random positions and sizes, logits ``12 tanh(signed distance / 5)`` with
spatially smoothed noise and a per-case bias (so the argmax prediction has boundary errors and the far background
has a margin of about 12 logits, as a trained network's); the test cases carry a shift (lower confidence, more
noise, under-segmented lesions), so the true Dice drops.

Compared: our CS-TS, CS-ATC, CS-DoC and TS-ATC (:func:`monai_imbalance.estimation.create_estimator`, convention
``"moval"``, i.e. the same definitions as MOVAL with ``metric="f1score"``, MCP confidence) against MOVAL 0.3.25
``MOVAL(mode="segmentation", metric="f1score", estim_algorithm=..., class_specific=...)``, both fitted on the
validation cases and estimating the mean Dice per foreground class of the test cases. Both run single-threaded
(``--threads``) on the CPU, one after the other. Our timings are the median of ``--repeats`` runs; MOVAL runs once.
Reported: fit and estimate seconds, the speedup ``MOVAL / ours`` on fit + estimate, our and MOVAL's estimates and
their largest difference in Dice points (target: >= 10x faster, within 0.5 Dice points), and the true test Dice.
A second table gives our ``"paper"`` convention (MICCAI two-step fit; no MOVAL counterpart) against the truth.

MOVAL is installed only for this run, in a temporary virtual environment (``numpy<2``, ``scipy<1.14``,
``scikit-learn<1.6``, ``moval==0.3.25 --no-deps``; MOVAL 0.3.25 fails under NumPy 2: it assigns a length-1 array
to an array element, ``self.model.param[kcls] = x``), and runs there in a subprocess on ``.npy`` copies of the same
logits; nothing is added to this project's requirements. ``--moval-python`` reuses an interpreter that already has
MOVAL; ``--no-moval`` skips it. If MOVAL cannot be installed or run, the script says why and still reports ours.

Usage::

    python benchmarks/estimation_vs_moval.py                           # 20 + 20 cases of 64^3, 3 classes
    python benchmarks/estimation_vs_moval.py --cases 4 --size 32      # quick look
    python benchmarks/estimation_vs_moval.py --classes 2 --no-moval
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from monai_imbalance.estimation import create_estimator, prediction_dice, reduce_segmentation_set

MOVAL_VERSION = "0.3.25"
MOVAL_REQUIREMENTS = ["numpy<2", "scipy<1.14", "scikit-learn<1.6"]
#: (label, our name, class_specific, MOVAL estim_algorithm)
METHODS = [
    ("CS-TS", "ts", True, "ts-model"),
    ("CS-ATC", "atc", True, "atc-model"),
    ("CS-DoC", "doc", True, "doc-model"),
    ("TS-ATC", "ts-atc", False, "ts-atc-model"),
]

MOVAL_WORKER = r"""
import contextlib, io, json, sys, time
import numpy as np
import moval
folder, algorithm, class_specific = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
meta = json.load(open(folder + "/meta.json"))
val = [np.load(f"{folder}/val_logits_{i}.npy") for i in range(meta["n_val"])]
lab = [np.load(f"{folder}/val_labels_{i}.npy") for i in range(meta["n_val"])]
test = [np.load(f"{folder}/test_logits_{i}.npy") for i in range(meta["n_test"])]
model = moval.MOVAL(mode="segmentation", metric="f1score", confidence_scores="max_class_probability-conf",
                    estim_algorithm=algorithm, class_specific=class_specific)
log = io.StringIO()
t = time.perf_counter()
with contextlib.redirect_stdout(log):
    model.fit(val, lab)
fit_s = time.perf_counter() - t
t = time.perf_counter()
with contextlib.redirect_stdout(log):
    estimate = model.estimate(test)
estimate_s = time.perf_counter() - t
print(json.dumps({"fit_s": fit_s, "estimate_s": estimate_s, "mean": [float(v) for v in estimate],
                  "version": moval.__version__, "numpy": np.__version__}))
"""


# ----------------------------------------------------------------------------------------------- synthetic data
def _smooth_noise(shape: tuple[int, ...], sigma: float, g: torch.Generator) -> torch.Tensor:
    noise = torch.randn(1, 1, *shape, generator=g)
    r = int(3 * sigma)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = k / k.sum()
    for d in range(3):
        view = [1, 1, 1, 1, 1]
        view[2 + d] = -1
        noise = F.conv3d(noise, k.reshape(view), padding=[r if i == d else 0 for i in range(3)])
    return noise[0, 0] / noise.std()


def make_case(size: int, classes: int, g: torch.Generator, shift: float = 0.0, scale: float = 12.0):
    """One case: ``(C, D, D, D)`` float32 logits and ``(D, D, D)`` int64 labels (see the module docstring)."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    centre = size / 2 + (torch.rand(3, generator=g) - 0.5) * size * 0.15
    radii = size * (0.22 + 0.06 * torch.rand(3, generator=g))
    rel = (grid - centre[:, None, None, None]) / radii[:, None, None, None]
    sd_organ = (1 - (rel**2).sum(0).sqrt()) * radii.min()  # approximately the signed distance, > 0 inside
    lesion_centre = centre + (torch.rand(3, generator=g) - 0.5) * radii * 0.8
    lesion_radius = size * (0.08 + 0.05 * float(torch.rand(1, generator=g)))
    sd_lesion = lesion_radius - ((grid - lesion_centre[:, None, None, None]) ** 2).sum(0).sqrt()
    label = (sd_organ > 0).long()
    n_organ = _smooth_noise((size,) * 3, 2.0, g) * (1.0 + shift)
    n_lesion = _smooth_noise((size,) * 3, 1.5, g) * (0.8 + shift)
    bias = float(torch.rand(1, generator=g) - 0.5)
    s = scale / (1 + shift)
    z_organ = s * torch.tanh((sd_organ + n_organ + bias) / 5)
    channels = [torch.zeros_like(z_organ), z_organ]
    if classes == 3:
        label[(sd_lesion > 0) & (sd_organ > 0)] = 2
        channels.append(z_organ + 0.5 * s * torch.tanh((sd_lesion + n_lesion - 1.5 * shift) / 3))
    return torch.stack(channels), label


def make_set(n: int, size: int, classes: int, seed: int, shift: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    cases = [make_case(size, classes, g, shift) for _ in range(n)]
    return [c[0] for c in cases], [c[1] for c in cases]


# ------------------------------------------------------------------------------------------------------ MOVAL
def setup_moval(workdir: Path) -> tuple[str | None, str]:
    """A python with MOVAL in a temporary venv; returns (interpreter or None, message)."""
    venv = workdir / "moval-venv"
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *MOVAL_REQUIREMENTS],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps"]
        + [f"moval=={MOVAL_VERSION}"],
    ]
    for cmd in steps:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            return None, f"MOVAL NOT INSTALLED: `{' '.join(cmd[:4])} ...` failed: {err}"
        if r.returncode:
            tail = "\n".join([line for line in r.stderr.splitlines() if "is ignored" not in line][-5:])
            return None, f"MOVAL NOT INSTALLED: `{' '.join(cmd[:4])} ...` exited {r.returncode}:\n{tail}"
    return str(python), f"MOVAL {MOVAL_VERSION} installed in a temporary venv ({', '.join(MOVAL_REQUIREMENTS)})"


def run_moval(python: str, folder: Path, algorithm: str, class_specific: bool, threads: int) -> dict:
    script = folder / "moval_worker.py"
    script.write_text(MOVAL_WORKER)
    env = {**os.environ, **{k: str(threads) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    r = subprocess.run(
        [python, str(script), str(folder), algorithm, "1" if class_specific else "0"],
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode:
        raise RuntimeError(f"MOVAL {algorithm} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------- ours
def run_ours(name: str, class_specific: bool, convention: str, val, labels, test, repeats: int) -> dict:
    fits, ests, est = [], [], None
    for _ in range(repeats):
        e = create_estimator(name, class_specific=class_specific, convention=convention)
        t = time.perf_counter()
        e.fit(val, labels)
        fits.append(time.perf_counter() - t)
        t = time.perf_counter()
        est = e.estimate(test)
        ests.append(time.perf_counter() - t)
    return {
        "fit_s": statistics.median(fits),
        "estimate_s": statistics.median(ests),
        "mean": est["mean"].tolist(),
        "per_case": est["per_case"],
    }


def _fmt(values) -> str:
    return "/".join(f"{100 * v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", type=int, default=20, help="validation cases and test cases each (default 20)")
    p.add_argument("--size", type=int, default=64, help="cubic volume side (default 64)")
    p.add_argument("--classes", type=int, default=3, choices=(2, 3))
    p.add_argument("--shift", type=float, default=0.7, help="strength of the test-set shift")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch / numpy threads for both libraries (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="our runs per method (median); MOVAL runs once")
    p.add_argument("--no-moval", action="store_true", help="skip MOVAL")
    p.add_argument("--moval-python", default=None, help="an interpreter that already has moval (skips the install)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    val, labels = make_set(args.cases, args.size, args.classes, args.seed)
    test, test_labels = make_set(args.cases, args.size, args.classes, args.seed + 1000, shift=args.shift)
    true_val = prediction_dice(val, labels).mean(0).tolist()
    true_test_cases = prediction_dice(test, test_labels)
    true_test = true_test_cases.mean(0).tolist()
    reduced = reduce_segmentation_set(val, labels)
    stored = sum(t.numel() * t.element_size() for t in (reduced.logits, reduced.pred, reduced.label, reduced.case))
    stored += reduced.weight.numel() * reduced.weight.element_size()
    full = sum(z.numel() * 4 for z in val)
    print(
        f"data: {args.cases} validation + {args.cases} test cases of {args.size}^3, {args.classes} classes, "
        f"shift {args.shift}, seed {args.seed} ({time.perf_counter() - t0:.1f} s to generate); "
        f"{args.threads} thread(s); torch {torch.__version__}, numpy {np.__version__}"
    )
    print(f"true mean Dice (foreground classes, %): validation {_fmt(true_val)}, test {_fmt(true_test)}")
    print(
        f"our fit reduction (keep_margin 10, 4096 background samples per case): {100 * reduced.kept_fraction:.1f} % "
        f"of the validation voxels stored ({reduced.logits.shape[1]} of {reduced.num_voxels}), "
        f"{stored / 2**20:.1f} MiB vs {full / 2**20:.1f} MiB of float32 logits"
    )

    with tempfile.TemporaryDirectory(prefix="estimation_vs_moval_") as tmp:
        folder = Path(tmp)
        python, message = None, "MOVAL skipped (--no-moval)"
        if not args.no_moval:
            if args.moval_python:
                python, message = args.moval_python, f"MOVAL from {args.moval_python}"
            else:
                t = time.perf_counter()
                python, message = setup_moval(folder)
                message += f" ({time.perf_counter() - t:.0f} s)"
        print(message)
        if python:
            for i, (z, y) in enumerate(zip(val, labels, strict=True)):
                np.save(folder / f"val_logits_{i}.npy", z.numpy())
                np.save(folder / f"val_labels_{i}.npy", y.numpy())
            for i, z in enumerate(test):
                np.save(folder / f"test_logits_{i}.npy", z.numpy())
            (folder / "meta.json").write_text(json.dumps({"n_val": len(val), "n_test": len(test)}))

        rows = []
        for label, name, cs, algorithm in METHODS:
            ours = run_ours(name, cs, "moval", val, labels, test, args.repeats)
            row = {"label": label, "ours": ours, "moval": None, "error": ""}
            if python:
                try:
                    row["moval"] = run_moval(python, folder, algorithm, cs, args.threads)
                except Exception as err:  # report the others even if one fails
                    row["error"] = str(err).splitlines()[-1] if str(err) else type(err).__name__
            rows.append(row)
            m = row["moval"]
            status = f"MOVAL {m['fit_s'] + m['estimate_s']:.1f} s" if m else (row["error"] or "no MOVAL")
            print(f"  {label}: ours {ours['fit_s'] + ours['estimate_s']:.2f} s, {status}", flush=True)

    print()
    print("Same logits, convention 'moval' (MOVAL's definitions); estimates = mean Dice per foreground class (%)")
    header = (
        "| method | ours fit s | ours est. s | MOVAL fit s | MOVAL est. s | speedup (fit+est.) | ours | MOVAL | "
        "max abs diff (Dice pts) | true test |"
    )
    print(header)
    print("|" + "|".join(["---"] * (header.count("|") - 1)) + "|")
    diffs, speedups = [], []
    for row in rows:
        o, m = row["ours"], row["moval"]
        if m:
            mv = m["mean"][1:]
            diff = max(abs(a - b) for a, b in zip(o["mean"], mv, strict=True)) * 100
            speed = (m["fit_s"] + m["estimate_s"]) / (o["fit_s"] + o["estimate_s"])
            diffs.append(diff)
            speedups.append(speed)
            cells = [f"{m['fit_s']:.2f}", f"{m['estimate_s']:.2f}", f"{speed:.0f}x", _fmt(mv), f"{diff:.4f}"]
        else:
            cells = ["n/a", "n/a", "n/a", "n/a", "n/a"]
        print(
            f"| {row['label']} | {o['fit_s']:.3f} | {o['estimate_s']:.3f} | {cells[0]} | {cells[1]} | {cells[2]} | "
            f"{_fmt(o['mean'])} | {cells[3]} | {cells[4]} | {_fmt(true_test)} |"
        )
    if diffs:
        ok = min(speedups) >= 10 and max(diffs) <= 0.5
        print(
            f"\nspeedup {min(speedups):.0f}x to {max(speedups):.0f}x, largest estimate difference {max(diffs):.4f} "
            f"Dice points: target (>= 10x, <= 0.5 points) {'MET' if ok else 'NOT MET'}"
        )
    else:
        print("\nno MOVAL comparison: " + message)
    errors = [f"{r['label']}: {r['error']}" for r in rows if r["error"]]
    if errors:
        print("MOVAL errors:\n  " + "\n  ".join(errors))

    print("\nOurs, convention 'paper' (MICCAI two-step fit), against the true test Dice (%)")
    print("| method | fit s | est. s | estimate | true | MAE of the mean (Dice pts) | MAE per case (Dice pts) |")
    print("|---|---|---|---|---|---|---|")
    for label, name, cs, _ in METHODS:
        o = run_ours(name, cs, "paper", val, labels, test, 1)
        mae_mean = statistics.fmean(abs(a - b) for a, b in zip(o["mean"], true_test, strict=True)) * 100
        mae_case = float((o["per_case"] - true_test_cases).abs().mean()) * 100
        print(
            f"| {label} | {o['fit_s']:.3f} | {o['estimate_s']:.3f} | {_fmt(o['mean'])} | {_fmt(true_test)} | "
            f"{mae_mean:.2f} | {mae_case:.2f} |"
        )


if __name__ == "__main__":
    main()
