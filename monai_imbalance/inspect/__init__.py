# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Inspect a trained model without training: ``python -m monai_imbalance.inspect logits ...``.

:func:`inspect_logits` parses a bundle's train config with ``monai.bundle.ConfigParser`` (plus overrides such as
``dataset_dir``), builds ``network_def``, loads a checkpoint (``weights_only=True``; a bare state dict such as
``model.pt`` or a training checkpoint with a ``"model"`` entry such as ``latest.pt``), runs the config's deterministic
validation preprocessing (``validate#preprocessing``) and inferer (``validate#inferer``, the sliding window) over
each split's datalist (:func:`monai_imbalance.data.load_datalist`), feeds one
:class:`~monai_imbalance.handlers.logit_distribution.LogitMarginSampler` per split, and writes the logit-margin
report of Li, Kamnitsas, Glocker, IEEE TMI 2021
(:func:`~monai_imbalance.handlers.logit_distribution.write_margin_report`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["inspect_logits", "SPLIT_ALIASES"]

logger = logging.getLogger(__name__)

#: Report name of a split -> the ``load_datalist`` split it reads.
SPLIT_ALIASES = {"train": "training", "training": "training", "validation": "validation", "test": "test"}
SPLIT_ALIASES["external"] = "external"


def _state_dict(checkpoint: Any) -> Mapping[str, torch.Tensor]:
    if isinstance(checkpoint, Mapping) and checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model"), Mapping):
        return checkpoint["model"]
    raise ValueError("the checkpoint is neither a network state dict nor a training checkpoint with a 'model' entry.")


def inspect_logits(
    config_file: str | Sequence[str],
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    splits: Sequence[str] = ("train", "validation", "test"),
    overrides: Mapping[str, Any] | None = None,
    samples_per_class: int = 50_000,
    max_cases: int | None = None,
    seed: int = 0,
    tag: str = "logit_margins",
    bins: int = 100,
) -> dict[str, Any]:
    """Logit-margin report of a trained bundle model on several splits, without training.

    Args:
        config_file: the bundle's train config (or a list of config files merged in order).
        checkpoint: ``model.pt`` (state dict) or a checkpoint with a ``"model"`` state dict.
        out: output folder of the PNGs (one per class), ``<tag>.npz`` and ``<tag>_summary.json``.
        splits: report names among ``train``/``training``, ``validation``, ``test``, ``external``; the first is the
            reference of the shifts. Training cases follow the config's ``training_fraction`` and ``seed`` (set them
            in ``overrides`` to those of the training run).
        overrides: config overrides (``{"dataset_dir": ..., "device": "$torch.device('cpu')", ...}``).
        samples_per_class: reservoir size per class and split.
        max_cases: use at most this many cases per split (default all).
        seed: seed of the voxel samplers (not the bundle's ``seed``).
        tag: file-name stem.
        bins: histogram bins.

    Returns:
        the summary of :func:`~monai_imbalance.handlers.logit_distribution.write_margin_report`.
    """
    from monai.bundle import ConfigParser
    from monai.data import DataLoader, Dataset

    from monai_imbalance.data import load_datalist
    from monai_imbalance.handlers.logit_distribution import LogitMarginSampler, write_margin_report

    unknown = [s for s in splits if s not in SPLIT_ALIASES]
    if unknown or not splits:
        raise ValueError(f"unknown splits {unknown}; choose among {sorted(SPLIT_ALIASES)}.")
    parser = ConfigParser()
    parser.read_config(list(config_file) if not isinstance(config_file, (str, os.PathLike)) else str(config_file))
    parser.update(dict(overrides or {}))
    device = parser.get_parsed_content("device") if "device" in parser else torch.device("cpu")
    amp = bool(parser.get_parsed_content("amp")) if "amp" in parser else False
    num_classes = int(parser.get_parsed_content("num_classes"))
    labels = parser.get_parsed_content("labels") if "labels" in parser else None
    class_names = [str(labels[c]) for c in sorted(labels)] if isinstance(labels, Mapping) else None
    dataset_dir = parser.get_parsed_content("dataset_dir")
    training_fraction = float(parser.get_parsed_content("training_fraction")) if "training_fraction" in parser else 1.0
    config_seed = int(parser.get_parsed_content("seed")) if "seed" in parser else 0

    network = parser.get_parsed_content("network_def", instantiate=True)
    state = _state_dict(torch.load(str(checkpoint), map_location="cpu", weights_only=True))
    network.load_state_dict(state)
    network = network.to(device).eval()
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")

    samples: dict[str, dict[int, Any]] = {}
    for i, split in enumerate(splits):
        datalist = load_datalist(
            dataset_dir, SPLIT_ALIASES[split], training_fraction=training_fraction, seed=config_seed, require_label=True
        )
        if max_cases is not None:
            datalist = datalist[:max_cases]
        sampler = LogitMarginSampler(num_classes, samples_per_class, seed + i)
        loader = DataLoader(Dataset(datalist, transform=preprocessing), batch_size=1, shuffle=False, num_workers=0)
        for batch in loader:
            image = batch["image"].to(device)
            with torch.no_grad(), torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                logits = inferer(image, network)
            sampler.update(logits, batch["label"].to(logits.device))
        names = ", ".join(Path(str(d["image"])).name.split(".")[0] for d in datalist)
        logger.info(f"{split}: {len(datalist)} cases ({names}), voxels seen per class {sampler.seen}")
        samples[split] = sampler.samples()
    return write_margin_report(samples, out, tag, class_names=class_names, bins=bins, log=logger)
