"""Ingest images from disk: an ImageFolder tree or a CSV/JSONL manifest.

Sources:

- an ImageFolder tree, ``root/<label>/<name>.(png|jpg|jpeg|bmp|gif|webp)``;
- a manifest, ``.csv`` with a header naming ``path`` and ``label`` columns, or
  ``.jsonl`` with one ``{"path": ..., "label": ...}`` object a line; relative
  paths are taken from the manifest's own folder. The format is the shared
  contract's (:mod:`corral.manifest`, which ``corral predict`` reads too); here
  a label is required.

The order of steps, and why:

1. List the (path, label) pairs. Only names are held (about 100 bytes each), so
   the count is known for the progress bar while no image is in memory yet.
2. Decode, check and hash in worker processes (Pillow decoding holds the GIL),
   in chunks, with a bounded number of chunks in flight: memory stays bounded by
   ``workers x _IN_FLIGHT x _CHUNK`` decoded images plus the fitted, model-sized
   pixels of the kept samples, which training needs in memory anyway. Results
   are consumed in submission order, so which copy of a duplicate is kept (the
   first listed) does not depend on scheduling.
3. Each image is hashed on its decoded pixels at its own size and mode, the same
   :func:`trainer.data.content_hash` Animal-MNIST uses (see :mod:`trainer.data`
   for why pixels, not file bytes), then fitted to the model input.
4. Problems never stop the run: each is counted with its first few paths in
   :class:`IngestReport` and the image is skipped. A hash seen with two different
   labels is dropped altogether (there is no telling which label is right).
5. The kept samples become a :class:`trainer.data.Dataset`, split by hash.

Problem kinds (:data:`PROBLEM_KINDS`): ``unreadable`` (missing, a folder, no
permission), ``empty`` (zero bytes), ``not_an_image`` (Pillow does not recognise
it, e.g. a text file named .png), ``corrupt`` (recognised but fails to decode, e.g.
a truncated JPEG), ``too_large`` (over ``MAX_PIXELS``), ``wrong_mode`` (not
1-bit, gray, palette or RGB: CMYK, alpha, 16-bit, float...), ``conflicting_labels``
(one image under two labels; every copy is listed), ``bad_row`` (a manifest line
without a path and a label).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from corral.errors import ManifestError
from corral.manifest import read_manifest
from trainer.data import (
    COLORS,
    IMAGE_SIZE,
    Dataset,
    Sample,
    check_input,
    check_labels,
    content_hash,
    fit_image,
    split_of,
)
from trainer.errors import DatasetError, TrainConfigError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_PIXELS",
    "PROBLEM_KINDS",
    "IngestReport",
    "ingest_images",
    "list_sources",
    "load_image",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_PIXELS = 40_000_000  # a 6000x6000 photo; larger is refused before decoding
PROBLEM_KINDS = (
    "unreadable",
    "empty",
    "not_an_image",
    "corrupt",
    "too_large",
    "wrong_mode",
    "conflicting_labels",
    "bad_row",
)
_ACCEPTED_MODES = {"1": "L", "L": "L", "P": "RGB", "RGB": "RGB"}  # mode -> hashed mode
_FIRST_PATHS = 5
_CHUNK = 128
_IN_FLIGHT = 4  # chunks per worker

Item = tuple[str, str]  # (path, label)
# Per item of a chunk, its hash or (problem kind, reason); and the good images' fitted
# pixels stacked in one array, which crosses the process boundary far cheaper than
# one small array per image.
Outcome = tuple[list[str | tuple[str, str]], np.ndarray]


@dataclass
class IngestReport:
    """What ingest saw, kept and skipped.

    ``problems`` maps a kind in :data:`PROBLEM_KINDS` to its count and
    ``first`` to up to five ``"path: reason"`` lines of that kind.
    """

    source: str
    listed: int = 0
    kept: int = 0
    duplicates: int = 0
    other_classes: int = 0
    problems: dict[str, int] = field(default_factory=dict)
    first: dict[str, list[str]] = field(default_factory=dict)

    def add_problem(self, kind: str, path: str, reason: str) -> None:
        """Count one problem and remember it if it is among the first of its kind."""
        self.problems[kind] = self.problems.get(kind, 0) + 1
        shown = self.first.setdefault(kind, [])
        if len(shown) < _FIRST_PATHS:
            shown.append(f"{path}: {reason}")

    @property
    def skipped(self) -> int:
        """Images left out because of a problem."""
        return sum(self.problems.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, for the report file."""
        return {
            "source": self.source,
            "listed": self.listed,
            "kept": self.kept,
            "duplicates": self.duplicates,
            "other_classes": self.other_classes,
            "problems": {k: {"count": n, "first": self.first[k]} for k, n in self.problems.items()},
        }


