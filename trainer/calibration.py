"""Int8 calibration data for TensorRT variants: the images a calibration table comes from.

Without data of its own, ``corral model build-trt --precision int8`` calibrates on
the bundle's golden samples (eight from ``corral train``), the same samples its
parity is then measured on: a thin calibration set and an optimistic parity.
``--calibration PATH`` takes the images from elsewhere:

- an image folder, ImageFolder (``root/<label>/<image>``) or flat (``root/<image>``);
  labels are not used;
- an ingest manifest, ``.csv`` or ``.jsonl`` with ``path`` and ``label``, as
  ``corral train --data`` reads (:func:`trainer.ingest.list_sources`);
- a dataset manifest the trainer wrote (``report/dataset.json``): it names
  samples by content hash, not by file, so its samples are found again in
  Animal-MNIST, the one source whose pixels the trainer has without a path; its
  test split is left out, so the data that scores the model never shapes it.

The order of steps, and why:

1. :func:`check_calibration_source` (the CLI runs it before it probes for
   TensorRT or fetches anything): the path exists and lists at least one image,
   else :class:`CalibrationDataError` (exit code 2). Nothing is decoded yet: the
   bundle's input spec, which says how to decode, is not fetched yet.
2. :func:`load_calibration` decodes every listed image with
   :func:`trainer.ingest.load_image`, the same checks, content hash and fit to the
   input size and colour as training ingest. A file that fails is skipped and
   counted under its problem kind (:data:`trainer.ingest.PROBLEM_KINDS`, plus
   ``not_found`` for a dataset manifest's sample that is not in Animal-MNIST);
   a repeated picture counts once.
3. The ``limit`` smallest content hashes are kept: a choice that depends on the
   pixels only (not on file names or listing order), so two builds on the same
   images calibrate the same way, and adding images changes it little. At most
   about ``2 x limit`` fitted images are held while decoding.
4. The kept images are preprocessed as the bundle's input spec says
   (:func:`trainer.data.preprocess`), and :meth:`CalibrationSet.metadata` says
   where they came from, for the variant's ``calibration`` record.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from corral.bundle import InputSpec
from trainer.data import content_hash, fit_image, preprocess
from trainer.errors import CalibrationDataError, DatasetError, TrainConfigError
from trainer.ingest import IMAGE_SUFFIXES, IngestReport, list_sources, load_image
from trainer.source import load_animal_mnist

__all__ = [
    "DEFAULT_SAMPLES",
    "CalibrationSet",
    "check_calibration_source",
    "load_calibration",
]

logger = logging.getLogger(__name__)

#: Calibration images kept when the caller names no cap.
DEFAULT_SAMPLES = 512
_ANIMAL_MNIST = "animal-mnist/"
_MANIFESTS = (".csv", ".jsonl")
_ACCEPTED = (
    "an image folder (<label>/<image> or flat), a .csv/.jsonl manifest (path, label), "
    "or a dataset.json the trainer wrote"
)


@dataclass(frozen=True)
class CalibrationSet:
    """Preprocessed calibration inputs, and where they came from.

    ``inputs[i]`` is the image whose content hash is ``hashes[i]``; hashes are sorted.
    ``report`` counts what was listed, skipped (by kind) and repeated.
    """

    inputs: np.ndarray
    hashes: tuple[str, ...]
    kind: str
    path: Path
    limit: int
    report: IngestReport
    dataset_version: str | None = None

    @property
    def digest(self) -> str:
        """SHA-256 over the kept images' content hashes: same images, same digest."""
        return hashlib.sha256("\n".join(self.hashes).encode()).hexdigest()

    def metadata(self) -> dict[str, Any]:
        """The variant's ``calibration`` record, less the method, in plain JSON values."""
        source: dict[str, Any] = {"kind": self.kind, "name": self.path.name}
        source["samples_sha256"] = self.digest
        if self.dataset_version is not None:
            source["dataset_version"] = self.dataset_version
        return {
            "source": source,
            "samples": len(self.hashes),
            "max_samples": self.limit,
            "listed": self.report.listed,
            "skipped": self.report.skipped,
            "problems": dict(self.report.problems),
            "duplicates": self.report.duplicates,
            # Parity is measured on the golden samples, which these are not.
            "parity_on_calibration_data": False,
        }


def _refuse(path: Path, what: str) -> CalibrationDataError:
    return CalibrationDataError(
        f"calibration data {path} {what}; pass {_ACCEPTED}, or leave --calibration out "
        "to calibrate on the bundle's golden samples"
    )


