"""Corral's benchmarks: each figure measured against a baseline in the same run.

``scripts/bench [NAME ...]`` runs the named benchmarks (all by default), prints
a table and writes ``bench-results.json``: a list of objects with ``name``,
``value``, ``unit``, ``baseline`` (what the value was measured against, in the
same run), ``ratio``, ``goal`` and ``machine``. A figure with a goal is a ratio
with a direction; there are no timed assertions in the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console()


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    baseline: str | None
    ratio: float | None
    goal: str | None
    machine: str = ""


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()} {cpu} {os.cpu_count()} cores, Python {platform.python_version()}"


def _demo_model(workdir: Path) -> Path:
    """Train the demo model (one short epoch: speed does not depend on the weights)."""
    out = workdir / "bundle"
    subprocess.run(
        [sys.executable, "-m", "corral.cli", "train", "--out", str(out), "--epochs", "1"],
        check=True,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    return out


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
    bundle_dir = _demo_model(workdir)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default all): {list(BENCHMARKS)}"
    )
    parser.add_argument("--out", default=str(ROOT / "bench-results.json"))
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        console.print(f"[red]unknown benchmark(s) {unknown}[/red]; known: {list(BENCHMARKS)}")
        return 2
    machine = _machine()
    figures: list[Figure] = []
    for name in args.names or list(BENCHMARKS):
        with console.status(f"running {name}"), tempfile.TemporaryDirectory() as tmp:
            for figure in BENCHMARKS[name](Path(tmp)):
                figure.machine = machine
                figures.append(figure)
    table = Table(title=f"Benchmarks on {machine}")
    for column in ("name", "value", "unit", "goal", "baseline"):
        table.add_column(column, overflow="fold")
    for f in figures:
        table.add_row(f.name, f"{f.value:g}", f.unit, f.goal or "-", f.baseline or "-")
    console.print(table)
    Path(args.out).write_text(json.dumps([asdict(f) for f in figures], indent=2) + "\n")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