# --- listing -----------------------------------------------------------------------------


def _list_folder(root: Path) -> list[Item]:
    items: list[Item] = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(label_dir.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                items.append((str(path), label_dir.name))
    return items


def _list_manifest(path: Path, report: IngestReport) -> list[Item]:
    # The format is the shared contract's (corral.manifest); training needs labels.
    manifest = read_manifest(path, require_label=True)
    for problem in manifest.problems:
        report.add_problem("bad_row", problem.where, problem.reason)
    return [(str(row.path), row.label) for row in manifest.rows if row.label is not None]


def list_sources(source: Path, report: IngestReport | None = None) -> list[Item]:
    """The (path, label) pairs of an ImageFolder tree or a manifest.

    Args:
        source: a folder (``<label>/<image>``), or a ``.csv`` / ``.jsonl`` manifest.
        report: where bad manifest lines are counted; a throwaway one by default.

    Returns:
        The pairs, in a stable order (sorted for a folder, file order for a manifest).

    Raises:
        TrainConfigError: ``source`` is missing or neither a folder nor a manifest.
        DatasetError: the manifest cannot be read.
    """
    report = report if report is not None else IngestReport(str(source))
    if source.is_dir():
        return _list_folder(source)
    if not source.is_file() or source.suffix.lower() not in (".csv", ".jsonl"):
        raise TrainConfigError(
            f"--data {source} should be an image folder, a .csv or a .jsonl manifest"
        )
    try:
        return _list_manifest(source, report)
    except ManifestError as e:
        raise DatasetError(str(e)) from e


# --- decoding (runs in the worker processes) ----------------------------------------------


def load_image(  # noqa: PLR0911 (one return per problem kind reads best)
    path: str, color: str, size: int
) -> tuple[str, np.ndarray] | tuple[str, str]:
    """Decode, check, hash and fit one image file.

    Args:
        path: the image file.
        color: the model input's colour, ``"gray"`` or ``"rgb"``.
        size: the side of the model's square input.

    Returns:
        ``(hash, pixels)`` for a good image (the hash of its own decoded pixels,
        the pixels fitted to the model input), or ``(kind, reason)`` naming the
        problem, ``kind`` in :data:`PROBLEM_KINDS`.

    Raises:
        Nothing: every failure of the file is a returned problem.
    """
    try:
        if Path(path).stat().st_size == 0:
            return "empty", "zero bytes"
        with warnings.catch_warnings():
            # Our own pixel cap below replaces Pillow's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    return "too_large", f"{image.width}x{image.height} pixels"
                hashed_mode = _ACCEPTED_MODES.get(image.mode)
                if hashed_mode is None:
                    return "wrong_mode", f"mode {image.mode}, expected 1, L, P or RGB"
                image.load()
                canonical = image if image.mode == hashed_mode else image.convert(hashed_mode)
                digest = content_hash(np.asarray(canonical, dtype=np.uint8))
                return digest, fit_image(canonical, color, size)
    except UnidentifiedImageError:
        return "not_an_image", "not an image Pillow recognises"
    except (FileNotFoundError, IsADirectoryError, PermissionError, NotADirectoryError) as e:
        return "unreadable", e.strerror or type(e).__name__
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        # Pillow reports a broken stream as any of these, depending on the codec.
        return "corrupt", str(e) or type(e).__name__


def _load_chunk(items: Sequence[Item], color: str, size: int) -> Outcome:
    verdicts: list[str | tuple[str, str]] = []
    good: list[np.ndarray] = []
    for path, _ in items:
        first, second = load_image(path, color, size)
        if isinstance(second, np.ndarray):
            verdicts.append(first)
            good.append(second)
        else:
            verdicts.append((first, second))
    shape = (size, size) if COLORS[color][1] == 1 else (size, size, 3)
    return verdicts, np.stack(good) if good else np.empty((0, *shape), dtype=np.uint8)


# --- the whole run -------------------------------------------------------------------------


def _outcomes(
    items: list[Item], color: str, size: int, workers: int
) -> Iterable[tuple[list[Item], Outcome]]:
    chunks = [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
    if workers <= 1 or len(chunks) == 1:
        for chunk in chunks:
            yield chunk, _load_chunk(chunk, color, size)
        return
    # spawn, not fork: the caller may already run torch's thread pools.
    context = multiprocessing.get_context("spawn")
    try:
        yield from _pooled(chunks, color, size, workers, context)
    except BrokenProcessPool as e:
        # A worker was killed (out of memory, a signal) or could not start, e.g. a
        # script that starts ingest without an `if __name__ == "__main__"` guard.
        raise DatasetError(
            f"an image decoding process died ({e}); retry with workers=1 to decode in-process"
        ) from e


def _pooled(
    chunks: list[list[Item]],
    color: str,
    size: int,
    workers: int,
    context: multiprocessing.context.BaseContext,
) -> Iterable[tuple[list[Item], Outcome]]:
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        pending: deque[tuple[list[Item], Future[Outcome]]] = deque()
        for chunk in chunks:
            pending.append((chunk, pool.submit(_load_chunk, chunk, color, size)))
            if len(pending) >= workers * _IN_FLIGHT:
                head, future = pending.popleft()
                yield head, future.result()
        while pending:
            head, future = pending.popleft()
            yield head, future.result()


def ingest_images(
    source: Path,
    classes: Sequence[str] | None = None,
    test_percent: int = 20,
    validation_percent: int = 10,
    color: str = "gray",
    image_size: int = IMAGE_SIZE,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    allow_missing: bool = False,
) -> tuple[Dataset, IngestReport]:
    """Read an image folder or manifest into a content-addressed dataset.

    Args:
        source: a folder (``<label>/<image>``), or a ``.csv`` / ``.jsonl`` manifest.
        classes: the labels to keep, in label order; by default every label found,
            sorted.
        test_percent: the share of samples that go to the test split.
        validation_percent: the share carved from train for the validation split.
        color: the model input's colour, ``"gray"`` or ``"rgb"``.
        image_size: the side of the model's square input.
        workers: decoding processes; by default one per CPU, ``1`` decodes in this
            process.
        on_progress: called with (images done, images listed) after each chunk.
        allow_missing: accept a class of ``classes`` without any image, e.g. field
            feedback for a few classes that will be merged onto the full data.

    Returns:
        The dataset and the report of what was kept and skipped.

    Raises:
        TrainConfigError: the source is not a folder or manifest, a setting is out
            of range, fewer than two classes remain, or a class named in
            ``classes`` has no usable image (unless ``allow_missing``).
        DatasetError: the manifest cannot be read, or no image could be used.
    """
    check_input(color, image_size)
    split_of("0" * 64, test_percent, validation_percent)  # checks the percentages
    wanted = check_labels(classes) if classes is not None else None
    report = IngestReport(str(source))
    items = list_sources(source, report)
    report.listed = len(items) + report.problems.get("bad_row", 0)
    if wanted is not None:
        keep = set(wanted)
        report.other_classes = sum(1 for _, label in items if label not in keep)
        items = [item for item in items if item[1] in keep]
    first: dict[str, tuple[str, tuple[int, int], str]] = {}  # hash -> (label, where, path)
    conflicts: dict[str, list[str]] = {}
    blocks: list[np.ndarray] = []  # each chunk's fitted pixels; where = (block, row)
    done = 0
    for chunk, (verdicts, block) in _outcomes(
        items, color, image_size, workers or os.cpu_count() or 1
    ):
        blocks.append(block)
        good_row = 0
        for (path, label), verdict in zip(chunk, verdicts, strict=True):
            if isinstance(verdict, tuple):
                report.add_problem(verdict[0], path, verdict[1])
                continue
            seen = first.get(verdict)
            if seen is None:
                first[verdict] = (label, (len(blocks) - 1, good_row), path)
            elif seen[0] != label:
                conflicts.setdefault(verdict, [f"{seen[2]} ({seen[0]})"]).append(
                    f"{path} ({label})"
                )
            else:
                report.duplicates += 1
            good_row += 1
        done += len(chunk)
        if on_progress is not None:
            on_progress(done, len(items))
    for digest, paths in conflicts.items():
        del first[digest]
        for shown in paths:
            report.add_problem("conflicting_labels", shown, f"same pixels as {paths[0]}")
    found = sorted({label for label, _, _ in first.values()})
    names = wanted if wanted is not None else tuple(found)
    if not first:
        raise DatasetError(f"no usable image in {source}; {report.skipped} skipped")
    names = check_labels(names)
    empty = [name for name in names if name not in found]
    if empty and not allow_missing:
        raise TrainConfigError(
            f"no usable image of class {', '.join(empty)} in {source}; found {', '.join(found)}"
        )
    index = {name: i for i, name in enumerate(names)}
    ordered = sorted(first)
    samples = tuple(
        Sample(h, index[first[h][0]], split_of(h, test_percent, validation_percent))
        for h in ordered
    )
    shape = (image_size, image_size) if COLORS[color][1] == 1 else (image_size, image_size, 3)
    images = np.empty((len(ordered), *shape), dtype=np.uint8)
    for row, digest in enumerate(ordered):
        block_no, inside = first[digest][1]
        images[row] = blocks[block_no][inside]
    report.kept = len(samples)
    logger.info("ingested %s: kept %d, skipped %d", source, report.kept, report.skipped)
    dataset = Dataset(
        names, test_percent, samples, images, validation_percent, color, source="images"
    )
    return dataset, report
