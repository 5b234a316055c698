"""The trainer's CNN as a real bundle, for the GPU tests and ``scripts/gpu_check.py``.

``cnn_bundle`` exports :class:`trainer.model.AnimalNet` (seeded, untrained:
speed and parity do not depend on the weights) with the trainer's own
exporter (:func:`trainer.export.export_onnx`: opset 18, dynamic batch axis),
and computes golden samples with ONNX Runtime's CPU provider, as
``trainer.export.write_bundle`` does, with the trainer's golden tolerance. So
the agent's smoke test on a GPU provider asks exactly what it asks on a park
computer. Needs torch and onnxscript (both on the GPU machine's image); they
are imported when a bundle is made, never at collection.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from corral.bundle import (
    BUNDLE_FILE,
    Bundle,
    BundleFile,
    GoldenSample,
    InputSpec,
    OutputSpec,
    file_digest,
)

__all__ = ["GOLDEN_COUNT", "MODEL_FILE", "cnn_bundle", "random_batch"]

MODEL_FILE = "model.onnx"
#: Golden samples per bundle; at most the x86-nvidia profile's batch size (16), since
#: ``build-trt`` builds its engine for batches 1..16 and runs all of them at once.
GOLDEN_COUNT = 4


def random_batch(size: int, channels: int, batch: int, seed: int = 1) -> np.ndarray:
    """``batch`` inputs as the trainer feeds them: N x C x size x size, values in [0, 1)."""
    return np.random.default_rng(seed).random((batch, channels, size, size), dtype=np.float32)


def cnn_bundle(folder: Path, size: int = 28, color: str = "gray", name: str = "cnn") -> Bundle:
    """Write AnimalNet (width 16, depth 3, two classes) and its bundle.json into ``folder``.

    Args:
        folder: where ``model.onnx`` and ``bundle.json`` go (made if missing).
        size: the square input's side.
        color: ``gray`` (one channel, the trainer's default) or ``rgb``.
        name: the bundle's model name.

    Returns:
        The bundle (version 1.0.0), golden outputs from ONNX Runtime on the CPU.

    Raises:
        trainer.errors.ExportError: the exporter failed.
    """
    import torch

    from trainer.data import INPUT_SCALE
    from trainer.export import GOLDEN_TOLERANCE, export_onnx
    from trainer.model import AnimalNet

    channels = 1 if color == "gray" else 3
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / MODEL_FILE
    torch.manual_seed(0)
    model = AnimalNet(num_classes=2, width=16, depth=3, in_channels=channels)
    with warnings.catch_warnings():
        # Test set-up, not the code under test: a torch other than the trainer's pin (the
        # GPU machine's) may warn from modules pyproject's filters do not name.
        warnings.simplefilter("default")
        export_onnx(model, path, sample_shape=(channels, size, size))
    digest, length = file_digest(path)
    inputs = random_batch(size, channels, GOLDEN_COUNT, seed=0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input": inputs})[0]
    bundle = Bundle(
        name=name,
        version="1.0.0",
        input=InputSpec(
            name="input",
            shape=[None, channels, size, size],
            color=color,
            scale=INPUT_SCALE,
            mean=[0.0] * channels,
            std=[1.0] * channels,
        ),
        output=OutputSpec(name="logits", labels=["cat", "dog"]),
        files=[BundleFile(MODEL_FILE, digest, length)],
        golden=[
            GoldenSample(input=x.ravel().tolist(), output=y.tolist())
            for x, y in zip(inputs, outputs, strict=True)
        ],
        golden_tolerance=GOLDEN_TOLERANCE,
    )
    (folder / BUNDLE_FILE).write_bytes(bundle.to_bytes())
    return bundle
