"""Optional experiment tracking in MLflow (``corral train --mlflow-uri``).

One training run is one MLflow run, in the experiment named after the model
unless told otherwise:

- params: every training setting (:meth:`trainer.train.TrainConfig.to_dict`)
  and how the run was asked for (model name and version, search, INT8, parent);
- tags: ``corral.model``, ``corral.version``, ``corral.dataset_version``,
  ``corral.parent`` for a retrain, and MLflow's own ``mlflow.source.git.commit``;
- metrics: ``loss``, ``train_accuracy`` and ``lr`` per epoch (``step`` is the
  epoch), then the test figures (``test_accuracy``, ``test_macro_f1``,
  ``test_recall_gap``, ``test_ece``, ``test_recall.<class>``), the ONNX parity
  and the INT8 comparison;
- artifacts: ``bundle/`` (``bundle.json`` and the model files) and ``report/``;
- a hyperparameter search adds one nested run per trial (tag
  ``mlflow.parentRunId``), with the trial's settings, its per-epoch metrics and
  its validation figures; the parent run holds the winner.

The client API (``MlflowClient``) is used rather than the fluent ``mlflow.*``
functions: runs are passed around explicitly, so nothing depends on a global
active run and the trainer can be called from a long-running service.

Only the main process of a torchrun group tracks. MLflow's exceptions (and the
HTTP errors under them) become :class:`trainer.errors.TrackingError` here and
nowhere else. Opening the tracker looks the experiment up with few HTTP retries
(MLflow's own default retries for minutes), so a wrong ``--mlflow-uri`` fails in
seconds, before training; later calls keep MLflow's retries. MLflow 3 refuses
its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is set; a ``file:`` URI is an
explicit choice of that store, so the tracker sets it while the run is open.
Settings the user exported win over both. For more than one person, use a
tracking server (``http://...``) or a database URI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from trainer.errors import TrackingError, TrainConfigError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from trainer.metrics import Evaluation
    from trainer.search import Trial
    from trainer.train import EpochStats

__all__ = ["MlflowTracker", "NullTracker", "Tracker", "open_tracker", "safe_uri"]

_FILE_STORE_OPT_IN = {"MLFLOW_ALLOW_FILE_STORE": "true"}
# While opening: fail in seconds on a wrong URI instead of retrying for minutes.
_QUICK_PROBE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}


class _Environment:
    """Environment variables set for a while, unless the user already set them."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._set = [k for k in values if k not in os.environ]
        for key in self._set:
            os.environ[key] = values[key]

    def restore(self) -> None:
        for key in self._set:
            os.environ.pop(key, None)
        self._set = []


