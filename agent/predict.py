"""Offline predictions over image files, with the agent's own runtime and preprocessing.

``corral predict BUNDLE_DIR INPUT...`` and ``corral predict --model NAME@VERSION
INPUT...`` (:func:`agent.cli.predict`; the second fetches the bundle into a
local cache first, :mod:`agent.bundle_cache`) run these steps, in this order:

1. list the inputs (:func:`list_inputs`): files as given, folders walked for
   images, sorted, manifests (:mod:`corral.manifest`, ``.csv`` / ``.jsonl``)
   read row by row with their labels, so that a typo or a bad manifest line
   fails before a model is loaded or fetched;
2. load the bundle (:func:`load_runtime`): ``bundle.json``, the chosen variant's
   file checked against its signed length and SHA-256, an ONNX Runtime session
   built by :class:`agent.runtime.ModelRuntime` (the class the pipeline runs, so
   preprocessing and scores are exactly the pipeline's), then the smoke test on
   the bundle's golden samples, as an install does;
3. decode and predict in batches (:func:`predict_files`). An image that cannot be
   read stops the model, but the remaining files are still decoded, so that the
   error names every bad file at once;
4. score the predictions of labelled inputs (:func:`evaluate`): accuracy and
   per-class recall over the inputs whose label the model has; other labels are
   counted apart, not as wrong answers;
5. only then does the caller print or write anything: bad input changes nothing.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
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
from corral.manifest import is_manifest, read_manifest

__all__ = [
    "OUTPUT_FORMATS",
    "Evaluation",
    "Input",
    "Prediction",
    "evaluate",
    "image_files",
    "list_inputs",
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
class Input:
    """One image to predict, and the label it should get if the input says (else None)."""

    path: Path
    label: str | None = None


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image: the best label and the ``top`` best scores.

    ``expected`` is the input's own label, if it has one; ``correct`` says whether
    the best label is it, and is None when there is no label or the model does not
    have that label among its outputs (so it cannot be right or wrong).
    """

    file: str
    label: str
    confidence: float
    top: list[tuple[str, float]]
    expected: str | None = None
    correct: bool | None = None

    def to_dict(self, labelled: bool = False) -> dict[str, Any]:
        """A JSON-ready dict: file, label, confidence and top as ``[{label, score}]``.

        Args:
            labelled: add ``expected`` and ``correct`` even when this input has no
                label (as null), so every row of a labelled run has the same keys;
                they are always added when it has one.
        """
        document: dict[str, Any] = {
            "file": self.file,
            "label": self.label,
            "confidence": round(self.confidence, 6),
        }
        if labelled or self.expected is not None:
            document |= {"expected": self.expected, "correct": self.correct}
        document["top"] = [{"label": label, "score": round(score, 6)} for label, score in self.top]
        return document


