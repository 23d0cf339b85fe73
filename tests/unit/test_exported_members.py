"""Every package declares its public surface: a sorted __all__ whose names exist."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import cvlan

PACKAGES = sorted(
    m.name for m in pkgutil.walk_packages(cvlan.__path__, "cvlan.") if m.ispkg and not m.name.endswith(".pb")
)


@pytest.mark.parametrize("name", ["cvlan", *PACKAGES])
def test_all_is_sorted_and_resolves(name: str) -> None:
    mod = importlib.import_module(name)
    exported = getattr(mod, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    for n in exported:
        assert hasattr(mod, n), f"{name}.__all__ names {n!r}, which does not exist"
