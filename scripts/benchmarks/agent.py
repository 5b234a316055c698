"""Agent benchmarks: the real-time pipeline against a bare ONNX Runtime loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from benchmarks.common import Figure, demo_model


def _bare_loop_fps(session: object, batch: np.ndarray, seconds: float) -> float:
    """The physical limit: ONNX Runtime alone on a preallocated batch."""
    run = session.run  # type: ignore[attr-defined]
    name = session.get_inputs()[0].name  # type: ignore[attr-defined]
    feeds = {name: batch}
    for _ in range(20):
        run(None, feeds)
    count = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(None, feeds)
        count += 1
    return count * len(batch) / (time.perf_counter() - start)


def _pipeline_fps(bundle_dir: Path, batch_size: int, seconds: float) -> tuple[float, float]:
    """(pipeline fps, bare ONNX Runtime fps) on the same model and batch size."""
    from agent.camera import Camera, MemorySource
    from agent.pipeline import Pipeline
    from agent.runtime import ModelRuntime
    from corral import Bundle
    from trainer.data import load_dataset

    bundle = Bundle.load(bundle_dir)
    runtime = ModelRuntime.load(bundle, bundle_dir, intra_op_threads=1)
    test_images, test_labels = load_dataset().split("test")
    labels = [bundle.output.labels[int(i)] for i in test_labels]
    cameras = [
        Camera(MemorySource(list(test_images), labels, fps=None, camera_id=f"mem-{i}"))
        for i in range(batch_size)
    ]
    pipeline = Pipeline(cameras, runtime, batch_size=batch_size)
    for camera in cameras:
        camera.start()
    pipeline.start()
    time.sleep(1.0)  # warm-up
    start_frames, start = pipeline.frames_total, time.perf_counter()
    time.sleep(seconds)
    frames, elapsed = pipeline.frames_total - start_frames, time.perf_counter() - start
    pipeline.stop()
    for camera in cameras:
        camera.stop()
    shape = (batch_size, *bundle.input.sample_shape)
    batch = np.random.default_rng(0).random(shape, dtype=np.float32)
    bare = _bare_loop_fps(runtime.session, batch, seconds)
    return frames / elapsed, bare


def bench_pipeline(workdir: Path) -> list[Figure]:
    """agent.pipeline_ratio_28: pipeline fps / bare ONNX Runtime fps, 28x28 demo model."""
    bundle_dir = demo_model(workdir)
    figures = []
    for batch_size, suffix in ((4, ""), (1, "_b1")):
        fps, bare = _pipeline_fps(bundle_dir, batch_size, seconds=5.0)
        figures.append(
            Figure(
                name=f"agent.pipeline_ratio_28{suffix}",
                value=round(fps / bare, 3),
                unit="ratio",
                baseline=f"bare ONNX Runtime loop, same model, batch {batch_size}: {bare:.0f} fps "
                f"(pipeline {fps:.0f} fps, {batch_size} in-memory cameras)",
                ratio=round(fps / bare, 3),
                goal=">= 0.5",
            )
        )
    return figures


BENCHMARKS: dict[str, Callable[[Path], list[Figure]]] = {
    "agent.pipeline_ratio_28": bench_pipeline,
}
