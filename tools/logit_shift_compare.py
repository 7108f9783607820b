# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Compare the logit shift of several trained models from their ``python -m monai_imbalance.inspect logits`` folders.

Each ``--run LABEL=FOLDER`` names one inspection (``logit_margins.npz`` and ``logit_margins_summary.json``, splits
``train`` and ``test``); runs of the same label (e.g. one per seed) are averaged. Writes to ``--out``:

- ``logit_shift.md``: per label and class, the mean margin on the training and the test cases, the fraction of
  voxels on the wrong side of the decision boundary, and the shift (training mean minus test mean), each as mean ± sd
  over the runs of the label;
- ``logit_shift.png``: one row per class, one column per label: the margins of the first run of the label, training
  against test (:func:`~monai_imbalance.visualize.logit_plots.plot_margin_histograms`), on shared x limits per row.

Usage::

    python tools/logit_shift_compare.py --out results/logit_shift_brain_lesion \\
        --run vanilla=runs/logits/vanilla_f0.05_s0 --run vanilla=runs/logits/vanilla_f0.05_s1 ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monai_imbalance.visualize.logit_plots import plot_margin_histograms, save_figure  # noqa: E402

SPLITS = ("train", "test")


def _fmt(values: list[float], percent: bool = False) -> str:
    scale = 100.0 if percent else 1.0
    mean = scale * float(np.mean(values))
    text = f"{mean:.1f}" if percent else f"{mean:.2f}"
    if len(values) > 1:
        sd = scale * float(np.std(values, ddof=1))
        text += f" ± {sd:.1f}" if percent else f" ± {sd:.2f}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="LABEL=FOLDER of an inspect logits output")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--title", default="", help="first line of the Markdown file")
    args = parser.parse_args(argv)
    runs: dict[str, list[Path]] = {}
    for item in args.run:
        label, sep, folder = item.partition("=")
        path = Path(folder)
        if not sep or not (path / "logit_margins_summary.json").is_file():
            print(f"error: --run {item!r}: expected LABEL=FOLDER with logit_margins_summary.json", file=sys.stderr)
            return 1
        runs.setdefault(label, []).append(path)
    summaries = {k: [json.loads((p / "logit_margins_summary.json").read_text()) for p in v] for k, v in runs.items()}
    classes = summaries[next(iter(summaries))][0]["classes"]
    lines = [
        args.title or "# Logit shift: margins of training against test voxels",
        "",
        "| model | class | runs | mean margin, train | mean margin, test | wrong side, train (%) "
        "| wrong side, test (%) | shift (train - test) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, items in summaries.items():
        for c in classes:
            train = [s["stats"]["train"][c]["mean"] for s in items]
            test = [s["stats"]["test"][c]["mean"] for s in items]
            wrong_train = [s["stats"]["train"][c]["wrong_side"] for s in items]
            wrong_test = [s["stats"]["test"][c]["wrong_side"] for s in items]
            shift = [a - b for a, b in zip(train, test, strict=True)]
            lines.append(
                f"| {label} | {c} | {len(items)} | {_fmt(train)} | {_fmt(test)} | {_fmt(wrong_train, True)} | "
                f"{_fmt(wrong_test, True)} | {_fmt(shift)} |"
            )
    lines += [
        "",
        "Margin of a voxel labelled c: z_c - max_(k != c) z_k (negative: misclassified); class-balanced samples of at "
        "most 50,000 voxels per class and split; mean ± sd over the runs (seeds) of a model. Runs: "
        + "; ".join(f"{k}: {', '.join(str(p) for p in v)}" for k, v in runs.items())
        + ".",
        "",
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "logit_shift.md").write_text("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(classes), len(runs), figsize=(6.4 * len(runs), 4.0 * len(classes)), squeeze=False)
    for j, (label, paths) in enumerate(runs.items()):
        data = np.load(paths[0] / "logit_margins.npz")
        for i, c in enumerate(classes):
            samples = {s: data[f"{s}_{i}"] for s in SPLITS}
            plot_margin_histograms(samples, title=f"{label} ({paths[0].name}): {c}", ax=axes[i][j])
    for i in range(len(classes)):  # shared x limits per class, so the shift reads across the models
        low = min(ax.get_xlim()[0] for ax in axes[i])
        high = max(ax.get_xlim()[1] for ax in axes[i])
        for ax in axes[i]:
            ax.set_xlim(low, high)
    save_figure(fig, out / "logit_shift.png")
    print(f"wrote {out / 'logit_shift.md'} and {out / 'logit_shift.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
