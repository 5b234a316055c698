"""The Animal-MNIST silhouettes as a content-addressed, versioned dataset.

The images and labels come from :mod:`trainer.source` (the installed
``animal-mnist`` package's data files, read without its loader).

Every image is named by the SHA-256 of its decoded pixels (raw uint8 bytes,
row-major, at the image's own size and in its own mode: 28x28 gray for
Animal-MNIST), and that name alone decides its split: with ``b = int(hash[:8], 16)
% 100``, ``b < test_percent`` is test, the next ``validation_percent`` buckets are
validation (carved from what would be train), the rest train. Adding or removing
images therefore never moves an existing image between splits, and identical
images always land in the same split. The pixels, not the file bytes, are hashed
so that the same picture saved twice (other metadata, another PNG compression
level, an Animal-MNIST image exported with :func:`write_image_folder` and read
back by :mod:`trainer.ingest`) is one sample, and the hash does not depend on the
model's input size or colour, so changing those never reshuffles the splits.

After hashing, each image is fitted to the model's input (:func:`fit_image`:
converted to gray or RGB, resized to ``image_size`` squared). The dataset version
is the SHA-256 of a canonical JSON manifest (source, classes, input colour and
size, split percentages, and every sample's hash, label and split, sorted by hash).
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

from corral.bundle import InputSpec
from trainer.errors import DatasetError, TrainConfigError
from trainer.source import ANIMAL_CLASSES, load_animal_mnist

__all__ = [
    "COLORS",
    "INPUT_SCALE",
    "SPLITS",
    "Dataset",
    "Sample",
    "build_dataset",
    "check_input",
    "check_labels",
    "content_hash",
    "fit_image",
    "load_dataset",
    "merge_datasets",
    "parse_classes",
    "preprocess",
    "split_of",
    "write_image_folder",
]

# A pixel p in 0..255 becomes p * INPUT_SCALE; the bundle's InputSpec says the same.
INPUT_SCALE = 1.0 / 255.0
IMAGE_SIZE = 28
SPLITS = ("train", "validation", "test")
COLORS = {"gray": ("L", 1), "rgb": ("RGB", 3)}  # config name -> (Pillow mode, channels)
MAX_IMAGE_SIZE = 512


# --- content addressing and splits -----------------------------------------------


def content_hash(image: np.ndarray) -> str:
    """The SHA-256 hex digest of an image's raw uint8 bytes (row-major).

    Args:
        image: one uint8 image, (H, W) gray or (H, W, 3) RGB.

    Returns:
        64 lowercase hex digits.

    Raises:
        DatasetError: the image is not uint8.
    """
    if image.dtype != np.uint8:
        raise DatasetError(f"images are hashed as uint8, got {image.dtype}")
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def _check_percents(test_percent: int, validation_percent: int) -> None:
    if not 0 <= test_percent <= 100:
        raise TrainConfigError(f"test_percent should be 0..100, got {test_percent}")
    if not 0 <= validation_percent <= 100 - test_percent:
        raise TrainConfigError(
            f"validation_percent should be 0..{100 - test_percent} "
            f"(it is carved from the train share), got {validation_percent}"
        )


def split_of(digest: str, test_percent: int, validation_percent: int = 0) -> str:
    """The split a sample belongs to, decided by its content hash alone.

    Args:
        digest: the sample's :func:`content_hash`.
        test_percent: the share of samples, 0..100, that go to the test split.
        validation_percent: the share, carved from the train share, that goes to
            the validation split.

    Returns:
        ``"test"``, ``"validation"`` or ``"train"``.

    Raises:
        TrainConfigError: a percentage is out of range or they add up past 100.
    """
    _check_percents(test_percent, validation_percent)
    bucket = int(digest[:8], 16) % 100
    if bucket < test_percent:
        return "test"
    return "validation" if bucket < test_percent + validation_percent else "train"


def check_labels(names: Sequence[str]) -> tuple[str, ...]:
    """Check a list of class names from any source (a folder, a manifest).

    Args:
        names: the label names, in label order.

    Returns:
        The names as a tuple, stripped.

    Raises:
        TrainConfigError: a name is empty, repeated or has a comma (the CLI's list
            separator), or fewer than two are given.
    """
    cleaned = tuple(n.strip() for n in names)
    bad = [n for n in cleaned if not n or "," in n]
    if bad:
        raise TrainConfigError(f"class names must be non-empty and without commas, got {bad}")
    if len(set(cleaned)) != len(cleaned):
        raise TrainConfigError(f"a class is named twice in {', '.join(cleaned)}")
    if len(cleaned) < 2:
        raise TrainConfigError(f"need at least two classes, got {len(cleaned)}")
    return cleaned


def fit_image(image: Image.Image, color: str, size: int) -> np.ndarray:
    """Convert a decoded image to the model's colour and square input size.

    The whole picture is resized (squashed, not cropped) with Pillow's bilinear
    filter, which averages over the source pixels when shrinking.

    Args:
        image: a loaded Pillow image in mode ``1``, ``L``, ``P`` or ``RGB``.
        color: ``"gray"`` or ``"rgb"``.
        size: the side of the square output.

    Returns:
        uint8 (size, size) for gray, (size, size, 3) for RGB.

    Raises:
        TrainConfigError: ``color`` is unknown.
    """
    if color not in COLORS:
        raise TrainConfigError(f"color should be one of {sorted(COLORS)}, got {color!r}")
    mode = COLORS[color][0]
    fitted = image if image.mode == mode else image.convert(mode)
    if fitted.size != (size, size):
        fitted = fitted.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(fitted, dtype=np.uint8)


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

    ``images[i]`` is the image of ``samples[i]``, fitted to the model input:
    uint8 (N, S, S) for gray, (N, S, S, 3) for RGB. Samples are sorted by hash, and
    their labels index ``classes``.
    """

    classes: tuple[str, ...]
    test_percent: int
    samples: tuple[Sample, ...]
    images: np.ndarray
    validation_percent: int = 0
    color: str = "gray"
    source: str = "animal-mnist/3"

    @property
    def image_size(self) -> int:
        """The side of the square model input."""
        return int(self.images.shape[1]) if self.images.ndim >= 3 else IMAGE_SIZE

    @property
    def channels(self) -> int:
        """1 for gray, 3 for RGB."""
        return COLORS[self.color][1]

    def manifest(self) -> dict[str, Any]:
        """The canonical description the dataset version is computed from."""
        return {
            "source": self.source,
            "classes": list(self.classes),
            "input": {"color": self.color, "size": self.image_size},
            "test_percent": self.test_percent,
            "validation_percent": self.validation_percent,
            "samples": [
                {"hash": s.hash, "label": self.classes[s.label], "split": s.split}
                for s in self.samples
            ],
        }

    def manifest_bytes(self) -> bytes:
        """The canonical JSON manifest (sorted keys, no spaces) the version hashes."""
        return json.dumps(self.manifest(), sort_keys=True, separators=(",", ":")).encode()

    def write_manifest(self, path: Path) -> None:
        """Write :meth:`manifest_bytes` to ``path``; its SHA-256 is :attr:`version`.

        Raises:
            OSError: the file cannot be written.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.manifest_bytes())

    @property
    def version(self) -> str:
        """SHA-256 of the canonical JSON manifest: changes when any sample does."""
        return hashlib.sha256(self.manifest_bytes()).hexdigest()

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The images and label indices of one split.

        Args:
            name: ``"train"``, ``"validation"`` or ``"test"``.

        Returns:
            ``(images, labels)``: uint8 images and int64 (N,) labels, in hash order.

        Raises:
            TrainConfigError: ``name`` is not a split.
        """
        if name not in SPLITS:
            raise TrainConfigError(f"split should be one of {SPLITS}, got {name!r}")
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
    validation_percent: int = 0,
    color: str = "gray",
    image_size: int = IMAGE_SIZE,
) -> Dataset:
    """Keep the chosen Animal-MNIST classes, deduplicate by content and assign splits.

    Args:
        images: uint8 (N, 28, 28) images.
        labels: (N,) indices into :data:`ANIMAL_CLASSES`.
        classes: the class names to keep; label ``i`` of the result is ``classes[i]``.
        test_percent: the share of samples, 0..100, that go to the test split.
        validation_percent: the share carved from train for the validation split.
        color: the model input's colour, ``"gray"`` or ``"rgb"``.
        image_size: the side of the model's square input.

    Returns:
        The dataset, samples sorted by content hash (of the original 28x28 pixels).

    Raises:
        TrainConfigError: a class name is unknown or repeated, a percentage is out
            of range, or the colour or size is unsupported.
        DatasetError: the same image carries two different kept labels.
    """
    kept = parse_classes(classes)
    _check_percents(test_percent, validation_percent)
    check_input(color, image_size)
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
    samples = tuple(
        Sample(h, first[h][1], split_of(h, test_percent, validation_percent)) for h in ordered
    )
    rows = [first[h][0] for h in ordered]
    kept_images = images[rows].copy()
    if color != "gray" or image_size != kept_images.shape[1]:
        kept_images = (
            np.stack([fit_image(Image.fromarray(i), color, image_size) for i in kept_images])
            if len(kept_images)
            else kept_images
        )
    return Dataset(
        kept, test_percent, samples, kept_images, validation_percent, color, "animal-mnist/3"
    )


