# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Accuracy estimation under simulated domain shifts: the classification MAE table, on scikit-learn's digits.

The classification experiment of Li, Kamnitsas, Islam, Chen, Glocker, "Estimating model performance under domain
shifts with class-specific confidence scores", MICCAI 2022 (methods.md 4.1, 4.2, 4.5), rebuilt on data that ships
with scikit-learn (its 1,797 handwritten 8x8 digits, ``sklearn.datasets.load_digits``) instead of CIFAR-10 /
CIFAR-10-C:

1. Split (stratified, ``--seed``): 60 % source pool, 40 % held out. The training set is drawn from the pool with the
   exponential profile of the paper's imbalanced CIFAR-10 (Cao et al., LDAM, NeurIPS 2019):
   ``n_c = int(n_max * IF ** (c / (C - 1)))``, ``IF = 0.01``, ``n_max`` the smallest per-class pool count (with
   seed 0: ``104, 62, 37, 22, 13, 8, 4, 2, 1, 1`` images for classes 0..9). The held-out images are split 30 / 70
   into the validation and test sets, both with the natural (balanced) label distribution and disjoint, as the
   authors' ``cifartest.py`` does (3,000 clean CIFAR-10 test images for fitting, the other 7,000 corrupted for
   testing): the validation set is the source domain's clean images, not its imbalanced training distribution.
