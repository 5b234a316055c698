"""Scale-out: ``corral train`` under torchrun, two CPU processes, DDP on gloo."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from corral import Bundle

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _environment() -> dict[str, str]:
    # One thread per process on a two-core machine; no GPU even where there is one.
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def test_two_processes_train_one_model_and_only_rank_0_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    out = tmp_path / "bundle"
    store = f"file://{tmp_path / 'mlruns'}"
    done = subprocess.run(
        [
            *TORCHRUN,
            *("-m", "corral.cli", "train", "--out", str(out)),
            *("--epochs", "4", "--threads", "1", "--mlflow-uri", store),
        ],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    bundle = Bundle.load(out)
    bundle.verify_files(out)
    assert bundle.lineage["world_size"] == 2
    assert bundle.metrics["accuracy"] > 0.8  # chance is 0.5
    # Only rank 0 wrote: one bundle directory (no second staging folder), one
    # summary, one MLflow run.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "mlruns"]
    assert done.stdout.count("written to") == 1
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the file store back
    client = MlflowClient(tracking_uri=store)
    [experiment] = [e for e in client.search_experiments() if e.name == "animals"]
    [run] = client.search_runs([experiment.experiment_id])
    assert run.data.params["world_size"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3, 4]


def test_processes_that_read_different_data_stop_at_once_naming_both(tmp_path: Path) -> None:
    script = tmp_path / "disagree.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from trainer.distributed import check_same, process_group
            from trainer.errors import DistributedError

            with process_group() as (rank, size):
                assert size == 2
                try:
                    check_same(f"version-of-rank-{rank}", "dataset version")
                except DistributedError as e:
                    print(e)
                    sys.exit(3)
            """
        )
    )
    done = subprocess.run(
        [*TORCHRUN, str(script)],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "disagree on the dataset version" in done.stdout
    assert "rank 0: version-of-rank-" in done.stdout
    assert "rank 1: version-of-rank-" in done.stdout


@pytest.mark.parametrize("size", ["1", ""])
def test_outside_torchrun_there_is_no_group(size: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.distributed import is_main, process_group, world

    monkeypatch.setenv("WORLD_SIZE", size)
    with process_group() as where:
        assert where == world() == (0, 1)
        assert is_main()
