"""Hyperparameter search: chosen on the validation split, every trial in the lineage."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.data import Dataset, load_dataset
from trainer.errors import TrainConfigError
from trainer.export import write_bundle
from trainer.search import SEARCH_SPACE, _points, run_search
from trainer.train import TrainConfig


@pytest.fixture(scope="module")
def with_validation() -> Dataset:
    return load_dataset(("cat", "dog"), test_percent=20, validation_percent=10)


def test_grid_walks_the_space_in_order_and_random_is_seeded() -> None:
    grid = _points("grid", 4, seed=0)
    assert grid[0] == {k: v[0] for k, v in SEARCH_SPACE.items()}
    assert len({tuple(p.values()) for p in _points("random", 10, seed=1)}) == 10
    assert _points("random", 5, seed=1) == _points("random", 5, seed=1)
    assert _points("random", 5, seed=1) != _points("random", 5, seed=2)


def test_the_best_validation_trial_wins_and_lands_in_the_lineage(
    with_validation: Dataset, tmp_path: Path
) -> None:
    found = run_search(TrainConfig(epochs=1), with_validation, "grid", trials=2)
    assert len(found.trials) == 2
    scores = [t.validation_accuracy for t in found.trials]
    assert found.best == scores.index(max(scores))
    assert found.result.config.width == found.trials[found.best].params["width"]
    report = write_bundle(found.result, tmp_path / "b", "animals", "1.0.0")
    search = report.bundle.lineage["search"]
    assert search["selected_on"] == "validation accuracy"
    assert [t["params"] for t in search["trials"]] == [t.params for t in found.trials]
    assert all("test" not in key for t in search["trials"] for key in t)


@pytest.mark.parametrize(
    ("mode", "trials", "message"),
    [
        pytest.param("bayes", 2, "grid", id="unknown-mode"),
        pytest.param("grid", 0, "at least 1", id="no-trials"),
    ],
)
def test_bad_searches_are_refused(
    with_validation: Dataset, mode: str, trials: int, message: str
) -> None:
    with pytest.raises(TrainConfigError, match=message):
        run_search(TrainConfig(epochs=1), with_validation, mode, trials)


def test_search_needs_a_validation_split(cat_dog: Dataset) -> None:
    with pytest.raises(TrainConfigError, match="validation split is empty"):
        run_search(TrainConfig(epochs=1), cat_dog, "grid", 1)
