"""Errors of the trainer, rooted by whose fault it is::

    TrainerError
    ├── TrainConfigError       the caller asked for something impossible (unknown
    │   │                      class, bad bundle name or version, busy output dir)
    │   └── CalibrationDataError  int8 calibration data is missing, empty or unusable
    ├── DatasetError           the training data is missing, malformed or untrusted
    │   └── UnsafePickleError  a data file's pickle references a forbidden global
    ├── ParentModelError       a model to retrain from cannot be used (no lineage,
    │                          weights that do not reproduce its golden outputs)
    ├── ExportError            the trained model could not be written as a bundle
    │   ├── ParityError        ONNX Runtime and PyTorch disagree on the same inputs
    │   ├── QuantizationError  the INT8 variant loses too much accuracy
    │   ├── EngineBuildError   TensorRT could not build an engine from the fp32 model
    │   └── VariantParityError a TensorRT variant strays too far from fp32
    ├── TensorRTUnavailableError  this machine has no NVIDIA GPU / CUDA / TensorRT,
    │                          or an onnxruntime without its TensorRT provider
    ├── TrackingError          the MLflow tracking server or store refused or failed
    └── DistributedError       the training processes could not meet or disagree

``TrainConfigError`` is the user's to fix (the CLI exits with code 2), and so is
``TensorRTUnavailableError`` (run on a machine that has what it names); the
others mean the environment, the data or the trainer itself is at fault (exit
code 1).
Registry failures while fetching a parent model stay ``corral.errors.ApiError``
and ``BundleError``, raised by the shared client.
"""

from __future__ import annotations

from typing import Any

from corral.errors import CorralError

__all__ = [
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
]


class TrainerError(CorralError):
    """Base of the trainer's errors."""


class TrainConfigError(TrainerError):
    """The training or bundle settings are invalid; nothing was written."""


class CalibrationDataError(TrainConfigError):
    """The images asked for to calibrate an int8 engine cannot be used; nothing was built.

    The path is missing, lists no image, or every image it lists was skipped. It is
    the caller's to fix (exit code 2): point at other data, or leave the option out to
    calibrate on the bundle's golden samples.
    """


class DatasetError(TrainerError):
    """The training data is missing, malformed or inconsistent."""


class UnsafePickleError(DatasetError):
    """A pickled data file references a global outside the allowed numpy names."""


class ParentModelError(TrainerError):
    """A model to retrain from cannot be used as asked.

    Its bundle lacks the lineage a retrain needs, or (with ``--init-weights``) the
    weights read from its ONNX file do not reproduce its golden outputs.
    """


class TrackingError(TrainerError):
    """MLflow refused a tracking call or could not be reached; wraps its exception."""


class DistributedError(TrainerError):
    """The training processes could not form a group, or disagree on what to train."""


class ExportError(TrainerError):
    """The model could not be exported to ONNX or written as a bundle."""


class ParityError(ExportError):
    """The exported ONNX model's outputs differ from PyTorch's beyond the tolerance.

    Attributes:
        max_abs_diff: the largest absolute difference found.
        tolerance: the limit it broke.
    """

    def __init__(self, max_abs_diff: float, tolerance: float) -> None:
        super().__init__(
            f"ONNX Runtime and PyTorch outputs differ by up to {max_abs_diff:.3g}, "
            f"expected at most {tolerance:.3g}; the export is not faithful, do not ship it"
        )
        self.max_abs_diff = max_abs_diff
        self.tolerance = tolerance


class QuantizationError(ExportError):
    """The INT8 file loses more accuracy than allowed; ``--force-int8`` keeps it anyway.

    Attributes:
        delta_points: the accuracy lost, in percentage points.
        limit_points: the most allowed.
    """

    def __init__(self, delta_points: float, limit_points: float) -> None:
        super().__init__(
            f"the INT8 model is {delta_points:.2f} points less accurate than fp32 on the test "
            f"split, expected at most {limit_points:.2f}; ship fp32 only, or pass --force-int8"
        )
        self.delta_points = delta_points
        self.limit_points = limit_points


class EngineBuildError(ExportError):
    """ONNX Runtime's TensorRT provider could not build or dump an engine for the model."""


class VariantParityError(ExportError):
    """A built variant's outputs differ from the fp32 model's beyond its precision's tolerance.

    ``corral model build-trt --force`` publishes it anyway.

    Attributes:
        report: the parity report (``trainer.parity.ParityReport.to_dict``).
    """

    def __init__(self, report: dict[str, Any]) -> None:
        needed = float(report["tolerance"]["min_top1_agreement"])
        super().__init__(
            f"the {report['precision']} variant differs from fp32 by up to "
            f"{report['max_abs_diff']:.3g} (limit {report['limit']:.3g}) and agrees on the top "
            f"class for {100 * report['top1_agreement']:.1f} % of {report['samples']} golden "
            f"samples (at least {100 * needed:.1f} % needed); it is not published: try fp16 "
            "instead of int8, or pass --force to publish it anyway"
        )
        self.report = report


class TensorRTUnavailableError(TrainerError):
    """This machine cannot build TensorRT engines; the message says what is missing."""
