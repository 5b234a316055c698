"""Where a model came from: the bundle's ``lineage`` object.

Enough to retrain the same model or to explain a difference between two: the
dataset version (:attr:`trainer.data.Dataset.version`, the SHA-256 of the
manifest written to ``report/dataset.json``) with a summary of the data, the
code commit and whether the working tree had changes, the hyperparameters, the
search trials, the trainer version, the versions of Python and of the libraries
that shaped the data, the weights and the ONNX file, and how many processes
trained it. A retrain adds its parent and new data (:mod:`trainer.retraining`),
an MLflow run its id (:mod:`trainer.tracking`).

``corral model push`` uploads ``bundle.json`` byte for byte, so this object is
what the registry stores and serves.

Git is asked read-only (``--no-optional-locks``), so training next to other work
in the same checkout never takes the index lock.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import PIL
import torch

import corral
from trainer import distributed
from trainer.data import SPLITS, Dataset
from trainer.train import TrainResult

__all__ = ["code_version", "dataset_summary", "dependency_versions", "lineage_for"]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # not a git checkout, or git is not installed
    return done.stdout


def code_version() -> tuple[str | None, bool | None]:
    """The trainer's git commit and whether the checkout has uncommitted changes.

    Returns:
        ``(commit, dirty)``; both ``None`` when the trainer does not run from a git
        checkout (an installed package) or git is missing. Untracked files count
        as changes.

    Raises:
        Nothing: git failures read as "unknown".
    """
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git("status", "--porcelain")
    return commit.strip(), (bool(status.strip()) if status is not None else None)


def dependency_versions() -> dict[str, str]:
    """The versions of Python and of the libraries a bundle's bytes depend on.

    Returns:
        ``python``, ``torch``, ``onnx``, ``onnxruntime``, ``onnxscript`` (the
        exporter), ``numpy`` and ``pillow`` (decoding and resizing the images).

    Raises:
        Nothing: a library without metadata reads ``"unknown"``.
    """
    try:
        onnxscript = metadata.version("onnxscript")
    except metadata.PackageNotFoundError:
        onnxscript = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "onnxscript": onnxscript,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def dataset_summary(dataset: Dataset) -> dict[str, Any]:
    """What the lineage says about the data besides its version.

    Returns:
        ``version`` and ``manifest_sha256`` (the same hash, named both ways: the
        SHA-256 of ``report/dataset.json``), ``source``, ``classes``, ``input``,
        ``samples`` and the count of each split.

    Raises:
        Nothing.
    """
    version = dataset.version
    return {
        "version": version,
        "manifest_sha256": version,
        "source": dataset.source,
        "classes": list(dataset.classes),
        "input": {"color": dataset.color, "size": dataset.image_size},
        "samples": len(dataset.samples),
        "splits": {name: len(dataset.hashes(name)) for name in SPLITS},
    }


def lineage_for(result: TrainResult) -> dict[str, Any]:
    """The bundle's ``lineage`` object for a training run.

    Args:
        result: the training run.

    Returns:
        ``dataset_version``, ``dataset`` (:func:`dataset_summary`),
        ``code_commit``, ``code_dirty``, ``hyperparameters``, ``trainer_version``,
        ``dependencies`` (:func:`dependency_versions`), ``world_size`` (training
        processes), ``search`` (every trial) when the run won a hyperparameter
        search, and the caller's ``result.extra_lineage`` (a retrain's
        ``parent`` and ``new_data``, an MLflow run), which cannot replace those.

    Raises:
        Nothing.
    """
    commit, dirty = code_version()
    lineage: dict[str, Any] = {
        **result.extra_lineage,
        "dataset_version": result.dataset.version,
        "dataset": dataset_summary(result.dataset),
        "code_commit": commit,
        "code_dirty": dirty,
        "hyperparameters": result.config.to_dict(),
        "trainer_version": corral.__version__,
        "dependencies": dependency_versions(),
        "world_size": distributed.world()[1],
    }
    if result.search is not None:
        lineage["search"] = result.search
    return lineage
