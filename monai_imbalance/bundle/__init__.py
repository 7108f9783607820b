"""Bundle tooling: the Model Zoo's checks with MONAI's own functions, offline
(``python -m monai_imbalance.bundle verify bundles/<name>``; see :mod:`monai_imbalance.bundle.verify`)."""

from __future__ import annotations

from .verify import (
    CHECKS,
    SCHEMA_PATH,
    CheckResult,
    VerificationError,
    check_configs,
    check_metadata,
    check_net_in_out,
    check_torchscript,
    config_combinations,
    instantiate_ids,
    verify_bundle,
)

__all__ = [
    "CHECKS",
    "SCHEMA_PATH",
    "CheckResult",
    "VerificationError",
    "check_configs",
    "check_metadata",
    "check_net_in_out",
    "check_torchscript",
    "config_combinations",
    "instantiate_ids",
    "verify_bundle",
]
