"""The trainer's public surface is what ``__all__`` says, and nothing leaks out."""

from __future__ import annotations

import importlib
import inspect

import pytest

import trainer

MODULES = [
    "calibration",
    "cli",
    "data",
    "distributed",
    "errors",
    "export",
    "ingest",
    "lineage",
    "metrics",
    "model",
    "parity",
    "pipeline",
    "quantize",
    "report",
    "retraining",
    "search",
    "source",
    "tracking",
    "train",
    "trt",
]


def test_every_public_name_resolves() -> None:
    for name in trainer.__all__:
        assert getattr(trainer, name) is not None, name


def test_public_names_are_defined_by_the_trainer() -> None:
    for name in trainer.__all__:
        value = getattr(trainer, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__.startswith("trainer."), name


@pytest.mark.parametrize("module", MODULES)
def test_each_module_declares_what_it_exports(module: str) -> None:
    mod = importlib.import_module(f"trainer.{module}")
    for name in mod.__all__:
        assert hasattr(mod, name), f"trainer.{module}.{name}"
    assert mod.__doc__


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = trainer.no_such_name


def test_no_public_name_is_shadowed_by_a_submodule() -> None:
    # Importing trainer.X sets the package attribute X to the module, so a public
    # function named like a module would turn into that module at random.
    assert not set(trainer.__all__) & set(MODULES)
