# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""One home per method: the import closure of each method's engine module holds no other method's module.

The closure is taken statically (``ast``) over the package: a module's ``import`` / ``from ... import`` statements,
followed recursively, with a package's ``__init__`` counted when a module imports from the package (it runs on that
import) and a submodule counted when it is imported by name. The package ``__init__`` files *above* a module (which
Python runs first whatever the module imports) are not the module's own dependencies and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "monai_imbalance"
PACKAGE = "monai_imbalance"


def _file(module: str) -> Path | None:
    parts = module.split(".")[1:]
    base = ROOT.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imports(module: str) -> set[str]:
    """The package modules that ``module``'s own statements import."""
    path = _file(module)
    assert path is not None, module
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith(PACKAGE) and _file(name) is not None:
                found.add(name)
    return found


def closure(module: str) -> set[str]:
    """``module`` and every package module it imports, directly or not."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_imports(current) - seen)
    return seen


ASYMMETRIC = {"monai_imbalance.engines.regularized_trainer", "monai_imbalance.engines.adversarial",
              "monai_imbalance.engines.mixup"}  # fmt: skip
COLAB = {"monai_imbalance.engines.context_labels", "monai_imbalance.networks.context_generator"}
TRA = {"monai_imbalance.engines.training_policy"}
TEA = {"monai_imbalance.engines.test_time_policy"}
POST_HOC_TEA = {"monai_imbalance.engines.test_time_policy_trainer"}
AUGMENTATION = {"monai_imbalance.engines.augmentation_policy", "monai_imbalance.engines.augmentation_losses",
                "monai_imbalance.augment"} | TRA | TEA | POST_HOC_TEA  # fmt: skip
SHARED_LOOKAHEAD = {"monai_imbalance.engines.lookahead"}


@pytest.mark.parametrize(
    "module, foreign",
    [
        ("monai_imbalance.engines.regularized_trainer", COLAB | AUGMENTATION | SHARED_LOOKAHEAD),
        ("monai_imbalance.engines.context_labels", ASYMMETRIC | AUGMENTATION),
        ("monai_imbalance.engines.augmentation_policy", ASYMMETRIC | COLAB | POST_HOC_TEA),
        ("monai_imbalance.engines.training_policy", ASYMMETRIC | COLAB | TEA | POST_HOC_TEA),
        ("monai_imbalance.engines.test_time_policy", ASYMMETRIC | COLAB | TRA | SHARED_LOOKAHEAD | POST_HOC_TEA),
        (
            "monai_imbalance.engines.test_time_policy_trainer",
            ASYMMETRIC | COLAB | TRA | SHARED_LOOKAHEAD | {"monai_imbalance.engines.augmentation_policy"},
        ),
        ("monai_imbalance.engines.lookahead", ASYMMETRIC | COLAB | AUGMENTATION),
    ],
)
def test_a_method_imports_no_other_method(module, foreign):
    found = closure(module)
    assert module in found and len(found) > 2  # the walk itself works (utils, the shared modules)
    assert not (found & foreign), sorted(found & foreign)


def test_the_closure_follows_package_imports():
    """The walk would see a violation: the engines package imports every method, CoLab imports its networks."""
    assert ASYMMETRIC | COLAB | AUGMENTATION <= closure("monai_imbalance.engines")
    assert "monai_imbalance.networks.context_generator" in closure("monai_imbalance.engines.context_labels")
    assert "monai_imbalance.engines.lookahead" in closure("monai_imbalance.engines.augmentation_policy")
    assert TRA | TEA <= closure("monai_imbalance.engines.augmentation_policy")  # the hook joins the two learners