def check_input(color: str, image_size: int) -> None:
    """Check the model input's colour and size.

    Raises:
        TrainConfigError: ``color`` is not gray or rgb, or the size is outside
            8..``MAX_IMAGE_SIZE``.
    """
    if color not in COLORS:
        raise TrainConfigError(f"color should be one of {sorted(COLORS)}, got {color!r}")
    if not 8 <= image_size <= MAX_IMAGE_SIZE:
        raise TrainConfigError(f"image_size should be 8..{MAX_IMAGE_SIZE}, got {image_size}")


def load_dataset(
    classes: Sequence[str] = ("cat", "dog"),
    test_percent: int = 20,
    validation_percent: int = 0,
    color: str = "gray",
    image_size: int = IMAGE_SIZE,
) -> Dataset:
    """Read Animal-MNIST from the installed package and build the dataset.

    Args:
        classes: the class names to keep, in label order.
        test_percent: the share of samples, 0..100, that go to the test split.
        validation_percent: the share carved from train for the validation split.
        color: the model input's colour, ``"gray"`` or ``"rgb"``.
        image_size: the side of the model's square input.

    Returns:
        The dataset.

    Raises:
        TrainConfigError: a class name is unknown or repeated, or a setting is out
            of range.
        DatasetError: the data files are missing or malformed.
    """
    kept = parse_classes(classes)  # fail on a typo before reading 8 MB
    _check_percents(test_percent, validation_percent)
    check_input(color, image_size)
    images, labels = load_animal_mnist()
    return build_dataset(images, labels, kept, test_percent, validation_percent, color, image_size)


