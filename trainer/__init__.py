"""Corral trainer: train image models and write them as Corral bundles.

The flow, one module per step::

    source.py   Animal-MNIST's data files, read with a restricted unpickler
    data.py     -> content-hashed, versioned Dataset (train/test by hash)
    model.py    AnimalNet, a small configurable CNN
    train.py    TrainConfig -> train_model() -> TrainResult (model + test Evaluation)
    metrics.py  accuracy, per-class precision/recall/F1, confusion, drift baseline
    lineage.py  dataset version, code commit, hyperparameters, library versions
    export.py   ONNX export, ONNX Runtime parity check, bundle directory
    cli.py      ``corral train``

The public names below load lazily (PEP 562): ``from trainer.cli import train``
must not pull in torch, so importing this package costs nothing until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    from trainer.data import (
        INPUT_SCALE,
        Dataset,
        Sample,
        build_dataset,
        content_hash,
        load_dataset,
        parse_classes,
        preprocess,
        split_of,
        write_image_folder,
    )
    from trainer.errors import (
        DatasetError,
        ExportError,
        ParityError,
        TrainConfigError,
        TrainerError,
        UnsafePickleError,
    )
    from trainer.export import (
        ExportReport,
        check_bundle_identity,
        check_output_dir,
        check_parity,
        export_onnx,
        write_bundle,
    )
    from trainer.lineage import code_version, lineage_for
    from trainer.metrics import (
        ClassMetrics,
        Evaluation,
        drift_baseline,
        evaluate_predictions,
        softmax,
    )
    from trainer.model import AnimalNet
    from trainer.source import ANIMAL_CLASSES, load_animal_mnist, restricted_loads
    from trainer.train import (
        EpochStats,
        TrainConfig,
        TrainResult,
        evaluate,
        predict_logits,
        train_model,
    )

_WHERE = {
    "data": (
        "INPUT_SCALE",
        "Dataset",
        "Sample",
        "build_dataset",
        "content_hash",
        "load_dataset",
        "parse_classes",
        "preprocess",
        "split_of",
        "write_image_folder",
    ),
    "errors": (
        "DatasetError",
        "ExportError",
        "ParityError",
        "TrainConfigError",
        "TrainerError",
        "UnsafePickleError",
    ),
    "export": (
        "ExportReport",
        "check_bundle_identity",
        "check_output_dir",
        "check_parity",
        "export_onnx",
        "write_bundle",
    ),
    "lineage": ("code_version", "lineage_for"),
    "metrics": ("ClassMetrics", "Evaluation", "drift_baseline", "evaluate_predictions", "softmax"),
    "model": ("AnimalNet",),
    "source": ("ANIMAL_CLASSES", "load_animal_mnist", "restricted_loads"),
    "train": (
        "EpochStats",
        "TrainConfig",
        "TrainResult",
        "evaluate",
        "predict_logits",
        "train_model",
    ),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "ANIMAL_CLASSES",
    "INPUT_SCALE",
    "AnimalNet",
    "ClassMetrics",
    "Dataset",
    "DatasetError",
    "EpochStats",
    "Evaluation",
    "ExportError",
    "ExportReport",
    "ParityError",
    "Sample",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainerError",
    "UnsafePickleError",
    "build_dataset",
    "check_bundle_identity",
    "check_output_dir",
    "check_parity",
    "code_version",
    "content_hash",
    "drift_baseline",
    "evaluate",
    "evaluate_predictions",
    "export_onnx",
    "lineage_for",
    "load_animal_mnist",
    "load_dataset",
    "parse_classes",
    "predict_logits",
    "preprocess",
    "restricted_loads",
    "softmax",
    "split_of",
    "train_model",
    "write_bundle",
    "write_image_folder",
]


def __getattr__(name: str) -> _Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"trainer.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
