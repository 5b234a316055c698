"""Shared fixtures: one real training run and its bundle, reused by the module's tests.

Training is short (4 epochs, about 3 s on 2 cores) but real: the real Animal-MNIST
files, the real CNN, the real exporter and ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.data import Dataset, load_dataset
from trainer.export import ExportReport, write_bundle
from trainer.train import TrainConfig, TrainResult, train_model

SHORT_EPOCHS = 4


@pytest.fixture(scope="session")
def cat_dog() -> Dataset:
    return load_dataset(("cat", "dog"), test_percent=20)


@pytest.fixture(scope="session")
def trained(cat_dog: Dataset) -> TrainResult:
    return train_model(TrainConfig(epochs=SHORT_EPOCHS), dataset=cat_dog)


@pytest.fixture(scope="session")
def bundle_dir(trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles") / "animals-1.0.0"


@pytest.fixture(scope="session")
def exported(trained: TrainResult, bundle_dir: Path) -> ExportReport:
    return write_bundle(trained, bundle_dir, "animals", "1.0.0")
