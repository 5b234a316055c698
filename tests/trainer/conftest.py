"""Shared fixtures: real training runs and their bundles, reused by the module's tests.

Training is short (4 epochs, about 3 s on 2 cores) but real: the real Animal-MNIST
files, the real CNN, the real exporter and ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import Dataset, content_hash, load_dataset
from trainer.export import ExportReport, write_bundle
from trainer.pipeline import load_training_data, train_and_package
from trainer.source import ANIMAL_CLASSES, load_animal_mnist
from trainer.train import TrainConfig, TrainResult, train_model

SHORT_EPOCHS = 4
FEEDBACK_PER_CLASS = 40


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


@pytest.fixture(scope="session")
def parent_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """animals 1.0.0 exactly as ``corral train --epochs 4`` writes it: a parent to retrain."""
    config = TrainConfig(epochs=SHORT_EPOCHS)
    out = tmp_path_factory.mktemp("parent") / "animals-1.0.0"
    train_and_package(config, load_training_data(config).dataset, out, "animals", "1.0.0")
    return out


@pytest.fixture(scope="session")
def feedback(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Field feedback as a person labels it: ``feedback/<label>/<n>.png``.

    New pictures (Animal-MNIST cats and dogs with sensor noise, so new hashes), and
    one exact copy of a training cat, which the merge must count as a duplicate.
    """
    images, labels = load_animal_mnist()
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("field") / "feedback"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        rows = np.flatnonzero(labels == ANIMAL_CLASSES.index(name))[:FEEDBACK_PER_CLASS]
        for n, row in enumerate(rows):
            noise = rng.integers(-12, 13, images[row].shape)
            noisy = np.clip(images[row].astype(np.int16) + noise, 0, 255).astype(np.uint8)
            assert content_hash(noisy) != content_hash(images[row])
            Image.fromarray(noisy).save(root / name / f"{n}.png")
    first_cat = np.flatnonzero(labels == ANIMAL_CLASSES.index("cat"))[0]
    Image.fromarray(images[first_cat]).save(root / "cat" / "copy.png")
    return root
