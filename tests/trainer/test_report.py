"""Calibration figures and the report written beside the bundle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.metrics import expected_calibration_error, reliability
from trainer.report import draw_confusion, write_report
from trainer.train import TrainResult


def test_a_model_right_as_often_as_it_says_has_zero_ece() -> None:
    # 10 samples at confidence 0.8, 8 of them right; 10 at 0.6, 6 right.
    probs = np.array([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 10)
    labels = np.array([0] * 8 + [1] * 2 + [0] * 6 + [1] * 4)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_an_overconfident_model_has_the_gap_as_ece() -> None:
    probs = np.array([[0.95, 0.05]] * 10)
    labels = np.array([0] * 5 + [1] * 5)  # says 0.95, right half the time
    assert expected_calibration_error(probs, labels) == pytest.approx(0.45)
    bins = reliability(probs, labels)
    (full,) = [b for b in bins if b["count"]]
    assert (full["low"], full["high"], full["count"]) == (0.9, 1.0, 10)
    assert sum(b["count"] for b in bins) == 10


def test_reliability_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="expected"):
        reliability(np.ones((3, 2)), np.zeros(2, dtype=np.int64))


def test_the_confusion_picture_needs_a_square_matrix() -> None:
    with pytest.raises(ValueError, match="2x2"):
        draw_confusion([[1, 2, 3]], ["a", "b"])


def test_the_report_has_json_markdown_and_two_pictures(
    trained: TrainResult, tmp_path: Path
) -> None:
    report = write_report(trained, tmp_path, "animals 1.0.0", {"note": {"hello": 1}})
    written = json.loads((tmp_path / "report.json").read_text())
    assert written == json.loads(json.dumps(report))
    assert written["metrics"]["confusion"] == trained.evaluation.confusion
    assert 0.0 <= written["calibration"]["ece"] <= 1.0
    assert written["calibration"]["ece"] == pytest.approx(trained.evaluation.ece)
    markdown = (tmp_path / "report.md").read_text()
    for shown in ("# animals 1.0.0", "| cat |", "confusion.png", "reliability.png", "hello"):
        assert shown in markdown
    for name in ("confusion.png", "reliability.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.format == "PNG"
            assert picture.width > 100


def test_the_bundle_lists_no_report_file_and_its_metrics_carry_the_ece(exported: object) -> None:
    from trainer.export import ExportReport

    assert isinstance(exported, ExportReport)
    assert {f.name for f in exported.bundle.files} == {"model.onnx"}
    assert exported.bundle.metrics["expected_calibration_error"] is not None
