# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The common interface of the performance estimators: ``fit`` on labelled validation logits, ``estimate`` on
unlabelled logits, and JSON-able fitted parameters.

Reference: Z. Li, K. Kamnitsas, M. Islam, C. Chen, B. Glocker, "Estimating model performance under domain shifts with
class-specific confidence scores", MICCAI 2022, method section.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["PerformanceEstimator"]

_REGISTRY: dict[str, type[PerformanceEstimator]] = {}


class PerformanceEstimator:
    """Base class of every estimator (classification and segmentation).

    A subclass implements ``fit(logits, labels) -> self`` and ``estimate(logits) -> dict`` and keeps its fitted
    parameters in ``self._params`` (a mapping of names to floats or nested lists of floats) and its constructor
    arguments in ``self._config``, so that :meth:`to_dict` / :meth:`from_dict` round-trip through JSON (a bundle saves
    the fitted estimator as a ``.json`` file, no pickle).

    Attributes:
        method: the estimator's name (``"ac"``, ``"ts"``, ``"vs"``, ``"norcal"``, ``"doc"``, ``"atc"``,
            ``"ts-atc"``, ``"qc"``).
        class_specific: one parameter per (predicted) class instead of one for all.
        task: ``"classification"`` or ``"segmentation"``.
    """

    task: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(self, method: str, class_specific: bool, config: Mapping[str, Any]) -> None:
        self.method = method
        self.class_specific = bool(class_specific)
        self._config = dict(config)
        self._params: dict[str, Any] = {}
        self._num_classes: int | None = None
        self._fitted = False

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_dict` of a fitted estimator) has set the parameters."""
        return self._fitted

    @property
    def num_classes(self) -> int | None:
        """The number of classes ``C`` seen at fit (``None`` before)."""
        return self._num_classes

    @property
    def params(self) -> dict[str, Any]:
        """A copy of the fitted parameters (floats and lists of floats)."""
        return copy.deepcopy(self._params)

    def _name(self) -> str:
        cs = "class-specific " if self.class_specific else ""
        return f"{type(self).__name__}({cs}{self.method!r})"

    def _require_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError(
                f"{self._name()} is not fitted: call fit(logits, labels) on labelled validation data (or load fitted "
                "parameters with from_dict) before estimate()."
            )

    def _set_fitted(self, num_classes: int, params: Mapping[str, Any]) -> None:
        self._num_classes = int(num_classes)
        self._params = {k: _json_value(v, k) for k, v in params.items()}
        self._fitted = True

    def to_dict(self) -> dict[str, Any]:
        """The estimator as a JSON-able dict: type, task, method, constructor arguments and fitted parameters."""
        return {
            "type": type(self).__name__,
            "task": self.task,
            "method": self.method,
            "class_specific": self.class_specific,
            "config": copy.deepcopy(self._config),
            "fitted": self._fitted,
            "num_classes": self._num_classes,
            "params": copy.deepcopy(self._params),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PerformanceEstimator:
        """Rebuild an estimator saved by :meth:`to_dict`.

        Called on :class:`PerformanceEstimator` itself it dispatches on ``data["type"]``; called on a subclass the
        type must match.

        Raises:
            ValueError: ``data`` is not such a dict, names an unknown type or another subclass, or lacks a key.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"from_dict expects the dict written by to_dict(), got {type(data).__name__}.")
        missing = [
            k
            for k in ("type", "method", "class_specific", "config", "fitted", "num_classes", "params")
            if k not in data
        ]
        if missing:
            raise ValueError(f"from_dict: the dict lacks the keys {missing} (it was not written by to_dict()).")
        kind = data["type"]
        target = _REGISTRY.get(kind)
        if target is None:
            raise ValueError(f"from_dict: unknown estimator type {kind!r}; known: {sorted(_REGISTRY)}.")
        if cls is not PerformanceEstimator and not issubclass(target, cls):
            raise ValueError(f"{cls.__name__}.from_dict got a dict of type {kind!r}.")
        est = target._from_config(str(data["method"]), bool(data["class_specific"]), dict(data["config"]))
        if data["fitted"]:
            if data["num_classes"] is None:
                raise ValueError("from_dict: a fitted estimator needs num_classes.")
            est._set_fitted(int(data["num_classes"]), dict(data["params"]))
            est._after_load()
        return est

    @classmethod
    def _from_config(cls, method: str, class_specific: bool, config: dict[str, Any]) -> PerformanceEstimator:
        return cls(method=method, class_specific=class_specific, **config)

    def _after_load(self) -> None:
        """Hook for subclasses that check loaded parameters."""

    def __repr__(self) -> str:
        state = "fitted" if self._fitted else "not fitted"
        return f"{self._name()} [{state}]"


def _json_value(value: Any, key: str) -> Any:
    """Floats, ints, strings, bools, None and nested lists / dicts of them (tensors and arrays converted)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _json_value(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v, key) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"fitted parameter {key!r} holds a non-finite value {value}.")
        return float(value)
    raise ValueError(f"fitted parameter {key!r} holds a value of type {type(value).__name__}, not a float or list.")
