"""Every package declares its public surface: a sorted __all__ whose names exist.

A package that exports objects (a facade such as cvlan.controller.mapper) lists those; a package of
modules lists every public module in it, so a module added without being declared fails here."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import pytest

import cvlan

PACKAGES = sorted(
    m.name for m in pkgutil.walk_packages(cvlan.__path__, "cvlan.") if m.ispkg and not m.name.endswith(".pb")
)
NOT_IMPORTABLE = {"cvlan.controller.db.migrations": "alembic's env.py runs only inside alembic"}


def _modules(pkg: ModuleType) -> list[str]:
    return sorted(n for _, n, _ in pkgutil.iter_modules(pkg.__path__) if not n.startswith("_"))


def _exported(name: str) -> tuple[ModuleType, list[str]]:
    mod = importlib.import_module(name)
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    return mod, list(exported)


@pytest.mark.parametrize("name", ["cvlan", *PACKAGES])
def test_all_is_sorted_and_resolves(name: str) -> None:
    mod, exported = _exported(name)
    assert exported == sorted(exported), f"{name}.__all__ is not sorted"
    for n in exported:
        if not hasattr(mod, n):
            importlib.import_module(f"{name}.{n}")  # a submodule: it must import


@pytest.mark.parametrize("name", ["cvlan", *[p for p in PACKAGES if p not in NOT_IMPORTABLE]])
def test_a_package_of_modules_lists_every_public_module(name: str) -> None:
    mod, exported = _exported(name)
    modules = _modules(mod)
    if exported and not set(exported) <= set(modules):
        return  # a facade: it exports objects, its modules are its implementation
    assert exported == modules, f"{name}.__all__ should list its public modules {modules}"
