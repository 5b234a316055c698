"""The evaluation report written beside a bundle, for people rather than devices.

Where: ``<out>/report/`` (:data:`trainer.export.REPORT_DIR`), inside the bundle
directory but not listed in ``bundle.json``'s ``files``: the bundle contract is
unchanged, the registry and the agent never fetch it, and it travels with the
bundle folder when a person copies it. ``--force`` replaces it with the bundle.

What (all from the test split unless the section says otherwise):

- ``report.json``: the metrics (accuracy, macro F1, per-class precision, recall,
  F1, support, confusion, recall gap), calibration (expected calibration error
  and the reliability bins), the per-epoch history, and whatever the caller adds
  (the ingest report, the INT8 comparison, the search trials).
- ``report.md``: the same as tables, with the two pictures.
- ``confusion.png``: the confusion matrix (rows true, columns predicted), each
  cell shaded by its share of the row.
- ``reliability.png``: accuracy against confidence per bin; the diagonal is a
  perfectly calibrated model.

The pictures are drawn with Pillow, which the trainer already needs, rather than
a plotting library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from trainer.data import preprocess
from trainer.metrics import Evaluation, expected_calibration_error, reliability, softmax
from trainer.train import TrainResult, predict_logits

__all__ = [
    "CONFUSION_PNG",
    "RELIABILITY_PNG",
    "REPORT_JSON",
    "REPORT_MD",
    "draw_confusion",
    "draw_reliability",
    "write_report",
]

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CONFUSION_PNG = "confusion.png"
RELIABILITY_PNG = "reliability.png"
_BINS = 10
_CELL = 44
_MARGIN = 90
_WHITE = (255, 255, 255)
_BLACK = (0, 0, 0)
_GRID = (200, 200, 200)


def draw_confusion(confusion: list[list[int]], labels: list[str]) -> Image.Image:
    """The confusion matrix as a picture, cells shaded by their share of the row.

    Args:
        confusion: K x K counts, rows true and columns predicted.
        labels: the K class names.

    Returns:
        An RGB image.

    Raises:
        ValueError: the matrix is not K x K.
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    k = len(labels)
    if matrix.shape != (k, k):
        raise ValueError(f"expected a {k}x{k} matrix, got {matrix.shape}")
    size = _MARGIN + k * _CELL + 10
    image = Image.new("RGB", (size, size + 20), _WHITE)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    for i in range(k):
        for j in range(k):
            x, y = _MARGIN + j * _CELL, _MARGIN + i * _CELL
            shade = int(255 - 200 * share[i, j])
            fill = (shade, shade, 255) if i == j else (255, shade, shade)
            draw.rectangle((x, y, x + _CELL, y + _CELL), fill=fill, outline=_GRID)
            draw.text((x + 4, y + _CELL // 2 - 6), str(matrix[i, j]), fill=_BLACK, font=font)
        draw.text((4, _MARGIN + i * _CELL + _CELL // 2 - 6), labels[i][:12], fill=_BLACK, font=font)
        draw.text((_MARGIN + i * _CELL + 2, _MARGIN - 16), labels[i][:7], fill=_BLACK, font=font)
    draw.text((_MARGIN, 8), "predicted ->", fill=_BLACK, font=font)
    draw.text((4, _MARGIN - 32), "true", fill=_BLACK, font=font)
    return image


def draw_reliability(bins: list[dict[str, Any]], ece: float) -> Image.Image:
    """Accuracy against confidence per bin, with the calibrated diagonal.

    Args:
        bins: :func:`trainer.metrics.reliability` output.
        ece: the expected calibration error, printed in the title.

    Returns:
        An RGB image.

    Raises:
        Nothing.
    """
    side, left, top = 300, 50, 30
    image = Image.new("RGB", (left + side + 20, top + side + 40), _WHITE)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()

    def at(x: float, y: float) -> tuple[float, float]:
        return left + x * side, top + (1 - y) * side

    draw.rectangle((*at(0, 1), *at(1, 0)), outline=_BLACK)
    for bin_ in bins:
        if not bin_["count"]:
            continue
        draw.rectangle(
            (*at(bin_["low"], bin_["accuracy"]), *at(bin_["high"], 0)),
            fill=(90, 120, 220),
            outline=_WHITE,
        )
        # The gap to the bin's mean confidence, the thing ECE averages.
        draw.line(
            (*at(bin_["low"], bin_["confidence"]), *at(bin_["high"], bin_["confidence"])),
            fill=(220, 60, 60),
            width=2,
        )
    draw.line((*at(0, 0), *at(1, 1)), fill=(120, 120, 120), width=1)
    draw.text((left, 8), f"reliability (ECE {ece:.3f})", fill=_BLACK, font=font)
    draw.text((left + side // 2 - 30, top + side + 8), "confidence", fill=_BLACK, font=font)
    draw.text((4, top + side // 2), "accuracy", fill=_BLACK, font=font)
    for tick in (0.0, 0.5, 1.0):
        draw.text((at(tick, 0)[0] - 6, top + side + 22), f"{tick:.1f}", fill=_BLACK, font=font)
        draw.text((left - 26, at(0, tick)[1] - 6), f"{tick:.1f}", fill=_BLACK, font=font)
    return image


def _markdown(report: dict[str, Any], evaluation: Evaluation) -> str:
    labels = list(evaluation.labels)
    metrics = report["metrics"]
    lines = [
        f"# {report['title']}",
        "",
        f"Test split: {evaluation.samples} images. Accuracy {evaluation.accuracy:.4f}, "
        f"macro F1 {evaluation.macro_f1:.4f}, recall gap {evaluation.recall_gap:.4f}, "
        f"expected calibration error {report['calibration']['ece']:.4f}.",
        "",
        f"Dataset version `{report['dataset_version']}`.",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in metrics["per_class"].items():
        lines.append(
            f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} "
            f"| {m['support']} |"
        )
    lines += ["", "## Confusion matrix (rows true, columns predicted)", ""]
    lines.append("| true \\ predicted | " + " | ".join(labels) + " |")
    lines.append("| --- |" + " ---: |" * len(labels))
    for name, row in zip(labels, evaluation.confusion, strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", f"![confusion matrix]({CONFUSION_PNG})", "", "## Calibration", ""]
    lines += [
        "| confidence bin | count | mean confidence | accuracy |",
        "| --- | ---: | ---: | ---: |",
    ]
    for b in report["calibration"]["bins"]:
        if b["count"]:
            lines.append(
                f"| {b['low']:.1f}-{b['high']:.1f} | {b['count']} | {b['confidence']:.3f} "
                f"| {b['accuracy']:.3f} |"
            )
    lines += ["", f"![reliability curve]({RELIABILITY_PNG})", ""]
    for section, body in report.get("extra", {}).items():
        lines += [f"## {section}", "", "```json", json.dumps(body, indent=2), "```", ""]
    return "\n".join(lines)


def write_report(
    result: TrainResult, directory: Path, title: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write report.json, report.md and the two pictures into ``directory``.

    Args:
        result: the training run; its model is evaluated on the test split again
            for the probabilities the calibration needs.
        directory: the report folder, created if missing.
        title: the heading, e.g. ``"animals 1.0.0"``.
        extra: more sections for report.json (``extra``) and report.md, e.g.
            ``{"ingest": ..., "int8": ..., "search": ...}``; plain JSON values.

    Returns:
        What report.json holds.

    Raises:
        OSError: a file cannot be written.
    """
    images, labels = result.dataset.split("test")
    probs = softmax(predict_logits(result.model, preprocess(images)))
    bins = reliability(probs, labels, _BINS)
    ece = expected_calibration_error(probs, labels, _BINS)
    evaluation = result.evaluation
    report: dict[str, Any] = {
        "title": title,
        "dataset_version": result.dataset.version,
        "metrics": evaluation.to_dict(),
        "calibration": {"ece": ece, "bins": bins},
        "history": [
            {"epoch": h.epoch, "loss": h.loss, "train_accuracy": h.train_accuracy, "lr": h.lr}
            for h in result.history
        ],
        "train_seconds": result.seconds,
        "pictures": [CONFUSION_PNG, RELIABILITY_PNG],
        "extra": extra or {},
    }
    directory.mkdir(parents=True, exist_ok=True)
    draw_confusion(evaluation.confusion, list(evaluation.labels)).save(directory / CONFUSION_PNG)
    draw_reliability(bins, ece).save(directory / RELIABILITY_PNG)
    (directory / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (directory / REPORT_MD).write_text(_markdown(report, evaluation))
    return report
