# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Simulated domain shifts at five severities: noise, blur, contrast, gamma, bias field, resolution.

The performance-estimation protocol of Li, Kamnitsas, Islam, Chen, Glocker, "Estimating model performance under
domain shifts with class-specific confidence scores", MICCAI 2022 fits the estimators on a
labelled source-domain validation set and scores them on unlabelled target conditions, the synthetic ones being
*corruption type x severity 1-5* (as CIFAR-10-C, Hendrycks & Dietterich, ICLR 2019). This module provides such
corruptions for channel-first 2D and 3D medical images, built on MONAI transforms, with the parameters of each
severity in one documented table (:func:`shift_parameters`):

============== ======================================================= ===== ===== ===== ===== =====
shift          parameter (severity 0 = identity)                        1     2     3     4     5
============== ======================================================= ===== ===== ===== ===== =====
``noise``      Gaussian noise std / robust range ``p99 - p1``           0.03  0.06  0.10  0.15  0.22
``blur``       Gaussian sigma in voxels (edge-replicated borders)       0.5   0.75  1.0   1.5   2.0
``contrast``   contrast factor ``c``: ``mean + c (x - mean)``           0.75  0.6   0.45  0.3   0.2
``gamma``      ``gamma`` in ``min + r ((x - min) / r) ** gamma``        1.25  1.5   1.8   2.2   2.7
``bias_field`` bound ``a`` of the log-field coefficients ``U(-a, a)``   0.04  0.08  0.15  0.22  0.3
``resolution`` zoom factor of the down-sampling (area, then linear up)  0.75  0.6   0.5   0.4   0.3
============== ======================================================= ===== ===== ===== ===== =====

Every parameter moves monotonically away from the identity with the severity. The shifts are relative to the image,
so they act alike on raw and on normalised MRI / CT: the noise std is a fraction of each channel's robust intensity
range; contrast scales around the channel mean; gamma maps each channel's ``[min, max]`` onto itself; the bias
field multiplies the signal above the channel minimum (``min + (x - min) * field``, so a constant background of a
normalised image stays put); blur and resolution act on the voxel grid (sigma in voxels; the low-resolution grid
has ``round(zoom * size)`` voxels per axis, so on very small images two severities can round to the same grid).
Every channel is shifted separately (multi-modal inputs keep their own ranges).

``noise`` and ``bias_field`` are random and deterministic by ``seed`` (the same seed gives the same output; for one
seed, severity ``s`` is the severity-1 draw scaled by the table, so the strength is monotone for a fixed draw); the
other shifts are deterministic and ignore the seed. Severity 0 is allowed and is the identity (a copy), so a config
can switch a shift off; the shifted conditions are :data:`SHIFT_SEVERITIES` ``= (1, ..., 5)``.

MONAI building blocks: :class:`~monai.transforms.RandGaussianNoise` (seeded), separable Gaussian filtering with
:func:`~monai.networks.layers.gaussian_1d` kernels normalised to unit mass (MONAI's ``GaussianSmooth`` pads with
zeros, which would darken the border of a non-zero background; edges are replicated instead),
:class:`~monai.transforms.ScaleIntensityFixedMean`, :class:`~monai.transforms.AdjustContrast`,
:class:`~monai.transforms.RandBiasField` (seeded, degree 3) and :class:`~monai.transforms.RandSimulateLowResolution`
with a fixed zoom.

