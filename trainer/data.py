"""The Animal-MNIST silhouettes as a content-addressed, versioned dataset.

The images and labels come from :mod:`trainer.source` (the installed
``animal-mnist`` package's data files, read without its loader).

Every image is named by the SHA-256 of its raw 28x28 uint8 bytes, and that name
alone decides its split (``int(hash[:8], 16) % 100 < test_percent`` means test).
Adding or removing images therefore never moves an existing image between train
and test, and byte-identical duplicates always land in the same split. The
dataset version is the SHA-256 of a canonical JSON manifest (classes, test
percentage, and every sample's hash, label and split, sorted by hash).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from trainer.errors import DatasetError, TrainConfigError
from trainer.source import ANIMAL_CLASSES, load_animal_mnist

__all__ = [
    "INPUT_SCALE",
    "Dataset",
    "Sample",
    "build_dataset",
    "content_hash",
    "load_dataset",
    "parse_classes",
    "preprocess",
    "split_of",
    "write_image_folder",
]

# A pixel p in 0..255 becomes p * INPUT_SCALE; the bundle's InputSpec says the same.
INPUT_SCALE = 1.0 / 255.0
IMAGE_SIZE = 28
_SPLITS = ("train", "test")


# --- content addressing and splits -----------------------------------------------


def content_hash(image: np.ndarray) -> str:
    """The SHA-256 hex digest of an image's raw uint8 bytes (row-major).

    Args:
        image: one 28x28 uint8 image.

    Returns:
        64 lowercase hex digits.

    Raises:
        DatasetError: the image is not uint8.
    """
    if image.dtype != np.uint8:
        raise DatasetError(f"images are hashed as uint8, got {image.dtype}")
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def split_of(digest: str, test_percent: int) -> str:
    """The split a sample belongs to, decided by its content hash alone.

    Args:
        digest: the sample's :func:`content_hash`.
        test_percent: the share of samples, 0..100, that go to the test split.

    Returns:
        ``"test"`` or ``"train"``.

    Raises:
        TrainConfigError: ``test_percent`` is outside 0..100.
    """
    if not 0 <= test_percent <= 100:
        raise TrainConfigError(f"test_percent should be 0..100, got {test_percent}")
    return "test" if int(digest[:8], 16) % 100 < test_percent else "train"


def parse_classes(names: Sequence[str]) -> tuple[str, ...]:
    """Check a list of class names against Animal-MNIST's classes.

    Args:
        names: class names, in the order their labels should take.

    Returns:
        The names as a tuple, in the same order.

    Raises:
        TrainConfigError: a name is unknown or repeated, or fewer than two are given.
    """
    cleaned = tuple(n.strip().lower() for n in names if n.strip())
    unknown = [n for n in cleaned if n not in ANIMAL_CLASSES]
    if unknown:
        raise TrainConfigError(
            f"unknown class {', '.join(unknown)}; choose from {', '.join(ANIMAL_CLASSES)}"
        )
    if len(set(cleaned)) != len(cleaned):
        raise TrainConfigError(f"a class is named twice in {', '.join(cleaned)}")
    if len(cleaned) < 2:
        raise TrainConfigError(f"need at least two classes, got {len(cleaned)}")
    return cleaned


@dataclass(frozen=True)
class Sample:
    """One image's identity: content hash, label index and split."""

    hash: str
    label: int
    split: str


