"""Each package's public surface is what its ``__all__`` declares, and nothing leaks."""

from __future__ import annotations

import importlib
import types

import pytest

#: The roles' packages, and the registry's subpackages that keep internals behind them.
PACKAGES = [
    "corral",
    "agent",
    "registry",
    "trainer",
    "registry.alerts",
    "registry.retention",
    "registry.rollout",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_public_names_are_declared(name: str) -> None:
    package = importlib.import_module(name)
    declared = set(package.__all__)
    public = {
        n
        for n, v in vars(package).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public <= declared | {"annotations"}, f"{name} leaks {sorted(public - declared)}"
    for member in declared:
        assert hasattr(package, member), f"{name}.__all__ names missing {member}"
