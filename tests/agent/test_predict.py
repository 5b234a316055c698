"""``corral predict``: offline predictions with the agent's runtime, on a real bundle and PNGs."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import typer
from typer.testing import CliRunner

from agent.cli import EXIT_BAD_INPUT, predict
from corral import Bundle, file_digest
from tests.agent.fixtures import tiny_bundle

ROOT = Path(__file__).resolve().parents[2]

app = typer.Typer()
app.command("predict")(predict)


@app.callback()
def _main() -> None:
    """Keep ``predict`` a subcommand, as under ``corral``."""


runner = CliRunner()

#: Gray levels of the test images; the tiny model says "bright" iff the mean is above 127.5.
LEVELS = {"a_dark.png": 30, "b_bright.png": 220, "c_dim.png": 100}


def bundle_dir(directory: Path) -> Path:
    """The tiny real classifier of ``fixtures.tiny_bundle``, with its bundle.json."""
    bundle = tiny_bundle(directory)
    (directory / "bundle.json").write_bytes(bundle.to_bytes())
    return directory


def expected(level: int) -> tuple[str, float]:
    """The tiny model's answer computed by hand: logits (m, -m), m the normalised mean pixel."""
    m = (level / 255.0 - 0.5) / 0.5
    bright = 1.0 / (1.0 + math.exp(-2.0 * m))
    return ("bright", bright) if bright > 0.5 else ("dark", 1.0 - bright)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return bundle_dir(tmp_path / "bundle")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder of real PNGs (gray, and one BGR in a sub-folder), other sizes than the model's."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    for name, level in LEVELS.items():
        assert cv2.imwrite(str(folder / name), np.full((40, 30), level, np.uint8))
    assert cv2.imwrite(str(folder / "more" / "d_colour.png"), np.full((56, 56, 3), 200, np.uint8))
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def test_a_folder_gives_a_table_row_per_image(bundle: Path, images: Path) -> None:
    result = runner.invoke(app, ["predict", str(bundle), str(images)], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert "tiny 1.0.0 (fp32, CPUExecutionProvider): 4 image(s)" in result.output
    rows = [
        [cell.strip() for cell in line.strip("│ ").split("│")]
        for line in result.output.splitlines()
        if ".png" in line
    ]
    names = [Path(row[0]).name for row in rows]
    assert names == ["a_dark.png", "b_bright.png", "c_dim.png", "d_colour.png"]
    for row, level in zip(rows, LEVELS.values(), strict=False):
        label, confidence = expected(level)
        assert row[1:3] == [label, f"{confidence:.3f}"]
        assert row[3].startswith(f"{label} {confidence:.3f}, ")
    assert "notes.txt" not in result.output


def test_json_gives_the_runtimes_scores_in_input_order(bundle: Path, images: Path) -> None:
    files = [images / name for name in LEVELS]
    result = runner.invoke(app, ["predict", str(bundle), *map(str, files), "--json", "--top", "1"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["model"], document["version"], document["variant"]) == (
        "tiny",
        "1.0.0",
        "fp32",
    )
    assert [p["file"] for p in document["predictions"]] == [str(f) for f in files]
    for p, level in zip(document["predictions"], LEVELS.values(), strict=True):
        label, confidence = expected(level)
        assert p["label"] == label
        assert p["confidence"] == pytest.approx(confidence, abs=1e-5)
        assert p["top"] == [{"label": label, "score": p["confidence"]}]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_out_writes_every_prediction(
    bundle: Path, images: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"predictions{suffix}"
    result = runner.invoke(app, ["predict", str(bundle), str(images), "--out", str(out)])

    assert result.exit_code == 0, result.output
    text = out.read_text()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
        got = {Path(r["file"]).name: (r["label"], r["top"][1]["label"]) for r in rows}
    else:
        rows = list(csv.DictReader(text.splitlines()))
        header = ["file", "label", "confidence", "label_1", "score_1", "label_2", "score_2"]
        assert list(rows[0]) == header
        got = {Path(r["file"]).name: (r["label"], r["label_2"]) for r in rows}
    assert len(rows) == 4
    for name, level in LEVELS.items():
        label = expected(level)[0]
        assert got[name] == (label, "dark" if label == "bright" else "bright")


def test_a_model_with_a_fixed_batch_size_gets_padded_batches(tmp_path: Path, images: Path) -> None:
    directory = tmp_path / "fixed"
    bundle = tiny_bundle(directory)
    model = onnx.load(str(directory / "model.onnx"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 3
    onnx.save(model, str(directory / "model.onnx"))
    data = bundle.to_dict()
    data["input"]["shape"][0] = 3
    digest, length = file_digest(directory / "model.onnx")
    data["files"][0].update(sha256=digest, length=length)
    (directory / "bundle.json").write_bytes(Bundle.from_dict(data).to_bytes())

    result = runner.invoke(app, ["predict", str(directory), str(images), "--json"])

    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]
    # One full batch of 3, then one padded batch of 1 (ONNX Runtime refuses any other size).
    assert [p["label"] for p in predictions] == ["dark", "bright", "dark", "bright"]


def _break_bundle_json(bundle: Path) -> None:
    (bundle / "bundle.json").write_text('{"name": "tiny"')


def _tamper_model(bundle: Path) -> None:
    with (bundle / "model.onnx").open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))


#: (arguments after ``predict`` from the bundle, image folder and --out file; message).
BAD_INPUTS = [
    pytest.param(
        lambda b, i, o: [b, i / "broken.png", "--out", o],
        "broken.png: not an image",
        id="bad-image",
    ),
    pytest.param(
        lambda b, i, o: [b, i / "empty.png", "--out", o],
        "empty.png: not an image",
        id="empty-image",
    ),
    pytest.param(lambda b, i, o: [b, i, "--out", o], "broken.png: not an image", id="folder"),
    pytest.param(
        lambda b, i, o: [b, i / "missing.png", "--out", o],
        "missing.png does not exist",
        id="missing-image",
    ),
    pytest.param(lambda b, i, o: [b, i / "none", "--out", o], "holds no images", id="empty-dir"),
    pytest.param(lambda b, i, o: [b.parent / "nope", i, "--out", o], "bundle folder", id="no-dir"),
    pytest.param(
        lambda b, i, o: [b, i / "a_dark.png", "--variant", "int8", "--out", o],
        "no 'int8' variant; has ['fp32']",
        id="no-variant",
    ),
    pytest.param(
        lambda b, i, o: [b, i / "a_dark.png", "--out", o.with_suffix(".txt")],
        ".jsonl or .csv",
        id="bad-out",
    ),
]
Args = Callable[[Path, Path, Path], list[Path | str]]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    bundle: Path, images: Path, tmp_path: Path, args: Args, message: str
) -> None:
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing of a PNG")
    (images / "empty.png").write_bytes(b"")
    (images / "none").mkdir()
    out = tmp_path / "predictions.jsonl"
    out.write_text("kept\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    result = runner.invoke(app, ["predict", *map(str, args(bundle, images, out))])

    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_every_bad_image_is_named_in_one_error(bundle: Path, images: Path) -> None:
    for name in ("x.png", "y.png"):
        (images / name).write_bytes(b"garbage")

    result = runner.invoke(app, ["predict", str(bundle), str(images)])

    assert result.exit_code == EXIT_BAD_INPUT
    assert "2 input file(s) cannot be used" in result.stderr
    assert "x.png" in result.stderr and "y.png" in result.stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(_break_bundle_json, "not valid JSON", id="bad-bundle-json"),
        pytest.param(_tamper_model, "does not match", id="tampered-model"),
    ],
)
def test_a_bad_bundle_exits_2(
    bundle: Path, images: Path, damage: Callable[[Path], None], message: str
) -> None:
    damage(bundle)

    result = runner.invoke(app, ["predict", str(bundle), str(images)])

    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert message in result.stderr


def test_corral_predict_is_mounted_on_the_main_cli(bundle: Path, images: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "corral.cli", "predict", str(bundle), str(images), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr
    labels = [p["label"] for p in json.loads(proc.stdout)["predictions"]]
    assert labels == ["dark", "bright", "dark", "bright"]