@dataclass(frozen=True)
class Dataset:
    """Deduplicated, labelled images with their splits.

    ``images[i]`` is the image of ``samples[i]``; samples are sorted by hash, and
    ``labels`` index ``classes``.
    """

    classes: tuple[str, ...]
    test_percent: int
    samples: tuple[Sample, ...]
    images: np.ndarray

    def manifest(self) -> dict[str, Any]:
        """The canonical description the dataset version is computed from."""
        return {
            "source": "animal-mnist/3",
            "classes": list(self.classes),
            "test_percent": self.test_percent,
            "samples": [
                {"hash": s.hash, "label": self.classes[s.label], "split": s.split}
                for s in self.samples
            ],
        }

    @property
    def version(self) -> str:
        """SHA-256 of the canonical JSON manifest: changes when any sample does."""
        canonical = json.dumps(self.manifest(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The images and label indices of one split.

        Args:
            name: ``"train"`` or ``"test"``.

        Returns:
            ``(images, labels)``: uint8 (N, 28, 28) and int64 (N,), in hash order.

        Raises:
            TrainConfigError: ``name`` is not a split.
        """
        if name not in _SPLITS:
            raise TrainConfigError(f"split should be one of {_SPLITS}, got {name!r}")
        index = [i for i, s in enumerate(self.samples) if s.split == name]
        labels = np.array([self.samples[i].label for i in index], dtype=np.int64)
        return self.images[index], labels

    def hashes(self, name: str) -> list[str]:
        """The content hashes of one split, in the order :meth:`split` returns."""
        return [s.hash for s in self.samples if s.split == name]


def build_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str] = ("cat", "dog"),
    test_percent: int = 20,
) -> Dataset:
    """Keep the chosen classes, deduplicate by content and assign splits.

    Args:
        images: uint8 (N, 28, 28) images.
        labels: (N,) indices into :data:`ANIMAL_CLASSES`.
        classes: the class names to keep; label ``i`` of the result is ``classes[i]``.
        test_percent: the share of samples, 0..100, that go to the test split.

    Returns:
        The dataset, samples sorted by content hash.

    Raises:
        TrainConfigError: a class name is unknown or repeated, or the percentage is
            outside 0..100.
        DatasetError: the same image carries two different kept labels.
    """
    kept = parse_classes(classes)
    if not 0 <= test_percent <= 100:
        raise TrainConfigError(f"test_percent should be 0..100, got {test_percent}")
    remap = {ANIMAL_CLASSES.index(name): i for i, name in enumerate(kept)}
    first: dict[str, tuple[int, int]] = {}  # hash -> (row, new label)
    for row, source_label in enumerate(labels.tolist()):
        if source_label not in remap:
            continue
        digest = content_hash(images[row])
        label = remap[source_label]
        seen = first.get(digest)
        if seen is None:
            first[digest] = (row, label)
        elif seen[1] != label:
            raise DatasetError(
                f"image {digest[:16]} is labelled both {kept[seen[1]]} and {kept[label]}"
            )
    ordered = sorted(first)
    samples = tuple(Sample(h, first[h][1], split_of(h, test_percent)) for h in ordered)
    rows = [first[h][0] for h in ordered]
    return Dataset(kept, test_percent, samples, images[rows].copy())


def load_dataset(classes: Sequence[str] = ("cat", "dog"), test_percent: int = 20) -> Dataset:
    """Read Animal-MNIST from the installed package and build the dataset.

    Args:
        classes: the class names to keep, in label order.
        test_percent: the share of samples, 0..100, that go to the test split.

    Returns:
        The dataset.

    Raises:
        TrainConfigError: a class name is unknown or repeated.
        DatasetError: the data files are missing or malformed.
    """
    kept = parse_classes(classes)  # fail on a typo before reading 8 MB
    images, labels = load_animal_mnist()
    return build_dataset(images, labels, kept, test_percent)


def preprocess(images: np.ndarray) -> np.ndarray:
    """Turn uint8 (N, 28, 28) images into the model's float32 (N, 1, 28, 28) input.

    The same arithmetic as the bundle's InputSpec (scale 1/255, mean 0, std 1),
    done in float32 as the agent does.

    Args:
        images: uint8 images.

    Returns:
        float32 NCHW array.

    Raises:
        DatasetError: the images are not uint8 (N, H, W).
    """
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DatasetError(f"expected uint8 (N, H, W) images, got {images.dtype} {images.shape}")
    return (images[:, np.newaxis].astype(np.float32) * np.float32(INPUT_SCALE)).astype(np.float32)


def write_image_folder(dataset: Dataset, out: Path, split: str = "test") -> int:
    """Write one split as lossless grayscale PNGs: ``out/<label>/<hash16>.png``.

    Args:
        dataset: the dataset to write from.
        out: the root folder; created if missing.
        split: ``"train"`` or ``"test"``.

    Returns:
        The number of images written.

    Raises:
        TrainConfigError: ``split`` is not a split.
        OSError: a file cannot be written.
    """
    images, labels = dataset.split(split)
    for name in dataset.classes:
        (out / name).mkdir(parents=True, exist_ok=True)
    for image, label, digest in zip(images, labels.tolist(), dataset.hashes(split), strict=True):
        path = out / dataset.classes[label] / f"{digest[:16]}.png"
        # A 2-D uint8 array becomes an 8-bit grayscale ("L") image; PNG keeps it exact.
        Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")
    return len(images)
