"""Int8 calibration on real pictures: choosing, preprocessing, refusing, and the table.

Real Animal-MNIST pictures written as PNG files, the real trained CNN of
``conftest.py`` exported to ONNX, and ONNX Runtime's real calibrator on the CPU.
The TensorRT build itself needs a GPU; here the command is checked up to the
point where it probes for one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from corral.bundle import Bundle
from corral.cli import app
from corral.profiles import load_profile
from trainer.calibration import CalibrationSet, check_calibration_source, load_calibration
from trainer.data import Dataset, content_hash, preprocess
from trainer.errors import CalibrationDataError, TrainConfigError
from trainer.export import ExportReport
from trainer.parity import golden_inputs
from trainer.source import ANIMAL_CLASSES, load_animal_mnist
from trainer.trt import (
    CALIBRATION_TABLE,
    TensorRTInfo,
    build_trt_variant,
    calibrate_int8,
    write_calibration_table,
)

PROFILES = Path(__file__).resolve().parents[2] / "firmware-profiles"
HAS_TRT = "TensorrtExecutionProvider" in ort.get_available_providers()
PER_CLASS = 30


@pytest.fixture(scope="module")
def pictures() -> dict[str, np.ndarray]:
    """Distinct Animal-MNIST cats and dogs (28 x 28 gray), PER_CLASS of each."""
    images, labels = load_animal_mnist()
    chosen: dict[str, np.ndarray] = {}
    for name in ("cat", "dog"):
        rows = np.flatnonzero(labels == ANIMAL_CLASSES.index(name))
        unique = {content_hash(images[r]): images[r] for r in rows[: 2 * PER_CLASS]}
        chosen[name] = np.stack(list(unique.values())[:PER_CLASS])
    return chosen


def _write(root: Path, images: np.ndarray, label: str | None = None, prefix: str = "") -> Path:
    folder = root if label is None else root / label
    folder.mkdir(parents=True, exist_ok=True)
    for n, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{prefix}{n}.png")
    return root


def _by_hash(images: np.ndarray) -> np.ndarray:
    return images[np.argsort([content_hash(i) for i in images])]


def _ranges(directory: Path) -> dict[str, float]:
    """The calibration cache's ``tensor range`` lines, which the flatbuffers table holds too."""
    text = (directory / "calibration.cache").read_text()
    return {name: float(value) for name, value in (line.split() for line in text.splitlines())}