:class:`SimulateDomainShiftd` inserts a shift into a dict pipeline (after loading / normalising the image, before
inference); it touches only its ``keys`` (never the label).
"""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.networks.layers import gaussian_1d, separable_filtering
from monai.transforms import (
    AdjustContrast,
    MapTransform,
    RandBiasField,
    RandGaussianNoise,
    RandSimulateLowResolution,
    ScaleIntensityFixedMean,
)
from monai.transforms.utils_pytorch_numpy_unification import percentile
from monai.utils import convert_to_dst_type, convert_to_tensor

__all__ = [
    "SHIFTS",
    "SHIFT_SEVERITIES",
    "RANDOM_SHIFTS",
    "shift_parameters",
    "apply_shift",
    "SimulateDomainShiftd",
]

#: Names of the simulated shifts.
SHIFTS: tuple[str, ...] = ("noise", "blur", "contrast", "gamma", "bias_field", "resolution")
#: The shifted severities (0, the identity, is also accepted).
SHIFT_SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: The shifts that draw random numbers (deterministic by seed); the others ignore the seed.
RANDOM_SHIFTS: tuple[str, ...] = ("noise", "bias_field")

# name -> (parameter name, values for severities 0..5); severity 0 is the identity.
_TABLE: dict[str, tuple[str, tuple[float, ...]]] = {
    "noise": ("std_fraction", (0.0, 0.03, 0.06, 0.10, 0.15, 0.22)),
    "blur": ("sigma", (0.0, 0.5, 0.75, 1.0, 1.5, 2.0)),
    "contrast": ("factor", (1.0, 0.75, 0.6, 0.45, 0.3, 0.2)),
    "gamma": ("gamma", (1.0, 1.25, 1.5, 1.8, 2.2, 2.7)),
    "bias_field": ("coeff_bound", (0.0, 0.04, 0.08, 0.15, 0.22, 0.3)),
    "resolution": ("zoom", (1.0, 0.75, 0.6, 0.5, 0.4, 0.3)),
}
# fixed settings reported with the table
_FIXED: dict[str, dict[str, Any]] = {
    "noise": {"percentiles": (1.0, 99.0)},
    "blur": {"truncated": 4.0, "padding": "replicate"},
    "contrast": {},
    "gamma": {},
    "bias_field": {"degree": 3},
    "resolution": {"downsample_mode": "area", "upsample_mode": "linear"},
}


def _check_shift(name: Any) -> str:
    if not isinstance(name, str) or name not in _TABLE:
        raise ValueError(f"Unknown shift {name!r}; valid shifts: {', '.join(SHIFTS)}.")
    return name


def _check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or not 0 <= severity <= 5:
        raise ValueError(f"severity must be an integer in 0..5 (0 = identity), got {severity!r}.")
    return int(severity)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an integer in [0, 2**32), got {seed!r}.")
    return int(seed)


def shift_parameters(name: str, severity: int) -> dict[str, Any]:
    """The parameters of one shift at one severity (the table in the module docstring).

    Args:
        name: one of :data:`SHIFTS`.
        severity: 0 (identity) to 5.

    Returns:
        A new dict with the severity-dependent parameter (``std_fraction``, ``sigma``, ``factor``, ``gamma``,
        ``coeff_bound`` or ``zoom``) and the fixed settings of the shift (e.g. ``percentiles`` of the robust range,
        the bias-field ``degree``).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names), ``severity`` not an integer in 0..5.
    """
    name = _check_shift(name)
    severity = _check_severity(severity)
    key, values = _TABLE[name]
    return {key: values[severity], **_FIXED[name]}


def _as_float_tensor(image: NdarrayOrTensor) -> torch.Tensor:
    """Validate a channel-first image and return it as a plain float tensor (float64 stays float64)."""
    if isinstance(image, np.ndarray):
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"image must have a floating dtype, got {image.dtype} (cast it first, e.g. EnsureTyped).")
        t = torch.from_numpy(np.ascontiguousarray(image))
    elif isinstance(image, torch.Tensor):
        if not image.is_floating_point():
            raise ValueError(f"image must have a floating dtype, got {image.dtype} (cast it first, e.g. EnsureTyped).")
        t = image.as_tensor() if hasattr(image, "as_tensor") else image
    else:
        raise ValueError(f"image must be a numpy array or a torch tensor, got {type(image).__name__}.")
    if t.ndim not in (3, 4):
        raise ValueError(
            f"image must be channel-first (C, H, W) or (C, H, W, D), got shape {tuple(t.shape)} ({t.ndim} dims)."
        )
    if t.numel() == 0:
        raise ValueError(f"image must not be empty, got shape {tuple(t.shape)}.")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("image contains non-finite values (NaN or inf).")
    t = t.detach()
    return t if t.dtype == torch.float64 else t.to(torch.float32)


def _robust_range(channel: torch.Tensor, lower: float, upper: float) -> float:
    """``p_upper - p_lower`` of one channel; the full range if that is 0; 1 for a constant channel."""
    lo, hi = (float(percentile(channel.reshape(-1), q)) for q in (lower, upper))
    width = hi - lo
    if width <= 0:
        width = float(channel.max() - channel.min())
    return width if width > 0 else 1.0


def _noise(t: torch.Tensor, p: dict[str, Any], rng: np.random.RandomState) -> torch.Tensor:
    out = []
    for channel in t:
        std = p["std_fraction"] * _robust_range(channel, *p["percentiles"])
        xform = RandGaussianNoise(prob=1.0, mean=0.0, std=std, sample_std=False, dtype=None)
        xform.set_random_state(state=rng)  # one stream: independent noise per channel
        out.append(torch.as_tensor(xform(channel[None])[0], dtype=t.dtype, device=t.device))
    return torch.stack(out)


def _blur(t: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    sigma = torch.tensor(p["sigma"], dtype=torch.float64)
    kernel = gaussian_1d(sigma, truncated=p["truncated"], approx="erf").to(t)
    kernel = kernel / kernel.sum()  # unit mass in the working precision: constants stay constant
    return separable_filtering(t[None], [kernel] * (t.ndim - 1), mode=p["padding"])[0]


def _contrast(t: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    xform = ScaleIntensityFixedMean(factor=p["factor"] - 1.0, fixed_mean=True, channel_wise=True, dtype=None)
    return torch.as_tensor(xform(t), dtype=t.dtype)


def _gamma(t: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    xform = AdjustContrast(gamma=p["gamma"])
    return torch.stack([torch.as_tensor(xform(channel), dtype=t.dtype) for channel in t])


def _bias_field(t: torch.Tensor, p: dict[str, Any], rng: np.random.RandomState) -> torch.Tensor:
    bound = p["coeff_bound"]
    xform = RandBiasField(degree=p["degree"], coeff_range=(-bound, bound), dtype=None, prob=1.0)
    # one field for all channels (one coil); uniform(-a, a) = a (2u - 1): the draw scales with the severity
    xform.set_random_state(state=rng)
    xform.randomize(img_size=t.shape[1:])
    out = []
    for channel in t:
        floor = channel.min()
        field_times_signal = xform((channel - floor)[None], randomize=False)[0]
        out.append(torch.as_tensor(field_times_signal, dtype=t.dtype, device=t.device) + floor)
    return torch.stack(out)


def _resolution(t: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    zoom = p["zoom"]
    up = {2: "bilinear", 3: "trilinear"}[t.ndim - 1]
    xform = RandSimulateLowResolution(
        prob=1.0, downsample_mode=p["downsample_mode"], upsample_mode=up, zoom_range=(zoom, zoom)
    )
    return torch.as_tensor(xform(t), dtype=t.dtype)


def apply_shift(image: NdarrayOrTensor, name: str, severity: int, seed: int = 0) -> NdarrayOrTensor:
    """Apply one simulated domain shift to a channel-first image.

    Args:
        image: ``(C, H, W)`` or ``(C, H, W, D)`` float array or tensor (numpy, torch or MONAI ``MetaTensor``),
            finite.
        name: one of :data:`SHIFTS`.
        severity: 1..5 (:data:`SHIFT_SEVERITIES`), or 0 for the identity (a copy of ``image``).
        seed: seed of the random shifts (:data:`RANDOM_SHIFTS`); the deterministic ones ignore it.

    Returns:
        The shifted image, of the same type, shape, dtype and device as ``image`` (a ``MetaTensor`` keeps its meta
        data; no transform is recorded). The computation runs in float32 (float64 for float64 input).

    Raises:
        ValueError: unknown ``name`` (the message lists the valid names), ``severity`` not in 0..5, a negative or
            non-integer ``seed``, an image that is not a floating channel-first 2D/3D array or tensor, is empty, or
            holds NaN or inf.
    """
    params = shift_parameters(name, severity)
    seed = _check_seed(seed)
    t = _as_float_tensor(image)
    if severity == 0:
        out = t.clone()
    elif name in RANDOM_SHIFTS:
        rng = np.random.RandomState(seed)
        out = _noise(t, params, rng) if name == "noise" else _bias_field(t, params, rng)
    else:
        out = {"blur": _blur, "contrast": _contrast, "gamma": _gamma, "resolution": _resolution}[name](t, params)
    # MONAI transforms return MetaTensors while meta tracking is on: drop theirs, keep the input's
    out = convert_to_tensor(out, track_meta=False).contiguous()
    return convert_to_dst_type(out, dst=image, dtype=image.dtype)[0]


def _content_seed(seed: int, image: NdarrayOrTensor) -> int:
    """A seed from ``seed`` and a CRC-32 of the image bytes: reproducible per case, different across cases."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    crc = zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"))
    return int(np.random.SeedSequence([seed, crc]).generate_state(1)[0])