def safe_uri(uri: str) -> str:
    """``uri`` without a user name or password, fit for a lineage or a log line."""
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _flat(params: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in params.items():
        if isinstance(value, list | tuple):
            out[key] = ",".join(map(str, value))
        else:
            out[key] = "" if value is None else str(value)
    return out


def _epoch_metrics(stats: EpochStats) -> dict[str, float]:
    return {
        "loss": stats.loss,
        "train_accuracy": stats.train_accuracy,
        "lr": stats.lr,
        "epoch_seconds": stats.seconds,
    }


class Tracker:
    """Where a training run reports to; this base records nothing.

    Used as a context manager around the run: leaving the block ends the run,
    as failed when an exception left it.
    """

    run_id: str | None = None
    experiment_id: str | None = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        return None

    def lineage(self) -> dict[str, Any]:
        """What the bundle's lineage says about this run (nothing here)."""
        return {}

    def start(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """Open the run."""

    def log_epoch(self, stats: EpochStats) -> None:
        """One epoch's loss, training accuracy and learning rate."""

    def log_trial(self, trial: Trial) -> None:
        """One search trial, as a nested run."""

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Any figures."""

    def log_evaluation(self, evaluation: Evaluation) -> None:
        """The test figures."""

    def log_files(self, paths: list[Path], artifact_path: str) -> None:
        """Files, under ``artifact_path``."""

    def log_directory(self, directory: Path, artifact_path: str) -> None:
        """A folder's files, under ``artifact_path``."""


class NullTracker(Tracker):
    """No tracking (no ``--mlflow-uri``, or not the main process)."""


class MlflowTracker(Tracker):
    """A run in an MLflow tracking store.

    Args:
        uri: the tracking URI: ``http(s)://`` server, ``file:`` folder,
            ``sqlite:///`` database...
        experiment: the experiment name; created when missing.

    Raises:
        TrainConfigError: MLflow is not installed.
        TrackingError: the store refuses the URI or the experiment.
    """

    def __init__(self, uri: str, experiment: str) -> None:
        try:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise TrainConfigError(
                "--mlflow-uri needs MLflow; install it with pip install 'corral[mlflow]'"
            ) from e
        self._errors: tuple[type[BaseException], ...] = (MlflowException, OSError)
        self.uri = uri
        self.experiment = experiment
        file_store = urlsplit(uri).scheme in ("file", "")
        self._environment = _Environment(_FILE_STORE_OPT_IN if file_store else {})
        probe = _Environment(_QUICK_PROBE)
        try:
            with self._wrapped("open the tracking store"):
                self._client: MlflowClient = MlflowClient(tracking_uri=uri)
                found = self._client.get_experiment_by_name(experiment)
                self.experiment_id = (
                    found.experiment_id
                    if found is not None
                    else self._client.create_experiment(experiment)
                )
        except BaseException:
            self._environment.restore()
            raise
        finally:
            probe.restore()

    @contextmanager
    def _wrapped(self, what: str) -> Iterator[None]:
        try:
            yield
        except self._errors as e:
            raise TrackingError(
                f"MLflow at {safe_uri(self.uri)} failed to {what}: {e}; check --mlflow-uri, "
                "or train without it"
            ) from e

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            if self.run_id is not None:
                status = "FINISHED" if error is None else "FAILED"
                with self._wrapped("end the run"):
                    self._client.set_terminated(self.run_id, status)
        finally:
            self._environment.restore()

    def lineage(self) -> dict[str, Any]:
        """``{"mlflow": {"tracking_uri", "experiment_id", "run_id"}}``, credentials removed."""
        return {
            "mlflow": {
                "tracking_uri": safe_uri(self.uri),
                "experiment_id": self.experiment_id,
                "run_id": self.run_id,
            }
        }

    def _log(
        self,
        run_id: str,
        metrics: Mapping[str, float] | None = None,
        step: int = 0,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        with self._wrapped("log to the run"):
            self._client.log_batch(
                run_id,
                metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
                params=[Param(k, v) for k, v in _flat(params or {}).items()],
            )

    def start(self, name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        """Open the run with its settings and tags.

        Raises:
            TrackingError: MLflow refused.
        """
        assert self.experiment_id is not None
        with self._wrapped("start a run"):
            run = self._client.create_run(self.experiment_id, tags=dict(tags), run_name=name)
        self.run_id = run_id = run.info.run_id
        self._log(run_id, params=params)

    def log_epoch(self, stats: EpochStats) -> None:
        """Per-epoch figures, ``step`` = epoch.

        Raises:
            TrackingError: MLflow refused.
        """
        if self.run_id is not None:
            self._log(self.run_id, _epoch_metrics(stats), stats.epoch)

    def log_trial(self, trial: Trial) -> None:
        """A nested run with the trial's settings, epochs and validation figures.

        Raises:
            TrackingError: MLflow refused.
        """
        if self.run_id is None or self.experiment_id is None:
            return
        with self._wrapped("record a search trial"):
            child = self._client.create_run(
                self.experiment_id,
                tags={"mlflow.parentRunId": self.run_id, "corral.trial": str(trial.number)},
                run_name=f"trial {trial.number}",
            )
        child_id = child.info.run_id
        self._log(child_id, params={"trial": trial.number, **trial.params})
        for stats in trial.history:
            self._log(child_id, _epoch_metrics(stats), stats.epoch)
        self._log(
            child_id,
            {
                "validation_accuracy": trial.validation_accuracy,
                "validation_macro_f1": trial.validation_macro_f1,
                "trial_seconds": trial.seconds,
            },
        )
        with self._wrapped("end a search trial"):
            self._client.set_terminated(child_id, "FINISHED")

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Any figures.

        Raises:
            TrackingError: MLflow refused.
        """
        if self.run_id is not None and metrics:
            self._log(self.run_id, metrics, step)

    def log_evaluation(self, evaluation: Evaluation) -> None:
        """The test figures: accuracy, macro F1, recall gap, ECE, recall per class.

        Raises:
            TrackingError: MLflow refused.
        """
        metrics = {
            "test_accuracy": evaluation.accuracy,
            "test_macro_f1": evaluation.macro_f1,
            "test_recall_gap": evaluation.recall_gap,
        }
        if evaluation.ece is not None:
            metrics["test_ece"] = evaluation.ece
        for name, m in evaluation.per_class.items():
            metrics[f"test_recall.{name}"] = m.recall
        self.log_metrics(metrics)

    def log_files(self, paths: list[Path], artifact_path: str) -> None:
        """Files, under ``artifact_path``.

        Raises:
            TrackingError: MLflow refused or a file cannot be read.
        """
        if self.run_id is None:
            return
        with self._wrapped(f"store artifacts under {artifact_path}"):
            for path in paths:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_directory(self, directory: Path, artifact_path: str) -> None:
        """A folder's files, under ``artifact_path``.

        Raises:
            TrackingError: MLflow refused or a file cannot be read.
        """
        if self.run_id is None:
            return
        with self._wrapped(f"store artifacts under {artifact_path}"):
            self._client.log_artifacts(self.run_id, str(directory), artifact_path)


def open_tracker(uri: str | None, experiment: str) -> Tracker:
    """An :class:`MlflowTracker` for ``uri``, or a :class:`NullTracker` without one.

    Args:
        uri: the MLflow tracking URI, or None for no tracking.
        experiment: the experiment name.

    Returns:
        The tracker; enter it with ``with`` and call ``start``.

    Raises:
        TrainConfigError: a URI is given but MLflow is not installed.
        TrackingError: the store refuses the URI or the experiment.
    """
    if uri is None:
        return NullTracker()
    return MlflowTracker(uri, experiment)
