"""Ingest from disk: bad files are reported and skipped, splits never move, manifests agree."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import Dataset, content_hash, write_image_folder
from trainer.errors import DatasetError, TrainConfigError
from trainer.ingest import ingest_images, list_sources, load_image


def _image(seed: int, size: int = 28) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def _write_folder(root: Path, seeds: range, labels: tuple[str, ...] = ("cat", "dog")) -> None:
    for seed in seeds:
        label = labels[seed % len(labels)]
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(seed)).save(root / label / f"{seed:05d}.png")


def _jpeg_bytes(mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (32, 32), "white" if mode != "CMYK" else (0, 50, 100, 0)).save(
        buffer, format="JPEG"
    )
    return buffer.getvalue()


def test_bad_files_are_reported_each_and_the_run_finishes(tmp_path: Path) -> None:
    _write_folder(tmp_path, range(20))
    (tmp_path / "cat" / "truncated.jpg").write_bytes(_jpeg_bytes()[:300])
    (tmp_path / "cat" / "empty.png").write_bytes(b"")
    (tmp_path / "dog" / "notes.png").write_text("this is not a picture\n")
    (tmp_path / "dog" / "cmyk.jpg").write_bytes(_jpeg_bytes("CMYK"))
    dataset, report = ingest_images(tmp_path, workers=2)
    assert report.problems == {"corrupt": 1, "empty": 1, "not_an_image": 1, "wrong_mode": 1}
    for kind, name in [
        ("corrupt", "truncated.jpg"),
        ("empty", "empty.png"),
        ("not_an_image", "notes.png"),
        ("wrong_mode", "cmyk.jpg"),
    ]:
        (line,) = report.first[kind]
        assert name in line
    assert "CMYK" in report.first["wrong_mode"][0]
    assert (report.listed, report.kept, report.skipped) == (24, 20, 4)
    assert dataset.classes == ("cat", "dog")
    assert len(dataset.samples) == 20


def test_adding_images_moves_no_old_sample_to_another_split(tmp_path: Path) -> None:
    _write_folder(tmp_path, range(150))
    before, _ = ingest_images(tmp_path, workers=1)
    _write_folder(tmp_path, range(150, 400))
    after, _ = ingest_images(tmp_path, workers=2)  # more than one chunk: the process pool
    old = {s.hash: s.split for s in before.samples}
    new = {s.hash: s.split for s in after.samples}
    assert len(new) == 400
    assert {h: new[h] for h in old} == old
    assert {"train", "validation", "test"} == set(new.values())
    assert before.version != after.version


def test_the_same_picture_under_two_labels_is_dropped_and_reported(tmp_path: Path) -> None:
    _write_folder(tmp_path, range(10))
    twin = tmp_path / "dog" / "twin.png"
    Image.fromarray(_image(0)).save(twin)  # seed 0 is already a cat
    # The same pixels saved again with other settings is a duplicate, not a new sample.
    Image.fromarray(_image(2)).save(tmp_path / "cat" / "again.png", compress_level=0)
    dataset, report = ingest_images(tmp_path, workers=1)
    assert report.problems == {"conflicting_labels": 2}
    assert any("twin.png" in line for line in report.first["conflicting_labels"])
    assert report.duplicates == 1
    assert content_hash(_image(0)) not in {s.hash for s in dataset.samples}
    assert len(dataset.samples) == 9


def test_csv_and_jsonl_manifests_give_the_folders_dataset(tmp_path: Path) -> None:
    root = tmp_path / "images"
    _write_folder(root, range(30))
    pairs = list_sources(root)
    csv_path = tmp_path / "manifest.csv"
    csv_path.write_text(
        "path,label\n"
        + "".join(f"{Path(p).relative_to(tmp_path)},{label}\n" for p, label in pairs)
        + ",cat\n"
    )
    jsonl_path = tmp_path / "manifest.jsonl"
    jsonl_path.write_text(
        "".join(json.dumps({"path": p, "label": label}) + "\n" for p, label in pairs)
        + "{not json\n"
    )
    from_folder, _ = ingest_images(root, workers=1)
    from_csv, csv_report = ingest_images(csv_path, workers=1)
    from_jsonl, jsonl_report = ingest_images(jsonl_path, workers=1)
    assert from_folder.version == from_csv.version == from_jsonl.version
    assert csv_report.problems == jsonl_report.problems == {"bad_row": 1}
    assert "manifest.csv:32" in csv_report.first["bad_row"][0]


def test_a_manifest_row_pointing_nowhere_is_unreadable(tmp_path: Path) -> None:
    _write_folder(tmp_path / "images", range(6))
    manifest = tmp_path / "m.csv"
    rows = [f"{p},{label}" for p, label in list_sources(tmp_path / "images")]
    manifest.write_text("path,label\n" + "\n".join([*rows, "missing.png,cat"]) + "\n")
    _, report = ingest_images(manifest, workers=1)
    assert report.problems == {"unreadable": 1}


def test_exported_animal_mnist_reads_back_with_the_same_hashes(
    cat_dog: Dataset, tmp_path: Path
) -> None:
    write_image_folder(cat_dog, tmp_path, "test")
    dataset, report = ingest_images(tmp_path, workers=1)
    assert report.skipped == 0
    assert set(dataset.hashes("test")) | set(dataset.hashes("train")) | set(
        dataset.hashes("validation")
    ) == set(cat_dog.hashes("test"))
    assert set(dataset.hashes("test")) == set(cat_dog.hashes("test"))


def test_images_are_fitted_to_the_model_input_but_hashed_as_they_are(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(_image(1, size=50)).save(tmp_path / "a" / "big.png")
    rgb = np.stack([_image(2), _image(3), _image(4)], axis=-1)
    Image.fromarray(rgb).save(tmp_path / "b" / "colour.png")
    dataset, _ = ingest_images(tmp_path, color="rgb", image_size=32, workers=1)
    assert dataset.images.shape == (2, 32, 32, 3)
    assert content_hash(_image(1, size=50)) in {s.hash for s in dataset.samples}
    gray, _ = ingest_images(tmp_path, color="gray", image_size=16, workers=1)
    assert gray.images.shape == (2, 16, 16)
    assert [s.split for s in gray.samples] == [s.split for s in dataset.samples]


def test_a_class_list_keeps_those_labels_in_that_order(tmp_path: Path) -> None:
    _write_folder(tmp_path, range(30), labels=("cat", "dog", "cow"))
    dataset, report = ingest_images(tmp_path, classes=("dog", "cat"), workers=1)
    assert dataset.classes == ("dog", "cat")
    assert report.other_classes == 10
    assert len(dataset.samples) == 20


@pytest.mark.parametrize(
    ("setup", "error", "message"),
    [
        pytest.param(lambda p: p / "nowhere", TrainConfigError, "image folder", id="missing"),
        pytest.param(lambda p: p, DatasetError, "no usable image", id="empty-folder"),
    ],
)
def test_nothing_to_ingest_is_an_error(
    tmp_path: Path, setup: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ingest_images(setup(tmp_path), workers=1)  # type: ignore[operator]


def test_a_named_class_without_images_is_refused(tmp_path: Path) -> None:
    _write_folder(tmp_path, range(4))
    with pytest.raises(TrainConfigError, match="no usable image of class unicorn"):
        ingest_images(tmp_path, classes=("cat", "unicorn"), workers=1)


def test_feedback_for_some_classes_only_is_accepted_when_asked(tmp_path: Path) -> None:
    _write_folder(tmp_path, range(4), labels=("dog",))
    dataset, _ = ingest_images(tmp_path, classes=("cat", "dog"), workers=1, allow_missing=True)
    assert dataset.classes == ("cat", "dog")
    assert {s.label for s in dataset.samples} == {1}


def test_one_class_is_not_enough(tmp_path: Path) -> None:
    _write_folder(tmp_path, range(4), labels=("cat",))
    with pytest.raises(TrainConfigError, match="at least two"):
        ingest_images(tmp_path, workers=1)


def test_a_huge_image_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("trainer.ingest.MAX_PIXELS", 100)
    path = tmp_path / "big.png"
    Image.fromarray(_image(0)).save(path)
    assert load_image(str(path), "gray", 28) == ("too_large", "28x28 pixels")
