"""``corral train``: train a model, export it and write a bundle directory.

The main CLI mounts :func:`train` with ``app.command("train")(train)``. This module
imports only typer, rich and the standard library at import time; torch, ONNX and
the rest load inside the command, so ``corral --help`` stays fast and works where
the trainer's extra is not installed.

Exit codes: 0 done, 1 the data, export or parity check failed, 2 bad input (an
unknown class, a bad name or version, a busy output directory). In both failure
cases nothing is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from trainer.export import ExportReport
    from trainer.metrics import Evaluation

__all__ = ["train"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def _fail(message: str, code: int) -> typer.Exit:
    # Plain echo, not rich: one unwrapped line, whatever the terminal width.
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code=code)


def _metrics_table(evaluation: Evaluation) -> Table:
    table = Table(title=f"Test split: {evaluation.samples} images")
    for column in ("class", "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, m in evaluation.per_class.items():
        table.add_row(name, f"{m.precision:.3f}", f"{m.recall:.3f}", f"{m.f1:.3f}", str(m.support))
    table.add_section()
    table.add_row("macro F1", "", "", f"{evaluation.macro_f1:.3f}", str(evaluation.samples))
    return table


def _summary(
    console: Console, report: ExportReport, evaluation: Evaluation, seconds: float
) -> None:
    console.print(_metrics_table(evaluation))
    console.print(
        f"accuracy {evaluation.accuracy:.4f}, recall gap {evaluation.recall_gap:.4f}, "
        f"trained in {seconds:.1f} s"
    )
    console.print(f"ONNX parity: max abs diff {report.parity_max_abs_diff:.2e} (limit 1e-4)")
    console.print(f"bundle {report.bundle.name} {report.bundle.version} written to {report.path}")


def train(
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    name: Annotated[str, typer.Option(help="Model name: lowercase letters, digits, '-'.")] = (
        "animals"
    ),
    version: Annotated[str, typer.Option(help="Semantic version of the bundle.")] = "1.0.0",
    classes: Annotated[
        str, typer.Option(help="Comma-separated Animal-MNIST classes, in label order.")
    ] = "cat,dog",
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    width: Annotated[int, typer.Option(help="Channels of the first conv block.")] = 16,
    depth: Annotated[int, typer.Option(help="Number of conv blocks (1-5).")] = 3,
    dropout: Annotated[float, typer.Option(help="Dropout before the classifier.")] = 0.3,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 2e-3,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same model.")] = 0,
    test_percent: Annotated[int, typer.Option(help="Share of images held out for test.")] = 20,
    threads: Annotated[int, typer.Option(help="CPU threads for PyTorch.")] = 2,
    test_images: Annotated[
        Path | None,
        typer.Option(help="Also write the test split here as PNGs: <label>/<hash16>.png."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier bundle directory at --out.")
    ] = False,
) -> None:
    """Train an Animal-MNIST classifier and write a Corral bundle (model.onnx, bundle.json)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trainer.data import write_image_folder
    from trainer.errors import TrainConfigError, TrainerError
    from trainer.export import check_bundle_identity, check_output_dir, write_bundle
    from trainer.train import EpochStats, TrainConfig, train_model

    console = Console(highlight=False)
    try:
        config = TrainConfig(
            classes=tuple(classes.split(",")),
            epochs=epochs,
            width=width,
            depth=depth,
            dropout=dropout,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            test_percent=test_percent,
            threads=threads,
        )
        check_bundle_identity(name, version, config.classes)
        check_output_dir(out, overwrite=force)
        if test_images is not None and test_images.exists() and not test_images.is_dir():
            raise TrainConfigError(f"--test-images {test_images} exists and is not a directory")
    except TrainConfigError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from e

    progress = Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        with progress:
            task = progress.add_task("train", total=config.epochs, status="")

            def on_epoch(stats: EpochStats) -> None:
                status = f"loss {stats.loss:.3f} train acc {stats.train_accuracy:.3f}"
                progress.update(task, completed=stats.epoch, status=status)

            result = train_model(config, on_epoch=on_epoch)
        report = write_bundle(result, out, name, version, overwrite=force)
        if test_images is not None:
            count = write_image_folder(result.dataset, test_images, "test")
            console.print(f"{count} test images written to {test_images}")
    except TrainConfigError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from e
    except (TrainerError, OSError) as e:
        raise _fail(str(e), EXIT_FAILED) from e
    _summary(console, report, result.evaluation, result.seconds)
