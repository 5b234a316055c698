"""What every benchmark returns, and helpers they share."""

from __future__ import annotations

import functools
import statistics
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from corral.bundle import Bundle

__all__ = ["Figure", "demo_model", "median", "rgb_bundle"]


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


def median(values: list[float]) -> float:
    """The median; benchmarks interleave rounds and report the median round."""
    return float(statistics.median(values))


@functools.cache
def _rgb_onnx(size: int) -> bytes:
    # Exported once per process: the export takes seconds, several benchmarks use it.
    import tempfile

    import torch

    from trainer.export import export_onnx
    from trainer.model import AnimalNet

    torch.manual_seed(0)
    model = AnimalNet(num_classes=2, width=16, depth=3, in_channels=3)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, sample_shape=(3, size, size))
        return path.read_bytes()


def rgb_bundle(workdir: Path, size: int = 224, version: str = "1.0.0") -> tuple[Bundle, Path]:
    """A bundle of the trainer's CNN (AnimalNet, width 16, depth 3) on size x size RGB.

    Exported by the trainer's own exporter (dynamic batch axis), with untrained
    weights (speed does not depend on them) and one golden sample computed with
    ONNX Runtime, so that an install's smoke test has something to check.

    Returns:
        The bundle and the folder holding its model file.
    """
    import numpy as np
    import onnxruntime as ort

    from corral import Bundle, BundleFile, GoldenSample, InputSpec, OutputSpec, file_digest

    folder = workdir / f"rgb{size}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(_rgb_onnx(size))
    digest, length = file_digest(path)
    sample = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    output = session.run(None, {"input": sample})[0]
    bundle = Bundle(
        name=f"rgb{size}",
        version=version,
        input=InputSpec(
            name="input", shape=[None, 3, size, size], color="rgb", mean=[0.0] * 3, std=[1.0] * 3
        ),
        output=OutputSpec(name="logits", labels=["cat", "dog"]),
        files=[BundleFile("model.onnx", digest, length)],
        golden=[GoldenSample(input=sample.ravel().tolist(), output=output[0].tolist())],
        golden_tolerance=1e-4,
    )
    return bundle, folder
