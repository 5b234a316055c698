"""``corral train`` as the main CLI mounts it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from corral import Bundle
from trainer.cli import train

app = typer.Typer()
app.command("train")(train)


@app.callback()
def _main() -> None:
    """Keep ``train`` a subcommand, as under ``corral``."""


runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--classes", "cat,unicorn"], "unknown class unicorn", id="unknown-class"),
        pytest.param(["--version", "1.0"], "version", id="bad-version"),
        pytest.param(["--name", "My Model"], "bundle name", id="bad-name"),
        pytest.param(["--epochs", "0"], "epochs", id="no-epochs"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["train", "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.startswith("error: ")
    assert result.output.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_an_occupied_output_directory_exits_2(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["train", "--out", str(tmp_path), "--epochs", "1"])
    assert result.exit_code == 2
    assert "not empty" in result.output


def test_a_one_epoch_run_writes_a_bundle_and_test_images(tmp_path: Path) -> None:
    out, images = tmp_path / "bundle", tmp_path / "images"
    result = runner.invoke(
        app,
        [
            "train",
            *("--out", str(out), "--epochs", "1", "--version", "0.1.0"),
            *("--test-images", str(images)),
        ],
    )
    assert result.exit_code == 0, result.output
    bundle = Bundle.load(out)
    bundle.verify_files(out)
    assert bundle.version == "0.1.0"
    assert bundle.lineage["hyperparameters"]["epochs"] == 1
    assert len(list(images.glob("*/*.png"))) == bundle.metrics["samples"]
    for shown in ("precision", "ONNX parity", str(out)):
        assert shown in result.output


def test_importing_the_command_does_not_load_torch() -> None:
    code = "import sys, trainer.cli; sys.exit('torch' in sys.modules or 'onnx' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_training_on_an_image_folder_reports_bad_files_and_writes_the_manifest(
    tmp_path: Path,
) -> None:
    import hashlib

    import numpy as np
    from PIL import Image

    data, out = tmp_path / "data", tmp_path / "bundle"
    rng = np.random.default_rng(0)
    for label in ("left", "right"):
        (data / label).mkdir(parents=True)
        for i in range(30):
            image = rng.integers(0, 60, (20, 20), dtype=np.uint8)
            image[:, :10] += 150 if label == "left" else 0  # bright half tells the class
            Image.fromarray(image).save(data / label / f"{i}.png")
    (data / "left" / "broken.png").write_text("not a png")
    result = runner.invoke(
        app,
        [
            "train",
            *("--out", str(out), "--data", str(data), "--epochs", "1"),
            *("--color", "rgb", "--image-size", "16", "--workers", "1"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "not_an_image" in result.output
    assert "broken.png" in result.output
    bundle = Bundle.load(out)
    bundle.verify_files(out)
    assert bundle.output.labels == ["left", "right"]
    assert bundle.input.shape == [None, 3, 16, 16]
    assert bundle.input.color == "rgb"
    manifest = (out / "report" / "dataset.json").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == bundle.lineage["dataset_version"]
    assert "report" not in {f.name for f in bundle.files}
    for name in ("report.json", "report.md", "confusion.png", "reliability.png"):
        assert (out / "report" / name).is_file(), name
    again = runner.invoke(
        app, ["train", *("--out", str(out), "--data", str(data), "--epochs", "1", "--force")]
    )
    assert again.exit_code == 0, again.output  # the report folder does not block --force


def test_a_missing_data_path_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["train", "--out", str(tmp_path / "b"), "--data", str(tmp_path / "nope")]
    )
    assert result.exit_code == 2
    assert "image folder" in result.output


def test_search_and_int8_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = runner.invoke(
        app,
        [
            "train",
            *("--out", str(out), "--epochs", "1", "--search", "grid", "--trials", "2"),
            "--int8",
        ],
    )
    assert result.exit_code == 0, result.output
    for shown in ("grid search: 2 trials", "val acc", "best: trial", "INT8: accuracy"):
        assert shown in result.output
    bundle = Bundle.load(out)
    assert len(bundle.lineage["search"]["trials"]) == 2
    assert {f.variant for f in bundle.files} == {"fp32", "int8"}
    report = (out / "report" / "report.md").read_text()
    assert "## search" in report
    assert "## int8" in report


def test_an_unknown_search_mode_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "b"), "--search", "bayes"])
    assert result.exit_code == 2
    assert "grid or random" in result.output
