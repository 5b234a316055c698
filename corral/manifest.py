"""Image manifests: the CSV / JSONL lists of image paths and labels every role reads.

A manifest is one of:

- ``.csv`` with a header row naming a ``path`` column and, optionally, a
  ``label`` column (other columns are ignored);
- ``.jsonl`` with one ``{"path": ..., "label": ...}`` object a line (blank
  lines skipped, other keys ignored).

Relative paths are taken from the manifest's own folder, so a manifest and its
images can move together. Labels are stripped; an empty or missing label (an
empty CSV cell, a JSON ``null``) means the image is unlabelled.

The trainer ingests manifests (``corral train --data``, labels required) and
``corral predict`` reads them (labels optional, scored when given), so both
parse here, the same way. Parsing never stops at a bad line: each becomes a
:class:`ManifestProblem` located ``file:line``, and each caller decides what
a problem means (the trainer counts and skips it, ``corral predict`` refuses
the whole run).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import ManifestError

__all__ = [
    "MANIFEST_SUFFIXES",
    "Manifest",
    "ManifestProblem",
    "ManifestRow",
    "is_manifest",
    "read_manifest",
]

#: File name suffixes of manifests (compared in lower case).
MANIFEST_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class ManifestRow:
    """One image of a manifest: its path (resolved), its label if any, and its line."""

    path: Path
    label: str | None
    line: int


@dataclass(frozen=True)
class ManifestProblem:
    """A line that names no usable image: where (``file:line``) and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class Manifest:
    """The good rows of a manifest, in file order, and the problems of its bad lines."""

    source: Path
    rows: tuple[ManifestRow, ...]
    problems: tuple[ManifestProblem, ...]


def is_manifest(path: Path) -> bool:
    """Whether ``path`` is named like a manifest (``.csv`` or ``.jsonl``, any case)."""
    return path.suffix.lower() in MANIFEST_SUFFIXES


def _records(path: Path, handle: Any) -> Iterator[tuple[int, object]]:
    """(line number, the decoded record or why it could not be decoded) per record."""
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(handle)
        columns = reader.fieldnames
        no_path = columns is not None and "path" not in columns
        for record in reader:
            # line_num is where the record ends: right even after blank or multi-line rows.
            if no_path:
                has = ", ".join(repr(c) for c in columns or ())
                yield reader.line_num, ValueError(f"the header names no 'path' column ({has})")
            else:
                yield reader.line_num, record
        return
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as e:
            yield number, ValueError(f"not JSON ({e.msg})")


def _row(
    source: Path, number: int, record: object, require_label: bool
) -> ManifestRow | ManifestProblem:
    where = f"{source.name}:{number}"
    if isinstance(record, ValueError):
        return ManifestProblem(where, str(record))
    if not isinstance(record, dict):
        return ManifestProblem(where, f"expected a JSON object, got {type(record).__name__}")
    image, label = record.get("path"), record.get("label")
    if isinstance(label, str):
        label = label.strip() or None
    has_path = isinstance(image, str) and bool(image)
    if require_label and (not has_path or not isinstance(label, str)):
        return ManifestProblem(where, "expected a non-empty 'path' and 'label'")
    if not has_path:
        return ManifestProblem(where, "expected a non-empty 'path'")
    if label is not None and not isinstance(label, str):
        return ManifestProblem(where, f"expected 'label' to be a string, got {label!r}")
    given = Path(str(image))
    return ManifestRow(given if given.is_absolute() else source.parent / given, label, number)


def read_manifest(path: Path, require_label: bool = False) -> Manifest:
    """Parse a ``.csv`` or ``.jsonl`` manifest into rows and the problems of bad lines.

    Image files are not opened: a row that names a missing file is the caller's to
    find when it reads the image.

    Args:
        path: the manifest.
        require_label: make a line without a label a problem (training needs one);
            otherwise such a row is kept, unlabelled.

    Returns:
        The rows in file order and one problem per bad line, also in file order.

    Raises:
        ManifestError: ``path`` is not named ``.csv`` or ``.jsonl``, or it cannot be
            read (missing, not UTF-8, a CSV the csv module cannot parse).
    """
    path = Path(path)
    if not is_manifest(path):
        raise ManifestError(
            f"{path} is not a manifest; expected a .csv with a 'path' column or a .jsonl "
            'of {"path": ..., "label": ...} objects'
        )
    rows: list[ManifestRow] = []
    problems: list[ManifestProblem] = []
    try:
        # utf-8-sig: spreadsheets save CSV with a byte-order mark before the header.
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, record in _records(path, handle):
                row = _row(path, number, record, require_label)
                if isinstance(row, ManifestRow):
                    rows.append(row)
                else:
                    problems.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"cannot read the manifest {path}: {e}") from e
    return Manifest(path, tuple(rows), tuple(problems))
