"""The pipeline on a tiny real ONNX classifier: batching, accuracy, swaps, errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from agent.camera import Camera, FolderSource, MemorySource
from agent.pipeline import HIST_BINS, Pipeline
from agent.runtime import ModelRuntime
from corral.payloads import encode
from tests.agent.fixtures import LABELS, tiny_bundle, wait_for


def tiny_runtime(directory: Path, version: str = "1.0.0", sign: float = 1.0) -> ModelRuntime:
    """The tiny classifier of ``fixtures.tiny_bundle``, loaded."""
    return ModelRuntime.load(tiny_bundle(directory, version, sign), directory)


def expected_prediction(image: np.ndarray, sign: float = 1.0) -> str:
    """What the tiny model answers, computed by hand: bright iff the mean pixel is above 127.5."""
    bright = float(image.mean()) > 127.5
    return LABELS[0] if bright == (sign > 0) else LABELS[1]


def labelled_images(n: int, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    """Random gray levels labelled by a noisy rule, so that the model is right only sometimes."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        level = int(rng.integers(0, 256))
        images.append(np.full((28, 28), level, np.uint8))
        # Truth is "bright" above 100, so levels 101..127 are what the model gets wrong.
        labels.append("bright" if level > 100 else "dark")
    return images, labels


def hand_metrics(images: list[np.ndarray], labels: list[str], sign: float = 1.0) -> dict[str, Any]:
    preds = [expected_prediction(img, sign) for img in images]
    correct = sum(p == t for p, t in zip(preds, labels, strict=True))
    per_class = {}
    for c in LABELS:
        tp = sum(p == t == c for p, t in zip(preds, labels, strict=True))
        predicted = preds.count(c)
        support = labels.count(c)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[c] = (round(precision, 6), round(recall, 6), round(f1, 6), support)
    return {"correct": correct, "labelled": len(labels), "per_class": per_class}


def test_pipeline_batches_several_cameras_and_measures_accuracy(tmp_path: Path) -> None:
    runtime = tiny_runtime(tmp_path / "m1")
    images, labels = labelled_images(400)
    cameras = [
        Camera(MemorySource(images[i::4], labels[i::4], fps=None, camera_id=f"c{i}", loop=False))
        for i in range(4)
    ]
    pipeline = Pipeline(cameras, runtime, batch_size=4, batch_wait_s=0.05)
    pipeline.start()
    for camera in cameras:
        camera.start()
    try:
        assert wait_for(lambda: pipeline.frames_total == 400)
    finally:
        pipeline.stop()
        for camera in cameras:
            camera.stop()
    inference, accuracy = pipeline.take_window()
    expected = hand_metrics(images, labels)
    assert inference["frames"] == 400
    assert inference["drops"] == 0
    assert inference["mean_batch"] > 1, "frames of several cameras should share batches"
    assert sum(inference["class_counts"].values()) == 400
    assert sum(inference["confidence_hist"]["counts"]) == 400
    assert len(inference["confidence_hist"]["counts"]) == HIST_BINS
    assert inference["latency_ms"]["p50"] <= inference["latency_ms"]["p99"]
    assert accuracy["labelled"] == expected["labelled"]
    assert accuracy["correct"] == expected["correct"]
    assert accuracy["accuracy"] == round(expected["correct"] / 400, 6)
    assert 0 < accuracy["correct"] < 400, "the test data should make the model err sometimes"
    got = {
        c: (v["precision"], v["recall"], v["f1"], v["support"])
        for c, v in accuracy["per_class"].items()
    }
    assert got == expected["per_class"]
    assert (inference["model"], inference["version"]) == ("tiny", "1.0.0")
    # The bodies are valid payloads.
    encode("inference", "dev-1", 1, inference)
    encode("accuracy", "dev-1", 2, accuracy)


def test_folder_cameras_feed_labels_into_accuracy(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    images, labels = labelled_images(60, seed=3)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / label / f"{i}.png"), image)
    camera = Camera(FolderSource(root, fps=None, loop=False))
    pipeline = Pipeline([camera], tiny_runtime(tmp_path / "m"), batch_size=2)
    pipeline.start()
    camera.start()
    try:
        assert wait_for(lambda: pipeline.frames_total == 60)
    finally:
        pipeline.stop()
        camera.stop()
    _, accuracy = pipeline.take_window()
    assert accuracy["correct"] == hand_metrics(images, labels)["correct"]
    assert accuracy["labelled"] == 60