class SimulateDomainShiftd(MapTransform):
    """Dict transform applying :func:`apply_shift` to the images under ``keys`` (never to any other key).

    Insert it after loading and normalising the image, e.g. in a bundle's evaluation preprocessing::

        {"_target_": "monai_imbalance.data.SimulateDomainShiftd", "keys": "image", "shift": "noise", "severity": 3}

    With ``per_case_seed=True`` (default) the seed of a random shift is derived from ``seed`` and a CRC-32 of the
    image's bytes, so every case gets its own draw, reproducibly, whatever the order of the cases or the number of
    data-loader workers (the transform holds no random state). With ``per_case_seed=False`` every image is shifted
    with ``seed`` itself, i.e. the same noise field for images of the same shape.

    Args:
        keys: keys of the channel-first float images to shift.
        shift: one of :data:`SHIFTS`.
        severity: 0 (identity) to 5.
        seed: base seed of the random shifts.
        per_case_seed: derive a per-image seed from the image content (see above).
        allow_missing_keys: do not raise if a key is missing.

    Raises:
        ValueError: unknown ``shift``, ``severity`` not in 0..5, a bad ``seed`` (at construction); a bad image (at
            call, see :func:`apply_shift`).
    """

    def __init__(
        self,
        keys: KeysCollection,
        shift: str,
        severity: int,
        seed: int = 0,
        per_case_seed: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.shift = _check_shift(shift)
        self.severity = _check_severity(severity)
        self.seed = _check_seed(seed)
        self.per_case_seed = bool(per_case_seed)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Return a shallow copy of ``data`` with the images under ``keys`` shifted."""
        d = dict(data)
        for key in self.key_iterator(d):
            seed = self.seed
            if self.per_case_seed and self.shift in RANDOM_SHIFTS and self.severity > 0:
                seed = _content_seed(self.seed, d[key])
            d[key] = apply_shift(d[key], self.shift, self.severity, seed=seed)
        return d
