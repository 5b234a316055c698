"""``corral train``: train a model, export it and write a bundle directory.

The data is Animal-MNIST (``--classes``, default cat,dog) or, with ``--data``, an
image folder or a CSV/JSONL manifest ingested by :mod:`trainer.ingest` (every
label found, or ``--classes``). Bad images are reported and skipped. Beside the
bundle, ``report/dataset.json`` holds the dataset manifest, whose SHA-256 is the
lineage's ``dataset_version``, and the evaluation report (:mod:`trainer.report`:
``report.json``, ``report.md``, ``confusion.png``, ``reliability.png``).

``--retrain-from NAME@VERSION`` (fetched from ``--registry`` with ``--token``) or
``--retrain-from DIR`` (a bundle directory) starts from that model's recorded
settings and data, adds ``--data`` as new labelled images and, with
``--init-weights``, starts from its weights (:mod:`trainer.retraining`). Options
given on the command line override the recorded settings; the name defaults to
the parent's and the version to its next minor release.

``--mlflow-uri`` records the run in MLflow (:mod:`trainer.tracking`). Under
``torchrun`` every process runs this command: they train one model together
(:mod:`trainer.distributed`) and only rank 0 prints and writes.

The main CLI mounts :func:`train` with ``app.command("train")(train)``. This module
imports only typer, rich and the standard library at import time; torch, ONNX and
the rest load inside the command, so ``corral --help`` stays fast and works where
the trainer's extra is not installed.

Exit codes: 0 done; 1 the data, the parent model, the export or parity check,
the registry or MLflow failed; 2 bad input (an unknown class, a bad name or
version, a busy output directory, a parent version the registry does not have).
Nothing is written on failure, except that a bundle already written stays when
MLflow fails while storing it as an artifact.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

if TYPE_CHECKING:
    from trainer.data import Dataset
    from trainer.ingest import IngestReport
    from trainer.metrics import Evaluation
    from trainer.pipeline import Packaged
    from trainer.search import Trial
    from trainer.train import EpochStats, TrainConfig

__all__ = ["train"]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
# Options a retrain takes from the parent unless they are given on the command line.
_OVERRIDABLE = (
    "classes",
    "color",
    "image_size",
    "epochs",
    "width",
    "depth",
    "dropout",
    "lr",
    "batch_size",
    "seed",
    "test_percent",
    "validation_percent",
    "threads",
)


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


def _ingest_table(report: IngestReport | dict[str, Any]) -> Table:
    found = report if isinstance(report, dict) else report.to_dict()
    table = Table(
        title=f"Ingest {found['source']}: {found['kept']} kept of {found['listed']} listed"
    )
    for column in ("problem", "count", "first paths"):
        table.add_column(column, overflow="fold")
    for kind, problem in sorted(found["problems"].items()):
        table.add_row(kind, str(problem["count"]), "\n".join(problem["first"]))
    if found["duplicates"]:
        table.add_row("duplicate (kept once)", str(found["duplicates"]), "")
    if found["other_classes"]:
        table.add_row("other class (left out)", str(found["other_classes"]), "")
    return table


class _Display:
    """What the command shows while it works: progress bars and the search table.

    The bars appear with the first task, so a run that fails before any work
    prints its one error line and nothing else.
    """

    def __init__(self, console: Console, search_mode: str | None, trials: int) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._tasks: dict[str, TaskID] = {}
        self._started = False
        self.table: Table | None = None
        if search_mode is not None:
            from trainer.search import SEARCH_SPACE

            self.table = Table(
                title=f"{search_mode} search: {trials} trials, chosen on the validation split"
            )
            for column in ("trial", *SEARCH_SPACE, "val acc", "val F1", "s"):
                self.table.add_column(column, justify="right")

    def __enter__(self) -> _Display:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False

    def _task(self, name: str, total: int | None) -> TaskID:
        if not self._started:
            self.progress.start()
            self._started = True
        if name not in self._tasks:
            self._tasks[name] = self.progress.add_task(name, total=total, status="")
        return self._tasks[name]

    def on_progress(self, done: int, total: int) -> None:
        self.progress.update(self._task("ingesting", total), completed=done, total=total)

    def on_epoch(self, stats: EpochStats) -> None:
        status = f"loss {stats.loss:.3f} train acc {stats.train_accuracy:.3f}"
        task = self._task("training", stats.epochs)
        self.progress.update(task, completed=stats.epoch, status=status)

    def on_trial(self, trial: Trial) -> None:
        from trainer.search import SEARCH_SPACE

        values = [f"{trial.params[k]:g}" for k in SEARCH_SPACE]
        self.progress.console.print(
            f"trial {trial.number}: {dict(zip(SEARCH_SPACE, values, strict=True))} "
            f"validation accuracy {trial.validation_accuracy:.4f}"
        )
        if self.table is not None:
            self.table.add_row(
                str(trial.number),
                *values,
                f"{trial.validation_accuracy:.4f}",
                f"{trial.validation_macro_f1:.4f}",
                f"{trial.seconds:.1f}",
            )


def _summary(
    console: Console, display: _Display, packaged: Packaged, test_images: Path | None
) -> None:
    report, result = packaged.export, packaged.result
    assert report is not None
    if packaged.search is not None and display.table is not None:
        console.print(display.table)
        best = packaged.search.best
        console.print(f"best: trial {best} {packaged.search.trials[best].params}")
    parent = result.extra_lineage.get("parent")
    if parent is not None:
        reproduced = {True: "yes", False: "NO, it changed", None: "not compared"}[
            parent["dataset_reproduced"]
        ]
        console.print(
            f"retrained from {parent['ref']} ({parent['origin']}); parent's data reproduced: "
            f"{reproduced}; "
            + (
                "started from its weights (checked against its golden outputs)"
                if parent["init_weights"]
                else "started from fresh weights"
            )
        )
        for part in result.extra_lineage.get("new_data", []):
            console.print(_ingest_table(part["ingest"]))
            console.print(
                f"new data {part['source']}: {part['added']} images added, "
                f"{part['relabelled']} relabelled, {part['duplicates']} already there"
            )
    evaluation = result.evaluation
    console.print(_metrics_table(evaluation))
    console.print(
        f"accuracy {evaluation.accuracy:.4f}, recall gap {evaluation.recall_gap:.4f}, "
        f"ECE {evaluation.ece or 0.0:.4f}, "
        f"trained in {result.seconds:.1f} s"
    )
    console.print(f"ONNX parity: max abs diff {report.parity_max_abs_diff:.2e} (limit 1e-4)")
    if report.int8 is not None:
        console.print(
            f"INT8: accuracy {report.int8.accuracy_int8:.4f} against fp32 "
            f"{report.int8.accuracy_fp32:.4f} ({report.int8.delta_points:+.2f} points lost)"
        )
    if test_images is not None:
        count = len(result.dataset.hashes("test"))
        console.print(f"{count} test images written to {test_images}")
    if packaged.tracking:
        run = packaged.tracking["mlflow"]
        console.print(f"MLflow run {run['run_id']} at {run['tracking_uri']}")
    console.print(f"bundle {report.bundle.name} {report.bundle.version} written to {report.path}")
    console.print(f"report: {report.path / 'report' / 'report.md'}")


def _given(ctx: typer.Context, name: str) -> bool:
    # By name: typer ships its own copy of click, whose enum is not click's.
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")


def _fresh_run(
    display: _Display,
    config: TrainConfig,
    data: Path | None,
    wanted: tuple[str, ...] | None,
    workers: int,
    run: dict[str, Any],
) -> Packaged:
    from dataclasses import replace

    from trainer.export import check_bundle_identity
    from trainer.ingest import ingest_images
    from trainer.pipeline import load_training_data, train_and_package

    dataset: Dataset
    extra: dict[str, Any] = {}
    if data is None:
        dataset = load_training_data(config).dataset
    else:
        with display:
            dataset, ingest_report = ingest_images(
                data,
                wanted,
                config.test_percent,
                config.validation_percent,
                config.color,
                config.image_size,
                workers=workers or None,
                on_progress=display.on_progress,
            )
        display.console.print(_ingest_table(ingest_report))
        extra["ingest"] = ingest_report.to_dict()
        config = replace(config, classes=dataset.classes)
        check_bundle_identity(run["name"], run["version"], config.classes)
    with display:
        return train_and_package(
            config,
            dataset,
            run["out"],
            run["name"],
            run["version"],
            report_extra=extra,
            on_epoch=display.on_epoch,
            on_trial=display.on_trial,
            **run["options"],
        )


def _retrain_run(
    ctx: typer.Context,
    display: _Display,
    reference: str,
    data: Path | None,
    parent_data: Path | None,
    init_weights: bool,
    registry: str | None,
    token: str | None,
    workers: int,
    run: dict[str, Any],
) -> Packaged:
    from corral.client import RegistryClient
    from trainer.retraining import retrain

    overrides = {k: ctx.params[k] for k in _OVERRIDABLE if _given(ctx, k)}
    if "classes" in overrides:
        overrides["classes"] = tuple(overrides["classes"].split(","))
    with RegistryClient(registry, token) as client, display:
        return retrain(
            reference,
            run["out"],
            run["version"] if _given(ctx, "version") else None,
            new_data=[data] if data is not None else [],
            name=run["name"] if _given(ctx, "name") else None,
            client=client,
            init_weights=init_weights,
            overrides=overrides,
            parent_data=parent_data,
            workers=workers or None,
            on_epoch=display.on_epoch,
            on_trial=display.on_trial,
            on_progress=display.on_progress,
            **run["options"],
        )


def train(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    name: Annotated[
        str, typer.Option(help="Model name: lowercase letters, digits, '-'; a retrain's parent's.")
    ] = "animals",
    version: Annotated[
        str,
        typer.Option(help="Semantic version of the bundle; a retrain's parent's next minor."),
    ] = "1.0.0",
    data: Annotated[
        Path | None,
        typer.Option(
            help="Image folder (<label>/<image>) or .csv/.jsonl manifest (path, label); "
            "default: the built-in Animal-MNIST. With --retrain-from: the new labelled "
            "images, added to the parent's data."
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
    batch_size: Annotated[
        int, typer.Option(help="Training batch size (the global batch under torchrun).")
    ] = 64,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same model.")] = 0,
    test_percent: Annotated[int, typer.Option(help="Share of images held out for test.")] = 20,
    validation_percent: Annotated[
        int, typer.Option(help="Share carved from train for validation.")
    ] = 10,
    workers: Annotated[
        int, typer.Option(help="Processes decoding images for --data (0: one per CPU).")
    ] = 0,
    threads: Annotated[
        int, typer.Option(help="CPU threads for PyTorch (per process under torchrun).")
    ] = 2,
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
    retrain_from: Annotated[
        str | None,
        typer.Option(
            "--retrain-from",
            help="Retrain this model: NAME@VERSION in the registry, or a bundle directory. "
            "Its recorded settings and data are the start; options given here override them.",
        ),
    ] = None,
    init_weights: Annotated[
        bool,
        typer.Option(
            "--init-weights",
            help="With --retrain-from: start from the parent's weights (read from its ONNX "
            "file, checked against its golden outputs).",
        ),
    ] = False,
    parent_data: Annotated[
        Path | None,
        typer.Option(
            help="With --retrain-from: where the parent's recorded data is now, if it moved."
        ),
    ] = None,
    registry: Annotated[
        str | None,
        typer.Option(
            "--registry", envvar="CORRAL_REGISTRY", help="Registry URL, for --retrain-from."
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option("--token", envvar="CORRAL_TOKEN", help="API token, for --retrain-from."),
    ] = None,
    mlflow_uri: Annotated[
        str | None,
        typer.Option(
            help="Track the run in MLflow: a tracking server (http://...), a file: folder or "
            "a database URI. Needs the mlflow extra."
        ),
    ] = None,
    mlflow_experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment; default the model name.")
    ] = None,
) -> None:
    """Train an image classifier and write a Corral bundle (model.onnx, bundle.json)."""
    from corral.errors import ApiError, CorralError
    from trainer.distributed import is_main, process_group
    from trainer.errors import TrainConfigError
    from trainer.export import check_bundle_identity, check_output_dir
    from trainer.train import TrainConfig

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
        if retrain_from is None and (init_weights or parent_data is not None):
            raise TrainConfigError("--init-weights and --parent-data need --retrain-from")
    except TrainConfigError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from e

    run: dict[str, Any] = {
        "out": out,
        "name": name,
        "version": version,
        "options": {
            "search_mode": search_mode,
            "trials": trials,
            "int8": int8,
            "force_int8": force_int8,
            "overwrite": force,
            "test_images": test_images,
            "mlflow_uri": mlflow_uri,
            "mlflow_experiment": mlflow_experiment,
        },
    }
    display = _Display(console, search_mode, trials)
    try:
        with process_group():
            console.quiet = not is_main()  # one process of a torchrun group speaks
            if retrain_from is not None:
                packaged = _retrain_run(
                    ctx,
                    display,
                    retrain_from,
                    data,
                    parent_data,
                    init_weights,
                    registry,
                    token,
                    workers,
                    run,
                )
            else:
                packaged = _fresh_run(display, config, data, wanted, workers, run)
    except TrainConfigError as e:
        raise _fail(str(e), EXIT_BAD_INPUT) from e
    except ApiError as e:
        # 4xx: the parent version or the token is wrong; otherwise the registry failed
        raise _fail(str(e), EXIT_BAD_INPUT if 400 <= e.status < 500 else EXIT_FAILED) from e
    except (CorralError, OSError) as e:
        raise _fail(str(e), EXIT_FAILED) from e
    if packaged.export is not None:
        _summary(console, display, packaged, test_images)
