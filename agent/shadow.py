"""Shadow mode: a candidate model runs beside the current one on the same frames, only compared.

The pipeline hands every batch it has just run to :meth:`Shadow.offer`: the
batch's preprocessed input, the frames, the current model's predictions and
how long the current model took. One shadow thread runs the candidate on the
same input and counts, per window:

- ``agree``: frames on which both models predict the same label;
- on frames whose ground truth is known, which model was right, including
  the discordant pairs (only the candidate right, only the current right)
  that the registry's paired test (McNemar) needs;
- the candidate's run time against the current model's on the same batches
  (the candidate's latency cost).

The candidate decides nothing: its predictions are not reported as
inference, not kept for feedback, and never trigger a rollback. The current
model never waits for it: :meth:`offer` puts a copy in a one-batch slot and
returns; a batch that finds the slot still taken (the candidate is slower
than the frame rate allows) is not compared and is counted in ``skipped``.
The two share the machine, of course: on a CPU the candidate's work takes
cycles the pipeline could have used, which the current model's own latency
shows.

When the candidate's input spec preprocesses like the current model's, the
current batch's tensor is copied; otherwise the shadow thread preprocesses
the frames' images with the candidate's own spec.

Which candidate runs is the registry's call: the ``desired`` hint carries
``shadow: {model, version}`` (or null). :class:`ShadowReconciler` installs it
through the same updater as any model (TUF verification, smoke test) into
slots of its own (``{data_dir}/shadow/``), so the current and previous
slots, and with them rollback, are never touched; it is dropped when the
hint no longer names it, or once it is the current model.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from agent.backoff import InstallBackoff
from agent.camera import Frame
from agent.errors import AgentError, UpdateError
from agent.latency import LatencySample
from agent.runtime import ModelRuntime, classify
from agent.slots import Slot, Slots
from corral.bundle import InputSpec

__all__ = ["Shadow", "ShadowReconciler", "shadow_of"]

logger = logging.getLogger(__name__)

_WAIT_S = 0.2


def _same_preprocessing(a: InputSpec, b: InputSpec) -> bool:
    return (a.sample_shape, a.color, a.scale, list(a.mean), list(a.std)) == (
        b.sample_shape,
        b.color,
        b.scale,
        list(b.mean),
        list(b.std),
    )


@dataclass
class _Batch:
    inputs: np.ndarray | None  # a copy of the current model's tensor, when usable as is
    images: list[np.ndarray]
    current_labels: Sequence[str]  # the current model's labels, by class index
    predictions: np.ndarray  # the current model's class index per frame
    finite: np.ndarray  # whether its output was finite, per frame
    labels: list[str | None]
    current_run_ms: float


@dataclass
class _Counts:
    """What the shadow thread accumulated since the last :meth:`Shadow.take`."""

    frames: int = 0
    skipped: int = 0
    errors: int = 0
    agree: int = 0
    batches: int = 0
    run_ms: LatencySample = field(default_factory=LatencySample)
    current_run_ms: LatencySample = field(default_factory=LatencySample)
    class_counts: dict[str, int] = field(default_factory=dict)
    labelled: int = 0
    correct: int = 0
    current_correct: int = 0
    only_shadow_correct: int = 0
    only_current_correct: int = 0


def _ms(sample: LatencySample) -> dict[str, float | None]:
    mean, percentiles = sample.mean(), sample.percentiles((95,))
    if mean is None or percentiles is None:
        return {"mean": None, "p95": None, "total": 0.0}
    return {
        "mean": round(mean, 4),
        "p95": round(percentiles[0], 4),
        "total": round(sample.total, 4),
    }


class Shadow:
    """Runs one candidate model on copies of the pipeline's batches, in its own thread.

    Args:
        runtime: the candidate, loaded and smoke-tested.
    """

    def __init__(self, runtime: ModelRuntime) -> None:
        self.runtime = runtime
        self._labels = list(runtime.bundle.output.labels)
        self._slot: _Batch | None = None
        self._cond = threading.Condition()
        self._counts = _Counts()
        self._stop = False
        self._buffer = np.zeros((0, *runtime.bundle.input.sample_shape), dtype=np.float32)
        self._current: ModelRuntime | None = None  # the model the last batch came from
        self._reuse = False  # whether its tensors are the candidate's input as they are
        self._thread = threading.Thread(target=self._run, name="shadow", daemon=True)

    @property
    def identity(self) -> tuple[str, str]:
        """(model, version) of the candidate."""
        return self.runtime.bundle.name, self.runtime.bundle.version

    def start(self) -> None:
        """Start the shadow thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the batch in hand; a batch still waiting is dropped."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def offer(
        self,
        current: ModelRuntime,
        inputs: np.ndarray,
        frames: Sequence[Frame],
        predictions: np.ndarray,
        finite: np.ndarray,
        current_run_ms: float,
    ) -> bool:
        """Hand over a batch the current model has just run; never blocks.

        Args:
            current: the runtime that ran it.
            inputs: its preprocessed tensor (N x C x H x W), copied if it is used.
            frames: the frames, in batch order.
            predictions: the current model's class index per frame.
            finite: whether the current model's output was finite, per frame.
            current_run_ms: the current model's run time for this batch.

        Returns:
            False when the candidate was still busy, so this batch is only counted
            as skipped.
        """
        with self._cond:
            if self._slot is not None or self._stop:
                self._counts.skipped += len(frames)
                return False
        # The pipeline thread only copies; names and comparisons are the shadow thread's.
        if current is not self._current:
            self._current = current
            self._reuse = _same_preprocessing(current.bundle.input, self.runtime.bundle.input)
        batch = _Batch(
            inputs=inputs.copy() if self._reuse else None,
            # Camera frames are fresh arrays, never overwritten: references are enough.
            images=[] if self._reuse else [f.image for f in frames],
            current_labels=current.bundle.output.labels,
            predictions=predictions.copy(),
            finite=finite.copy(),
            labels=[f.label for f in frames],
            current_run_ms=current_run_ms,
        )
        with self._cond:
            self._slot = batch
            self._cond.notify_all()
        return True

    def take(self) -> dict[str, Any]:
        """Close the shadow window: the ``shadow`` block of an ``inference`` body."""
        with self._cond:
            counts, self._counts = self._counts, _Counts()
        model, version = self.identity
        return {
            "model": model,
            "version": version,
            "frames": counts.frames,
            "skipped": counts.skipped,
            "errors": counts.errors,
            "agree": counts.agree,
            "agreement": round(counts.agree / counts.frames, 6) if counts.frames else None,
            "batches": counts.batches,
            "run_ms": _ms(counts.run_ms),
            "current_run_ms": _ms(counts.current_run_ms),
            "class_counts": dict(counts.class_counts),
            "labelled": counts.labelled,
            "correct": counts.correct,
            "current_correct": counts.current_correct,
            "only_shadow_correct": counts.only_shadow_correct,
            "only_current_correct": counts.only_current_correct,
        }

    # --- the shadow thread ----------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stop:
                    self._cond.wait(_WAIT_S)
                if self._stop:
                    return
                batch = self._slot
            assert batch is not None
            try:
                self._compare(batch)
            finally:
                with self._cond:
                    self._slot = None

    def _inputs(self, batch: _Batch) -> np.ndarray:
        if batch.inputs is not None:
            return batch.inputs
        n = len(batch.images)
        if self._buffer.shape[0] < n:
            self._buffer = np.zeros((n, *self.runtime.bundle.input.sample_shape), np.float32)
        for i, image in enumerate(batch.images):
            self.runtime.preprocess(image, self._buffer[i])
        return self._buffer[:n]

    def _compare(self, batch: _Batch) -> None:
        n = len(batch.labels)
        try:
            inputs = self._inputs(batch)
            started = time.monotonic()
            scores = self.runtime.run(inputs)
            run_ms = (time.monotonic() - started) * 1000.0
        except Exception as e:  # onnxruntime and OpenCV raise untyped errors
            logger.warning("shadow %s failed on a batch of %d: %s", self.identity, n, e)
            with self._cond:
                self._counts.errors += n
            return
        predictions, _, finite = classify(scores, self.runtime.bundle.output.kind)
        with self._cond:
            c = self._counts
            c.batches += 1
            c.run_ms.add(run_ms)
            c.current_run_ms.add(batch.current_run_ms)
            for i in range(n):
                current = (
                    batch.current_labels[int(batch.predictions[i])] if batch.finite[i] else None
                )
                if not finite[i] or current is None:
                    c.errors += 1
                    continue
                mine = self._labels[int(predictions[i])]
                c.frames += 1
                c.class_counts[mine] = c.class_counts.get(mine, 0) + 1
                c.agree += mine == current
                truth = batch.labels[i]
                if truth is None:
                    continue
                c.labelled += 1
                right, current_right = mine == truth, current == truth
                c.correct += right
                c.current_correct += current_right
                c.only_shadow_correct += right and not current_right
                c.only_current_correct += current_right and not right


