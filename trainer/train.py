"""Train the CNN on the dataset's train split and evaluate it on the test split.

The order of steps:

1. Check the config (``TrainConfig.__post_init__``) so that a typo fails before
   any data is read.
2. Load the dataset (or take the caller's) and preprocess both splits exactly as
   the bundle's InputSpec will say (:func:`trainer.data.preprocess`).
3. Seed everything and switch PyTorch to deterministic algorithms and a fixed
   thread count, restoring the caller's settings afterwards: the same config and
   seed give the same weights and metrics on the same machine.
4. Start from fresh weights, or from the caller's (a retrain, see
   :mod:`trainer.retraining`).
5. Train with AdamW and a per-step cosine learning-rate schedule (without it the
   last epoch's test accuracy swung by a few points), augmenting each batch with
   random horizontal flips and ±2 pixel roll shifts. Under torchrun the network
   is wrapped in DistributedDataParallel and each process trains on its share of
   every global batch (:mod:`trainer.distributed`).
6. Evaluate on the held-out test split.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from trainer import distributed
from trainer.data import (
    COLORS,
    IMAGE_SIZE,
    Dataset,
    check_input,
    check_labels,
    load_dataset,
    parse_classes,
    preprocess,
    split_of,
)
from trainer.errors import DatasetError, TrainConfigError
from trainer.metrics import (
    Evaluation,
    evaluate_predictions,
    expected_calibration_error,
    softmax,
)
from trainer.model import AnimalNet

__all__ = [
    "EpochStats",
    "TrainConfig",
    "TrainResult",
    "check_fits",
    "evaluate",
    "predict_logits",
    "train_model",
]

_MAX_SHIFT = 2  # pixels; silhouettes sit on a black border, so rolling loses nothing
_EVAL_BATCH = 256


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; recorded in the bundle's lineage.

    ``data`` says where the images come from: ``"animal-mnist"`` (the built-in
    set, whose class names are checked here) or the path of an image folder or
    manifest, ingested by :mod:`trainer.ingest` (any class names).
    ``extra_data`` lists more image folders or manifests merged onto it, later
    ones winning a label conflict (the field feedback a retrain adds).

    Raises:
        TrainConfigError: a value is out of range or a class is unknown.
    """

    classes: tuple[str, ...] = ("cat", "dog")
    data: str = "animal-mnist"
    epochs: int = 15
    width: int = 16
    depth: int = 3
    dropout: float = 0.3
    lr: float = 2e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    seed: int = 0
    test_percent: int = 20
    validation_percent: int = 10
    color: str = "gray"
    image_size: int = IMAGE_SIZE
    threads: int = 2
    extra_data: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check = parse_classes if self.data == "animal-mnist" else check_labels
        object.__setattr__(self, "classes", check(self.classes))
        object.__setattr__(self, "extra_data", tuple(str(d) for d in self.extra_data))
        if self.epochs < 1:
            raise TrainConfigError(f"epochs should be at least 1, got {self.epochs}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainConfigError(f"lr should be a positive number, got {self.lr}")
        if self.weight_decay < 0:
            raise TrainConfigError(f"weight_decay should not be negative, got {self.weight_decay}")
        if self.batch_size < 2:
            # batch norm needs two samples per batch to estimate a variance
            raise TrainConfigError(f"batch_size should be at least 2, got {self.batch_size}")
        if not 1 <= self.test_percent <= 99:
            raise TrainConfigError(f"test_percent should be 1..99, got {self.test_percent}")
        split_of("0" * 64, self.test_percent, self.validation_percent)  # checks the sum
        check_input(self.color, self.image_size)
        if self.image_size >> (self.depth - 1) < 1:
            raise TrainConfigError(
                f"depth {self.depth} pools a {self.image_size}-pixel input below one pixel"
            )
        if self.threads < 1:
            raise TrainConfigError(f"threads should be at least 1, got {self.threads}")
        self.build_model()  # checks the sizes

    def build_model(self) -> AnimalNet:
        """A freshly initialised network of this config's shape."""
        return AnimalNet(
            len(self.classes), self.width, self.depth, self.dropout, COLORS[self.color][1]
        )

    def to_dict(self) -> dict[str, Any]:
        """The hyperparameters as plain JSON values."""
        out = asdict(self)
        out["classes"] = list(self.classes)
        out["extra_data"] = list(self.extra_data)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The config :meth:`to_dict` wrote, e.g. a bundle lineage's ``hyperparameters``.

        Keys an older trainer did not write take their defaults.

        Raises:
            TrainConfigError: a key this trainer does not know (a newer trainer wrote
                it, so its run cannot be repeated faithfully here), or a value the
                config refuses.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(
                f"unknown training settings {unknown}; expected only {sorted(known)} "
                "(was the model trained by a newer Corral?)"
            )
        values = dict(data)
        for key in ("classes", "extra_data"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as e:  # a value of the wrong type, e.g. a list for epochs
            raise TrainConfigError(f"bad training settings {dict(data)}: {e}") from e


@dataclass(frozen=True)
class EpochStats:
    """Progress after one epoch."""

    epoch: int
    epochs: int
    loss: float
    train_accuracy: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """A trained model (in eval mode) and how it did on the test split."""

    config: TrainConfig
    dataset: Dataset
    model: AnimalNet
    evaluation: Evaluation
    history: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0
    search: dict[str, Any] | None = None  # the trials, when this run won a search
    # More top-level lineage keys from the caller (a retrain's parent, the new data).
    extra_lineage: dict[str, Any] = field(default_factory=dict)


def check_fits(config: TrainConfig, dataset: Dataset) -> None:
    """Check that a dataset is what the config describes.

    Raises:
        TrainConfigError: the classes, colour or input size differ.
    """
    if dataset.classes != config.classes:
        raise TrainConfigError(
            f"config classes {list(config.classes)} differ from the dataset's "
            f"{list(dataset.classes)}"
        )
    if (dataset.color, dataset.image_size) != (config.color, config.image_size):
        raise TrainConfigError(
            f"config input {config.color} {config.image_size}px differs from the dataset's "
            f"{dataset.color} {dataset.image_size}px"
        )


@contextmanager
def _deterministic(seed: int, threads: int) -> Iterator[None]:
    previous = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    random.seed(seed)
    np.random.seed(seed)  # for any library code on numpy's legacy global generator
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.set_num_threads(previous[1])


def _augment(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    n = batch.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.where(flip.view(n, 1, 1, 1), batch.flip(-1), batch)
    shifts = torch.randint(-_MAX_SHIFT, _MAX_SHIFT + 1, (n, 2), generator=generator).tolist()
    return torch.stack(
        [torch.roll(out[i], shifts=(dy, dx), dims=(1, 2)) for i, (dy, dx) in enumerate(shifts)]
    )


def predict_logits(model: nn.Module, inputs: np.ndarray) -> np.ndarray:
    """Run the model in eval mode on preprocessed inputs.

    Args:
        model: the network.
        inputs: float32 (N, C, H, W), as :func:`trainer.data.preprocess` gives.

    Returns:
        float32 (N, num_classes) logits.

    Raises:
        RuntimeError: the inputs do not fit the model (from PyTorch).
    """
    model.eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(inputs), _EVAL_BATCH):
            batch = torch.from_numpy(np.ascontiguousarray(inputs[start : start + _EVAL_BATCH]))
            chunks.append(model(batch).numpy())
    return np.concatenate(chunks).astype(np.float32)


def evaluate(model: nn.Module, dataset: Dataset, split: str = "test") -> Evaluation:
    """Evaluate the model on one split of the dataset.

    Args:
        model: the network.
        dataset: the dataset whose labels the model predicts.
        split: ``"test"`` (the held-out split), ``"validation"`` or ``"train"``.

    Returns:
        The evaluation.

    Raises:
        DatasetError: the split is empty.
    """
    images, labels = dataset.split(split)
    if len(images) == 0:
        raise DatasetError(f"the {split} split is empty; nothing to evaluate on")
    logits = predict_logits(model, preprocess(images))
    evaluation = evaluate_predictions(labels, logits.argmax(axis=1), dataset.classes)
    ece = expected_calibration_error(softmax(logits), labels)
    return replace(evaluation, ece=ece)


def _batches(order: torch.Tensor, batch_size: int, world: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if world > 1 and len(index) < 2 * world:
            # Each process needs two samples for batch norm: borrow from the head.
            index = torch.cat([index, order[: 2 * world - len(index)]])
        yield index


def train_model(
    config: TrainConfig,
    dataset: Dataset | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    initial_state: Mapping[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train a model on the train split and evaluate it on the test split.

    In a torch.distributed process group (torchrun, see :mod:`trainer.distributed`)
    every process must call this with the same config and data; each trains on
    its share of every batch and all return the same model and evaluation.

    Args:
        config: the hyperparameters.
        dataset: the data to train on; by default (only when ``config.data`` is
            ``"animal-mnist"`` and there is no ``extra_data``) Animal-MNIST
            restricted to ``config.classes`` and split and fitted as the config says.
        on_epoch: called after each epoch, e.g. to move a progress bar.
        initial_state: weights to start from (a ``state_dict`` of the config's
            network) instead of a fresh initialisation.

    Returns:
        The model in eval mode, its test evaluation and the per-epoch history.

    Raises:
        TrainConfigError: the dataset's classes, colour or size differ from the
            config's, no dataset is given for other data than Animal-MNIST alone,
            or ``initial_state`` does not fit the config's network.
        DatasetError: the data cannot be read, or a split is empty.
        DistributedError: the processes of the group hold different data.
    """
    started = time.perf_counter()
    if dataset is None:
        if config.data != "animal-mnist" or config.extra_data:
            raise TrainConfigError(
                f"ingest {config.data} with trainer.ingest (or build the data with "
                "trainer.pipeline.load_training_data) and pass the dataset to train_model"
            )
        dataset = load_dataset(
            config.classes,
            config.test_percent,
            config.validation_percent,
            config.color,
            config.image_size,
        )
    check_fits(config, dataset)
    distributed.check_same(dataset.version, "dataset version")
    images, labels = dataset.split("train")
    if len(images) == 0:
        raise DatasetError("the train split is empty; nothing to train on")
    x_train = torch.from_numpy(preprocess(images))
    y_train = torch.from_numpy(labels)
    world = distributed.world()[1]
    history: list[EpochStats] = []
    with _deterministic(config.seed, config.threads):
        generator = torch.Generator().manual_seed(config.seed)
        model = config.build_model()
        if initial_state is not None:
            try:
                model.load_state_dict(initial_state)
            except RuntimeError as e:
                raise TrainConfigError(
                    f"the initial weights do not fit the configured network: {e}"
                ) from e
        net = distributed.wrap(model)
        optimizer = torch.optim.AdamW(
            net.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        steps = config.epochs * math.ceil(len(x_train) / config.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        for epoch in range(1, config.epochs + 1):
            epoch_started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            net.train()
            total_loss, correct, seen = 0.0, 0, 0
            order = torch.randperm(len(x_train), generator=generator)
            for index in _batches(order, config.batch_size, world):
                # Every process augments the whole global batch, so the generator
                # stays in step across processes, then trains on its share.
                mine = distributed.shard(index)
                batch = _augment(x_train[index], generator)[mine]
                target = y_train[index][mine]
                logits = net(batch)
                loss = functional.cross_entropy(logits, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total_loss += loss.item() * len(target)
                correct += int((logits.argmax(dim=1) == target).sum())
                seen += len(target)
            total_loss, correct_sum, seen_sum = distributed.sum_across([total_loss, correct, seen])
            stats = EpochStats(
                epoch=epoch,
                epochs=config.epochs,
                loss=total_loss / seen_sum,
                train_accuracy=correct_sum / seen_sum,
                lr=lr,
                seconds=time.perf_counter() - epoch_started,
            )
            history.append(stats)
            if on_epoch is not None:
                on_epoch(stats)
        distributed.sync_buffers(model)
        evaluation = evaluate(model, dataset, "test")
    return TrainResult(
        config=config,
        dataset=dataset,
        model=model,
        evaluation=evaluation,
        history=history,
        seconds=time.perf_counter() - started,
    )
