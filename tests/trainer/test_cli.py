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