def _list_folder(root: Path) -> list[str]:
    # ImageFolder's <label>/<image> (as ingest lists it), then images at the top level.
    nested = [path for path, _ in list_sources(root)]
    flat = sorted(
        str(p) for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    return nested + flat


def _read_dataset_manifest(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The manifest and the hashes of its samples outside the test split."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _refuse(path, f"is not a readable dataset manifest ({e})") from e
    samples = manifest.get("samples") if isinstance(manifest, dict) else None
    source = manifest.get("source") if isinstance(manifest, dict) else None
    if not isinstance(samples, list) or not isinstance(source, str):
        raise _refuse(path, "is JSON but not a dataset manifest (no 'source' and 'samples')")
    if not any(part.startswith(_ANIMAL_MNIST) for part in source.split("+")):
        raise _refuse(
            path,
            f"lists images from {source!r} by content hash only, and their pixels are not in "
            "it (only Animal-MNIST's can be found again); pass the image folder or .csv/.jsonl "
            "manifest they were ingested from",
        )
    hashes = [
        s["hash"]
        for s in samples
        if isinstance(s, dict) and isinstance(s.get("hash"), str) and s.get("split") != "test"
    ]
    return manifest, hashes


def check_calibration_source(path: Path) -> int:
    """Check, without decoding anything, that ``path`` lists calibration images.

    Args:
        path: an image folder, a ``.csv``/``.jsonl`` manifest or a dataset manifest.

    Returns:
        How many images it lists (some may still turn out unreadable).

    Raises:
        CalibrationDataError: the path is missing, of another kind, unreadable, or
            lists no image; the message says what to pass instead.
    """
    if path.is_dir():
        listed = len(_list_folder(path))
        if not listed:
            raise _refuse(path, f"holds no image file ({', '.join(IMAGE_SUFFIXES)})")
        return listed
    if not path.is_file():
        raise _refuse(path, "does not exist")
    if path.suffix.lower() == ".json":
        listed = len(_read_dataset_manifest(path)[1])
        if not listed:
            raise _refuse(path, "lists no sample outside its test split")
        return listed
    if path.suffix.lower() not in _MANIFESTS:
        raise _refuse(path, f"is a {path.suffix or 'suffix-less'} file")
    try:
        listed = len(list_sources(path))
    except DatasetError as e:
        raise _refuse(path, f"cannot be read ({e})") from e
    if not listed:
        raise _refuse(path, "lists no image (no row with a 'path' and a 'label')")
    return listed


def _fit_to(spec: InputSpec) -> tuple[str, int]:
    channels, height, width = spec.sample_shape
    if height != width:
        raise TrainConfigError(
            f"the bundle's input is {height}x{width}; calibration fits images to a square "
            "input, as the trainer does"
        )
    return ("gray" if channels == 1 else "rgb"), height


def _decoded_files(
    paths: list[str], color: str, size: int, report: IngestReport
) -> Iterator[tuple[str, np.ndarray]]:
    for path in paths:
        first, second = load_image(path, color, size)
        if isinstance(second, np.ndarray):
            yield first, second
        else:
            report.add_problem(first, path, second)


def _decoded_animal_mnist(
    wanted: list[str], color: str, size: int, report: IngestReport
) -> Iterator[tuple[str, np.ndarray]]:
    remaining = set(wanted)
    images, _ = load_animal_mnist()
    for image in images:
        digest = content_hash(image)
        if digest in remaining:
            remaining.discard(digest)
            yield digest, fit_image(Image.fromarray(image), color, size)
    for digest in sorted(remaining):
        report.add_problem("not_found", digest[:16], "no Animal-MNIST image has these pixels")


def _smallest(
    decoded: Iterator[tuple[str, np.ndarray]], limit: int, report: IngestReport
) -> dict[str, np.ndarray]:
    seen: set[str] = set()
    kept: dict[str, np.ndarray] = {}
    for digest, pixels in decoded:
        if digest in seen:
            report.duplicates += 1
            continue
        seen.add(digest)
        kept[digest] = pixels
        if len(kept) >= 2 * limit:  # prune now and then, so memory stays bounded
            kept = {h: kept[h] for h in sorted(kept)[:limit]}
    return {h: kept[h] for h in sorted(kept)[:limit]}


def load_calibration(path: Path, spec: InputSpec, limit: int = DEFAULT_SAMPLES) -> CalibrationSet:
    """Read, check, choose and preprocess the calibration images for a bundle.

    Args:
        path: an image folder, a ``.csv``/``.jsonl`` manifest or a dataset manifest.
        spec: the bundle's input spec: the size, colour and arithmetic to apply.
        limit: keep at most this many images, the smallest content hashes.

    Returns:
        The inputs, N x C x H x W float32 with N at most ``limit``, and their origin.

    Raises:
        CalibrationDataError: the path lists nothing, or every image was skipped.
        TrainConfigError: ``limit`` is below 1, or the input spec is not square.
        DatasetError: a dataset manifest's Animal-MNIST files cannot be read.
    """
    if limit < 1:
        raise TrainConfigError(f"the calibration sample cap should be at least 1, got {limit}")
    color, size = _fit_to(spec)
    check_calibration_source(path)
    report = IngestReport(str(path))
    dataset_version: str | None = None
    if path.is_dir() or path.suffix.lower() in _MANIFESTS:
        kind = "folder" if path.is_dir() else "manifest"
        paths = _list_folder(path) if path.is_dir() else [p for p, _ in list_sources(path, report)]
        report.listed = len(paths) + report.problems.get("bad_row", 0)
        decoded = _decoded_files(paths, color, size, report)
    else:
        kind = "dataset"
        manifest, wanted = _read_dataset_manifest(path)
        # The dataset version is the SHA-256 of the canonical manifest (trainer.data).
        canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        dataset_version = hashlib.sha256(canonical).hexdigest()
        report.listed = len(wanted)
        decoded = _decoded_animal_mnist(wanted, color, size, report)
    chosen = _smallest(decoded, limit, report)
    if not chosen:
        counts = ", ".join(f"{n} {k}" for k, n in sorted(report.problems.items()))
        shown = "; ".join(line for lines in report.first.values() for line in lines[:2])
        raise _refuse(path, f"has no usable image: all {report.listed} skipped ({counts}: {shown})")
    hashes = tuple(chosen)
    report.kept = len(hashes)
    inputs = preprocess(np.stack([chosen[h] for h in hashes]), spec)
    logger.info(
        "calibration data %s: %d images kept of %d listed, %d skipped, %d repeated",
        path,
        len(hashes),
        report.listed,
        report.skipped,
        report.duplicates,
    )
    return CalibrationSet(inputs, hashes, kind, path, limit, report, dataset_version)
