"""The running agent: cameras, pipeline, MQTT link, reconciler and reporter.

Start order (:meth:`AgentService.start`):

0. take the data folder's lock (``agent.lock``): one process per folder;
1. load ``agent.json`` and choose the firmware profile;
2. open the outbox and load the current installed model, if any (a model that
   no longer loads is reported in an event and the agent runs without one);
3. start the cameras (a source that cannot be opened stops the start: an
   operator's mistake should be loud), then the pipeline with the profile's
   batch size;
4. start the MQTT link (retained ``online`` status naming the model), the
   reconciler thread and the reporter thread.

Threads and what they own::

    camera-*     capture → LatestFrame slots
    pipeline     batches → ModelRuntime → statistics windows
    reconciler   desired (MQTT hint, or HTTP poll every poll_interval_s ± 10 %) vs installed →
                 Updater.install → Pipeline.swap → events + status; one install at a time;
                 then the new model's health budget, and a local rollback when it fails;
                 then the shadow candidate the hint names, if any (agent.shadow)
    reporter     inference + accuracy every report_interval_s, telemetry every
                 profile.telemetry_interval_s, camera lost/found events
    mqtt-sender  outbox → broker (see agent.mqtt)

Installs never run on the pipeline thread: the pipeline keeps serving the old
model until the new one is loaded and smoke-tested, then switches between two
batches. A failed version is retried only after a backoff that doubles with
each failure, so a bad release cannot make the agent loop.

A busy registry (429, or 503 with ``Retry-After``; ``agent.backoff``) is
obeyed: the next poll waits at least what it asked for (capped at 10 min, plus
up to 10 % so a fleet told the same number comes back spread out), and a
download it turned away fails the install with reason ``registry_busy`` and
waits the longer of that and the install backoff.

Local rollback (``agent.health``): after a swap the new model is on probation;
the reconciler checks its statistics every ``health_check_s``. NaN outputs, a
runtime error rate or a latency over the profile's budget roll it back to the
previous slot (``Updater.rollback``), swap that runtime in, and report an
``events`` message ``rolled_back`` with the reason code. A model whose smoke
test fails is rolled back the same way: at install (the staged model never
runs) and at start (the current slot no longer passes its golden samples).
A rolled-back version is not installed again until a newer desired hint.

While no model is installed, cameras run but nothing is inferred; their
frames are overwritten and count as drops, and no inference windows are sent.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import corral
from agent.api import LocalApi
from agent.backoff import InstallBackoff, jitter
from agent.camera import Camera, parse_camera
from agent.desired import DesiredPoller
from agent.errors import AgentError, RegistryBusyError, SmokeTestError, UpdateError
from agent.health import HealthBudget, Rejections, RunStats, Verdict, judge
from agent.lock import DataDirLock
from agent.mqtt import AgentLink
from agent.outbox import Outbox
from agent.pipeline import Pipeline
from agent.runtime import ModelRuntime
from agent.shadow import ShadowReconciler, shadow_of
from agent.slots import Slots
from agent.systemd import Notifier
from agent.telemetry import Nvml, sample_telemetry
from corral.bundle import Bundle
from corral.payloads import installed_event, rolled_back_event
from corral.profiles import FirmwareProfile

__all__ = ["AgentService", "InstallBackoff"]

logger = logging.getLogger(__name__)


class _InstallResult(Protocol):
    model: str
    version: str
    seconds: float
    runtime: ModelRuntime


class _Updater(Protocol):
    def install(
        self, model: str, version: str, *, into: Slots | None = None, variant: str | None = None
    ) -> Any: ...

    def current(self) -> Any: ...

    def rollback(self) -> Any: ...

    def load(self, slot: Any) -> ModelRuntime: ...


@dataclass
class _Probation:
    """A freshly swapped model under watch: which, since when, against what baseline."""

    key: tuple[str, str]
    started: float
    baseline_p95: float | None


DesiredPoll = Callable[[], tuple[str | None, str | None] | None]


def _load_runtime(
    bundle: Bundle, path: Path, profile: FirmwareProfile, variant: str | None, engine_root: Path
) -> ModelRuntime:
    variants = {f.variant for f in bundle.files}
    chosen = variant or (profile.variant if profile.variant in variants else "fp32")
    # The same loader as the updater's, engine cache included: a restart finds its engine.
    from agent.updater import load_onnx_runtime

    return load_onnx_runtime(bundle, path, chosen, profile, engine_root=engine_root)


class AgentService:
    """One agent process: see the module docstring for what runs where.

    Args:
        data_dir: the agent's data folder (agent.json, outbox.db, models/).
        cameras: camera URIs (see :func:`agent.camera.parse_camera`).
        config: the configuration; None loads ``{data_dir}/agent.json``.
        profile: the firmware profile; None chooses it from the config and hardware.
        updater: installs models; None builds ``agent.updater.Updater``.
        poll_desired: returns the desired (model, version), or None when unknown,
            or raises ``RegistryBusyError`` to be asked again later;
            None polls ``{registry}/api/v1/devices/{id}/desired`` over HTTP.
        retry_backoff_s: the first wait before a failed version is tried again.
        nvml: the GPU telemetry reader; None uses pynvml when installed.
        health: the new model's health budget; None uses the defaults with the
            profile's latency budget.
        health_check_s: how often a model on probation is judged.
        api_port: serve the local HTTP API (agent.api) on 127.0.0.1 at this port
            (0: any free port); None: no local API.
    """

    def __init__(
        self,
        data_dir: Path,
        cameras: Sequence[str],
        *,
        config: Any = None,
        profile: FirmwareProfile | None = None,
        updater: _Updater | None = None,
        poll_desired: DesiredPoll | None = None,
        retry_backoff_s: float = 30.0,
        nvml: Nvml | None = None,
        health: HealthBudget | None = None,
        health_check_s: float = 0.25,
        api_port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.camera_uris = list(cameras)
        self.config = config
        self.profile = profile
        self.updater = updater
        self._poll_desired = poll_desired
        # The HTTP poll's one client, made by the first poll and kept until stop
        # (agent.desired says why not one per poll).
        self._poller: DesiredPoller | None = None
        self.backoff = InstallBackoff(base_s=retry_backoff_s)
        self._nvml = nvml
        self._api_port = api_port
        self.api: LocalApi | None = None
        self.cameras: list[Camera] = []
        self.pipeline: Pipeline | None = None
        self.link: AgentLink | None = None
        self.outbox: Outbox | None = None
        self.installs = 0
        self._desired: tuple[str | None, str | None] | None = None
        self._desired_gen = 0  # bumped by every MQTT hint
        self._desired_seq = -1  # the newest registry seq of a desired hint seen
        self._variant: str | None = None  # the file variant the rollout asks for
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._camera_errors: dict[str, str | None] = {}
        self.health = health
        self.health_check_s = health_check_s
        self.rejections = Rejections(self.data_dir / "rejected.json")
        self.lock = DataDirLock(self.data_dir)
        self.rollbacks = 0
        self._probation: _Probation | None = None
        self._start_events: list[dict[str, Any]] = []
        self._stopped = False
        self._retry_backoff_s = retry_backoff_s
        self.shadow: ShadowReconciler | None = None

    # --- state ------------------------------------------------------------------

    @property
    def installed(self) -> tuple[str, str] | None:
        """(model, version) the pipeline runs, or None."""
        runtime = self.pipeline.runtime if self.pipeline is not None else None
        return None if runtime is None else (runtime.bundle.name, runtime.bundle.version)

    @property
    def device_id(self) -> str:
        """The enrolled device id."""
        return str(self.config.device_id)

    def status_body(self) -> dict[str, Any]:
        """The fields of this agent's status besides ``state``."""
        installed = self.installed
        return {
            "model": installed[0] if installed else None,
            "version": installed[1] if installed else None,
            "profile": self.profile.name if self.profile is not None else None,
            "variant": self._variant_running(),
            "agent_version": corral.__version__,
            "cameras": [c.camera_id for c in self.cameras],
            "shadow": self._shadow_status(),
        }

    def _variant_running(self) -> str | None:
        """The bundle variant the pipeline runs (fp32, int8, a TensorRT variant...), or None."""
        runtime = self.pipeline.runtime if self.pipeline is not None else None
        variant = getattr(runtime, "variant", None)
        return variant if isinstance(variant, str) else None

    def _shadow_status(self) -> dict[str, str] | None:
        running = self.pipeline.shadow if self.pipeline is not None else None
        return None if running is None else {"model": running[0], "version": running[1]}

    # --- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Start everything (see the module docstring for the order).

        Raises:
            DataDirLockedError: another agent runs on this data folder.
            ConfigError: the device is not enrolled or agent.json is invalid.
            ProfileError: no firmware profile fits.
            CameraError: a camera cannot be opened.
        """
        self.lock.acquire()
        self._stopped = False
        try:
            self._start()
        except BaseException:
            self.lock.release()
            raise

    def _start(self) -> None:
        if self.config is None:
            from agent.config import AgentConfig

            self.config = AgentConfig.load(self.data_dir)
        if self.profile is None:
            from agent.hardware import choose_profile

            self.profile = choose_profile(self.config)
        if self.updater is None:
            from agent.updater import Updater

            self.updater = Updater(self.config, self.profile)
        if self.health is None:
            self.health = HealthBudget(latency_p95_ms=self.profile.latency_p95_ms)
        self.outbox = Outbox(self.data_dir, self.device_id)
        runtime, load_error = self._load_current()
        self.cameras = [
            Camera(parse_camera(uri, camera_id=f"cam{i}")) for i, uri in enumerate(self.camera_uris)
        ]
        started: list[Camera] = []
        try:
            for camera in self.cameras:
                camera.start()
                started.append(camera)
        except AgentError:
            for camera in started:
                camera.stop()
            self.outbox.close()
            raise
        self.pipeline = Pipeline(self.cameras, runtime, batch_size=self.profile.batch_size)
        self.pipeline.start()
        self.shadow = ShadowReconciler(
            Slots(self.data_dir / "shadow"),
            self.updater,
            self._event,
            load=getattr(self.updater, "load", None),
            backoff_s=self._retry_backoff_s,
        )
        if self._api_port is not None:
            self.api = LocalApi(self, port=self._api_port)
            self.api.start()
        self.link = AgentLink(
            self.device_id,
            self.config.mqtt_host,
            self.config.mqtt_port,
            self.outbox,
            on_desired=self._on_desired,
            status_body=self.status_body,
            username=self.device_id,
            password=self.config.device_token,
            tls=self.config.broker_tls,
        )
        self.link.start()
        if load_error is not None:
            self._event("load_failed", load_error)
        for body in self._start_events:
            self.link.publish("events", body)
        self._start_events.clear()
        self._stop.clear()
        for name, target in (("reconciler", self._reconcile_loop), ("reporter", self._report_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info(
            "agent %s running: profile %s, model %s, cameras %s",
            self.device_id,
            self.profile.name,
            self.installed,
            self.camera_uris,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop cleanly: last windows out, ``offline`` status acknowledged (bounded), all closed.

        A second call does nothing (a signal handler and a ``finally`` may both stop).
        """
        if self._stopped:
            return
        self._stop.set()
        self._kick.set()
        if self.api is not None:
            self.api.stop()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        if self.pipeline is not None:
            self.pipeline.stop()
            self._report_windows()
        for camera in self.cameras:
            camera.stop()
        if self.link is not None:
            self.link.stop(timeout=min(timeout, 5.0))
        if self.outbox is not None:
            self.outbox.close()
        if self._poller is not None:
            self._poller.close()
        close = getattr(self.updater, "close", None)
        if close is not None:
            close()
        self.lock.release()
        self._stopped = True
        logger.info("agent stopped")

    def run_forever(self) -> None:
        """Start, run until SIGTERM or SIGINT, then stop cleanly.

        Raises:
            ConfigError, ProfileError, CameraError: see :meth:`start`.
        """
        done = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            logger.info("got signal %s; stopping", signal.Signals(signum).name)
            done.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        # Under systemd (Type=notify): ready once started, and the watchdog is fed
        # only while the agent's threads live, so a hung agent gets restarted.
        systemd = Notifier()
        try:
            self.start()
            systemd.notify("READY=1")
            systemd.start_watchdog(self.healthy)
            while not done.wait(1.0):
                pass
        finally:
            systemd.stop()
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def healthy(self) -> bool:
        """Whether the pipeline and every worker thread are alive."""
        threads_alive = all(thread.is_alive() for thread in self._threads)
        return threads_alive and (self.pipeline is None or self.pipeline.running)

    # --- model --------------------------------------------------------------------

    def _load_current(self) -> tuple[ModelRuntime | None, str | None]:
        assert self.updater is not None and self.profile is not None
        current = self.updater.current()
        if current is None:
            logger.info("no model installed yet; cameras run, nothing is inferred")
            return None, None
        if isinstance(current, tuple):
            bundle, path = current[0], current[1]
            variant = None
        else:
            bundle, path, variant = current.bundle, current.path, getattr(current, "variant", None)
        try:
            runtime = _load_runtime(
                bundle, Path(path), self.profile, variant, self.config.data_dir / "engines"
            )
        except AgentError as e:
            logger.error("installed model %s %s does not load: %s", bundle.name, bundle.version, e)
            return None, f"installed model {bundle.name} {bundle.version} does not load: {e}"
        try:
            runtime.smoke_test()
        except SmokeTestError as e:
            # The slot passed at install and no longer does (disk, runtime upgrade):
            # go back to the model before it, if there is one that still passes.
            key = (bundle.name, bundle.version)
            logger.error("installed model %s %s fails its smoke test: %s", *key, e)
            back = self._rollback_runtime()
            if isinstance(back, str):
                return None, f"installed model {key[0]} {key[1]} fails its smoke test: {e}"
            slot, runtime = back
            self.rejections.add(key, "smoke_test", self._desired_seq)
            self.rollbacks += 1
            self._start_events.append(
                rolled_back_event(
                    *key,
                    reason="smoke_test",
                    stage="start",
                    to=(slot.model, slot.version),
                    why=str(e),
                )
            )
        return runtime, None

    def _rollback_runtime(self) -> tuple[Any, ModelRuntime] | str:
        """Switch the slots back and load the previous model; a message on failure."""
        assert self.updater is not None
        try:
            slot = self.updater.rollback()
            runtime = self.updater.load(slot)
            runtime.smoke_test()
        except (AgentError, OSError) as e:
            logger.error("cannot roll back: %s", e)
            return str(e)
        return slot, runtime

    def _on_desired(self, body: Mapping[str, Any]) -> None:
        # paho's thread: hand over and return.
        desired = (body.get("model"), body.get("version"))
        seq = body.get("seq")
        fresh = isinstance(seq, int) and seq > self._desired_seq
        if fresh:
            # A hint the registry issued anew (a new rollout), not a retained replay:
            # an operator asked again, so a failed version gets a fresh try now.
            assert isinstance(seq, int)
            self._desired_seq = seq
            if desired[0] is not None and desired[1] is not None:
                self.backoff.clear((desired[0], desired[1]))
                self.rejections.clear_if_newer((desired[0], desired[1]), seq)
        if self.shadow is not None:
            self.shadow.want(shadow_of(body), fresh)
        variant = body.get("variant")
        self._variant = variant if isinstance(variant, str) else None
        self._desired = desired
        self._desired_gen += 1
        self._kick.set()

    def _poll(self) -> tuple[tuple[str | None, str | None], Mapping[str, Any]] | None:
        """(desired, the rest of the answer), or None when the registry did not answer.

        A ``poll_desired`` seam knows no shadow or variant: the hint's stay as they are.

        Raises:
            RegistryBusyError: the registry said busy (429, or 503 with a valid
                ``Retry-After``); any other failure is logged and gives None.
        """
        if self._poll_desired is not None:
            polled = self._poll_desired()
            shadow = self.shadow.desired if self.shadow is not None else None
            rest = {
                "variant": self._variant,
                "shadow": None if shadow is None else {"model": shadow[0], "version": shadow[1]},
            }
            return None if polled is None else (polled, rest)
        if self._poller is None:
            self._poller = DesiredPoller(
                self.config.registry_url, self.device_id, self.config.device_token
            )
        data = self._poller.poll()
        return None if data is None else ((data.get("model"), data.get("version")), data)

    def _reconcile_loop(self) -> None:
        interval = float(self.config.poll_interval_s)
        next_poll = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_poll:
                # ± 10 %: agents started together (a site's power cut) drift apart.
                next_poll = time.monotonic() + jitter(interval)
                gen = self._desired_gen
                try:
                    polled = self._poll()
                except RegistryBusyError as e:
                    # Counted from its answer; a wait shorter than the interval changes nothing.
                    polled = None
                    after = time.monotonic() + jitter(e.retry_after_s, low=0.0)
                    next_poll = max(next_poll, after)
                    logger.warning(
                        "%s; next poll in %.1f s", e, max(0.0, next_poll - time.monotonic())
                    )
                # A hint that arrived while the poll was in flight is newer: keep it.
                if polled is not None and gen == self._desired_gen:
                    self._desired = polled[0]
                    variant = polled[1].get("variant")
                    self._variant = variant if isinstance(variant, str) else None
                    if self.shadow is not None:
                        self.shadow.want(shadow_of(polled[1]), fresh=False)
            self.check_health()
            self.reconcile()
            if self.shadow is not None and self.pipeline is not None and not self._stop.is_set():
                before = self.pipeline.shadow
                self.shadow.reconcile(self.pipeline, self.installed)
                if self.pipeline.shadow != before and self.link is not None:
                    self.link.publish_status()
            wait = next_poll - time.monotonic()
            if self._probation is not None:
                wait = min(wait, self.health_check_s)
            self._kick.wait(max(0.0, wait))
            self._kick.clear()

    def reconcile(self) -> None:
        """Install the desired version if it differs from the installed one.

        Runs on the reconciler thread; public so that a test can drive it.
        """
        desired = self._desired
        if desired is None or desired[0] is None or desired[1] is None:
            return
        key = (desired[0], desired[1])
        if key == self.installed or self._stop.is_set():
            return
        if key in self.rejections:
            return  # rolled back here; only a newer hint brings it back
        now = time.monotonic()
        if not self.backoff.allowed(key, now):
            return
        assert self.updater is not None and self.pipeline is not None
        logger.info("installing %s %s (installed: %s)", key[0], key[1], self.installed)
        try:
            result = self.updater.install(*key, variant=self._variant)
        except UpdateError as e:
            failure = self.backoff.record(key, e)
            logger.warning(
                "install of %s %s failed (%s): %s; next try in %.0f s",
                key[0],
                key[1],
                e.reason,
                e,
                failure["retry_in_s"],
            )
            self._event("install_failed", str(e), **failure)
            if isinstance(e, SmokeTestError) and self.installed is not None:
                # The staged model never ran: the running one stays, which is the
                # rollback; the version waits for a newer hint like any rolled back.
                self._reject(key, Verdict("smoke_test", str(e)), stage="install")
            return
        except AgentError as e:
            delay = self.backoff.failed(key, time.monotonic())
            logger.warning("install of %s %s failed: %s", key[0], key[1], e)
            self._event(
                "install_failed",
                str(e),
                model=key[0],
                version=key[1],
                reason="install",
                failures=self.backoff.failures(key),
                retry_in_s=delay,
            )
            return
        before = self.pipeline.since_swap()
        swap_ms = self.pipeline.swap(result.runtime)
        self._probation = _Probation(
            key, time.monotonic(), before.p95() if before.model is not None else None
        )
        self.installs += 1
        assert self.link is not None
        self.link.publish(
            "events",
            installed_event(
                result.model,
                result.version,
                seconds=result.seconds,
                smoke_diff=getattr(result, "smoke_max_diff", None),
                swap_ms=swap_ms,
                variant=getattr(result, "variant", None),
                fallback=getattr(result, "fallback", None),
            ),
        )
        self.link.publish_status()

    # --- health and rollback ------------------------------------------------------

    def check_health(self) -> None:
        """Judge the model on probation; roll it back when it breaks its budget.

        Runs on the reconciler thread (installs and rollbacks never overlap);
        public so that a test can drive it.
        """
        probation = self._probation
        if probation is None or self.pipeline is None or self.health is None:
            return
        stats = self.pipeline.since_swap()
        if (stats.model, stats.version) != probation.key:
            self._probation = None
            return
        verdict = judge(stats, self.health, probation.baseline_p95)
        if verdict is None:
            elapsed = time.monotonic() - probation.started
            if elapsed >= self.health.window_s or stats.tried >= self.health.max_frames:
                logger.info(
                    "%s %s passed its probation: %d frames, %d errors, %d NaN",
                    *probation.key,
                    stats.frames,
                    stats.errors,
                    stats.nonfinite,
                )
                self._probation = None
            return
        self._probation = None
        logger.error("%s %s breaks its health budget: %s", *probation.key, verdict.message)
        back = self._rollback_runtime()
        if isinstance(back, str):
            self._reject(probation.key, verdict, stage="probation", stats=stats)
            self._event(
                "rollback_failed",
                f"{probation.key[0]} {probation.key[1]} should be rolled back "
                f"({verdict.message}) but cannot be: {back}",
                model=probation.key[0],
                version=probation.key[1],
                reason=verdict.reason,
            )
            return
        slot, runtime = back
        assert self.pipeline is not None
        swap_ms = self.pipeline.swap(runtime)
        self._reject(probation.key, verdict, stage="probation", stats=stats, swap_ms=swap_ms)
        assert self.link is not None
        self.link.publish_status()

    def _reject(
        self,
        key: tuple[str, str],
        verdict: Verdict,
        stage: str,
        stats: RunStats | None = None,
        swap_ms: float | None = None,
    ) -> None:
        """Remember ``key`` as rolled back and report it (unless the rollback failed)."""
        try:
            self.rejections.add(key, verdict.reason, self._desired_seq)
        except OSError as e:
            logger.error("cannot persist the rejection of %s %s: %s", *key, e)
        installed = self.installed
        if installed is None or installed == key:
            return  # nothing to roll back to: the caller reports rollback_failed
        self.rollbacks += 1
        figures: dict[str, Any] = {}
        if stats is not None:
            p95 = stats.p95()
            figures |= {
                "frames": stats.frames,
                "errors": stats.errors,
                "nonfinite": stats.nonfinite,
                "latency_p95_ms": None if p95 is None else round(p95, 3),
            }
        if swap_ms is not None:
            figures["swap_ms"] = round(swap_ms, 3)
        if self.link is not None:
            self.link.publish(
                "events",
                rolled_back_event(
                    *key,
                    reason=verdict.reason,
                    stage=stage,
                    to=installed,
                    why=verdict.message,
                    **figures,
                ),
            )

    # --- reporting ------------------------------------------------------------------

    def _event(self, event: str, message: str, **fields: Any) -> None:
        if self.link is not None:
            self.link.publish("events", {"event": event, "message": message, **fields})

    def _report_windows(self) -> None:
        assert self.pipeline is not None and self.link is not None
        for inference, accuracy in [*self.pipeline.closed_windows(), self.pipeline.take_window()]:
            if inference["model"] is None and not inference["frames"]:
                continue  # no model: nothing was inferred
            self.link.publish("inference", inference)
            self.link.publish("accuracy", accuracy)

    def _report_telemetry(self) -> None:
        assert self.link is not None
        body = sample_telemetry(self.data_dir, self._nvml)
        body["cameras"] = [
            {"id": c.camera_id, "captured": c.captured, "drops": c.drops, "error": c.error}
            for c in self.cameras
        ]
        if self.outbox is not None:
            # Deliberately shed telemetry leaves seq gaps; this says how many were ours.
            body["outbox"] = {
                "pending": self.outbox.count_pending(),
                "pending_bytes": self.outbox.pending_bytes,
                "dropped": self.outbox.dropped,
            }
        self.link.publish("telemetry", body)

    def _check_cameras(self) -> None:
        for camera in self.cameras:
            before = self._camera_errors.get(camera.camera_id)
            now = camera.error
            if now != before:
                self._camera_errors[camera.camera_id] = now
                if now is not None:
                    self._event("camera_lost", now, camera=camera.camera_id)
                elif before is not None:
                    self._event(
                        "camera_found",
                        f"camera {camera.camera_id} is back",
                        camera=camera.camera_id,
                    )

    def _report_loop(self) -> None:
        assert self.profile is not None
        report_every = float(self.config.report_interval_s)
        telemetry_every = float(self.profile.telemetry_interval_s)
        next_report = time.monotonic() + report_every
        next_telemetry = time.monotonic()
        while not self._stop.wait(max(0.0, min(next_report, next_telemetry) - time.monotonic())):
            now = time.monotonic()
            self._check_cameras()
            if now >= next_report:
                next_report = now + report_every
                self._report_windows()
            if now >= next_telemetry:
                next_telemetry = now + telemetry_every
                self._report_telemetry()