class SlowRuntime(ModelRuntime):
    """The tiny model, 50 ms per batch: a consumer slower than the camera."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(0.05)
        return super().run(batch)


def test_slow_pipeline_counts_camera_drops(tmp_path: Path) -> None:
    fast = tiny_runtime(tmp_path / "m")
    slow = SlowRuntime(fast.bundle, fast.session)
    images, labels = labelled_images(10)
    camera = Camera(MemorySource(images, labels, fps=200))
    pipeline = Pipeline([camera], slow, batch_size=1)
    pipeline.start()
    camera.start()
    try:
        assert wait_for(lambda: pipeline.frames_total >= 5 and camera.drops >= 20)
    finally:
        pipeline.stop()
        camera.stop()
    inference, _ = pipeline.take_window()
    assert inference["drops"] >= 20
    assert inference["frames"] >= 5
    assert inference["frames"] + inference["drops"] <= camera.captured


class GatedSource(MemorySource):
    """A memory source that holds its frames after the first ``open_for`` until ``gate`` opens."""

    def __init__(self, gate: threading.Event, open_for: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate, self.open_for, self.reads = gate, open_for, 0

    def read(self) -> tuple[np.ndarray, str | None] | None:
        if self.reads >= self.open_for:
            self.gate.wait()
        self.reads += 1
        return super().read()


def test_swap_mid_run_changes_version_and_loses_no_frame(tmp_path: Path) -> None:
    v1 = tiny_runtime(tmp_path / "v1", "1.0.0")
    v2 = tiny_runtime(tmp_path / "v2", "2.0.0", sign=-1.0)
    images, labels = labelled_images(300)
    gate = threading.Event()  # the second half of the frames waits for the swap
    cameras = [
        Camera(
            GatedSource(
                gate, 50, images[i::3], labels[i::3], fps=None, camera_id=f"c{i}", loop=False
            )
        )
        for i in range(3)
    ]
    pipeline = Pipeline(cameras, v1, batch_size=3)
    pipeline.start()
    for camera in cameras:
        camera.start()
    try:
        assert wait_for(lambda: pipeline.frames_total >= 60)
        swap_ms = pipeline.swap(v2)
        gate.set()
        assert wait_for(lambda: pipeline.frames_total == 300)
    finally:
        pipeline.stop()
        for camera in cameras:
            camera.stop()
    assert swap_ms >= 0
    assert len(pipeline.swaps) == 1
    assert pipeline.swaps[0].old == ("tiny", "1.0.0")
    assert pipeline.swaps[0].new == ("tiny", "2.0.0")
    assert pipeline.swaps[0].swap_ms == swap_ms
    closed = pipeline.closed_windows()
    assert len(closed) == 1
    before, before_acc = closed[0]
    after, after_acc = pipeline.take_window()
    assert before["version"] == before_acc["version"] == "1.0.0"
    assert after["version"] == after_acc["version"] == "2.0.0"
    assert before["frames"] >= 60 and after["frames"] > 0
    assert before["frames"] + after["frames"] == 300 == sum(c.captured for c in cameras)
    assert before["drops"] == after["drops"] == 0
    # The windows do not mix versions: v2 answers the opposite of v1 on every frame.
    assert before_acc["labelled"] + after_acc["labelled"] == 300


def test_swap_of_a_stopped_pipeline_applies_at_once(tmp_path: Path) -> None:
    pipeline = Pipeline([], None, batch_size=2)
    swap_ms = pipeline.swap(tiny_runtime(tmp_path / "m"))
    assert swap_ms >= 0
    assert pipeline.runtime is not None and pipeline.runtime.bundle.version == "1.0.0"
    assert pipeline.closed_windows() == []  # nothing ran before: no empty window to report


class NanRuntime(ModelRuntime):
    """Gives NaN for the first row of every batch."""

    def run(self, batch: np.ndarray) -> np.ndarray:
        out = super().run(batch)
        out[0, :] = np.nan
        return out


def test_non_finite_outputs_count_as_errors(tmp_path: Path) -> None:
    good = tiny_runtime(tmp_path / "m")
    runtime = NanRuntime(good.bundle, good.session)
    pipeline = Pipeline([], runtime, batch_size=4)
    images, labels = labelled_images(4)
    from agent.camera import Frame

    frames = [Frame("c", i, images[i], labels[i], time.monotonic()) for i in range(4)]
    pipeline.process(runtime, frames)
    buffer = pipeline._buffer
    pipeline.process(runtime, frames[:2])
    assert pipeline._buffer is buffer, "the input buffer is reused while the shape holds"
    inference, accuracy = pipeline.take_window()
    assert inference["errors"] == 2
    assert inference["frames"] == 4
    assert accuracy["labelled"] == 4
    assert pipeline.errors_total == 2


def test_without_a_model_frames_are_dropped_and_nothing_is_inferred() -> None:
    images, labels = labelled_images(5)
    camera = Camera(MemorySource(images, labels, fps=200))
    pipeline = Pipeline([camera], None, batch_size=2)
    pipeline.start()
    camera.start()
    try:
        assert wait_for(lambda: camera.drops >= 10)
    finally:
        pipeline.stop()
        camera.stop()
    inference, accuracy = pipeline.take_window()
    assert inference["frames"] == 0 and inference["drops"] >= 10
    assert inference["model"] is None and accuracy["accuracy"] is None
    assert pipeline.frames_total == 0


def test_cameras_preprocess_for_the_running_model_in_their_own_threads(tmp_path: Path) -> None:
    v1 = tiny_runtime(tmp_path / "v1", "1.0.0")
    images, labels = labelled_images(4)
    camera = Camera(MemorySource(images, labels, fps=None, loop=False))
    pipeline = Pipeline([camera], v1, batch_size=1)
    assert camera.prepare is v1.preprocess
    camera.start()
    try:
        assert wait_for(lambda: camera.slot.pending())
        frame = camera.slot.take()
    finally:
        camera.stop()
    assert frame is not None and frame.prepared_by is v1.preprocess
    want = np.empty((1, 28, 28), np.float32)
    v1.preprocess(frame.image, want)
    np.testing.assert_array_equal(frame.tensor, want)
    v2 = tiny_runtime(tmp_path / "v2", "2.0.0")
    pipeline.swap(v2)
    assert camera.prepare is v2.preprocess, "frames made for v1 would be preprocessed again"
