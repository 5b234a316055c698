"""Optional INT8 variant: static quantization with ONNX Runtime, checked on the test split.

The order of steps in :func:`quantize_int8`, and why:

1. Pre-process a copy of the fp32 file (``quant_pre_process``: shape inference
   and graph clean-up, as ONNX Runtime asks before quantizing); the bundle keeps
   the original fp32 file.
2. Calibrate on training samples only (a :class:`CalibrationDataReader` over at
   most ``CALIBRATION_SAMPLES`` of them, in hash order so the same data gives
   the same ranges): the test split stays unseen by every step that shapes the
   file.
3. ``quantize_static`` in QDQ format, per-channel int8 weights and uint8
   activations (the combination ONNX Runtime's CPU kernels and TensorRT both take).
4. Run the fp32 and int8 files through ONNX Runtime on the whole test split and
   compare accuracy. The delta, in points (percentage points), is recorded; above
   ``MAX_ACCURACY_LOSS_POINTS`` the variant is refused with
   :class:`QuantizationError` unless the caller forces it.

The bundle's golden samples are the fp32 file's outputs. The int8 file's own
expected outputs on the same golden inputs, with a tolerance wide enough for
quantization, go into its ``files`` entry as ``golden`` (an extra field that
``corral.BundleFile`` keeps on a round trip), so an agent that runs the int8
variant can smoke-test it against the right numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from trainer.errors import ExportError, QuantizationError

__all__ = [
    "CALIBRATION_SAMPLES",
    "MAX_ACCURACY_LOSS_POINTS",
    "Int8Report",
    "quantize_int8",
]

logger = logging.getLogger(__name__)

CALIBRATION_SAMPLES = 512
MAX_ACCURACY_LOSS_POINTS = 1.0
_BATCH = 64


class _Batches(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
    """Feeds preprocessed training inputs to the calibrator, one batch at a time."""

    def __init__(self, input_name: str, inputs: np.ndarray) -> None:
        self._batches: Iterator[np.ndarray] = (
            inputs[start : start + _BATCH] for start in range(0, len(inputs), _BATCH)
        )
        self._name = input_name

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {self._name: batch}


@dataclass(frozen=True)
class Int8Report:
    """How the int8 file compares with the fp32 one on the test split."""

    accuracy_fp32: float
    accuracy_int8: float
    calibration_samples: int
    max_logit_diff: float

    @property
    def delta_points(self) -> float:
        """Accuracy lost by quantizing, in percentage points (negative: it gained)."""
        return (self.accuracy_fp32 - self.accuracy_int8) * 100.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, for the lineage and the report."""
        return {
            "accuracy_fp32": self.accuracy_fp32,
            "accuracy_int8": self.accuracy_int8,
            "accuracy_delta_points": self.delta_points,
            "calibration_samples": self.calibration_samples,
            "max_logit_diff": self.max_logit_diff,
            "format": "QDQ, per-channel int8 weights, uint8 activations",
        }


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_logits(path: Path, inputs: np.ndarray, batch_size: int = _BATCH) -> np.ndarray:
    """ONNX Runtime (CPU) logits of a model file.

    Raises:
        ExportError: ONNX Runtime cannot load or run the file.
    """
    try:
        session = _session(path)
        name = session.get_inputs()[0].name
        chunks = [
            session.run(None, {name: inputs[start : start + batch_size]})[0]
            for start in range(0, len(inputs), batch_size)
        ]
    except Exception as e:
        # onnxruntime raises its own pybind exception types; wrap them all here.
        raise ExportError(f"ONNX Runtime cannot run {path.name}: {e}") from e
    return np.concatenate(chunks).astype(np.float32)


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration_inputs: np.ndarray,
    test_inputs: np.ndarray,
    test_labels: np.ndarray,
    force: bool = False,
) -> Int8Report:
    """Write a statically quantized copy of ``fp32_path`` and check its accuracy.

    Args:
        fp32_path: the exported fp32 model.
        int8_path: where to write the int8 model.
        calibration_inputs: preprocessed training inputs; the first
            ``CALIBRATION_SAMPLES`` calibrate the activation ranges.
        test_inputs: preprocessed test inputs.
        test_labels: their label indices.
        force: keep the file even when it loses more than
            ``MAX_ACCURACY_LOSS_POINTS`` points.

    Returns:
        The comparison.

    Raises:
        QuantizationError: the int8 file loses too much accuracy (and ``force`` is
            false); the file is removed.
        ExportError: quantization or ONNX Runtime failed.
    """
    calibration = np.ascontiguousarray(calibration_inputs[:CALIBRATION_SAMPLES])
    if len(calibration) == 0 or len(test_inputs) == 0:
        raise ExportError("INT8 needs training samples to calibrate and test samples to check")
    input_name = _session(fp32_path).get_inputs()[0].name
    prepared = int8_path.with_name(f".{int8_path.stem}.prepared.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(
            str(prepared),
            str(int8_path),
            _Batches(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    except Exception as e:
        # The quantizer raises whatever onnx, numpy or its own code raised.
        raise ExportError(f"INT8 quantization of {fp32_path.name} failed: {e}") from e
    finally:
        prepared.unlink(missing_ok=True)
    fp32 = run_logits(fp32_path, test_inputs)
    int8 = run_logits(int8_path, test_inputs)
    report = Int8Report(
        accuracy_fp32=float(np.mean(fp32.argmax(axis=1) == test_labels)),
        accuracy_int8=float(np.mean(int8.argmax(axis=1) == test_labels)),
        calibration_samples=len(calibration),
        max_logit_diff=float(np.max(np.abs(fp32 - int8))),
    )
    logger.info("int8: %s", report.to_dict())
    if report.delta_points > MAX_ACCURACY_LOSS_POINTS and not force:
        int8_path.unlink(missing_ok=True)
        raise QuantizationError(report.delta_points, MAX_ACCURACY_LOSS_POINTS)
    return report
