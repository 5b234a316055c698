"""Export: the bundle the trainer writes is one the contract package and ONNX Runtime accept."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from corral import Bundle
from trainer.data import Dataset, preprocess, write_image_folder
from trainer.errors import ParityError, TrainConfigError
from trainer.export import (
    ExportReport,
    check_bundle_identity,
    check_output_dir,
    check_parity,
    write_bundle,
)
from trainer.model import AnimalNet
from trainer.train import TrainResult


def _session(bundle_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle_dir / "model.onnx"), providers=["CPUExecutionProvider"])


def test_the_contract_package_accepts_the_bundle(exported: ExportReport, bundle_dir: Path) -> None:
    bundle = Bundle.load(bundle_dir)
    bundle.verify_files(bundle_dir)
    assert (bundle.name, bundle.version) == ("animals", "1.0.0")
    assert bundle.model_file("fp32").name == "model.onnx"
    assert bundle.output.labels == ["cat", "dog"]
    assert bundle.output.kind == "logits"
    assert bundle.created.endswith("Z")


def test_the_bundle_directory_holds_only_the_bundle(
    exported: ExportReport, bundle_dir: Path
) -> None:
    # no external-data file beside the model, no staging directory left behind
    assert sorted(os.listdir(bundle_dir)) == ["bundle.json", "model.onnx"]
    assert os.listdir(bundle_dir.parent) == [bundle_dir.name]


def test_the_model_is_self_contained_with_a_recent_opset(
    exported: ExportReport, bundle_dir: Path
) -> None:
    proto = onnx.load(str(bundle_dir / "model.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    opset = {o.domain: o.version for o in proto.opset_import}[""]
    assert opset >= 17
    assert Bundle.load(bundle_dir).compatibility["onnx_opset"] == opset
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_runtime_runs_any_batch_size(
    exported: ExportReport, bundle_dir: Path, cat_dog: Dataset, batch: int
) -> None:
    images, _ = cat_dog.split("test")
    inputs = preprocess(images[:7])
    session = _session(bundle_dir)
    (logits,) = session.run(["logits"], {"input": inputs[:batch]})
    assert logits.shape == (batch, 2)
    (all_seven,) = session.run(["logits"], {"input": inputs})
    np.testing.assert_allclose(logits, all_seven[:batch], atol=1e-5)


def test_golden_samples_reproduce_in_onnx_runtime(exported: ExportReport, bundle_dir: Path) -> None:
    bundle = Bundle.load(bundle_dir)
    assert len(bundle.golden) == 8
    assert {s.label for s in bundle.golden} == {"cat", "dog"}
    session = _session(bundle_dir)
    for sample in bundle.golden:
        batch = np.asarray(sample.input, dtype=np.float32).reshape(1, 1, 28, 28)
        (logits,) = session.run(["logits"], {"input": batch})
        np.testing.assert_allclose(logits[0], sample.output, atol=bundle.golden_tolerance)


def test_the_input_spec_matches_the_training_preprocessing(
    exported: ExportReport, bundle_dir: Path, cat_dog: Dataset, tmp_path: Path
) -> None:
    # A camera sees the PNG; the agent applies (p * scale - mean) / std. That must
    # give the golden input exactly, or the smoke test would compare different things.
    bundle = Bundle.load(bundle_dir)
    spec = bundle.input
    assert spec.shape == [None, 1, 28, 28]
    assert spec.color == "gray"
    write_image_folder(cat_dog, tmp_path, "test")
    by_input = {tuple(s.input): s for s in bundle.golden}
    pngs = sorted(tmp_path.glob("*/*.png"))
    matched = 0
    for path in pngs:
        with Image.open(path) as png:
            pixels = np.asarray(png, dtype=np.float32)
        agent_input = (pixels * np.float32(spec.scale / spec.std[0])) - np.float32(
            spec.mean[0] / spec.std[0]
        )
        sample = by_input.get(tuple(agent_input.reshape(-1).tolist()))
        if sample is not None:
            assert sample.label == path.parent.name
            matched += 1
    assert matched == len(bundle.golden)


def test_metrics_drift_baseline_and_lineage_describe_the_run(
    exported: ExportReport, bundle_dir: Path, trained: TrainResult
) -> None:
    bundle = Bundle.load(bundle_dir)
    assert bundle.metrics["accuracy"] == pytest.approx(trained.evaluation.accuracy)
    assert set(bundle.metrics["per_class"]) == {"cat", "dog"}
    samples = trained.evaluation.samples
    hist = bundle.drift_baseline["confidence_hist"]
    assert len(hist["bins"]) == len(hist["counts"]) + 1 == 11
    assert sum(hist["counts"]) == samples
    assert sum(bundle.drift_baseline["class_prior"].values()) == pytest.approx(1.0)
    assert 0.0 < bundle.drift_baseline["input_mean"] < 1.0
    lineage = bundle.lineage
    assert lineage["dataset_version"] == trained.dataset.version
    assert lineage["hyperparameters"] == trained.config.to_dict()
    assert lineage["code_dirty"] in (True, False, None)
    assert lineage["world_size"] == 1
    assert bundle.compatibility["profiles"] == ["x86-cpu", "x86-nvidia", "jetson-orin"]


def test_the_lineage_names_the_data_code_settings_and_every_library(
    exported: ExportReport, bundle_dir: Path, trained: TrainResult
) -> None:
    import re

    import corral

    lineage = Bundle.load(bundle_dir).lineage
    dataset = lineage["dataset"]
    assert dataset["version"] == dataset["manifest_sha256"] == lineage["dataset_version"]
    assert dataset["samples"] == len(trained.dataset.samples)
    assert dataset["splits"]["test"] == trained.evaluation.samples
    assert sum(dataset["splits"].values()) == dataset["samples"]
    assert (dataset["source"], dataset["classes"]) == ("animal-mnist/3", ["cat", "dog"])
    assert lineage["code_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", lineage["code_commit"])
    assert lineage["trainer_version"] == corral.__version__
    assert set(lineage["dependencies"]) == {
        "python",
        "torch",
        "onnx",
        "onnxruntime",
        "onnxscript",
        "numpy",
        "pillow",
    }
    assert lineage["dependencies"]["torch"].startswith("2.13.0")


def test_parity_reports_a_tiny_difference(exported: ExportReport) -> None:
    assert exported.parity_max_abs_diff <= 1e-4


def test_parity_refuses_a_model_that_is_not_the_exported_one(
    exported: ExportReport, bundle_dir: Path, cat_dog: Dataset
) -> None:
    images, _ = cat_dog.split("test")
    other = AnimalNet(2)
    with pytest.raises(ParityError, match="do not ship it") as caught:
        check_parity(other, bundle_dir / "model.onnx", preprocess(images[:16]))
    assert caught.value.max_abs_diff > 1e-4


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        pytest.param("Animals", "1.0.0", "lowercase", id="uppercase-name"),
        pytest.param("animals", "1.0", "version", id="not-semver"),
    ],
)
def test_bad_names_and_versions_are_refused_by_the_contract(
    name: str, version: str, message: str
) -> None:
    with pytest.raises(TrainConfigError, match=message):
        check_bundle_identity(name, version, ["cat", "dog"])


def test_an_occupied_output_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(TrainConfigError, match="not empty"):
        check_output_dir(tmp_path)
    with pytest.raises(TrainConfigError, match="does not look like a bundle"):
        check_output_dir(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_refused_bundle_leaves_nothing_behind(trained: TrainResult, tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError):
        write_bundle(trained, tmp_path / "out", "animals", "not-a-version")
    assert list(tmp_path.iterdir()) == []