@dataclass(frozen=True)
class Evaluation:
    """How the predictions of labelled inputs compare with their labels.

    ``recall`` maps each expected label the model has to (right, inputs with that
    label); ``unknown`` maps each expected label the model lacks to its count:
    those inputs are not scored (``scored`` excludes them).
    """

    labelled: int
    scored: int
    correct: int
    recall: dict[str, tuple[int, int]] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        """Right answers over scored inputs; None when no input could be scored."""
        return self.correct / self.scored if self.scored else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: counts, accuracy, per-class recall and unknown labels."""
        return {
            "labelled": self.labelled,
            "scored": self.scored,
            "correct": self.correct,
            "accuracy": None if self.accuracy is None else round(self.accuracy, 6),
            "recall": {
                label: {"correct": right, "total": total, "recall": round(right / total, 6)}
                for label, (right, total) in self.recall.items()
            },
            "unknown_labels": dict(self.unknown),
        }

    def summary(self) -> list[str]:
        """Lines for a person: accuracy, recall per class, and what was not scored."""
        lines = []
        if self.accuracy is not None:
            lines.append(
                f"accuracy {self.accuracy:.3f}: {self.correct} of {self.scored} "
                "scored input(s) right"
            )
            lines.append(
                "recall: "
                + ", ".join(
                    f"{label} {right / total:.3f} ({right}/{total})"
                    for label, (right, total) in self.recall.items()
                )
            )
        if self.unknown:
            names = ", ".join(f"{label} ({n})" for label, n in self.unknown.items())
            lines.append(
                f"not scored: {sum(self.unknown.values())} input(s) labelled with a label "
                f"the model does not have: {names}"
            )
        return lines


def evaluate(predictions: Sequence[Prediction]) -> Evaluation | None:
    """Score the predictions whose input had a label; None when none had one.

    Raises:
        Nothing.
    """
    labelled = [p for p in predictions if p.expected is not None]
    if not labelled:
        return None
    scored = [p for p in labelled if p.correct is not None]
    totals = Counter(str(p.expected) for p in scored)
    right = Counter(str(p.expected) for p in scored if p.correct)
    unknown = Counter(str(p.expected) for p in labelled if p.correct is None)
    return Evaluation(
        labelled=len(labelled),
        scored=len(scored),
        correct=sum(right.values()),
        recall={label: (right[label], totals[label]) for label in sorted(totals)},
        unknown=dict(sorted(unknown.items())),
    )


def _folder_inputs(folder: Path, labels_from_folders: bool) -> list[Input]:
    found = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    if not found:
        raise ImageInputError(f"folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    if not labels_from_folders:
        return [Input(p) for p in found]
    # ImageFolder: root/<label>/...; an image directly in the root has no label.
    inputs = []
    for p in found:
        parts = p.relative_to(folder).parts
        inputs.append(Input(p, parts[0] if len(parts) > 1 else None))
    return inputs


def _manifest_inputs(manifest: Path) -> list[Input]:
    read = read_manifest(manifest)
    if read.problems:
        more = len(read.problems) - _NAMED_BAD
        raise ImageInputError(
            f"manifest {manifest} has {len(read.problems)} bad line(s), so nothing was "
            "predicted: "
            + "; ".join(str(p) for p in read.problems[:_NAMED_BAD])
            + (f" and {more} more" if more > 0 else "")
        )
    if not read.rows:
        raise ImageInputError(f"manifest {manifest} lists no images")
    return [Input(row.path, row.label) for row in read.rows]


def list_inputs(inputs: Sequence[Path], labels_from_folders: bool = False) -> list[Input]:
    """Expand files, folders and manifests into the images to predict, in a stable order.

    A file is taken as given, whatever its suffix (decoding decides), except a
    ``.csv`` or ``.jsonl`` file, which is a manifest (:mod:`corral.manifest`): its
    rows in file order, paths relative to its folder, with their labels. A folder
    is walked recursively for ``*.png``, ``*.jpg``, ``*.jpeg`` and ``*.bmp``, sorted.

    Args:
        inputs: image files, folders and manifests.
        labels_from_folders: label each image of a folder by the name of its
            sub-folder under that folder (``root/<label>/...``, as ImageFolder and
            ``corral train --data`` have it).

    Returns:
        The images, each with its label if its input gives one.

    Raises:
        ImageInputError: a path does not exist, a folder holds no image, or a
            manifest lists none or has bad lines (the message names them).
        ManifestError: a manifest cannot be read.
    """
    listed: list[Input] = []
    for path in inputs:
        if path.is_dir():
            listed += _folder_inputs(path, labels_from_folders)
        elif not path.exists():
            raise ImageInputError(
                f"{path} does not exist; give image files, folders of images or manifests"
            )
        elif is_manifest(path):
            listed += _manifest_inputs(path)
        else:
            listed.append(Input(path))
    if not listed:
        raise ImageInputError("no images given; give image files, folders of images or manifests")
    return listed


def image_files(inputs: Sequence[Path]) -> list[Path]:
    """The image files of :func:`list_inputs`, without labels.

    Raises:
        ImageInputError: as :func:`list_inputs`.
        ManifestError: a manifest cannot be read.
    """
    return [item.path for item in list_inputs(inputs)]


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
    runtime: ModelRuntime, files: Iterable[Path | Input], batch_size: int = 16, top: int = 3
) -> list[Prediction]:
    """Predict every file, in order, in batches.

    Args:
        runtime: from :func:`load_runtime`.
        files: image files (see :func:`image_files`), or inputs with their labels
            (see :func:`list_inputs`), which each prediction then carries as
            ``expected``.
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
    pending: list[Input] = []
    results: list[Prediction] = []
    bad: list[str] = []
    for item in files:
        given = item if isinstance(item, Input) else Input(item)
        image = _read(given.path)
        if isinstance(image, str):
            bad.append(image)
            continue
        if bad:
            continue  # no more model work, only find the other bad files
        runtime.preprocess(image, buffer[len(pending)])
        pending.append(given)
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
    runtime: ModelRuntime, buffer: np.ndarray, inputs: Sequence[Input], fixed: bool, top: int
) -> list[Prediction]:
    n = len(inputs)
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
    for given, row, best in zip(inputs, probs, order, strict=True):
        ranked = [(labels[int(i)], float(row[i])) for i in best]
        best_label = ranked[0][0]
        # A label the model lacks can be neither right nor wrong: left unscored.
        known = given.label is not None and given.label in labels
        correct = best_label == given.label if known else None
        predictions.append(
            Prediction(str(given.path), best_label, ranked[0][1], ranked, given.label, correct)
        )
    return predictions


def write_predictions(path: Path, predictions: Sequence[Prediction]) -> None:
    """Write predictions as JSON lines (``.jsonl``) or CSV (``.csv``), atomically.

    The CSV has the columns file, label, confidence, then label_i and score_i for
    each of the top labels. When some inputs had labels, every JSON line has
    ``expected`` and ``correct`` (null where unknown), and the CSV has those two
    columns after confidence (``correct`` is ``true``, ``false`` or empty).

    Raises:
        ValueError: the suffix is neither ``.jsonl`` nor ``.csv``.
        OSError: the file cannot be written (the old file, if any, is left as it was).
    """
    kind = OUTPUT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"--out {path}: use a .jsonl or .csv file name")
    labelled = any(p.expected is not None for p in predictions)
    if kind == "jsonl":
        text = "".join(json.dumps(p.to_dict(labelled)) + "\n" for p in predictions)
    else:
        width = max((len(p.top) for p in predictions), default=0)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        ranks = [f"{name}_{i}" for i in range(1, width + 1) for name in ("label", "score")]
        scored = ["expected", "correct"] if labelled else []
        writer.writerow(["file", "label", "confidence", *scored, *ranks])
        for p in predictions:
            cells = [v for label, score in p.top for v in (label, f"{score:.6f}")]
            marks = [p.expected or "", _csv_bool(p.correct)] if labelled else []
            writer.writerow([p.file, p.label, f"{p.confidence:.6f}", *marks, *cells])
        text = buffer.getvalue()
    write_file_atomic(path, text.encode())


def _csv_bool(value: bool | None) -> str:
    return "" if value is None else str(value).lower()
