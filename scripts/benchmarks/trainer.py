"""Trainer benchmarks: ingest throughput, training time and accuracy.

- ``trainer.ingest``: ``CORRAL_BENCH_INGEST_N`` (default 100,000) generated 28x28
  PNG files in ten label folders, ingested by :func:`trainer.ingest.ingest_images`
  (decode, check, pixel hash, fit; one process per CPU). Measured against a
  single-process sequential SHA-256 of the same files' bytes (the brief's
  baseline: the least work any content-addressed ingest must do) and against
  the same ingest decoding in this process (``workers=1``).
- ``trainer.catdog``: the default ``corral train`` config (cat vs dog), seconds
  and test accuracy.
- ``trainer.all10``: all ten Animal-MNIST classes with :data:`ALL10_CONFIG`.
- ``trainer.int8``: the default cat-vs-dog model with its INT8 variant: ONNX
  Runtime frames per second of int8 over fp32 (same batch, one thread, same run)
  and the test accuracy lost.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from benchmarks.common import Figure
from PIL import Image

# The default config; measured at 0.948 on all ten classes (docs/trainer.md).
ALL10_CONFIG: dict[str, object] = {"width": 16, "depth": 3, "epochs": 15, "dropout": 0.3}


def _generate(root: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        label_dir = root / f"class{i % 10}"
        if i < 10:
            label_dir.mkdir(parents=True)
        # Smooth blobs compress like silhouettes do, unlike white noise.
        image = np.zeros((28, 28), dtype=np.uint8)
        y, x = rng.integers(4, 24, 2)
        image[y - 4 : y + 4, x - 4 : x + 4] = rng.integers(1, 256)
        image[0, 0] = i % 251  # keep every file distinct
        image[0, 1] = i // 251 % 251
        image[0, 2] = i // 63001
        path = label_dir / f"{i:06d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _sequential_bytes_hash(paths: list[Path]) -> float:
    started = time.perf_counter()
    for path in paths:
        hashlib.sha256(path.read_bytes()).hexdigest()
    return len(paths) / (time.perf_counter() - started)


def bench_ingest(workdir: Path) -> list[Figure]:
    """trainer.ingest_images_per_s against a sequential hash of the same files."""
    from trainer.ingest import ingest_images

    n = int(os.environ.get("CORRAL_BENCH_INGEST_N", "100000"))
    paths = _generate(workdir / "images", n)
    bytes_rate = _sequential_bytes_hash(paths)  # also warms the page cache for both
    started = time.perf_counter()
    dataset, report = ingest_images(workdir / "images", workers=os.cpu_count())
    ours = n / (time.perf_counter() - started)
    assert report.kept == n == len(dataset.samples), report.to_dict()
    started = time.perf_counter()
    ingest_images(workdir / "images", workers=1)  # the same code, decoding in-process
    same_work = n / (time.perf_counter() - started)
    return [
        Figure(
            name="trainer.ingest_images_per_s",
            value=round(ours, 1),
            unit="images/s",
            baseline=f"single-process sequential SHA-256 of the same {n} files' bytes: "
            f"{bytes_rate:.0f} images/s (ours also decodes, checks and resizes)",
            ratio=round(ours / bytes_rate, 3),
            goal=None,
        ),
        Figure(
            name="trainer.ingest_parallel_ratio",
            value=round(ours / same_work, 3),
            unit="ratio",
            baseline=f"the same ingest decoding in-process (workers=1): {same_work:.0f} "
            f"images/s; ours used {os.cpu_count()} worker processes",
            ratio=round(ours / same_work, 3),
            goal=None,
        ),
    ]


def _train(config: dict[str, object]) -> tuple[float, float, float]:
    from trainer.train import TrainConfig, train_model

    started = time.perf_counter()
    result = train_model(TrainConfig(**config))  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    return seconds, result.evaluation.accuracy, result.evaluation.recall_gap


def bench_catdog(workdir: Path) -> list[Figure]:
    """trainer.catdog_train_s and trainer.catdog_accuracy with the default config."""
    seconds, accuracy, gap = _train({})
    return [
        Figure(
            name="trainer.catdog_train_s",
            value=round(seconds, 1),
            unit="s",
            baseline="default config (15 epochs, width 16, depth 3), data load included",
            ratio=None,
            goal="< 120",
        ),
        Figure(
            name="trainer.catdog_accuracy",
            value=round(accuracy, 4),
            unit="accuracy",
            baseline=f"test split; recall gap {gap:.3f}",
            ratio=None,
            goal=">= 0.95",
        ),
    ]


def bench_all10(workdir: Path) -> list[Figure]:
    """trainer.all10_accuracy: all ten classes with ALL10_CONFIG."""
    from trainer.source import ANIMAL_CLASSES

    seconds, accuracy, gap = _train({"classes": ANIMAL_CLASSES, **ALL10_CONFIG})
    return [
        Figure(
            name="trainer.all10_accuracy",
            value=round(accuracy, 4),
            unit="accuracy",
            baseline=f"test split, {ALL10_CONFIG}, trained in {seconds:.0f} s; "
            f"recall gap {gap:.3f}",
            ratio=None,
            goal=">= 0.85",
        )
    ]


def _fps(path: Path, batch: np.ndarray, seconds: float) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the agent benchmark runs it
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: batch}
    for _ in range(20):
        session.run(None, feeds)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feeds)
        count += 1
    return count * len(batch) / (time.perf_counter() - started)


def bench_int8(workdir: Path) -> list[Figure]:
    """trainer.int8_speedup and trainer.int8_accuracy_delta on the default model."""
    from trainer.data import preprocess
    from trainer.export import write_bundle
    from trainer.train import TrainConfig, train_model

    result = train_model(TrainConfig())
    report = write_bundle(
        result, workdir / "bundle", "animals", "1.0.0", int8=True, force_int8=True
    )
    assert report.int8 is not None
    images, _ = result.dataset.split("test")
    batch = preprocess(images[:32])
    fp32 = _fps(workdir / "bundle" / "model.onnx", batch, 5.0)
    int8 = _fps(workdir / "bundle" / "model.int8.onnx", batch, 5.0)
    delta = report.int8.delta_points
    return [
        Figure(
            name="trainer.int8_speedup",
            value=round(int8 / fp32, 3),
            unit="ratio",
            baseline=f"fp32 file, ONNX Runtime CPU, batch 32, 1 thread: {fp32:.0f} fps "
            f"(int8 {int8:.0f} fps)",
            ratio=round(int8 / fp32, 3),
            goal="> 1",
        ),
        Figure(
            name="trainer.int8_accuracy_delta",
            value=round(delta, 3),
            unit="points lost",
            baseline=f"fp32 test accuracy {report.int8.accuracy_fp32:.4f}, "
            f"int8 {report.int8.accuracy_int8:.4f}",
            ratio=None,
            goal="<= 1",
        ),
    ]


BENCHMARKS: dict[str, Callable[[Path], list[Figure]]] = {
    "trainer.ingest": bench_ingest,
    "trainer.catdog": bench_catdog,
    "trainer.all10": bench_all10,
    "trainer.int8": bench_int8,
}
