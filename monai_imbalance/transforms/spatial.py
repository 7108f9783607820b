# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Spatial dict transforms that keep the entries of a data dictionary they do not own.

:class:`MetaSafeSpacingd` is MONAI's ``Spacingd`` for data dictionaries that carry more than images and meta
dictionaries. After resampling ``<key>``, MONAI 1.6's ``Spacingd`` calls ``.update(meta)`` on every entry whose name
starts with ``<key>_`` (meant for the legacy ``<key>_meta_dict``). MONAI Label puts the request's file path under
``image_path`` (a string) into the dictionary its pre-transforms receive, so a bundle whose ``inference.json``
resamples ``image`` with ``Spacingd`` fails in a MONAI Label server with ``'str' object has no attribute 'update'``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, MutableMapping
from typing import Any

from monai.transforms import Spacingd

__all__ = ["MetaSafeSpacingd"]


class MetaSafeSpacingd(Spacingd):
    """``Spacingd`` whose refresh of the legacy meta dictionaries leaves entries that are not dictionaries alone.

    The resampling, the meta data of the resampled tensors, the refresh of ``<key>_meta_dict`` style dictionaries,
    the inverse (``Invertd``) and lazy resampling are ``Spacingd``'s own; the only difference is that entries named
    ``<key>_*`` that are not mutable mappings (e.g. MONAI Label's ``image_path`` string next to ``image``) are set
    aside during the call and returned unchanged, instead of failing on ``.update``. Takes ``Spacingd``'s arguments.
    """

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:
        """Resample the ``keys`` as ``Spacingd`` does; entries ``<key>_*`` that are not dictionaries pass unchanged.

        Args:
            data: the data dictionary.
            lazy: as in ``Spacingd.__call__``.

        Returns:
            The resampled data dictionary, with every entry set aside put back as it was.
        """
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.key_iterator(d))
        aside = {
            k: v
            for k, v in d.items()
            if isinstance(k, str) and k.startswith(prefixes) and not isinstance(v, MutableMapping)
        }
        for k in aside:
            del d[k]
        out = super().__call__(d, lazy=lazy)
        out.update(aside)
        return out
