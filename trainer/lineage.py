"""Where a model came from: the bundle's ``lineage`` object.

Enough to retrain the same model or to explain a difference between two: the
dataset version (:attr:`trainer.data.Dataset.version`), the code commit and
whether the working tree had changes, the hyperparameters, the trainer version
and the versions of the libraries that shaped the weights and the ONNX file.
Git is asked read-only (``--no-optional-locks``), so training next to other work
in the same checkout never takes the index lock.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

import corral
from trainer.train import TrainResult

__all__ = ["code_version", "lineage_for"]


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


def lineage_for(result: TrainResult) -> dict[str, Any]:
    """The bundle's ``lineage`` object for a training run.

    Args:
        result: the training run.

    Returns:
        ``dataset_version``, ``code_commit``, ``code_dirty``, ``hyperparameters``,
        ``trainer_version`` and ``dependencies`` (torch, onnx, onnxruntime, numpy),
        and ``search`` (every trial) when the run won a hyperparameter search.

    Raises:
        Nothing.
    """
    commit, dirty = code_version()
    lineage: dict[str, Any] = {
        "dataset_version": result.dataset.version,
        "code_commit": commit,
        "code_dirty": dirty,
        "hyperparameters": result.config.to_dict(),
        "trainer_version": corral.__version__,
        "dependencies": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
        },
    }
    if result.search is not None:
        lineage["search"] = result.search
    return lineage
