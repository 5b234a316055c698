"""Offline predictions over image files, with the agent's own runtime and preprocessing.

``corral predict BUNDLE_DIR IMAGE...`` (:func:`agent.cli.predict`) runs these
steps, in this order:

1. list the inputs (:func:`image_files`): files as given, folders walked for
   images, sorted, so that a typo fails before a model is loaded;
2. load the bundle (:func:`load_runtime`): ``bundle.json``, the chosen variant's
   file checked against its signed length and SHA-256, an ONNX Runtime session
   built by :class:`agent.runtime.ModelRuntime` (the class the pipeline runs, so
   preprocessing and scores are exactly the pipeline's), then the smoke test on
   the bundle's golden samples, as an install does;
3. decode and predict in batches (:func:`predict_files`). An image that cannot be
   read stops the model, but the remaining files are still decoded, so that the
   error names every bad file at once;
4. only then does the caller print or write anything: bad input changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.camera import IMAGE_SUFFIXES
from agent.config import write_file_atomic
from agent.errors import ImageInputError
from agent.runtime import ModelRuntime
from corral.bundle import Bundle
from corral.errors import BundleError

__all__ = [
    "OUTPUT_FORMATS",
    "Prediction",
    "image_files",
    "load_runtime",
    "predict_files",
    "probabilities",
    "write_predictions",
]

logger = logging.getLogger(__name__)

#: ``--out`` suffixes and the format each writes.
OUTPUT_FORMATS = {".jsonl": "jsonl", ".csv": "csv"}
#: How many bad files an error names before it says "and N more".
_NAMED_BAD = 5


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image: the best label and the ``top`` best scores."""

    file: str
    label: str
    confidence: float
    top: list[tuple[str, float]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: file, label, confidence and top as ``[{label, score}]``."""
        return {
            "file": self.file,
            "label": self.label,
            "confidence": round(self.confidence, 6),
            "top": [{"label": label, "score": round(score, 6)} for label, score in self.top],
        }


def image_files(inputs: Sequence[Path]) -> list[Path]:
    """Expand files and folders into the image files to predict, in a stable order.

    A file is taken as given, whatever its suffix (decoding decides); a folder is
    walked recursively for ``*.png``, ``*.jpg``, ``*.jpeg`` and ``*.bmp``, sorted.

    Args:
        inputs: image files and folders.

    Returns:
        The files, folders expanded in place.

    Raises:
        ImageInputError: a path does not exist, or a folder holds no image.
    """
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            )
            if not found:
                raise ImageInputError(
                    f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})"
                )
            files += found
        elif path.exists():
            files.append(path)
        else:
            raise ImageInputError(f"{path} does not exist; give image files or folders of images")
    if not files:
        raise ImageInputError("no images given; give image files or folders of images")
    return files


def load_runtime(
    bundle_dir: Path,
    variant: str = "fp32",
    providers: Sequence[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 0,
) -> ModelRuntime:
    """Load, verify and smoke-test one variant of a bundle folder.

    Args:
        bundle_dir: a folder with ``bundle.json`` and its model files.
        variant: the file to run (``fp32``, ``int8``, ...).
        providers: ONNX Runtime execution providers in order of preference; those
            this build lacks are skipped.
        intra_op_threads: ONNX Runtime's threads per operator; 0 lets it use every core.

    Returns:
        The runtime, ready for :func:`predict_files`.

    Raises:
        BundleError: the folder or bundle.json is missing or invalid, the bundle has
            no such variant, or the variant's file differs from what bundle.json signs.
        RuntimeLoadError: ONNX Runtime cannot load the file.
        SmokeTestError: the model gives wrong outputs on the bundle's golden samples.
    """
    if not bundle_dir.is_dir():
        raise BundleError(
            f"bundle folder {bundle_dir} does not exist; expected a folder with bundle.json "
            "and its model files (what `corral train --out` writes)"
        )
    bundle = Bundle.load(bundle_dir)
    bundle.verify_files(bundle_dir, variant)
    runtime = ModelRuntime.load(bundle, bundle_dir, providers, variant, intra_op_threads)
    runtime.smoke_test()
    return runtime


def probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """Per-row class probabilities: softmax of logits, scores as they are otherwise."""
    if kind != "logits":
        return scores
    shifted = scores - scores.max(axis=1, keepdims=True)
    np.exp(shifted, out=shifted)
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True), dtype=np.float32)


def _read(path: Path) -> np.ndarray | str:
    """The decoded image (as the cameras decode: 8-bit, gray or BGR), or why not."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        return f"{path}: cannot read ({e.strerror})"
    image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_ANYCOLOR) if raw else None
    if image is None:
        return f"{path}: not an image OpenCV can decode (PNG, JPEG, BMP)"
    return image