def merge_datasets(base: Dataset, extra: Dataset) -> tuple[Dataset, dict[str, int]]:
    """Add the samples of ``extra`` to ``base``; on a label conflict ``extra`` wins.

    ``extra`` is the newer source, e.g. field feedback that a person labelled: an
    image already in ``base`` under another label is taken as a correction. Each
    sample keeps the split its hash gives, so merging never moves an old sample.

    Args:
        base: the data so far; its classes keep their order.
        extra: the data to add; its classes must be among ``base``'s (it may have
            fewer), and its input and split settings must be the same.

    Returns:
        The merged dataset (``source`` joins both with ``+``) and the counts
        ``added`` (new samples), ``duplicates`` (already there with the same
        label) and ``relabelled`` (already there with another label).

    Raises:
        TrainConfigError: ``extra`` has a class ``base`` does not, or other input
            (colour, size) or split percentages.
    """
    unknown = [c for c in extra.classes if c not in base.classes]
    if unknown:
        raise TrainConfigError(
            f"the new data has class {', '.join(unknown)}, which the model does not know "
            f"(it knows {', '.join(base.classes)}); name the classes to train on explicitly"
        )
    settings = ("color", "image_size", "test_percent", "validation_percent")
    differ = [k for k in settings if getattr(base, k) != getattr(extra, k)]
    if differ:
        shown = ", ".join(f"{k} {getattr(base, k)} != {getattr(extra, k)}" for k in differ)
        raise TrainConfigError(f"cannot merge datasets with different settings: {shown}")
    remap = [base.classes.index(c) for c in extra.classes]
    rows: dict[str, tuple[int, int, int]] = {  # hash -> (which, row, label)
        s.hash: (0, row, s.label) for row, s in enumerate(base.samples)
    }
    counts = {"added": 0, "duplicates": 0, "relabelled": 0}
    for row, sample in enumerate(extra.samples):
        label = remap[sample.label]
        seen = rows.get(sample.hash)
        if seen is None:
            counts["added"] += 1
        elif seen[2] == label:
            counts["duplicates"] += 1
            continue
        else:
            counts["relabelled"] += 1
        rows[sample.hash] = (1, row, label)
    ordered = sorted(rows)
    sources = (base.images, extra.images)
    images = np.stack([sources[rows[h][0]][rows[h][1]] for h in ordered])
    samples = tuple(
        Sample(h, rows[h][2], split_of(h, base.test_percent, base.validation_percent))
        for h in ordered
    )
    merged = Dataset(
        base.classes,
        base.test_percent,
        samples,
        images,
        base.validation_percent,
        base.color,
        f"{base.source}+{extra.source}",
    )
    return merged, counts


