"""One model loaded into ONNX Runtime, with the bundle's preprocessing.

``ModelRuntime`` owns a session built with the execution providers the firmware
profile prefers (those this onnxruntime build lacks are skipped), the input
spec's preprocessing, and the smoke test on the bundle's golden samples. The
pipeline holds one ``ModelRuntime`` at a time and swaps it between batches;
building, warming and smoke-testing happen before the swap, off the hot path.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from agent.engines import CUDA, TRT, EngineKey, provider_options, tensorrt_version
from agent.errors import RuntimeLoadError, SmokeTestError
from corral.bundle import Bundle, InputSpec

__all__ = ["ModelRuntime", "Preprocessor", "classify"]

logger = logging.getLogger(__name__)


class Preprocessor:
    """Turns camera frames (H x W gray, or H x W x 3 BGR as OpenCV gives) into model input.

    The whole frame is resized to the model's input (squashed, not cropped, as
    the trainer does). A frame at least twice the input size is first halved
    with area averaging (OpenCV's fast integer path) as often as it can be,
    then resized bilinearly the rest of the way: within a grey level of the
    trainer's Pillow bilinear filter on camera-like frames, at a tenth of the
    cost of one area resize by a fractional factor (0.16 against 1.3 ms for
    640x480 to 224x224). Frames less than twice the input size take one area
    resize, as before. The per-channel affine transform ``(p * scale - mean) /
    std`` is folded into one multiply-add with precomputed coefficients,
    written into a caller's buffer.
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.channels, self.height, self.width = spec.sample_shape
        std = np.asarray(spec.std, dtype=np.float32)
        self._mul = (spec.scale / std).astype(np.float32).reshape(-1, 1, 1)
        self._add = (-np.asarray(spec.mean, dtype=np.float32) / std).reshape(-1, 1, 1)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one preprocessed frame."""
        return self.channels, self.height, self.width

    def _resize(self, img: np.ndarray) -> np.ndarray:
        height, width = img.shape[0], img.shape[1]
        halved = False
        while height >= 2 * self.height and width >= 2 * self.width:
            height, width = height // 2, width // 2
            img = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
            halved = True
        if (height, width) != (self.height, self.width):
            interpolation = cv2.INTER_LINEAR if halved else cv2.INTER_AREA
            img = cv2.resize(img, (self.width, self.height), interpolation=interpolation)
        return img

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None:
        """Write the preprocessed ``frame`` into ``out`` (shape C x H x W, float32)."""
        img = frame
        if img.ndim == 3 and self.spec.color == "gray":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif img.ndim == 2 and self.spec.color != "gray":
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        if img.shape[0] != self.height or img.shape[1] != self.width:
            img = self._resize(img)
        if self.spec.color == "rgb":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        chw = img[np.newaxis] if img.ndim == 2 else img.transpose(2, 0, 1)
        np.multiply(chw, self._mul, out=out, casting="unsafe")
        out += self._add


def classify(scores: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class index, its probability, and whether the row is finite, for N x classes ``scores``.

    Args:
        scores: a model's output batch.
        kind: the bundle's output kind: ``logits`` (softmax is applied) or probabilities.
    """
    finite = np.isfinite(scores).all(axis=1)
    if kind == "logits":
        shifted = scores - scores.max(axis=1, keepdims=True)
        np.exp(shifted, out=shifted)
        probs = shifted / shifted.sum(axis=1, keepdims=True)
    else:
        probs = scores
    predictions = probs.argmax(axis=1)
    confidence = probs[np.arange(len(probs)), predictions]
    return predictions, confidence, finite


class ModelRuntime:
    """An ONNX Runtime session for one bundle, ready to run batches."""

    def __init__(
        self,
        bundle: Bundle,
        session: ort.InferenceSession,
        variant: str = "fp32",
        io_binding: bool | None = None,
    ) -> None:
        self.bundle = bundle
        self.session = session
        self.variant = variant
        self.providers: list[str] = list(session.get_providers())
        self.preprocess = Preprocessor(bundle.input)
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        on_gpu = self.providers[0] in (TRT, CUDA)
        self._binding = (
            _Binding(session, "cuda" if on_gpu else "cpu")
            if (on_gpu if io_binding is None else io_binding)
            else None
        )

    @classmethod
    def load(
        cls,
        bundle: Bundle,
        model_dir: Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        variant: str = "fp32",
        intra_op_threads: int = 1,
        precision: str = "fp32",
        engine_root: Path | None = None,
    ) -> ModelRuntime:
        """Build a session for ``bundle``'s ``variant`` file in ``model_dir``.

        Args:
            bundle: the bundle.
            model_dir: the folder holding its files.
            providers: the firmware profile's execution providers, best first.
            variant: which of the bundle's model files.
            intra_op_threads: ONNX Runtime's threads for one operator.
            precision: the profile's precision (TensorRT builds fp16 engines for fp16).
            engine_root: where TensorRT engines are kept between starts
                (``agent.engines``); None builds them afresh each load.

        Raises:
            RuntimeLoadError: the file is missing or ONNX Runtime cannot load it.
        """
        entry = bundle.model_file(variant)
        path = Path(model_dir) / entry.name
        chosen = provider_options(
            providers, precision, engine_root, lambda: _engine_key(entry.sha256, precision)
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(0, intra_op_threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        started = time.monotonic()
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=chosen)
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise RuntimeLoadError(
                f"ONNX Runtime cannot load {path.name} of {bundle.name} {bundle.version}: {e}"
            ) from e
        logger.info(
            "loaded %s %s with %s in %.2f s",
            bundle.name,
            bundle.version,
            session.get_providers(),
            time.monotonic() - started,
        )
        return cls(bundle, session, variant)

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run a preprocessed batch (N x C x H x W float32); return N x classes scores."""
        if self._binding is not None:
            return self._binding.run(self.input_name, self.output_name, batch)
        out = self.session.run([self.output_name], {self.input_name: batch})[0]
        return np.asarray(out, dtype=np.float32)

    def smoke_test(self) -> float:
        """Run the golden samples and compare with the bundle's expected outputs.

        Returns:
            The largest absolute difference seen.

        Raises:
            SmokeTestError: an output is not finite or differs by more than the tolerance.
        """
        golden = self.bundle.golden
        if not golden:
            return 0.0
        shape = (len(golden), *self.bundle.input.sample_shape)
        batch = np.asarray([s.input for s in golden], dtype=np.float32).reshape(shape)
        expected = np.asarray([s.output for s in golden], dtype=np.float32)
        tolerance = self.bundle.golden_tolerance
        # A variant other than the reference (int8) may carry its own expected outputs
        # on the same inputs, with a tolerance that fits its precision.
        own = self.bundle.model_file(self.variant).unrecognized.get("golden")
        if isinstance(own, dict) and "outputs" in own:
            expected = np.asarray(own["outputs"], dtype=np.float32)
            tolerance = float(own.get("tolerance", tolerance))
        got = self.run(batch)
        if got.shape != expected.shape:
            raise SmokeTestError(
                f"smoke test: model gave outputs of shape {got.shape}, expected {expected.shape}"
            )
        if not np.all(np.isfinite(got)):
            raise SmokeTestError("smoke test: model gave NaN or infinite outputs on golden samples")
        worst = float(np.max(np.abs(got - expected)))
        if not math.isfinite(worst) or worst > tolerance:
            raise SmokeTestError(
                f"smoke test: golden outputs of the {self.variant} file differ by {worst:.3g}, "
                f"more than the bundle's tolerance {tolerance:g}; the model file or runtime "
                "is wrong"
            )
        return worst


def _engine_key(model_sha256: str, precision: str) -> EngineKey:
    # Imported here: hardware probing is only needed when TensorRT is used.
    from agent.hardware import detect_facts

    facts = detect_facts()
    return EngineKey(
        model_sha256=model_sha256,
        precision=precision,
        gpu=facts.gpus[0] if facts.gpus else "unknown",
        driver=facts.driver_version or "unknown",
        onnxruntime=ort.__version__,
        tensorrt=tensorrt_version(),
    )


class _Binding:
    """IO binding with buffers kept between batches, one pair per batch size.

    On a GPU the input buffer lives on the device: each batch is copied into
    it in place and the session reads it there, with no allocation per batch;
    the scores (a few numbers a frame) come back into a host buffer. On the
    CPU the same path runs, which is how the tests check it against
    ``session.run``.
    """

    def __init__(self, session: ort.InferenceSession, device: str) -> None:
        self._session = session
        self._device = device
        self._buffers: dict[tuple[int, ...], tuple[ort.OrtValue, ort.OrtValue, Any]] = {}

    def run(self, input_name: str, output_name: str, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        buffers = self._buffers.get(batch.shape)
        if buffers is None:
            probe = self._session.run([output_name], {input_name: batch})[0]
            into = ort.OrtValue.ortvalue_from_shape_and_type(
                batch.shape, np.float32, self._device, 0
            )
            out = ort.OrtValue.ortvalue_from_shape_and_type(probe.shape, np.float32, "cpu", 0)
            binding = self._session.io_binding()
            binding.bind_ortvalue_input(input_name, into)
            binding.bind_ortvalue_output(output_name, out)
            buffers = self._buffers[batch.shape] = (into, out, binding)
        into, out, binding = buffers
        into.update_inplace(batch)
        self._session.run_with_iobinding(binding)
        return np.array(out.numpy(), dtype=np.float32)  # a copy: the buffer is reused