def predict_files(
    runtime: ModelRuntime, files: Iterable[Path], batch_size: int = 16, top: int = 3
) -> list[Prediction]:
    """Predict every file, in order, in batches.

    Args:
        runtime: from :func:`load_runtime`.
        files: image files (see :func:`image_files`).
        batch_size: images per batch when the model's batch axis is dynamic; a model
            with a fixed batch size gets batches of exactly that size (padded).
        top: how many of the best labels each prediction keeps.

    Returns:
        One prediction per file, in the order given.

    Raises:
        ImageInputError: some files cannot be read or decoded; the message names them.
        BundleError: the model fails on input of its declared shape, or gives a
            number of scores other than the bundle's number of labels.
    """
    if batch_size < 1 or top < 1:
        raise ValueError(f"batch_size and top should be 1 or more, got {batch_size} and {top}")
    fixed = runtime.bundle.input.shape[0]
    size = fixed if fixed is not None else batch_size
    buffer = np.zeros((size, *runtime.bundle.input.sample_shape), dtype=np.float32)
    pending: list[Path] = []
    results: list[Prediction] = []
    bad: list[str] = []
    for path in files:
        image = _read(path)
        if isinstance(image, str):
            bad.append(image)
            continue
        if bad:
            continue  # no more model work, only find the other bad files
        runtime.preprocess(image, buffer[len(pending)])
        pending.append(path)
        if len(pending) == size:
            results += _run_batch(runtime, buffer, pending, fixed is not None, top)
            pending.clear()
    if bad:
        more = f" and {len(bad) - _NAMED_BAD} more" if len(bad) > _NAMED_BAD else ""
        raise ImageInputError(
            f"{len(bad)} input file(s) cannot be used, so nothing was predicted: "
            + "; ".join(bad[:_NAMED_BAD])
            + more
        )
    if pending:
        results += _run_batch(runtime, buffer, pending, fixed is not None, top)
    return results


def _run_batch(
    runtime: ModelRuntime, buffer: np.ndarray, paths: Sequence[Path], fixed: bool, top: int
) -> list[Prediction]:
    n = len(paths)
    if fixed:
        buffer[n:] = 0.0  # padding for a model that only takes full batches
    bundle = runtime.bundle
    try:
        scores = runtime.run(buffer if fixed else buffer[:n])[:n]
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise BundleError(
            f"model {bundle.name} {bundle.version} failed on a batch of {n} input(s) of its "
            f"declared shape {bundle.input.shape}: {e}"
        ) from e
    labels = bundle.output.labels
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise BundleError(
            f"model {bundle.name} {bundle.version} gave scores of shape {scores.shape}, "
            f"expected ({n}, {len(labels)}): one per label"
        )
    probs = probabilities(scores.astype(np.float32, copy=True), bundle.output.kind)
    k = min(top, len(labels))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    predictions = []
    for path, row, best in zip(paths, probs, order, strict=True):
        ranked = [(labels[int(i)], float(row[i])) for i in best]
        predictions.append(Prediction(str(path), ranked[0][0], ranked[0][1], ranked))
    return predictions


def write_predictions(path: Path, predictions: Sequence[Prediction]) -> None:
    """Write predictions as JSON lines (``.jsonl``) or CSV (``.csv``), atomically.

    The CSV has the columns file, label, confidence, then label_i and score_i for
    each of the top labels.

    Raises:
        ValueError: the suffix is neither ``.jsonl`` nor ``.csv``.
        OSError: the file cannot be written (the old file, if any, is left as it was).
    """
    kind = OUTPUT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"--out {path}: use a .jsonl or .csv file name")
    if kind == "jsonl":
        text = "".join(json.dumps(p.to_dict()) + "\n" for p in predictions)
    else:
        width = max((len(p.top) for p in predictions), default=0)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        ranks = [f"{name}_{i}" for i in range(1, width + 1) for name in ("label", "score")]
        writer.writerow(["file", "label", "confidence", *ranks])
        for p in predictions:
            cells = [v for label, score in p.top for v in (label, f"{score:.6f}")]
            writer.writerow([p.file, p.label, f"{p.confidence:.6f}", *cells])
        text = buffer.getvalue()
    write_file_atomic(path, text.encode())