2. A small CNN (two 3x3 convolutions, 16 and 32 channels, max-pooling, a linear layer) is trained on CPU with
   plain cross-entropy (the paper's vanilla ``CE`` model) for ``--epochs`` epochs (a few seconds).
3. The estimators are fitted on the clean validation logits and labels, then estimate the accuracy of every
   corrupted test set: each shift of :mod:`monai_imbalance.data.shifts` (noise, blur, contrast, gamma, bias field,
   resolution) at severities 1..5 on the ``(1, 8, 8)`` images in ``[0, 1]`` (one condition per shift and
   severity, as methods.md 4.1; the authors' script pools the five severities of a corruption in one set).
4. Errors against the true accuracy of the same logits: overall accuracy, and per-class accuracy, i.e. the accuracy
   of the samples *predicted* as class ``c`` (the quantity the estimators estimate, methods.md 4.2; classes
   predicted nowhere in a condition are skipped). The table gives the mean absolute error over the conditions in
   accuracy points (%), the per-class error being first averaged over classes. NORCAL gets the training class
   counts (``class_counts``); every other estimator uses its defaults (Nelder-Mead with restarts).

Usage::

    python benchmarks/estimation_classification.py                 # about 5-10 s on one CPU core
    python benchmarks/estimation_classification.py --seed 1 --out results/estimation_digits

Needs ``scikit-learn`` (for the data) and :mod:`monai_imbalance.estimation`.
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from monai_imbalance.data import RANDOM_SHIFTS, SHIFT_SEVERITIES, SHIFTS, apply_shift

#: Table rows: (label, factory name, class_specific), in the order of the paper's table.
ESTIMATORS: tuple[tuple[str, str, bool], ...] = (
    ("AC", "ac", False),
    ("TS", "ts", False),
    ("CS-TS", "ts", True),
    ("DoC", "doc", False),
    ("CS-DoC", "doc", True),
    ("ATC", "atc", False),
    ("CS-ATC", "atc", True),
    ("TS-ATC", "ts-atc", False),
    ("CS-TS-ATC", "ts-atc", True),
    ("VS", "vs", False),
    ("NORCAL", "norcal", False),
)


def exponential_profile(n_max: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Per-class counts ``int(n_max * IF ** (c / (C - 1)))`` (at least 1), as the imbalanced CIFAR-10 of LDAM."""
    if not 0 < imbalance_factor <= 1:
        raise ValueError(f"imbalance_factor must be in (0, 1], got {imbalance_factor}.")
    return [max(1, int(n_max * imbalance_factor ** (c / (num_classes - 1)))) for c in range(num_classes)]


def make_splits(
    seed: int, imbalance_factor: float, heldout: float = 0.4, val_fraction: float = 0.3
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The digits as ``(images (N, 8, 8) float32 in [0, 1], labels (N,) int64)`` for ``train``, ``val``, ``test``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    num_classes = int(y.max()) + 1
    pool, held = train_test_split(np.arange(len(y)), test_size=heldout, stratify=y, random_state=seed)
    val, test = train_test_split(held, train_size=val_fraction, stratify=y[held], random_state=seed)
    n_max = int(np.bincount(y[pool], minlength=num_classes).min())
    rng = np.random.default_rng(seed)
    counts = exponential_profile(n_max, num_classes, imbalance_factor)
    train = np.concatenate([rng.choice(pool[y[pool] == c], size=n, replace=False) for c, n in enumerate(counts)])
    return {name: (x[idx], y[idx]) for name, idx in (("train", train), ("val", val), ("test", test))}


class _TinyCNN(nn.Module):
    """``(B, 1, 8, 8) -> (B, C)``: conv 3x3 (16) - ReLU - conv 3x3 (32) - ReLU - max-pool 2 - linear."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(32 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_model(x: np.ndarray, y: np.ndarray, num_classes: int, epochs: int, seed: int) -> nn.Module:
    """Plain cross-entropy training (Adam, lr 3e-3, batch 32) of the tiny CNN on ``(N, 8, 8)`` images."""
    torch.manual_seed(seed)
    model = _TinyCNN(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    xt, yt = torch.from_numpy(x)[:, None], torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), generator=gen).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    """Logits ``(N, C)`` float32 of ``(N, 8, 8)`` images."""
    return model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[:, None])


def corrupt(x: np.ndarray, shift: str, severity: int, seed: int) -> np.ndarray:
    """Shift every ``(8, 8)`` image of ``x`` separately (own robust range, own random draw)."""
    if shift == "bias_field":  # one field per image (RandBiasField draws one field for all channels)
        seeds = np.random.SeedSequence([seed, SHIFTS.index(shift), severity]).generate_state(len(x))
        return np.stack(
            [apply_shift(img[None], shift, severity, seed=int(s))[0] for img, s in zip(x, seeds, strict=True)]
        )
    # the N images as the channels of one (N, 8, 8) image: every channel is shifted separately, noise drawn per channel
    s = int(np.random.SeedSequence([seed, SHIFTS.index(shift), severity]).generate_state(1)[0])
    return apply_shift(x, shift, severity, seed=s if shift in RANDOM_SHIFTS else 0)


def accuracies(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, torch.Tensor]:
    """True overall accuracy and per-predicted-class accuracy ``(C,)`` float64 (NaN where nothing is predicted)."""
    pred = logits.argmax(1)
    correct = (pred == labels).double()
    c = logits.shape[1]
    n = torch.bincount(pred, minlength=c).double()
    hits = torch.bincount(pred, weights=correct, minlength=c)
    per_class = torch.where(n > 0, hits / n.clamp_min(1), torch.full_like(n, math.nan))
    return float(correct.mean()), per_class


def run(args: argparse.Namespace) -> tuple[list[dict], list[dict], dict]:
    """Train, corrupt, fit and estimate; returns (summary rows, per-condition rows, context)."""
    from monai_imbalance.estimation import create_estimator

    splits = make_splits(args.seed, args.imbalance_factor)
    num_classes = 10
    t0 = time.perf_counter()
    model = train_model(*splits["train"], num_classes, args.epochs, args.seed)
    train_s = time.perf_counter() - t0
    val_logits, val_labels = predict(model, splits["val"][0]), torch.from_numpy(splits["val"][1])
    x_test, y_test = splits["test"]
    labels = torch.from_numpy(y_test)
    conditions = []
    for shift in args.shifts:
        for severity in args.severities:
            logits = predict(model, corrupt(x_test, shift, severity, args.seed))
            conditions.append((shift, severity, logits, *accuracies(logits, labels)))
    context = {
        "train_counts": np.bincount(splits["train"][1], minlength=num_classes).tolist(),
        "n_val": len(val_labels),
        "n_test": len(labels),
        "train_s": train_s,
        "val_acc": accuracies(val_logits, val_labels)[0],
        "clean_test_acc": accuracies(predict(model, x_test), labels)[0],
        "cond_acc": [c[3] for c in conditions],
    }

    summary, details = [], []
    for label, name, class_specific in ESTIMATORS:
        row = {"estimator": label, "mae_acc": math.nan, "mae_class_acc": math.nan, "fit_ms": math.nan}
        row["estimate_ms"], row["error"] = math.nan, ""
        try:
            # NORCAL normalises by the training class frequencies (the validation set here is balanced)
            kwargs = {"class_counts": context["train_counts"]} if name == "norcal" else {}
            est = create_estimator(name, class_specific=class_specific, task="classification", **kwargs)
            t0 = time.perf_counter()
            est.fit(val_logits, val_labels)
            row["fit_ms"] = 1e3 * (time.perf_counter() - t0)
            errs, class_errs, est_times = [], [], []
            for shift, severity, logits, true_acc, true_cls in conditions:
                t0 = time.perf_counter()
                out = est.estimate(logits)
                est_times.append(time.perf_counter() - t0)
                est_acc, est_cls = float(out["overall"]), torch.as_tensor(out["per_class"], dtype=torch.float64)
                both = torch.isfinite(true_cls) & torch.isfinite(est_cls)
                class_err = float((est_cls[both] - true_cls[both]).abs().mean()) if both.any() else math.nan
                errs.append(abs(est_acc - true_acc))
                class_errs.append(class_err)
                details.append(
                    {
                        "estimator": label,
                        "shift": shift,
                        "severity": severity,
                        "true_acc": true_acc,
                        "est_acc": est_acc,
                        "abs_err": errs[-1],
                        "class_mae": class_err,
                        "classes_scored": int(both.sum()),
                    }
                )
            row["mae_acc"] = 100 * statistics.fmean(errs)
            row["mae_class_acc"] = 100 * statistics.fmean([e for e in class_errs if not math.isnan(e)] or [math.nan])
            row["estimate_ms"] = 1e3 * statistics.median(est_times)
        except Exception as exc:  # report every estimator, even if one fails
            row["error"] = f"{type(exc).__name__}: {exc}"
        summary.append(row)
    return summary, details, context


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def markdown(summary: list[dict], details: list[dict], context: dict, args: argparse.Namespace) -> str:
    """The MAE table (and the MAE of overall accuracy per shift) as Markdown."""
    acc = context["cond_acc"]
    lines = [
        f"Digits (scikit-learn), imbalance factor {args.imbalance_factor}, seed {args.seed}: train counts per class "
        f"{context['train_counts']} (trained in {context['train_s']:.1f} s), validation {context['n_val']} clean "
        f"images, test {context['n_test']} images x {len(acc)} conditions ({len(args.shifts)} shifts x severities "
        f"{', '.join(map(str, args.severities))}).",
        f"Validation accuracy {100 * context['val_acc']:.1f} %, clean test accuracy "
        f"{100 * context['clean_test_acc']:.1f} %, corrupted test accuracy {100 * min(acc):.1f}-{100 * max(acc):.1f} % "
        f"(mean {100 * statistics.fmean(acc):.1f} %).",
        "",
        "| estimator | MAE accuracy (%) | MAE per-class accuracy (%) | fit (ms) | estimate (ms / condition) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in summary:
        if r["error"]:
            lines.append(f"| {r['estimator']} | error | error | | |")
        else:
            lines.append(
                f"| {r['estimator']} | {_fmt(r['mae_acc'])} | {_fmt(r['mae_class_acc'])} | {_fmt(r['fit_ms'], 1)} "
                f"| {_fmt(r['estimate_ms'], 2)} |"
            )
    lines += ["", "MAE of overall accuracy (%) per shift (mean over severities):", ""]
    lines.append("| estimator | " + " | ".join(args.shifts) + " |")
    lines.append("| --- |" + " ---: |" * len(args.shifts))
    for r in summary:
        cells = []
        for shift in args.shifts:
            e = [d["abs_err"] for d in details if d["estimator"] == r["estimator"] and d["shift"] == shift]
            cells.append(_fmt(100 * statistics.fmean(e)) if e else "n/a")
        lines.append(f"| {r['estimator']} | " + " | ".join(cells) + " |")
    errors = [f"- {r['estimator']}: {r['error']}" for r in summary if r["error"]]
    if errors:
        lines += ["", "Errors:", *errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="split, subsample, initialisation and corruption seed")
    ap.add_argument("--imbalance_factor", type=float, default=0.01, help="n_min / n_max of the training set")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--shifts", nargs="+", default=list(SHIFTS), choices=SHIFTS)
    ap.add_argument("--severities", type=int, nargs="+", default=list(SHIFT_SEVERITIES), choices=SHIFT_SEVERITIES)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="write results.md, results.csv, conditions.csv here")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    summary, details, context = run(args)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    text = markdown(summary, details, context, args)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.md").write_text(text + "\n")
        for name, rows in (("results.csv", summary), ("conditions.csv", details)):
            with open(args.out / name, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["estimator"])
                writer.writeheader()
                writer.writerows(rows)
        print(f"written to {args.out}")
    return 1 if any(r["error"] for r in summary) else 0


if __name__ == "__main__":
    sys.exit(main())
