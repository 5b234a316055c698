"""The dataset: safe loading, content-addressed splits and versions, PNG export."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from corral.bundle import InputSpec
from trainer.data import (
    Dataset,
    build_dataset,
    content_hash,
    merge_datasets,
    parse_classes,
    preprocess,
    split_of,
    write_image_folder,
)
from trainer.errors import DatasetError, TrainConfigError, UnsafePickleError
from trainer.source import ANIMAL_CLASSES, load_animal_mnist, restricted_loads

CAT, DOG, ZEBRA = (ANIMAL_CLASSES.index(n) for n in ("cat", "dog", "zebra"))


class _Evil:
    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def _random_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


# --- restricted unpickling ------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda marker: _Evil(os.system, f"touch {marker}"), id="os.system"),
        pytest.param(lambda marker: _Evil(eval, f"open('{marker}', 'w')"), id="builtins.eval"),
        pytest.param(lambda marker: _Evil(Path.touch, Path(marker)), id="pathlib.Path"),
    ],
)
def test_unpickler_refuses_globals_other_than_numpy_arrays(tmp_path: Path, payload: Any) -> None:
    marker = tmp_path / "pwned"
    raw = pickle.dumps(payload(marker))
    with pytest.raises(UnsafePickleError, match="only numpy arrays"):
        restricted_loads(raw)
    assert not marker.exists()


# Protocols 3 and 4 pickle an array with only the allowed names (the data files use 4);
# 0-2 also name _codecs.encode and 5 numpy's _frombuffer, which stay refused.
@pytest.mark.parametrize("protocol", [3, 4])
def test_unpickler_reads_a_numpy_array(protocol: int) -> None:
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    loaded = restricted_loads(pickle.dumps(array, protocol=protocol))
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not a pickle", id="garbage"),
        pytest.param(pickle.dumps(np.zeros(3))[:20], id="truncated"),
        pytest.param(pickle.dumps([1, 2, 3]), id="list-not-array"),
    ],
)
def test_unpickler_reports_malformed_data_as_dataset_error(raw: bytes) -> None:
    with pytest.raises(DatasetError):
        restricted_loads(raw)


def test_unsafe_pickle_is_a_dataset_error() -> None:
    assert issubclass(UnsafePickleError, DatasetError)


def test_the_real_files_load_as_ten_balanced_classes() -> None:
    images, labels = load_animal_mnist()
    assert images.shape == (10000, 28, 28)
    assert images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10


def test_a_missing_data_directory_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        load_animal_mnist(tmp_path)


# --- classes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "message"),
    [
        pytest.param(["cat", "unicorn"], "unknown class unicorn", id="unknown"),
        pytest.param(["cat", "cat"], "named twice", id="duplicate"),
        pytest.param(["cat"], "at least two", id="one-class"),
    ],
)
def test_bad_class_lists_are_refused(names: list[str], message: str) -> None:
    with pytest.raises(TrainConfigError, match=message):
        parse_classes(names)


def test_labels_follow_the_order_classes_are_given_in() -> None:
    images = _random_images(2, seed=1)
    labels = np.array([CAT, DOG])
    for order in (("cat", "dog"), ("dog", "cat")):
        dataset = build_dataset(images, labels, order, test_percent=50)
        by_hash = {s.hash: dataset.classes[s.label] for s in dataset.samples}
        assert by_hash == {content_hash(images[0]): "cat", content_hash(images[1]): "dog"}


def test_other_classes_are_left_out_and_duplicates_kept_once() -> None:
    images = _random_images(3, seed=2)
    images = np.concatenate([images, images[:1]])  # row 3 repeats row 0
    labels = np.array([CAT, DOG, ZEBRA, CAT])
    dataset = build_dataset(images, labels, ("cat", "dog"))
    assert len(dataset.samples) == 2


def test_one_image_with_two_labels_is_refused() -> None:
    image = _random_images(1, seed=3)
    with pytest.raises(DatasetError, match="labelled both cat and dog"):
        build_dataset(np.concatenate([image, image]), np.array([CAT, DOG]))


# --- merging new data -------------------------------------------------------------------


def test_merging_adds_new_images_and_newer_labels_win() -> None:
    images = _random_images(6, seed=11)
    base = build_dataset(images[:4], np.array([CAT, DOG, CAT, DOG]), test_percent=50)
    # new: rows 4 and 5; row 0 again as a dog (a correction); row 1 again as a dog
    extra = build_dataset(
        np.concatenate([images[4:], images[:2]]),
        np.array([DOG, DOG, DOG, DOG]),
        ("dog", "cat"),  # its own label order; the merge maps by name
        test_percent=50,
    )
    merged, counts = merge_datasets(base, extra)
    assert counts == {"added": 2, "duplicates": 1, "relabelled": 1}
    assert merged.classes == ("cat", "dog")
    labels = {s.hash: merged.classes[s.label] for s in merged.samples}
    assert labels[content_hash(images[0])] == "dog"
    assert len(merged.samples) == 6
    old = {s.hash: s.split for s in base.samples}
    assert {s.hash: s.split for s in merged.samples if s.hash in old} == old
    for sample, image in zip(merged.samples, merged.images, strict=True):
        assert content_hash(image) == sample.hash  # pixels travel with their sample
    assert merged.source == "animal-mnist/3+animal-mnist/3"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param({"classes": ("cat", "zebra")}, "class zebra", id="unknown-class"),
        pytest.param({"test_percent": 30}, "test_percent 20 != 30", id="other-split"),
        pytest.param({"image_size": 32}, "image_size 28 != 32", id="other-input"),
    ],
)
def test_merging_refuses_data_the_model_cannot_take(extra: dict[str, Any], message: str) -> None:
    images = _random_images(4, seed=12)
    labels = np.array([CAT, DOG, CAT, DOG])
    base = build_dataset(images[:2], labels[:2])
    settings: dict[str, Any] = {"classes": ("cat", "dog"), **extra}
    other = build_dataset(images[2:], np.where(labels[2:] == DOG, ZEBRA, CAT), **settings)
    with pytest.raises(TrainConfigError, match=message):
        merge_datasets(base, other)


# --- splits ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("digest", "percent", "split"),
    [
        pytest.param("00000013" + "0" * 56, 20, "test", id="19-under-20"),
        pytest.param("00000014" + "0" * 56, 20, "train", id="20-not-under-20"),
        pytest.param("ffffffff" + "0" * 56, 0, "train", id="none-held-out"),
        pytest.param("ffffffff" + "0" * 56, 100, "test", id="all-held-out"),
    ],
)
def test_the_split_is_decided_by_the_hash_prefix(digest: str, percent: int, split: str) -> None:
    assert split_of(digest, percent) == split


def test_splits_do_not_move_when_images_are_added() -> None:
    images = _random_images(300, seed=4)
    labels = np.where(np.arange(300) % 2 == 0, CAT, DOG)
    small = build_dataset(images[:200], labels[:200])
    large = build_dataset(images, labels)
    before = {s.hash: s.split for s in small.samples}
    after = {s.hash: s.split for s in large.samples}
    assert {h: after[h] for h in before} == before
    assert build_dataset(images[:200], labels[:200]).samples == small.samples


def test_about_test_percent_of_real_images_are_held_out(cat_dog: Dataset) -> None:
    test_images, _ = cat_dog.split("test")
    assert 0.15 < len(test_images) / len(cat_dog.samples) < 0.25
    assert set(cat_dog.hashes("test")).isdisjoint(cat_dog.hashes("train"))


# --- versions ------------------------------------------------------------------------


def test_the_version_is_a_function_of_the_content_not_the_order() -> None:
    images = _random_images(50, seed=5)
    labels = np.where(np.arange(50) < 25, CAT, DOG)
    reverse = slice(None, None, -1)
    assert (
        build_dataset(images, labels).version
        == build_dataset(images[reverse], labels[reverse]).version
    )


def test_the_version_changes_when_one_pixel_changes() -> None:
    images = _random_images(50, seed=6)
    labels = np.where(np.arange(50) < 25, CAT, DOG)
    changed = images.copy()
    changed[7, 14, 14] ^= 1
    assert build_dataset(images, labels).version != build_dataset(changed, labels).version


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"test_percent": 30}, id="test-percent"),
        pytest.param({"classes": ("dog", "cat")}, id="label-order"),
    ],
)
def test_the_version_changes_with_the_split_or_the_labels(change: dict[str, Any]) -> None:
    images = _random_images(50, seed=7)
    labels = np.where(np.arange(50) < 25, CAT, DOG)
    base: dict[str, Any] = {"classes": ("cat", "dog"), "test_percent": 20}
    assert (
        build_dataset(images, labels, **base).version
        != build_dataset(images, labels, **(base | change)).version
    )


# --- preprocessing and PNG export -------------------------------------------------------


def test_preprocessing_scales_pixels_to_zero_one_in_nchw() -> None:
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    out = preprocess(images)
    assert out.dtype == np.float32
    assert out.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(out[0, 0], [[0.0, 1.0], [0.2, 0.4]], atol=1e-7)


def test_preprocessing_by_a_bundle_input_spec() -> None:
    gray = _random_images(3, 5)
    own = InputSpec(name="input", shape=[None, 1, 28, 28], scale=1 / 255, mean=[0.0], std=[1.0])
    # The trainer's own spec gives the same bits as its default arithmetic.
    np.testing.assert_array_equal(preprocess(gray, own), preprocess(gray))
    rgb = np.random.default_rng(6).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    bgr = InputSpec(name="x", shape=[None, 3, 4, 4], color="bgr", mean=mean, std=std)
    out = preprocess(rgb, bgr)
    for c in range(3):  # channel c of the input is channel 2 - c of the RGB pictures
        want = (rgb[..., 2 - c].astype(np.float64) / 255 - mean[c]) / std[c]
        np.testing.assert_allclose(out[:, c], want, rtol=1e-6, atol=1e-6)
    with pytest.raises(DatasetError, match="C x H x W"):
        preprocess(gray, bgr)


def test_test_images_are_written_as_lossless_grayscale_pngs(
    cat_dog: Dataset, tmp_path: Path
) -> None:
    count = write_image_folder(cat_dog, tmp_path, "test")
    images, labels = cat_dog.split("test")
    assert count == len(images)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat", "dog"]
    for image, label, digest in zip(images, labels, cat_dog.hashes("test"), strict=True):
        path = tmp_path / cat_dog.classes[label] / f"{digest[:16]}.png"
        raw = path.read_bytes()
        assert raw.startswith(b"\x89PNG")
        with Image.open(io.BytesIO(raw)) as png:
            assert png.mode == "L"
            np.testing.assert_array_equal(np.asarray(png), image)