def preprocess(images: np.ndarray, spec: InputSpec | None = None) -> np.ndarray:
    """Turn uint8 images into the model's float32 NCHW input.

    Without ``spec``, the trainer's own arithmetic, which the InputSpec of every
    bundle it writes states (scale 1/255, mean 0, std 1), done in float32 as the
    agent does. With a bundle's ``spec``, that spec's ``(p * scale - mean[c]) /
    std[c]`` per channel, and its channel order: ``bgr`` takes RGB images and
    swaps their channels. For the trainer's own spec both give the same bits.

    Args:
        images: uint8 (N, H, W) gray or (N, H, W, 3) RGB images, already fitted
            to the model's input (:func:`fit_image`).
        spec: a bundle's input spec, or None for the trainer's own.

    Returns:
        float32 (N, 1, H, W) or (N, 3, H, W).

    Raises:
        DatasetError: the images are not uint8 (N, H, W) or (N, H, W, 3), or not
            the channels and size ``spec`` says.
    """
    if images.dtype != np.uint8 or not (
        images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)
    ):
        raise DatasetError(
            f"expected uint8 (N, H, W) or (N, H, W, 3) images, got {images.dtype} {images.shape}"
        )
    nchw = images[:, np.newaxis] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
    if spec is None:
        return np.ascontiguousarray(nchw.astype(np.float32) * np.float32(INPUT_SCALE))
    if tuple(nchw.shape[1:]) != spec.sample_shape:
        raise DatasetError(
            f"the bundle's input is C x H x W = {spec.sample_shape}, "
            f"got images of {tuple(nchw.shape[1:])}"
        )
    if spec.color == "bgr":
        nchw = nchw[:, ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(1, -1, 1, 1)
    scaled = nchw.astype(np.float32) * np.float32(spec.scale)
    return np.ascontiguousarray((scaled - mean) / std)


def write_image_folder(dataset: Dataset, out: Path, split: str = "test") -> int:
    """Write one split as lossless PNGs (gray or RGB): ``out/<label>/<hash16>.png``.

    Args:
        dataset: the dataset to write from.
        out: the root folder; created if missing.
        split: ``"train"``, ``"validation"`` or ``"test"``.

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
        # A 2-D uint8 array becomes an 8-bit grayscale ("L") image, (H, W, 3) an RGB
        # one; PNG keeps either exact.
        Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")
    return len(images)