def _float_tensors(model: Path) -> set[str]:
    """The model's input and every float tensor its nodes compute."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(model)))
    floats = {
        v.name
        for v in (*proto.graph.input, *proto.graph.value_info, *proto.graph.output)
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    computed = {name for node in proto.graph.node for name in node.output}
    return {proto.graph.input[0].name} | (floats & computed)


@pytest.fixture
def folder(pictures: dict[str, np.ndarray], tmp_path: Path) -> Path:
    root = tmp_path / "calibration"
    for label, images in pictures.items():
        _write(root, images, label)
    return root


# --- choosing and preprocessing -------------------------------------------------------


def test_images_are_chosen_by_content_hash_and_preprocessed_as_the_bundle_says(
    exported: ExportReport, pictures: dict[str, np.ndarray], folder: Path, tmp_path: Path
) -> None:
    spec = exported.bundle.input
    data = load_calibration(folder, spec, limit=16)
    everything = np.concatenate([pictures["cat"], pictures["dog"]])
    expected = _by_hash(everything)[:16]
    assert data.hashes == tuple(sorted(content_hash(i) for i in everything)[:16])
    np.testing.assert_array_equal(data.inputs, preprocess(expected))
    assert data.inputs.shape == (16, *spec.sample_shape) and data.inputs.dtype == np.float32

    # The same pictures flat, under other names and listed in another order: the same
    # choice, so two builds on the same images calibrate the same way.
    flat = _write(tmp_path / "flat", everything[::-1], prefix="frame-")
    again = load_calibration(flat, spec, limit=16)
    assert again.hashes == data.hashes and again.digest == data.digest
    np.testing.assert_array_equal(again.inputs, data.inputs)

    record = data.metadata()
    assert record["source"] == {
        "kind": "folder",
        "name": "calibration",
        "samples_sha256": data.digest,
    }
    assert (record["samples"], record["max_samples"], record["listed"]) == (16, 16, 60)
    assert (record["skipped"], record["duplicates"]) == (0, 0)
    assert record["parity_on_calibration_data"] is False
    everything_kept = load_calibration(folder, spec, limit=500)
    assert len(everything_kept.hashes) == 2 * PER_CLASS


def test_unreadable_files_are_skipped_and_counted(
    exported: ExportReport, pictures: dict[str, np.ndarray], tmp_path: Path
) -> None:
    root = _write(tmp_path / "mixed", pictures["cat"][:10], "cat")
    good = (root / "cat" / "0.png").read_bytes()
    (root / "cat" / "empty.png").write_bytes(b"")
    (root / "cat" / "notes.png").write_text("not a picture")
    (root / "cat" / "cut.png").write_bytes(good[: len(good) // 2])
    shutil.copyfile(root / "cat" / "1.png", root / "copy.png")  # a flat duplicate
    data = load_calibration(root, exported.bundle.input, limit=64)
    assert len(data.hashes) == 10
    assert data.report.problems == {"empty": 1, "not_an_image": 1, "corrupt": 1}
    record = data.metadata()
    assert (record["listed"], record["skipped"], record["duplicates"]) == (14, 3, 1)


def test_a_dataset_manifest_calibrates_on_its_images_outside_the_test_split(
    exported: ExportReport, cat_dog: Dataset, tmp_path: Path
) -> None:
    manifest = tmp_path / "report" / "dataset.json"
    cat_dog.write_manifest(manifest)
    data = load_calibration(manifest, exported.bundle.input, limit=64)
    unseen = set(cat_dog.hashes("test"))
    allowed = sorted(s.hash for s in cat_dog.samples if s.hash not in unseen)
    assert data.hashes == tuple(allowed[:64])
    rows = [i for i, s in enumerate(cat_dog.samples) if s.hash in set(data.hashes)]
    np.testing.assert_array_equal(data.inputs, preprocess(cat_dog.images[rows]))
    assert data.metadata()["source"]["dataset_version"] == cat_dog.version
    assert data.metadata()["source"]["kind"] == "dataset"


# --- refusals, before anything is built ----------------------------------------------


def _bad_only(root: Path) -> Path:
    root.mkdir()
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("not a picture")
    return root


def _ingested_manifest(path: Path) -> Path:
    path.write_text(json.dumps({"source": "images", "samples": [{"hash": "ab", "split": "x"}]}))
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        pytest.param(lambda p: p / "nowhere", "does not exist", id="missing"),
        pytest.param(lambda p: (p / "e").mkdir() or p / "e", "holds no image", id="empty-folder"),
        pytest.param(lambda p: _bad_only(p / "bad"), "no usable image: all 2", id="only-bad-files"),
        pytest.param(
            lambda p: (p / "a.txt").write_text("x") and p / "a.txt", "is a .txt", id="other-file"
        ),
        pytest.param(
            lambda p: (p / "m.csv").write_text("path,label\n") and p / "m.csv",
            "lists no image",
            id="empty-manifest",
        ),
        pytest.param(
            lambda p: _ingested_manifest(p / "dataset.json"),
            "pass the image folder",
            id="hashes-without-pixels",
        ),
    ],
)
def test_unusable_calibration_data_is_refused_with_what_to_do(
    exported: ExportReport, tmp_path: Path, make: object, words: str
) -> None:
    assert callable(make)
    path = make(tmp_path)
    with pytest.raises(CalibrationDataError) as refused:
        load_calibration(path, exported.bundle.input)
    message = str(refused.value)
    assert words in message and str(path) in message
    assert "--calibration" in message and "golden samples" in message
    assert isinstance(refused.value, TrainConfigError)  # the CLI's exit code 2


def test_only_bad_files_pass_the_cheap_check_and_fail_at_reading(tmp_path: Path) -> None:
    bad = _bad_only(tmp_path / "bad")
    assert check_calibration_source(bad) == 2  # listed, not decoded yet
    with pytest.raises(CalibrationDataError, match=r"1 empty, 1 not_an_image"):
        load_calibration(bad, Bundle.from_dict(_tiny_bundle()).input)


def _tiny_bundle() -> dict[str, object]:
    return {
        "name": "tiny",
        "version": "1.0.0",
        "input": {"name": "input", "shape": [None, 1, 28, 28]},
        "output": {"name": "logits", "labels": ["cat", "dog"]},
        "files": [{"name": "model.onnx", "sha256": "0" * 64, "length": 1}],
    }


# --- the table --------------------------------------------------------------------------


def test_the_table_covers_the_model_and_follows_the_calibration_data(
    exported: ExportReport, pictures: dict[str, np.ndarray], tmp_path: Path
) -> None:
    bundle = exported.bundle
    fp32 = exported.path / bundle.model_file("fp32").name
    cats = load_calibration(_write(tmp_path / "cats", pictures["cat"], "cat"), bundle.input)
    dim = _write(tmp_path / "dim", pictures["cat"] // 3, "cat")
    dimmed = load_calibration(dim, bundle.input)

    tables = {}
    for name, inputs in [
        ("cats", cats.inputs),
        ("dim", dimmed.inputs),
        ("golden", golden_inputs(bundle)),
    ]:
        table = write_calibration_table(fp32, inputs, tmp_path / f"table-{name}")
        assert table.name == CALIBRATION_TABLE and table.stat().st_size > 0
        tables[name] = _ranges(table.parent)

    tensors = _float_tensors(fp32)
    assert len(tensors) > 5
    for ranges in tables.values():
        assert tensors <= set(ranges), tensors - set(ranges)
    # The input's range is the data's own largest value, so the table follows the data.
    input_name = bundle.input.name
    assert tables["cats"][input_name] == pytest.approx(float(cats.inputs.max()))
    assert tables["dim"][input_name] == pytest.approx(float(dimmed.inputs.max()))
    assert tables["dim"][input_name] < 0.4 < tables["cats"][input_name]
    for other in ("dim", "golden"):
        differ = [t for t in tensors if tables[other][t] != pytest.approx(tables["cats"][t])]
        assert len(differ) > len(tensors) // 2, (other, differ)
    assert (tmp_path / "table-cats" / CALIBRATION_TABLE).read_bytes() != (
        tmp_path / "table-dim" / CALIBRATION_TABLE
    ).read_bytes()


def test_the_variant_record_says_what_it_was_calibrated_on(
    exported: ExportReport, folder: Path, tmp_path: Path
) -> None:
    bundle = exported.bundle
    fp32 = exported.path / bundle.model_file("fp32").name
    _, golden = calibrate_int8(bundle, fp32, tmp_path / "golden")
    assert golden == {
        "method": "minmax",
        "source": {"kind": "golden"},
        "samples": len(bundle.golden),
        "skipped": 0,
        "parity_on_calibration_data": True,
    }
    data = load_calibration(folder, bundle.input, limit=20)
    table, record = calibrate_int8(bundle, fp32, tmp_path / "images", data)
    # The table is the calibration images' own, not the golden samples'.
    direct = write_calibration_table(fp32, data.inputs, tmp_path / "direct")
    assert table.read_bytes() == direct.read_bytes()
    assert _ranges(table.parent) != _ranges(tmp_path / "golden")
    assert record["method"] == "minmax" and record["samples"] == 20
    assert record["source"]["kind"] == "folder" and record["source"]["name"] == "calibration"
    assert record["parity_on_calibration_data"] is False and record["skipped"] == 0
    assert json.loads(json.dumps(record)) == record  # plain JSON for the bundle entry


def test_calibration_data_for_an_fp16_variant_is_refused_before_building(
    exported: ExportReport, folder: Path, tmp_path: Path
) -> None:
    data: CalibrationSet = load_calibration(folder, exported.bundle.input, limit=4)
    info = TensorRTInfo(gpu="NVIDIA H200", tensorrt_version="10.3.0", onnxruntime_version="1")
    work = tmp_path / "build"
    with pytest.raises(TrainConfigError, match="int8 only"):
        build_trt_variant(
            exported.bundle,
            exported.path,
            load_profile(PROFILES / "x86-nvidia.toml"),
            "fp16",
            info,
            work,
            calibration=data,
        )
    assert not work.exists()


# --- the command line -------------------------------------------------------------------

runner = CliRunner(env={"COLUMNS": "400"})
BUILD = ["model", "build-trt", "animals@1.0.0", "--profile", "x86-nvidia"]
# Never contacted: every case here stops before the registry is.
AUTH = ["--registry", "http://127.0.0.1:9", "--token", "unused"]


def _said(output: str) -> str:
    return " ".join(output.split())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        pytest.param(["--calibration", "{tmp}/nowhere"], "does not exist", id="missing"),
        pytest.param(
            ["--calibration", "{tmp}/nowhere", "--precision", "int8"],
            "does not exist",
            id="missing-int8",
        ),
        pytest.param(["--calibration", "{tmp}"], "holds no image", id="empty-folder"),
        pytest.param(["--calibration", "{folder}", "--precision", "fp16"], "int8 only", id="fp16"),
        pytest.param(
            ["--calibration", "{folder}", "--calibration-samples", "0"],
            "calibration-samples",
            id="no-samples",
        ),
    ],
)
def test_build_trt_refuses_bad_calibration_options_before_it_probes_the_gpu(
    folder: Path, tmp_path: Path, args: list[str], words: str
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    filled = [a.format(tmp=empty, folder=folder) for a in args]
    result = runner.invoke(app, [*BUILD, *filled, *AUTH])
    said = _said(result.output)
    assert result.exit_code == 2, result.output
    assert words in said
    assert "TensorrtExecutionProvider" not in said  # refused before the probe


@pytest.mark.skipif(HAS_TRT, reason="this onnxruntime has the TensorRT provider")
def test_good_calibration_data_passes_the_check_and_reaches_the_tensorrt_probe(
    folder: Path,
) -> None:
    args = ["--precision", "int8", "--calibration", str(folder), "--calibration-samples", "8"]
    result = runner.invoke(app, [*BUILD, *args, *AUTH])
    assert result.exit_code == 2, result.output
    said = _said(result.output)
    assert "TensorrtExecutionProvider" in said and "calibration data" not in said
