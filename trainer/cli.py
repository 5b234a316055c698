"""``corral train``: train a model, export it and write a bundle directory.

The data is Animal-MNIST (``--classes``, default cat,dog) or, with ``--data``, an
image folder or a CSV/JSONL manifest ingested by :mod:`trainer.ingest` (every
label found, or ``--classes``). Bad images are reported and skipped. Beside the
bundle, ``report/dataset.json`` holds the dataset manifest, whose SHA-256 is the
lineage's ``dataset_version``, and the evaluation report (:mod:`trainer.report`:
``report.json``, ``report.md``, ``confusion.png``, ``reliability.png``).

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
    from trainer.data import Dataset
    from trainer.export import ExportReport
    from trainer.ingest import IngestReport
    from trainer.metrics import Evaluation
    from trainer.train import TrainConfig, TrainResult

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


def _ingest_table(report: IngestReport) -> Table:
    table = Table(title=f"Ingest: {report.kept} kept of {report.listed} listed")
    for column in ("problem", "count", "first paths"):
        table.add_column(column, overflow="fold")
    for kind, count in sorted(report.problems.items()):
        table.add_row(kind, str(count), "\n".join(report.first[kind]))
    if report.duplicates:
        table.add_row("duplicate (kept once)", str(report.duplicates), "")
    if report.other_classes:
        table.add_row("other class (left out)", str(report.other_classes), "")
    return table


def _ingest(
    console: Console, data: Path, config: TrainConfig, classes: tuple[str, ...] | None, workers: int
) -> tuple[Dataset, IngestReport]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trainer.ingest import ingest_images

    progress = Progress(
        TextColumn("ingesting"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("ingest", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        dataset, report = ingest_images(
            data,
            classes,
            config.test_percent,
            config.validation_percent,
            config.color,
            config.image_size,
            workers=workers or None,
            on_progress=on_progress,
        )
    console.print(_ingest_table(report))
    return dataset, report


def _search(
    console: Console, config: TrainConfig, dataset: Dataset | None, mode: str, trials: int
) -> TrainResult:
    from trainer.data import load_dataset
    from trainer.search import SEARCH_SPACE, Trial, run_search

    if dataset is None:
        dataset = load_dataset(
            config.classes,
            config.test_percent,
            config.validation_percent,
            config.color,
            config.image_size,
        )
    table = Table(title=f"{mode} search: {trials} trials, chosen on the validation split")
    for column in ("trial", *SEARCH_SPACE, "val acc", "val F1", "s"):
        table.add_column(column, justify="right")

    def on_trial(trial: Trial) -> None:
        values = [f"{trial.params[k]:g}" for k in SEARCH_SPACE]
        console.print(
            f"trial {trial.number}: {dict(zip(SEARCH_SPACE, values, strict=True))} "
            f"validation accuracy {trial.validation_accuracy:.4f}"
        )
        table.add_row(
            str(trial.number),
            *values,
            f"{trial.validation_accuracy:.4f}",
            f"{trial.validation_macro_f1:.4f}",
            f"{trial.seconds:.1f}",
        )

    found = run_search(config, dataset, mode, trials, on_trial=on_trial)
    console.print(table)
    console.print(f"best: trial {found.best} {found.trials[found.best].params}")
    return found.result


def _summary(
    console: Console, report: ExportReport, evaluation: Evaluation, seconds: float
) -> None:
    console.print(_metrics_table(evaluation))
    console.print(
        f"accuracy {evaluation.accuracy:.4f}, recall gap {evaluation.recall_gap:.4f}, "
        f"ECE {evaluation.ece or 0.0:.4f}, "
        f"trained in {seconds:.1f} s"
    )
    console.print(f"ONNX parity: max abs diff {report.parity_max_abs_diff:.2e} (limit 1e-4)")
    if report.int8 is not None:
        console.print(
            f"INT8: accuracy {report.int8.accuracy_int8:.4f} against fp32 "
            f"{report.int8.accuracy_fp32:.4f} ({report.int8.delta_points:+.2f} points lost)"
        )
    console.print(f"bundle {report.bundle.name} {report.bundle.version} written to {report.path}")
    console.print(f"report: {report.path / 'report' / 'report.md'}")


def train(
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    name: Annotated[str, typer.Option(help="Model name: lowercase letters, digits, '-'.")] = (
        "animals"
    ),
    version: Annotated[str, typer.Option(help="Semantic version of the bundle.")] = "1.0.0",
    data: Annotated[
        Path | None,
        typer.Option(
            help="Image folder (<label>/<image>) or .csv/.jsonl manifest (path, label); "
            "default: the built-in Animal-MNIST."
        ),
    ] = None,
    classes: Annotated[
        str,
        typer.Option(
            help="Comma-separated classes, in label order; default cat,dog for "
            "Animal-MNIST, every label found for --data."
        ),
    ] = "",
    color: Annotated[str, typer.Option(help="Model input colour: gray or rgb.")] = "gray",
    image_size: Annotated[int, typer.Option(help="Side of the square model input.")] = 28,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    width: Annotated[int, typer.Option(help="Channels of the first conv block.")] = 16,
    depth: Annotated[int, typer.Option(help="Number of conv blocks (1-5).")] = 3,
    dropout: Annotated[float, typer.Option(help="Dropout before the classifier.")] = 0.3,
    lr: Annotated[float, typer.Option(help="Peak learning rate (cosine schedule).")] = 2e-3,
    batch_size: Annotated[int, typer.Option(help="Training batch size.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same model.")] = 0,
    test_percent: Annotated[int, typer.Option(help="Share of images held out for test.")] = 20,
    validation_percent: Annotated[
        int, typer.Option(help="Share carved from train for validation.")
    ] = 10,
    workers: Annotated[
        int, typer.Option(help="Processes decoding images for --data (0: one per CPU).")
    ] = 0,
    threads: Annotated[int, typer.Option(help="CPU threads for PyTorch.")] = 2,
    test_images: Annotated[
        Path | None,
        typer.Option(help="Also write the test split here as PNGs: <label>/<hash16>.png."),
    ] = None,
    search_mode: Annotated[
        str | None,
        typer.Option(
            "--search",
            help="Hyperparameter search over width, depth, dropout, lr: grid or random; "
            "chosen on the validation split.",
        ),
    ] = None,
    trials: Annotated[int, typer.Option(help="Trials for --search.")] = 8,
    int8: Annotated[
        bool,
        typer.Option("--int8", help="Also ship a statically quantized INT8 variant."),
    ] = False,
    force_int8: Annotated[
        bool,
        typer.Option(
            "--force-int8", help="Keep the INT8 variant even if it loses more than 1 point."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier bundle directory at --out.")
    ] = False,
) -> None:
    """Train an image classifier and write a Corral bundle (model.onnx, bundle.json)."""
    from dataclasses import replace

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from trainer.data import write_image_folder
    from trainer.errors import TrainConfigError, TrainerError
    from trainer.export import REPORT_DIR, check_bundle_identity, check_output_dir, write_bundle
    from trainer.report import write_report
    from trainer.train import EpochStats, TrainConfig, train_model

    console = Console(highlight=False)
    wanted = tuple(classes.split(",")) if classes else None
    try:
        config = TrainConfig(
            # With --data the real classes are known after ingest; these stand in.
            classes=wanted or (("cat", "dog") if data is None else ("a", "b")),
            data="animal-mnist" if data is None else str(data),
            color=color,
            image_size=image_size,
            validation_percent=validation_percent,
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
        if workers < 0:
            raise TrainConfigError(f"--workers should be 0 or more, got {workers}")
        if search_mode is not None and search_mode not in ("grid", "random"):
            raise TrainConfigError(f"--search should be grid or random, got {search_mode!r}")
        if trials < 1:
            raise TrainConfigError(f"--trials should be at least 1, got {trials}")
    except TrainConfigError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from e

    dataset, ingest_report = None, None
    if data is not None:
        try:
            dataset, ingest_report = _ingest(console, data, config, wanted, workers)
            config = replace(config, classes=dataset.classes)
            check_bundle_identity(name, version, config.classes)
        except TrainConfigError as e:
            raise _fail(str(e), EXIT_BAD_INPUT) from e
        except (TrainerError, OSError) as e:
            raise _fail(str(e), EXIT_FAILED) from e

    progress = Progress(
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
    )
    try:
        if search_mode is not None:
            result = _search(console, config, dataset, search_mode, trials)
        else:
            with progress:
                task = progress.add_task("train", total=config.epochs, status="")

                def on_epoch(stats: EpochStats) -> None:
                    status = f"loss {stats.loss:.3f} train acc {stats.train_accuracy:.3f}"
                    progress.update(task, completed=stats.epoch, status=status)

                result = train_model(config, dataset=dataset, on_epoch=on_epoch)
        report = write_bundle(
            result,
            out,
            name,
            version,
            overwrite=force,
            int8=int8 or force_int8,
            force_int8=force_int8,
        )
        result.dataset.write_manifest(out / REPORT_DIR / "dataset.json")
        extra = {"ingest": ingest_report.to_dict()} if ingest_report is not None else {}
        if report.int8 is not None:
            extra["int8"] = report.int8.to_dict()
        if result.search is not None:
            extra["search"] = result.search
        write_report(result, out / REPORT_DIR, f"{name} {version}", extra)
        if test_images is not None:
            count = write_image_folder(result.dataset, test_images, "test")
            console.print(f"{count} test images written to {test_images}")
    except TrainConfigError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from e
    except (TrainerError, OSError) as e:
        raise _fail(str(e), EXIT_FAILED) from e
    _summary(console, report, result.evaluation, result.seconds)
