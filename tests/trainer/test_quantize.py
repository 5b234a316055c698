"""The INT8 variant: a second bundle file, its own golden outputs, refused when it loses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from corral import Bundle
from trainer.errors import QuantizationError
from trainer.export import ExportReport, write_bundle
from trainer.quantize import run_logits
from trainer.train import TrainResult


@pytest.fixture(scope="module")
def with_int8(trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> ExportReport:
    return write_bundle(
        trained, tmp_path_factory.mktemp("int8") / "b", "animals", "1.0.0", int8=True
    )


def test_the_int8_file_is_a_second_variant_with_its_own_golden_outputs(
    with_int8: ExportReport,
) -> None:
    bundle = Bundle.load(with_int8.path)  # the contract package reads it back
    bundle.verify_files(with_int8.path)
    int8 = bundle.model_file("int8")
    assert (bundle.model_file("fp32").name, int8.name) == ("model.onnx", "model.int8.onnx")
    assert bundle.lineage["golden_variant"] == "fp32"
    golden = int8.unrecognized["golden"]
    inputs = np.asarray([s.input for s in bundle.golden], dtype=np.float32).reshape(
        len(bundle.golden), *bundle.input.sample_shape
    )
    got = run_logits(with_int8.path / int8.name, inputs)
    assert np.max(np.abs(got - np.asarray(golden["outputs"]))) <= golden["tolerance"]
    fp32 = run_logits(with_int8.path / "model.onnx", inputs)
    expected = np.asarray([s.output for s in bundle.golden], dtype=np.float32)
    assert np.max(np.abs(fp32 - expected)) <= bundle.golden_tolerance


def test_the_accuracy_delta_is_recorded_and_small(with_int8: ExportReport) -> None:
    report = with_int8.int8
    assert report is not None
    assert report.delta_points <= 1.0
    assert report.accuracy_fp32 == pytest.approx(with_int8.bundle.metrics["accuracy"], abs=1e-6)
    assert with_int8.bundle.lineage["int8"]["accuracy_delta_points"] == report.delta_points
    assert (with_int8.path / "model.int8.onnx").stat().st_size < (
        with_int8.path / "model.onnx"
    ).stat().st_size


def test_a_variant_that_loses_too_much_is_refused_unless_forced(
    trained: TrainResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("trainer.quantize.MAX_ACCURACY_LOSS_POINTS", -1000.0)  # nothing passes
    with pytest.raises(QuantizationError, match="force-int8"):
        write_bundle(trained, tmp_path / "refused", "animals", "1.0.0", int8=True)
    assert list(tmp_path.iterdir()) == []  # the staging directory went too
    forced = write_bundle(
        trained, tmp_path / "forced", "animals", "1.0.0", int8=True, force_int8=True
    )
    assert {f.variant for f in forced.bundle.files} == {"fp32", "int8"}
