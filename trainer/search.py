"""Hyperparameter search over a declared space, selected on the validation split.

Each trial trains a model with one point of :data:`SEARCH_SPACE` (width, depth,
dropout, lr; everything else from the base config) and scores it by accuracy on
the validation split, which is carved from the train share by hash
(:func:`trainer.data.split_of`). The test split never takes part in the choice:
trials record only their validation figures, and the test evaluation that the
bundle reports is the winner's alone. Ties go to the earlier trial.

``grid`` walks the product of the space in a fixed order and stops after
``trials`` points; ``random`` draws ``trials`` distinct points with the base
config's seed. Every trial goes into the bundle lineage's ``search``.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from trainer.data import Dataset
from trainer.errors import TrainConfigError
from trainer.train import EpochStats, TrainConfig, TrainResult, evaluate, train_model

__all__ = ["SEARCH_MODES", "SEARCH_SPACE", "SearchResult", "Trial", "run_search"]

SEARCH_MODES = ("grid", "random")
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "width": (8, 16, 32),
    "depth": (2, 3, 4),
    "dropout": (0.1, 0.3),
    "lr": (1e-3, 2e-3, 4e-3),
}


@dataclass(frozen=True)
class Trial:
    """One point of the space and how it did on the validation split.

    ``history`` (per-epoch figures, for MLflow's nested runs) stays out of
    :meth:`to_dict`, so the lineage holds one line per trial.
    """

    number: int
    params: dict[str, Any]
    validation_accuracy: float
    validation_macro_f1: float
    seconds: float
    history: tuple[EpochStats, ...] = field(default=(), compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, for the lineage."""
        return {
            "trial": self.number,
            "params": self.params,
            "validation_accuracy": self.validation_accuracy,
            "validation_macro_f1": self.validation_macro_f1,
            "seconds": self.seconds,
        }


@dataclass
class SearchResult:
    """Every trial, the winner's number and its trained model."""

    mode: str
    trials: list[Trial]
    best: int
    result: TrainResult

    def to_dict(self) -> dict[str, Any]:
        """The lineage's ``search`` object."""
        return {
            "mode": self.mode,
            "space": {k: list(v) for k, v in SEARCH_SPACE.items()},
            "selected_on": "validation accuracy",
            "best_trial": self.best,
            "trials": [t.to_dict() for t in self.trials],
        }


def _points(mode: str, trials: int, seed: int) -> list[dict[str, Any]]:
    names = list(SEARCH_SPACE)
    grid = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*SEARCH_SPACE.values())
    ]
    if mode == "grid":
        return grid[:trials]
    return random.Random(seed).sample(grid, min(trials, len(grid)))


def run_search(
    config: TrainConfig,
    dataset: Dataset,
    mode: str = "random",
    trials: int = 8,
    on_trial: Callable[[Trial], None] | None = None,
) -> SearchResult:
    """Train one model per point and keep the best on the validation split.

    Args:
        config: the base config; each trial overrides width, depth, dropout, lr.
        dataset: the data, with a non-empty validation split.
        mode: ``"grid"`` or ``"random"``.
        trials: how many points to try (at most the size of the space).
        on_trial: called after each trial, e.g. to print a row.

    Returns:
        The trials and the winning run (its test evaluation is the only one made).

    Raises:
        TrainConfigError: an unknown mode, fewer than one trial, a point the config
            refuses (a depth too deep for the input), or an empty validation split.
        DatasetError: the data cannot be trained on.
    """
    if mode not in SEARCH_MODES:
        raise TrainConfigError(f"--search should be one of {SEARCH_MODES}, got {mode!r}")
    if trials < 1:
        raise TrainConfigError(f"--trials should be at least 1, got {trials}")
    if not dataset.hashes("validation"):
        raise TrainConfigError(
            "the validation split is empty; search needs --validation-percent above 0"
        )
    done: list[Trial] = []
    best: tuple[float, int, TrainResult] | None = None
    for number, params in enumerate(_points(mode, trials, config.seed)):
        trial_config = replace(config, **params)
        started = time.perf_counter()
        result = train_model(trial_config, dataset=dataset)
        validation = evaluate(result.model, dataset, "validation")
        trial = Trial(
            number=number,
            params=params,
            validation_accuracy=validation.accuracy,
            validation_macro_f1=validation.macro_f1,
            seconds=time.perf_counter() - started,
            history=tuple(result.history),
        )
        done.append(trial)
        if on_trial is not None:
            on_trial(trial)
        if best is None or trial.validation_accuracy > best[0]:
            best = (trial.validation_accuracy, number, result)
    assert best is not None  # trials >= 1
    found = SearchResult(mode=mode, trials=done, best=best[1], result=best[2])
    found.result.search = found.to_dict()  # lineage_for puts it in the bundle
    return found
