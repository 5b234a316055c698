"""Corral trainer: train image models and write them as Corral bundles.

The flow, one module per step::

    source.py   Animal-MNIST's data files, read with a restricted unpickler
    data.py     -> content-hashed, versioned Dataset (train/validation/test by hash)
    ingest.py   image folders and CSV/JSONL manifests -> Dataset, bad files reported
    model.py    AnimalNet, a small configurable CNN
    train.py    TrainConfig -> train_model() -> TrainResult (model + test Evaluation)
    metrics.py  accuracy, per-class precision/recall/F1, confusion, drift baseline
    lineage.py  dataset version, code commit, hyperparameters, library versions
    quantize.py optional INT8 variant (ONNX Runtime static quantization), checked
    trt.py      TensorRT variants of a pushed version (EP-context models), for one GPU
    calibration.py  int8 calibration images for trt.py: folder, manifest or dataset.json
    parity.py   a derived variant against fp32 in ONNX Runtime: max diff, top-1 agreement
    export.py   ONNX export, ONNX Runtime parity check, bundle directory
    report.py   report.json, report.md and pictures beside the bundle
    search.py   grid/random hyperparameter search, chosen on the validation split
    distributed.py  torchrun / DistributedDataParallel on gloo; only rank 0 writes
    tracking.py optional MLflow tracking: params, per-epoch metrics, artifacts, trials
    pipeline.py data -> train or search -> bundle, report, MLflow run (one run)
    retraining.py  retrain(): a parent bundle's config, data (+ new data), weights
    cli.py      ``corral train``

The public names below load lazily (PEP 562): ``from trainer.cli import train``
must not pull in torch, so importing this package costs nothing until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    from trainer.calibration import CalibrationSet, check_calibration_source, load_calibration
    from trainer.data import (
        INPUT_SCALE,
        Dataset,
        Sample,
        build_dataset,
        check_labels,
        content_hash,
        fit_image,
        load_dataset,
        merge_datasets,
        parse_classes,
        preprocess,
        split_of,
        write_image_folder,
    )
    from trainer.distributed import process_group
    from trainer.errors import (
        CalibrationDataError,
        DatasetError,
        DistributedError,
        EngineBuildError,
        ExportError,
        ParentModelError,
        ParityError,
        QuantizationError,
        TensorRTUnavailableError,
        TrackingError,
        TrainConfigError,
        TrainerError,
        UnsafePickleError,
        VariantParityError,
    )
    from trainer.export import (
        ExportReport,
        check_bundle_identity,
        check_output_dir,
        check_parity,
        export_onnx,
        write_bundle,
    )
    from trainer.ingest import IngestReport, ingest_images, list_sources, load_image
    from trainer.lineage import code_version, dataset_summary, dependency_versions, lineage_for
    from trainer.metrics import (
        ClassMetrics,
        Evaluation,
        drift_baseline,
        evaluate_predictions,
        expected_calibration_error,
        reliability,
        softmax,
    )
    from trainer.model import AnimalNet
    from trainer.parity import ParityReport, check_variant_parity, compare_outputs
    from trainer.pipeline import Packaged, TrainingData, load_training_data, train_and_package
    from trainer.quantize import Int8Report, quantize_int8
    from trainer.report import write_report
    from trainer.retraining import (
        Parent,
        initial_weights,
        load_parent,
        parent_config,
        retrain,
        weights_from_onnx,
    )
    from trainer.search import SearchResult, Trial, run_search
    from trainer.source import ANIMAL_CLASSES, load_animal_mnist, restricted_loads
    from trainer.tracking import MlflowTracker, NullTracker, Tracker, open_tracker
    from trainer.train import (
        EpochStats,
        TrainConfig,
        TrainResult,
        evaluate,
        predict_logits,
        train_model,
    )
    from trainer.trt import TensorRTInfo, TrtVariant, build_trt_variant, probe

_WHERE = {
    "calibration": ("CalibrationSet", "check_calibration_source", "load_calibration"),
    "data": (
        "INPUT_SCALE",
        "Dataset",
        "Sample",
        "build_dataset",
        "check_labels",
        "content_hash",
        "fit_image",
        "load_dataset",
        "merge_datasets",
        "parse_classes",
        "preprocess",
        "split_of",
        "write_image_folder",
    ),
    "distributed": ("process_group",),
    "errors": (
        "CalibrationDataError",
        "DatasetError",
        "DistributedError",
        "EngineBuildError",
        "ExportError",
        "ParentModelError",
        "ParityError",
        "QuantizationError",
        "TensorRTUnavailableError",
        "TrackingError",
        "TrainConfigError",
        "TrainerError",
        "UnsafePickleError",
        "VariantParityError",
    ),
    "export": (
        "ExportReport",
        "check_bundle_identity",
        "check_output_dir",
        "check_parity",
        "export_onnx",
        "write_bundle",
    ),
    "ingest": ("IngestReport", "ingest_images", "list_sources", "load_image"),
    "lineage": ("code_version", "dataset_summary", "dependency_versions", "lineage_for"),
    "metrics": (
        "ClassMetrics",
        "Evaluation",
        "drift_baseline",
        "evaluate_predictions",
        "expected_calibration_error",
        "reliability",
        "softmax",
    ),
    "model": ("AnimalNet",),
    "pipeline": ("Packaged", "TrainingData", "load_training_data", "train_and_package"),
    "parity": ("ParityReport", "check_variant_parity", "compare_outputs"),
    "quantize": ("Int8Report", "quantize_int8"),
    "report": ("write_report",),
    "retraining": (
        "Parent",
        "initial_weights",
        "load_parent",
        "parent_config",
        "retrain",
        "weights_from_onnx",
    ),
    "search": ("SearchResult", "Trial", "run_search"),
    "source": ("ANIMAL_CLASSES", "load_animal_mnist", "restricted_loads"),
    "tracking": ("MlflowTracker", "NullTracker", "Tracker", "open_tracker"),
    "trt": ("TensorRTInfo", "TrtVariant", "build_trt_variant", "probe"),
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
    "CalibrationDataError",
    "CalibrationSet",
    "ClassMetrics",
    "Dataset",
    "DatasetError",
    "DistributedError",
    "EngineBuildError",
    "EpochStats",
    "Evaluation",
    "ExportError",
    "ExportReport",
    "IngestReport",
    "Int8Report",
    "MlflowTracker",
    "NullTracker",
    "Packaged",
    "Parent",
    "ParentModelError",
    "ParityError",
    "ParityReport",
    "QuantizationError",
    "Sample",
    "SearchResult",
    "TensorRTInfo",
    "TensorRTUnavailableError",
    "Tracker",
    "TrackingError",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "TrainerError",
    "TrainingData",
    "Trial",
    "TrtVariant",
    "UnsafePickleError",
    "VariantParityError",
    "build_dataset",
    "build_trt_variant",
    "check_bundle_identity",
    "check_calibration_source",
    "check_labels",
    "check_output_dir",
    "check_parity",
    "check_variant_parity",
    "code_version",
    "compare_outputs",
    "content_hash",
    "dataset_summary",
    "dependency_versions",
    "drift_baseline",
    "evaluate",
    "evaluate_predictions",
    "expected_calibration_error",
    "export_onnx",
    "fit_image",
    "ingest_images",
    "initial_weights",
    "lineage_for",
    "list_sources",
    "load_animal_mnist",
    "load_calibration",
    "load_dataset",
    "load_image",
    "load_parent",
    "load_training_data",
    "merge_datasets",
    "open_tracker",
    "parent_config",
    "parse_classes",
    "predict_logits",
    "preprocess",
    "probe",
    "process_group",
    "quantize_int8",
    "reliability",
    "restricted_loads",
    "retrain",
    "run_search",
    "softmax",
    "split_of",
    "train_and_package",
    "train_model",
    "weights_from_onnx",
    "write_bundle",
    "write_image_folder",
    "write_report",
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
