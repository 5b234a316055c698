"""What every benchmark returns, and helpers they share."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Figure", "demo_model"]


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: str | None
    ratio: float | None
    goal: str | None
    machine: str = ""


def demo_model(workdir: Path, epochs: int = 1) -> Path:
    """Train the demo model into ``workdir/bundle`` (speed does not depend on the weights)."""
    out = workdir / "bundle"
    subprocess.run(
        [sys.executable, "-m", "corral.cli", "train", "--out", str(out), "--epochs", str(epochs)],
        check=True,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    return out