def shadow_of(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (model, version) a ``desired`` hint or poll answer names for shadow, or None.

    A hint from a registry that predates shadow mode has no ``shadow`` field,
    which means none.
    """
    shadow = body.get("shadow")
    if not isinstance(shadow, Mapping):
        return None
    model, version = shadow.get("model"), shadow.get("version")
    if isinstance(model, str) and isinstance(version, str):
        return model, version
    return None


class _Installer(Protocol):
    def install(self, model: str, version: str, *, into: Slots | None = None) -> Any: ...


class _Host(Protocol):
    """Where the candidate runs: the agent's pipeline, or a simulated agent."""

    @property
    def shadow(self) -> tuple[str, str] | None: ...

    def set_shadow(self, runtime: Any) -> None: ...


Event = Callable[..., None]


class ShadowReconciler:
    """Brings the candidate running in shadow in line with the one the registry wants.

    Args:
        slots: the shadow's own slots (``{data_dir}/shadow``), recovered here.
        updater: installs the candidate (``install(model, version, into=slots)``).
        event: reports ``shadow_started``, ``shadow_failed`` and ``shadow_stopped``
            (``event(name, message, **fields)``).
        load: loads a slot already installed (after a restart), or None to always install.
        backoff_s: the first wait before a failed candidate is tried again.
    """

    def __init__(
        self,
        slots: Slots,
        updater: _Installer,
        event: Event,
        load: Callable[[Slot], Any] | None = None,
        backoff_s: float = 30.0,
    ) -> None:
        self.slots = slots
        self.slots.recover()
        self.updater = updater
        self._event = event
        self._load = load
        self.backoff = InstallBackoff(base_s=backoff_s)
        #: The candidate the registry wants in shadow, or None.
        self.desired: tuple[str, str] | None = None

    def want(self, desired: tuple[str, str] | None, fresh: bool) -> None:
        """Record the registry's wish; ``fresh`` (a new hint) retries a failed candidate now."""
        if fresh and desired is not None:
            self.backoff.clear(desired)
        self.desired = desired

    def reconcile(self, host: _Host, installed: tuple[str, str] | None) -> None:
        """Start, replace or stop the candidate on ``host``; blocks while one installs.

        Args:
            host: runs the candidate.
            installed: the current model; a candidate that became it is dropped.
        """
        desired = self.desired
        if desired is not None and desired == installed:
            desired = None  # promoted: it runs for real now
        running = host.shadow
        if desired == running:
            return
        if desired is None:
            assert running is not None
            host.set_shadow(None)
            self.slots.clear()
            self._event(
                "shadow_stopped",
                f"stopped running {running[0]} {running[1]} in shadow",
                model=running[0],
                version=running[1],
            )
            return
        if not self.backoff.allowed(desired, time.monotonic()):
            return
        started = time.monotonic()
        try:
            runtime = self._runtime(desired)
        except UpdateError as e:
            failure = self.backoff.record(desired, e)
            self._failed(desired, str(e), failure)
            return
        except AgentError as e:
            delay = self.backoff.failed(desired, time.monotonic())
            fields = {"reason": "install", "failures": self.backoff.failures(desired)}
            self._failed(desired, str(e), {**fields, "retry_in_s": delay})
            return
        host.set_shadow(runtime)
        self._event(
            "shadow_started",
            f"running {desired[0]} {desired[1]} in shadow beside "
            f"{'nothing' if installed is None else ' '.join(installed)}",
            model=desired[0],
            version=desired[1],
            seconds=round(time.monotonic() - started, 3),
            replaced=None if running is None else list(running),
        )

    def _runtime(self, desired: tuple[str, str]) -> Any:
        slot = self.slots.current()
        if self._load is not None and slot is not None and (slot.model, slot.version) == desired:
            runtime = self._load(slot)
            runtime.smoke_test()
            return runtime
        return self.updater.install(*desired, into=self.slots).runtime

    def _failed(self, desired: tuple[str, str], message: str, fields: dict[str, Any]) -> None:
        logger.warning("shadow %s %s failed: %s", *desired, message)
        fields = {**fields, "model": desired[0], "version": desired[1]}
        message = f"cannot run {desired[0]} {desired[1]} in shadow: {message}"
        self._event("shadow_failed", message, **fields)
