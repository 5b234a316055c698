"""Parity of a derived variant (a TensorRT build) against the fp32 model in ONNX Runtime.

The reference is the bundle's fp32 ONNX file run by ONNX Runtime's CPU
execution provider: the file the registry signed and the runtime every agent
has. The candidate runs the same inputs (the bundle's golden samples). Two
numbers decide, both on the raw outputs the agent sees (logits or
probabilities, as the bundle says):

- ``max_abs_diff``: the largest absolute difference over every output;
- ``top1_agreement``: the share of samples whose top class is the same.

A variant passes when ``max_abs_diff <= atol + rtol * max|reference|`` (the
limit scales with the outputs, so a model with large logits is not refused
for rounding that a small one would pass) and its agreement is at least
``min_top1_agreement``. The honest limits differ by precision
(:data:`TOLERANCES`): fp16 keeps 10 mantissa bits, so logits move by about a
per cent of their range at most; int8 rounds every activation to 256 levels,
so a tenth of the range is usual. With the handful of golden samples a bundle
carries (eight from ``corral train``) the agreement limits mean every sample
must agree; a near-tie that flips is a reason to look, and ``--force`` to
publish anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from corral.bundle import Bundle
from trainer.errors import ExportError, VariantParityError

__all__ = [
    "TOLERANCES",
    "ParityReport",
    "Tolerance",
    "check_variant_parity",
    "compare_outputs",
    "golden_inputs",
    "run_onnx",
]


@dataclass(frozen=True)
class Tolerance:
    """How far a variant may stray from the fp32 reference and still be published."""

    atol: float
    rtol: float
    min_top1_agreement: float

    def limit(self, reference: np.ndarray) -> float:
        """The largest allowed absolute difference for outputs like ``reference``."""
        scale = float(np.max(np.abs(reference))) if reference.size else 0.0
        return self.atol + self.rtol * scale

    def to_dict(self) -> dict[str, float]:
        return {
            "atol": self.atol,
            "rtol": self.rtol,
            "min_top1_agreement": self.min_top1_agreement,
        }


#: Per precision: fp16 within 1 % of the output range, int8 within 10 %.
TOLERANCES: Mapping[str, Tolerance] = {
    "fp16": Tolerance(atol=1e-2, rtol=1e-2, min_top1_agreement=0.99),
    "int8": Tolerance(atol=5e-2, rtol=1e-1, min_top1_agreement=0.95),
}


@dataclass(frozen=True)
class ParityReport:
    """How a variant's outputs compare with the fp32 reference on the same inputs."""

    precision: str
    samples: int
    max_abs_diff: float
    mean_abs_diff: float
    top1_agreement: float
    limit: float
    tolerance: Tolerance

    @property
    def passed(self) -> bool:
        """Whether the variant is within its precision's tolerance."""
        return bool(
            np.isfinite(self.max_abs_diff)
            and self.max_abs_diff <= self.limit
            and self.top1_agreement >= self.tolerance.min_top1_agreement
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": "fp32 in ONNX Runtime (CPUExecutionProvider)",
            "precision": self.precision,
            "samples": self.samples,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "top1_agreement": self.top1_agreement,
            "limit": self.limit,
            "tolerance": self.tolerance.to_dict(),
            "passed": self.passed,
        }


def compare_outputs(reference: np.ndarray, candidate: np.ndarray, precision: str) -> ParityReport:
    """Compare a variant's N x classes outputs with the fp32 reference's.

    Args:
        reference: the fp32 model's outputs.
        candidate: the variant's outputs on the same inputs.
        precision: ``fp16`` or ``int8``; picks the tolerance.

    Returns:
        The report; a NaN or infinite candidate output makes ``max_abs_diff`` infinite.

    Raises:
        ExportError: the shapes differ, there are no samples, or the precision is unknown.
    """
    if precision not in TOLERANCES:
        raise ExportError(f"no parity tolerance for precision {precision!r}; use fp16 or int8")
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    if reference.shape != candidate.shape or reference.ndim != 2 or not len(reference):
        raise ExportError(
            f"cannot compare outputs of shape {candidate.shape} with the reference's "
            f"{reference.shape}; expected the same N x classes with N > 0"
        )
    diff = np.abs(candidate - reference)
    finite = bool(np.all(np.isfinite(candidate)))
    tolerance = TOLERANCES[precision]
    return ParityReport(
        precision=precision,
        samples=len(reference),
        max_abs_diff=float(diff.max()) if finite else float("inf"),
        mean_abs_diff=float(diff.mean()) if finite else float("inf"),
        top1_agreement=float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))),
        limit=tolerance.limit(reference),
        tolerance=tolerance,
    )


def check_variant_parity(report: ParityReport, force: bool = False) -> None:
    """Refuse a variant outside its tolerance, unless forced.

    Raises:
        VariantParityError: ``report`` did not pass and ``force`` is off.
    """
    if not report.passed and not force:
        raise VariantParityError(report.to_dict())


def golden_inputs(bundle: Bundle) -> np.ndarray:
    """The bundle's golden inputs as an N x C x H x W float32 batch.

    Raises:
        ExportError: the bundle has no golden samples to compare on.
    """
    if not bundle.golden:
        raise ExportError(
            f"{bundle.name} {bundle.version} has no golden samples; a variant's parity is "
            "measured on them, so rebuild the bundle with `corral train`"
        )
    shape = (len(bundle.golden), *bundle.input.sample_shape)
    return np.asarray([s.input for s in bundle.golden], dtype=np.float32).reshape(shape)


def run_onnx(
    model: Path,
    inputs: np.ndarray,
    providers: Sequence[str | tuple[str, dict[str, Any]]] = ("CPUExecutionProvider",),
) -> np.ndarray:
    """Run ``inputs`` through ``model`` in ONNX Runtime; the first output as float32.

    Raises:
        ExportError: ONNX Runtime cannot load or run the model.
    """
    try:
        session = ort.InferenceSession(str(model), providers=list(providers))
        name = session.get_inputs()[0].name
        out = session.run(None, {name: inputs})[0]
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise ExportError(f"ONNX Runtime cannot run {Path(model).name}: {e}") from e
    return np.asarray(out, dtype=np.float32)
