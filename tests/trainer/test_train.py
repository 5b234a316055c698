"""Training: a short real run learns, and the same seed gives the same model."""

from __future__ import annotations

import pytest
import torch

from trainer.data import Dataset
from trainer.errors import TrainConfigError
from trainer.train import TrainConfig, TrainResult, train_model


def test_a_short_run_learns_cat_vs_dog(trained: TrainResult) -> None:
    evaluation = trained.evaluation
    assert evaluation.accuracy > 0.8
    assert evaluation.labels == ("cat", "dog")
    assert sum(map(sum, evaluation.confusion)) == evaluation.samples
    assert len(trained.history) == trained.config.epochs
    assert trained.history[-1].loss < trained.history[0].loss
    assert not trained.model.training  # handed back ready for inference and export


def test_same_config_and_seed_give_the_same_model(cat_dog: Dataset) -> None:
    config = TrainConfig(epochs=1, seed=3)
    first, second = (train_model(config, dataset=cat_dog) for _ in range(2))
    assert round(first.evaluation.accuracy, 4) == round(second.evaluation.accuracy, 4)
    assert round(first.evaluation.macro_f1, 4) == round(second.evaluation.macro_f1, 4)
    assert first.evaluation.confusion == second.evaluation.confusion
    for a, b in zip(
        first.model.state_dict().values(), second.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_training_restores_the_callers_torch_settings(cat_dog: Dataset) -> None:
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    train_model(TrainConfig(epochs=1, threads=1), dataset=cat_dog)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"classes": ("cat", "unicorn")}, "unknown class", id="class"),
        pytest.param({"epochs": 0}, "epochs", id="epochs"),
        pytest.param({"depth": 6}, "depth", id="depth"),
        pytest.param({"dropout": 1.0}, "dropout", id="dropout"),
        pytest.param({"lr": 0.0}, "lr", id="lr"),
        pytest.param({"batch_size": 1}, "batch_size", id="batch-size"),
        pytest.param({"test_percent": 0}, "test_percent", id="test-percent"),
    ],
)
def test_bad_configs_fail_before_any_work(change: dict[str, object], message: str) -> None:
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig(**change)  # type: ignore[arg-type]


def test_the_dataset_must_match_the_configured_classes(cat_dog: Dataset) -> None:
    with pytest.raises(TrainConfigError, match="differ"):
        train_model(TrainConfig(classes=("dog", "cat"), epochs=1), dataset=cat_dog)


def test_a_config_reads_back_from_its_lineage_form() -> None:
    config = TrainConfig(classes=("dog", "cat"), epochs=3, extra_data=("/data/feedback",))
    assert TrainConfig.from_dict(config.to_dict()) == config
    older = {k: v for k, v in config.to_dict().items() if k != "extra_data"}
    assert TrainConfig.from_dict(older).extra_data == ()  # an older trainer's lineage


@pytest.mark.parametrize(
    ("recorded", "message"),
    [
        pytest.param({"mixup": 0.2}, r"unknown training settings \['mixup'\]", id="newer-key"),
        pytest.param({"epochs": "many"}, "bad training settings", id="wrong-type"),
        pytest.param({"epochs": 0}, "epochs should be at least 1", id="refused-value"),
    ],
)
def test_recorded_configs_are_checked(recorded: dict[str, object], message: str) -> None:
    with pytest.raises(TrainConfigError, match=message):
        TrainConfig.from_dict({**TrainConfig().to_dict(), **recorded})
