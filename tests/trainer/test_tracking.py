"""MLflow tracking: the real client and a real file store, read back with MlflowClient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import typer
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from corral import Bundle
from trainer.data import Dataset
from trainer.errors import TrackingError, TrainConfigError
from trainer.pipeline import train_and_package
from trainer.tracking import open_tracker, safe_uri
from trainer.train import TrainConfig

app = typer.Typer()


@app.callback()
def _main() -> None:
    """Keep ``train`` a subcommand, as under ``corral``."""


def _mount() -> None:
    from trainer.cli import train

    app.command("train")(train)


_mount()
runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    # The test's own client reads the file store back; the trainer opts in by itself.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    yield f"file://{tmp_path / 'mlruns'}"


def _runs(store: str, experiment: str = "animals") -> tuple[MlflowClient, list[Run]]:
    client = MlflowClient(tracking_uri=store)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client, list(client.search_runs([found.experiment_id]))


def test_a_tracked_search_records_settings_metrics_trials_and_the_bundle(
    store: str, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    result = runner.invoke(
        app,
        [
            "train",
            *("--out", str(out), "--epochs", "1", "--search", "grid", "--trials", "2"),
            *("--mlflow-uri", store),
        ],
    )
    assert result.exit_code == 0, result.output
    client, runs = _runs(store)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(trials) == 2

    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "animals 1.0.0"
    params = parent.data.params
    assert (params["epochs"], params["classes"], params["lr"]) == ("1", "cat,dog", "0.002")
    assert (params["search"], params["trials"], params["model_version"]) == ("grid", "2", "1.0.0")
    bundle = Bundle.load(out)
    assert parent.data.tags["corral.dataset_version"] == bundle.lineage["dataset_version"]
    assert bundle.lineage["mlflow"]["run_id"] == parent.info.run_id
    metrics = parent.data.metrics
    assert metrics["test_accuracy"] == pytest.approx(bundle.metrics["accuracy"])
    assert metrics["best_trial"] == bundle.lineage["search"]["best_trial"]
    assert {"test_macro_f1", "test_recall.cat", "test_recall.dog", "parity_max_abs_diff"} <= set(
        metrics
    )
    assert [m.step for m in client.get_metric_history(parent.info.run_id, "loss")] == [1]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "bundle")}
    assert artifacts == {"bundle/bundle.json", "bundle/model.onnx"}
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/report.json", "report/report.md", "report/dataset.json"} <= report

    by_number = {int(t.data.params["trial"]): t for t in trials}
    for number, recorded in enumerate(bundle.lineage["search"]["trials"]):
        trial = by_number[number]
        assert trial.info.status == "FINISHED"
        assert trial.data.params["width"] == str(recorded["params"]["width"])
        assert trial.data.metrics["validation_accuracy"] == pytest.approx(
            recorded["validation_accuracy"]
        )
        assert [m.step for m in client.get_metric_history(trial.info.run_id, "loss")] == [1]
    assert f"MLflow run {parent.info.run_id}" in result.output


def test_a_run_that_fails_is_marked_failed(store: str, cat_dog: Dataset, tmp_path: Path) -> None:
    config = TrainConfig(epochs=1, validation_percent=0)
    wrong_shape = {"features.0.weight": torch.zeros(1)}
    with pytest.raises(TrainConfigError, match="initial weights do not fit"):
        train_and_package(
            config,
            cat_dog,
            tmp_path / "bundle",
            "animals",
            "1.0.0",
            initial_state=wrong_shape,
            mlflow_uri=store,
        )
    _, [run] = _runs(store)
    assert run.info.status == "FAILED"
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("nosuchscheme://x", id="unknown-scheme"),
        pytest.param("http://127.0.0.1:9", id="no-server"),  # port 9: discard, never served
    ],
)
def test_a_tracking_store_that_fails_stops_the_command_before_training(
    uri: str, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["train", "--out", str(out), "--mlflow-uri", uri])
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"error: MLflow at {uri} failed to open the tracking store")
    assert "training" not in result.output
    assert not out.exists()


def test_mlflow_errors_become_tracking_errors() -> None:
    with pytest.raises(TrackingError) as caught:
        open_tracker("nosuchscheme://x", "animals")
    assert type(caught.value.__cause__).__name__ == "UnsupportedModelRegistryStoreURIException"


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        pytest.param("https://me:s3cret@mlflow.example:5000/x", "https://mlflow.example:5000/x"),
        pytest.param("https://token@mlflow.example/", "https://mlflow.example/"),
        pytest.param("file:///tmp/mlruns", "file:///tmp/mlruns"),
        pytest.param("sqlite:///mlflow.db", "sqlite:///mlflow.db"),
    ],
)
def test_credentials_never_reach_the_lineage(uri: str, shown: str) -> None:
    assert safe_uri(uri) == shown


def test_no_uri_means_no_tracking(tmp_path: Path) -> None:
    with open_tracker(None, "animals") as tracker:
        tracker.start("x", {}, {})
        assert tracker.run_id is None
        assert tracker.lineage() == {}
