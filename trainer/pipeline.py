"""One training run from data to bundle, shared by ``corral train`` and retraining.

:func:`load_training_data` builds the dataset a config names: Animal-MNIST or an
image folder / manifest (``config.data``), with the folders of
``config.extra_data`` merged onto it (:func:`trainer.data.merge_datasets`).

:func:`train_and_package`, in order, and why:

1. Check the bundle name, version and output directory, and open the MLflow run
   (:mod:`trainer.tracking`), so that a typo or an unreachable tracking server
   fails before minutes of training.
2. Train one model, or run a hyperparameter search (:mod:`trainer.search`);
   each epoch and each trial is reported to the callbacks and to MLflow.
3. Processes other than the main one of a torchrun group stop here: they
   trained the same model and write nothing.
4. Export and write the bundle (:func:`trainer.export.write_bundle`; the lineage
   gets the caller's extras and the MLflow run id), the dataset manifest, the
   report, and the test images when asked.
5. Log the test figures and the bundle and report files to MLflow, and end the
   run (as failed if any step raised).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer import distributed
from trainer.data import Dataset, load_dataset, merge_datasets, write_image_folder
from trainer.errors import TrainConfigError
from trainer.export import (
    REPORT_DIR,
    ExportReport,
    check_bundle_identity,
    check_output_dir,
    write_bundle,
)
from trainer.ingest import IngestReport, ingest_images, list_sources
from trainer.lineage import code_version
from trainer.report import write_report
from trainer.search import SearchResult, Trial, run_search
from trainer.tracking import Tracker, open_tracker
from trainer.train import EpochStats, TrainConfig, TrainResult, train_model

__all__ = ["Packaged", "TrainingData", "load_training_data", "train_and_package"]


@dataclass
class TrainingData:
    """A config's dataset and how it was put together.

    ``versions[0]`` is the version of ``config.data`` alone, ``versions[i]``
    after merging the first ``i`` sources of ``extra_data``: a retrain compares
    the one its parent trained on with the parent's lineage. ``parts`` has one
    entry per extra source: its ingest report and what the merge added, found
    already there, or relabelled.
    """

    dataset: Dataset
    versions: list[str]
    base_ingest: IngestReport | None = None
    parts: list[dict[str, Any]] = field(default_factory=list)


def _labels_in(source: Path) -> set[str]:
    return {label for _, label in list_sources(source)}


def load_training_data(
    config: TrainConfig,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> TrainingData:
    """Read the data ``config`` names, with its ``extra_data`` merged on.

    Args:
        config: its ``data``, ``extra_data``, ``classes`` (all of them must be in
            ``data``; an extra source may hold only some), input and split
            settings are used.
        workers: image decoding processes for folders and manifests.
        on_progress: called with (images done, images listed) while ingesting.

    Returns:
        The merged dataset and what each source contributed.

    Raises:
        TrainConfigError: a source is missing or not a folder or manifest, an extra
            source has a label outside ``config.classes``, or a class has no image
            in ``config.data``.
        DatasetError: a source cannot be read or has no usable image.
    """
    base_ingest = None
    if config.data == "animal-mnist":
        dataset = load_dataset(
            config.classes,
            config.test_percent,
            config.validation_percent,
            config.color,
            config.image_size,
        )
    else:
        dataset, base_ingest = ingest_images(
            Path(config.data),
            config.classes,
            config.test_percent,
            config.validation_percent,
            config.color,
            config.image_size,
            workers=workers,
            on_progress=on_progress,
        )
    data = TrainingData(dataset=dataset, versions=[dataset.version], base_ingest=base_ingest)
    for source in map(Path, config.extra_data):
        unknown = sorted(_labels_in(source) - set(config.classes))
        if unknown:
            raise TrainConfigError(
                f"{source} has label(s) {', '.join(unknown)}, which the model does not know "
                f"(it knows {', '.join(config.classes)}); move those images out, or retrain "
                "with --classes naming every class (then without --init-weights)"
            )
        extra, report = ingest_images(
            source,
            config.classes,
            config.test_percent,
            config.validation_percent,
            config.color,
            config.image_size,
            workers=workers,
            on_progress=on_progress,
            allow_missing=True,
        )
        data.dataset, counts = merge_datasets(data.dataset, extra)
        data.versions.append(data.dataset.version)
        data.parts.append({"source": str(source), "ingest": report.to_dict(), **counts})
    return data


@dataclass
class Packaged:
    """What :func:`train_and_package` made.

    ``export`` is None in the processes of a torchrun group other than the main
    one, which train but write nothing. ``tracking`` is the MLflow run's lineage
    entry (empty without MLflow).
    """

    result: TrainResult
    export: ExportReport | None
    search: SearchResult | None = None
    tracking: dict[str, Any] = field(default_factory=dict)


def _both(
    first: Callable[[Any], None], second: Callable[[Any], None] | None
) -> Callable[[Any], None]:
    def call(value: Any) -> None:
        first(value)
        if second is not None:
            second(value)

    return call


def _run_params(
    config: TrainConfig, name: str, version: str, extra: Mapping[str, Any]
) -> dict[str, Any]:
    return {**config.to_dict(), "model_name": name, "model_version": version, **extra}


def _tags(name: str, version: str, dataset: Dataset, parent: str | None) -> dict[str, str]:
    commit, dirty = code_version()
    tags = {
        "corral.model": name,
        "corral.version": version,
        "corral.dataset_version": dataset.version,
        "corral.world_size": str(distributed.world()[1]),
    }
    if commit is not None:
        tags["mlflow.source.git.commit"] = commit
        tags["corral.code_dirty"] = str(dirty).lower()
    if parent is not None:
        tags["corral.parent"] = parent
    return tags


def _train(
    config: TrainConfig,
    dataset: Dataset,
    tracker: Tracker,
    search_mode: str | None,
    trials: int,
    initial_state: Mapping[str, torch.Tensor] | None,
    on_epoch: Callable[[EpochStats], None] | None,
    on_trial: Callable[[Trial], None] | None,
) -> tuple[TrainResult, SearchResult | None]:
    if search_mode is None:
        result = train_model(
            config,
            dataset=dataset,
            on_epoch=_both(tracker.log_epoch, on_epoch),
            initial_state=initial_state,
        )
        return result, None
    found = run_search(
        config, dataset, search_mode, trials, on_trial=_both(tracker.log_trial, on_trial)
    )
    for stats in found.result.history:  # the winner's epochs, on the parent run
        tracker.log_epoch(stats)
    best = found.trials[found.best]
    tracker.log_metrics(
        {"best_trial": best.number, "best_validation_accuracy": best.validation_accuracy}
    )
    return found.result, found


def _package(
    result: TrainResult,
    found: SearchResult | None,
    tracker: Tracker,
    out: Path,
    name: str,
    version: str,
    options: dict[str, Any],
) -> ExportReport:
    export = write_bundle(
        result,
        out,
        name,
        version,
        overwrite=options["overwrite"],
        int8=options["int8"] or options["force_int8"],
        force_int8=options["force_int8"],
    )
    result.dataset.write_manifest(out / REPORT_DIR / "dataset.json")
    extra = dict(options["report_extra"])
    if export.int8 is not None:
        extra["int8"] = export.int8.to_dict()
    if result.search is not None:
        extra["search"] = result.search
    write_report(result, out / REPORT_DIR, f"{name} {version}", extra)
    if options["test_images"] is not None:
        write_image_folder(result.dataset, options["test_images"], "test")
    tracker.log_evaluation(result.evaluation)
    figures = {"train_seconds": result.seconds, "parity_max_abs_diff": export.parity_max_abs_diff}
    if export.int8 is not None:
        figures |= {
            "int8_accuracy": export.int8.accuracy_int8,
            "int8_delta_points": export.int8.delta_points,
        }
    if found is not None:
        figures["search_trials"] = len(found.trials)
    tracker.log_metrics(figures)
    tracker.log_files([out / "bundle.json", *(out / f.name for f in export.bundle.files)], "bundle")
    tracker.log_directory(out / REPORT_DIR, "report")
    return export


def train_and_package(
    config: TrainConfig,
    dataset: Dataset,
    out: Path,
    name: str,
    version: str,
    *,
    search_mode: str | None = None,
    trials: int = 8,
    int8: bool = False,
    force_int8: bool = False,
    overwrite: bool = False,
    initial_state: Mapping[str, torch.Tensor] | None = None,
    extra_lineage: Mapping[str, Any] | None = None,
    report_extra: Mapping[str, Any] | None = None,
    test_images: Path | None = None,
    mlflow_uri: str | None = None,
    mlflow_experiment: str | None = None,
    run_params: Mapping[str, Any] | None = None,
    parent: str | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> Packaged:
    """Train (or search), export, and write the bundle, report and MLflow run.

    Args:
        config: the training settings; ``dataset`` must fit them.
        dataset: the data (:func:`load_training_data`).
        out: the bundle directory to write.
        name: the model name.
        version: the bundle's semantic version.
        search_mode: ``"grid"`` or ``"random"`` for a hyperparameter search, or
            None to train ``config`` once.
        trials: search trials.
        int8: also ship an INT8 variant.
        force_int8: keep the INT8 variant whatever it loses.
        overwrite: replace an earlier bundle at ``out``.
        initial_state: weights to start from (not with a search).
        extra_lineage: more top-level lineage keys, e.g. a retrain's ``parent``.
        report_extra: more report sections, e.g. ``{"ingest": ...}``.
        test_images: also write the test split there as PNGs.
        mlflow_uri: track the run in MLflow there; None for no tracking.
        mlflow_experiment: the MLflow experiment; default ``name``.
        run_params: more MLflow params (how the run was asked for).
        parent: ``NAME@VERSION`` of the model retrained, for MLflow's tags.
        on_epoch: called after each epoch (not during a search).
        on_trial: called after each search trial.

    Returns:
        The run, its bundle (None outside the main process) and search.

    Raises:
        TrainConfigError: a bad name, version, output directory or combination
            (a search from initial weights); nothing was written.
        DatasetError: the data cannot be trained on.
        ExportError: the export, parity or INT8 check failed; nothing was written.
        TrackingError: MLflow failed; before training nothing was written, after
            the bundle was written it stays.
        DistributedError: the processes of a torchrun group disagree.
        OSError: the report or test images cannot be written.
    """
    check_bundle_identity(name, version, config.classes)
    check_output_dir(out, overwrite)
    if search_mode is not None and initial_state is not None:
        raise TrainConfigError(
            "a search trains networks of other shapes, which cannot start from the parent's "
            "weights; drop --search or --init-weights"
        )
    main = distributed.is_main()
    tracker = open_tracker(mlflow_uri if main else None, mlflow_experiment or name)
    options = {
        "overwrite": overwrite,
        "int8": int8,
        "force_int8": force_int8,
        "report_extra": dict(report_extra or {}),
        "test_images": test_images,
    }
    asked: dict[str, Any] = {
        "search": search_mode or "none",
        "trials": trials if search_mode else 0,
        "int8": int8 or force_int8,
        "world_size": distributed.world()[1],
        **(run_params or {}),
    }
    with tracker:
        tracker.start(
            f"{name} {version}",
            _run_params(config, name, version, asked),
            _tags(name, version, dataset, parent),
        )
        result, found = _train(
            config, dataset, tracker, search_mode, trials, initial_state, on_epoch, on_trial
        )
        if not main:
            return Packaged(result=result, export=None, search=found)
        result.extra_lineage.update(extra_lineage or {})
        result.extra_lineage.update(tracker.lineage())
        export = _package(result, found, tracker, out, name, version, options)
    return Packaged(result=result, export=export, search=found, tracking=tracker.lineage())
