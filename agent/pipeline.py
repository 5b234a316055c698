"""The real-time inference pipeline: cameras → preprocess → batch → infer → statistics.

One thread runs the loop, in this order, once per batch:

1. apply a pending model swap (between two batches, so no frame is lost:
   frames already taken run on the runtime read at the batch's start, frames
   still in the camera slots wait for the next batch);
2. wait on the cameras' shared wake-up event until some frame is ready, then
   take the newest frame of up to ``batch_size`` cameras (round robin, so a
   camera is never starved when there are more cameras than batch slots);
3. copy each frame's model input into a preallocated ``batch_size x C x H
   x W`` buffer (reallocated only when the model's input shape changes): the
   cameras' capture threads preprocess with the running model's spec
   (``Camera.prepare``), in parallel with the model; a frame made for another
   model (around a swap) is preprocessed here;
4. run the batch, take argmax and softmax confidence with a few vectorised
   numpy calls;
5. hand a copy of the batch to the shadow candidate, if one runs
   (``agent.shadow``; it never makes this thread wait);
6. add to the current window's statistics.

Statistics live in windows. :meth:`Pipeline.take_window` closes the current
window and returns the bodies of the ``inference`` and ``accuracy`` payloads
(see ``corral.payloads``). A swap closes the window too, so that every window
belongs to exactly one model version; windows closed by swaps wait in
:meth:`Pipeline.closed_windows`. Besides windows, the pipeline keeps the
running model's statistics since its swap (:meth:`Pipeline.since_swap`), on
which the service judges a new model's health budget (``agent.health``).
A window's memory does not grow with its frame rate: latencies go into a
fixed-size sample (``agent.latency``), counts into preallocated arrays.

While no model is loaded the loop takes nothing: cameras keep capturing and
their overwritten frames count as drops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.camera import Camera, Frame
from agent.health import RunStats
from agent.latency import LatencySample
from agent.runtime import ModelRuntime, classify
from agent.shadow import Shadow

__all__ = ["HIST_BINS", "Pipeline", "SwapRecord", "Window"]

logger = logging.getLogger(__name__)

#: How many recent unlabelled frames accept late ground truth through feedback().
RECENT_FRAMES = 4096
#: Bins of the confidence histogram, over [0, 1].
HIST_BINS = 10
_WAIT_S = 0.1


@dataclass
class SwapRecord:
    """One model swap: from which version to which, and how long the swap took."""

    old: tuple[str, str] | None
    new: tuple[str, str]
    swap_ms: float
    at: float


@dataclass
class Window:
    """Accumulated statistics of one window of one model version."""

    labels: list[str]
    model: str | None
    version: str | None
    started: float = field(default_factory=time.monotonic)
    frames: int = 0
    batches: int = 0
    errors: int = 0
    drops: int = 0
    latencies: LatencySample = field(default_factory=LatencySample)
    class_counts: np.ndarray = field(init=False)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    labelled: int = 0
    unknown_labels: int = 0
    true_pos: np.ndarray = field(init=False)
    predicted: np.ndarray = field(init=False)
    support: np.ndarray = field(init=False)
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        k = len(self.labels)
        self.index = {label: i for i, label in enumerate(self.labels)}
        self.class_counts = np.zeros(k, dtype=np.int64)
        self.true_pos = np.zeros(k, dtype=np.int64)
        self.predicted = np.zeros(k, dtype=np.int64)
        self.support = np.zeros(k, dtype=np.int64)

    def count_label(self, label: str, prediction: int) -> None:
        """Count one frame whose ground truth is ``label`` and prediction ``prediction``."""
        self.labelled += 1
        self.predicted[prediction] += 1
        truth = self.index.get(label)
        if truth is None:
            self.unknown_labels += 1
            return
        self.support[truth] += 1
        if truth == prediction:
            self.true_pos[truth] += 1

    def bodies(
        self, queue_depth: int, now: float | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The ``inference`` and ``accuracy`` payload bodies of this window."""
        end = time.monotonic() if now is None else now
        window_s = max(end - self.started, 1e-6)
        latency: dict[str, float | None]
        percentiles = self.latencies.percentiles((50, 95, 99))
        mean = self.latencies.mean()
        if percentiles is not None and mean is not None:
            p50, p95, p99 = percentiles
            latency = {
                "p50": round(p50, 3),
                "p95": round(p95, 3),
                "p99": round(p99, 3),
                "mean": round(mean, 3),
                "max": round(self.latencies.maximum, 3),
            }
        else:
            latency = {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
        inference = {
            "window_s": round(window_s, 3),
            "frames": self.frames,
            "fps": round(self.frames / window_s, 3),
            "latency_ms": latency,
            "drops": self.drops,
            "queue_depth": queue_depth,
            "batches": self.batches,
            "mean_batch": round(self.frames / self.batches, 3) if self.batches else 0.0,
            "errors": self.errors,
            "class_counts": {
                label: int(n) for label, n in zip(self.labels, self.class_counts, strict=True) if n
            },
            "confidence_hist": {"bins": HIST_BINS, "counts": [int(n) for n in self.hist]},
            "model": self.model,
            "version": self.version,
        }
        correct = int(self.true_pos.sum())
        per_class: dict[str, dict[str, float | int]] = {}
        for i, label in enumerate(self.labels):
            support, predicted, tp = (
                int(self.support[i]),
                int(self.predicted[i]),
                int(self.true_pos[i]),
            )
            if not support and not predicted:
                continue
            # Zero when undefined (no predictions or no support), as scikit-learn's zero_division=0.
            precision = tp / predicted if predicted else 0.0
            recall = tp / support if support else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_class[label] = {
                "precision": round(precision, 6),
                "recall": round(recall, 6),
                "f1": round(f1, 6),
                "support": support,
                # The counts behind the ratios, so windows can be summed exactly.
                "predicted": predicted,
                "true_positives": tp,
            }
        accuracy = {
            "window_s": round(window_s, 3),
            "labelled": self.labelled,
            "correct": correct,
            "accuracy": round(correct / self.labelled, 6) if self.labelled else None,
            "per_class": per_class,
            "unknown_labels": self.unknown_labels,
            "model": self.model,
            "version": self.version,
        }
        return inference, accuracy


def _identity(runtime: ModelRuntime | None) -> tuple[str, str] | None:
    return None if runtime is None else (runtime.bundle.name, runtime.bundle.version)


def _run_stats(runtime: ModelRuntime | None) -> RunStats:
    if runtime is None:
        return RunStats()
    return RunStats(runtime.bundle.name, runtime.bundle.version)


class Pipeline:
    """Batches the newest frames of several cameras through one model.

    Args:
        cameras: started or not-yet-started cameras; the pipeline only takes their frames.
        runtime: the model to run, or None until one is installed (see :meth:`swap`).
        batch_size: the most frames per batch (the firmware profile's batch size).
        batch_wait_s: how long to wait for more cameras once one frame is ready, to fill a batch.
    """

    def __init__(
        self,
        cameras: Sequence[Camera],
        runtime: ModelRuntime | None,
        batch_size: int = 1,
        batch_wait_s: float = 0.002,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size should be 1 or more, got {batch_size}")
        self.cameras = list(cameras)
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.signal = threading.Event()
        for camera in self.cameras:
            # Every camera wakes the one pipeline thread.
            camera.slot.signal = self.signal
        self.frames_total = 0
        # Recent unlabelled frames' predictions, so ground truth that arrives later
        # (POST /feedback on the local API) can still count into accuracy.
        self._recent: OrderedDict[tuple[str, int], tuple[str | None, int]] = OrderedDict()
        self.errors_total = 0
        self.swaps: list[SwapRecord] = []
        self._runtime = runtime
        self._pending: ModelRuntime | None = None
        self._pending_at = 0.0
        self._swapped = threading.Condition()
        self._lock = threading.Lock()
        self._closed: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self._window = self._new_window(runtime)
        self._since = _run_stats(runtime)
        self._drops_seen = [c.drops for c in self.cameras]
        self._prepare_with(runtime)
        self._buffer = np.zeros((0, 0, 0, 0), dtype=np.float32)
        self._frames: list[Frame] = []
        self._next_camera = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shadow: Shadow | None = None

    # --- control ----------------------------------------------------------------

    @property
    def runtime(self) -> ModelRuntime | None:
        """The runtime the next batch runs on."""
        return self._runtime

    @property
    def running(self) -> bool:
        """Whether the pipeline thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the pipeline thread."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the pipeline thread after its current batch, and the shadow's."""
        self._stop.set()
        self.signal.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.set_shadow(None)

    @property
    def shadow(self) -> tuple[str, str] | None:
        """(model, version) of the candidate running in shadow, or None."""
        shadow = self._shadow
        return None if shadow is None else shadow.identity

    def set_shadow(self, runtime: ModelRuntime | None) -> None:
        """Run ``runtime`` in shadow beside the current model (see ``agent.shadow``), or stop.

        The candidate must already be loaded and smoke-tested. Counts of a
        replaced candidate not yet taken into a window are dropped with it.
        """
        new = None if runtime is None else Shadow(runtime)
        if new is not None:
            new.start()
        with self._lock:
            old, self._shadow = self._shadow, new
        if old is not None:
            old.stop()

    def swap(self, runtime: ModelRuntime, timeout: float = 10.0) -> float:
        """Replace the model between two batches.

        The runtime must already be loaded and smoke-tested: the pipeline thread
        only switches a reference. The current statistics window closes at the
        swap (see :meth:`closed_windows`).

        Args:
            runtime: the new model.
            timeout: how long to wait for the pipeline thread to reach a batch boundary.

        Returns:
            The swap time in milliseconds: from this call to the switch.

        Raises:
            TimeoutError: the pipeline thread did not reach a batch boundary in time.
        """
        with self._swapped:
            self._pending = runtime
            self._pending_at = time.monotonic()
            if not self.running:
                self._apply_swap()
            else:
                self.signal.set()
                if not self._swapped.wait_for(lambda: self._pending is None, timeout):
                    self._pending = None
                    raise TimeoutError(f"the pipeline did not reach a batch boundary in {timeout}s")
            return self.swaps[-1].swap_ms

    def _apply_swap(self) -> None:
        # Called with self._swapped held, between batches.
        runtime = self._pending
        assert runtime is not None
        old = self._runtime
        now = time.monotonic()
        with self._lock:
            if old is not None or self._window.frames:
                self._collect_drops(self._window)
                self._closed.append(self._bodies(self._window, now))
            self._runtime = runtime
            self._window = self._new_window(runtime)
            self._since = _run_stats(runtime)
        self._prepare_with(runtime)
        record = SwapRecord(
            _identity(old),
            (runtime.bundle.name, runtime.bundle.version),
            (now - self._pending_at) * 1000.0,
            now,
        )
        self.swaps.append(record)
        self._pending = None
        self._swapped.notify_all()
        self.signal.set()
        logger.info("swapped model %s → %s in %.3f ms", record.old, record.new, record.swap_ms)

    def _prepare_with(self, runtime: ModelRuntime | None) -> None:
        for camera in self.cameras:
            camera.prepare = None if runtime is None else runtime.preprocess

    # --- windows ----------------------------------------------------------------

    def _remember(self, frame: tuple[str, int], version: str | None, prediction: int) -> None:
        # Called under the lock from process(), per unlabelled frame: keep it cheap.
        self._recent[frame] = (version, prediction)
        if len(self._recent) > RECENT_FRAMES:
            self._recent.popitem(last=False)

    def feedback(self, frame_id: str, label: str) -> bool:
        """Count ground truth for a recent frame (``camera:index``) into the current window.

        Returns:
            False when the frame is unknown, too old, already labelled, or was
            predicted by a model other than the one running now.
        """
        camera, _, index = frame_id.rpartition(":")
        if not camera or not index.isdigit():
            return False
        with self._lock:
            entry = self._recent.pop((camera, int(index)), None)
            if entry is None or entry[0] != self._window.version:
                return False
            self._window.count_label(label, entry[1])
            return True

    def recent(self, limit: int = 50) -> list[tuple[str, str | None, int]]:
        """The newest unlabelled frames still open for feedback: (frame id, version, class)."""
        with self._lock:
            items = list(self._recent.items())[-limit:]
        return [(f"{camera}:{index}", version, p) for (camera, index), (version, p) in items]

    def take_window(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Close the current window and start a new one.

        Returns:
            The ``inference`` and ``accuracy`` payload bodies, under the model and
            version of the runtime that produced them.
        """
        with self._lock:
            window = self._window
            self._collect_drops(window)
            self._window = self._new_window(self._runtime)
            return self._bodies(window)

    def _bodies(
        self, window: Window, now: float | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        # Called under the lock. The shadow's counts close with the window they
        # were compared in, so they always name the current model they ran beside.
        inference, accuracy = window.bodies(self._queue_depth(), now)
        if self._shadow is not None:
            inference["shadow"] = self._shadow.take()
        return inference, accuracy

    def since_swap(self) -> RunStats:
        """What the running model did since it was swapped in (a snapshot).

        The health budget (``agent.health``) judges a new model on this.
        """
        with self._lock:
            return self._since.copy()

    def closed_windows(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Remove and return the windows that swaps closed, oldest first."""
        with self._lock:
            closed, self._closed = self._closed, []
        return closed

    def _new_window(self, runtime: ModelRuntime | None) -> Window:
        if runtime is None:
            return Window([], None, None)
        return Window(
            list(runtime.bundle.output.labels), runtime.bundle.name, runtime.bundle.version
        )

    def _collect_drops(self, window: Window) -> None:
        for i, camera in enumerate(self.cameras):
            drops = camera.drops
            window.drops += drops - self._drops_seen[i]
            self._drops_seen[i] = drops

    def _queue_depth(self) -> int:
        return sum(1 for c in self.cameras if c.slot.pending())

    # --- the loop -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._pending is not None:
                with self._swapped:
                    if self._pending is not None:
                        self._apply_swap()
            runtime = self._runtime  # read once per batch
            if runtime is None:
                # No model: leave frames in the slots (they count as drops).
                self.signal.wait(_WAIT_S)
                self.signal.clear()
                continue
            frames = self._gather()
            if frames:
                self.process(runtime, frames)

    def _gather(self) -> list[Frame]:
        frames = self._frames
        frames.clear()
        cameras = self.cameras
        n = len(cameras)
        want = min(self.batch_size, n)
        deadline = 0.0
        while not self._stop.is_set():
            self.signal.clear()
            start = self._next_camera
            for k in range(n):
                if len(frames) >= want:
                    break
                camera = cameras[(start + k) % n]
                frame = camera.slot.take()
                if frame is not None:
                    frames.append(frame)
                    self._next_camera = (start + k + 1) % n
            if len(frames) >= want or self._pending is not None:
                break
            now = time.monotonic()
            if frames:
                # One frame ready: wait a moment for the other cameras to fill the batch.
                if not deadline:
                    deadline = now + self.batch_wait_s
                if now >= deadline:
                    break
                self.signal.wait(deadline - now)
            else:
                self.signal.wait(_WAIT_S)
        return frames

    def _ensure_buffer(self, runtime: ModelRuntime) -> np.ndarray:
        shape = (self.batch_size, *runtime.bundle.input.sample_shape)
        if self._buffer.shape != shape:
            self._buffer = np.zeros(shape, dtype=np.float32)
        return self._buffer

    def process(self, runtime: ModelRuntime, frames: Sequence[Frame]) -> None:
        """Run one batch of frames and add the results to the current window.

        Called by the pipeline thread; public so a benchmark can drive it directly.
        """
        buffer = self._ensure_buffer(runtime)
        preprocess = runtime.preprocess
        n = len(frames)
        try:
            for i in range(n):
                frame = frames[i]
                if frame.prepared_by is preprocess and frame.tensor is not None:
                    buffer[i] = frame.tensor
                else:
                    preprocess(frame.image, buffer[i])
            started = time.monotonic()
            scores = runtime.run(buffer[:n])
        except Exception as e:  # onnxruntime and OpenCV raise untyped errors
            logger.warning("batch of %d frames failed on %s: %s", n, _identity(runtime), e)
            with self._lock:
                self._window.errors += n
                self.errors_total += n
                if _identity(runtime) == (self._since.model, self._since.version):
                    self._since.errors += n
            return
        done = time.monotonic()
        predictions, confidence, finite = classify(scores, runtime.bundle.output.kind)
        shadow = self._shadow
        if shadow is not None:
            shadow.offer(
                runtime, buffer[:n], frames, predictions, finite, (done - started) * 1000.0
            )
        with self._lock:
            window = self._window
            if window.version != runtime.bundle.version or window.model != runtime.bundle.name:
                # A swap landed between run and here; should not happen (swaps wait for
                # batch boundaries) but never mix versions in one window.
                return
            since = self._since
            bad = int(n - finite.sum())
            if bad:
                window.errors += bad
                self.errors_total += bad
                since.nonfinite += bad
            for i in range(n):
                if not finite[i]:
                    continue
                frame = frames[i]
                latency_ms = (done - frame.captured) * 1000.0
                window.latencies.add(latency_ms)
                since.add_latency(latency_ms)
                prediction = int(predictions[i])
                if frame.label is None:
                    self._remember((frame.camera_id, frame.index), window.version, prediction)
                else:
                    window.count_label(frame.label, prediction)
            good = predictions[finite]
            np.add.at(window.class_counts, good, 1)
            bins = np.minimum((confidence[finite] * HIST_BINS).astype(np.int64), HIST_BINS - 1)
            np.add.at(window.hist, np.maximum(bins, 0), 1)
            window.frames += int(finite.sum())
            since.frames += int(finite.sum())
            window.batches += 1
            self.frames_total += int(finite.sum())
