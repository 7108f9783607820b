# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""A montage of generated context labels: image, ground truth and context classes on three orthogonal slices.

The figure of Li, Kamnitsas, Ouyang, Chen, Glocker, "Context Label Learning: Improving Background Class
Representations in Semantic Segmentation", IEEE TMI 2023 (the generated context classes next to the image): one row
per view (axial, coronal, sagittal) through the centre of the foreground (the volume's centre when there is none),
three columns: the image, the ground truth, and the hard context map ``argmax_t q_t`` with the foreground drawn on top
in its own colours, so one sees how the generator splits the background around the region of interest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["plot_context_montage", "montage_slices"]


def montage_slices(label: np.ndarray) -> tuple[int, int, int]:
    """Slice index per axis through the foreground's centre of mass (the centre of the volume without foreground).

    Args:
        label: ``(H, W, D)`` class indices.

    Returns:
        ``(i, j, k)`` voxel indices.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be (H, W, D), got shape {label.shape}.")
    fg = np.argwhere(label > 0)
    centre = fg.mean(0) if fg.size else (np.asarray(label.shape) - 1) / 2.0
    return tuple(int(round(float(c))) for c in centre)  # type: ignore[return-value]


def plot_context_montage(
    image: np.ndarray,
    label: np.ndarray,
    context: np.ndarray,
    num_classes: int,
    num_context: int,
    title: str = "",
) -> Any:
    """Draw the montage.

    Args:
        image: ``(H, W, D)`` intensities (first channel of the input).
        label: ``(H, W, D)`` ground-truth class indices ``0..C-1``.
        context: ``(H, W, D)`` context class indices ``0..t-1`` (the generator's argmax); shown on background voxels.
        num_classes: ``C`` (background included).
        num_context: ``t``.
        title: figure title (e.g. the epoch).

    Returns:
        the matplotlib ``Figure`` (3 x 3 axes).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    image, label, context = (np.asarray(a) for a in (image, label, context))
    if not (image.shape == label.shape == context.shape) or image.ndim != 3:
        raise ValueError(
            f"image, label and context must be (H, W, D) of one shape, got {image.shape}, {label.shape}, "
            f"{context.shape}."
        )
    # one map: context classes 0..t-1, foreground classes t..t+C-2
    combined = np.where(label > 0, num_context + label.astype(np.int64) - 1, context.astype(np.int64))
    ctx_colours = plt.get_cmap("Blues")(np.linspace(0.25, 0.85, max(num_context, 1)))
    fg_colours = plt.get_cmap("autumn")(np.linspace(0.0, 0.8, max(num_classes - 1, 1)))
    cmap = ListedColormap(np.concatenate([ctx_colours, fg_colours[: num_classes - 1]]))
    vmax = num_context + num_classes - 2
    gt_cmap = ListedColormap(np.concatenate([[[0.0, 0.0, 0.0, 1.0]], fg_colours[: num_classes - 1]]))
    i, j, k = montage_slices(label)
    views = {
        "axial": (lambda a: a[:, :, k]),
        "coronal": (lambda a: a[:, j, :]),
        "sagittal": (lambda a: a[i, :, :]),
    }
    fig, axes = plt.subplots(3, 3, figsize=(9.0, 9.0))
    for row, (view, take) in enumerate(views.items()):
        panels = (
            (take(image), "gray", None, "image"),
            (take(label), gt_cmap, (0, max(num_classes - 1, 1)), "ground truth"),
            (take(combined), cmap, (0, max(vmax, 1)), f"context (t={num_context}) + foreground"),
        )
        for col, (data, colour_map, limits, name) in enumerate(panels):
            ax = axes[row, col]
            kwargs = {"interpolation": "nearest"}
            if limits is not None:
                kwargs.update(vmin=limits[0], vmax=limits[1])
            ax.imshow(np.rot90(data), cmap=colour_map, **kwargs)
            ax.set_axis_off()
            ax.set_title(f"{view}: {name}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
