"""A fleet of simulated agents that speak the real protocol, in one process.

For tests and for measuring rollouts at scale (``corral fleet simulate``).
A simulated agent is the real agent minus its camera and its model:

- enrolment is :func:`agent.enrol.enrol` (a real one-time token, a real
  pinned TUF root, a real ``agent.json`` in its own data folder);
- installs are :class:`agent.updater.Updater`: real TUF refresh, download and
  verification, a real slot commit; only the runtime loader is swapped for
  one that returns a :class:`SimulatedModel` (no ONNX Runtime, and a smoke
  test that costs nothing, or crashes when the cohort says so);
- everything it says goes through :class:`agent.outbox.Outbox` and
  :class:`agent.mqtt.AgentLink`: one seq counter per device, a retained
  ``online`` status with an ``offline`` last will, the retained ``desired``
  hint that triggers an install, QoS 1 with PUBACK bookkeeping;
- failed installs back off with the service's :class:`InstallBackoff` and
  are reported as the service reports them (``install_failed``).

Instead of frames through a model, each agent publishes ``inference`` and
``accuracy`` windows synthesised from its :class:`Cohort` (frame rate,
latency, accuracy), with the payload fields the real pipeline sends. It does
not poll the desired version over HTTP, send telemetry, or roll back on a
health budget: the hint, installs and reports are what a rollout measures.

Threads: per agent, paho's network thread and the link's sender thread; per
fleet, one reporter thread for every agent's windows and a pool of
``install_concurrency`` workers that run installs (and enrolments), so a
rollout to a thousand agents downloads a bounded number at once::

    paho (per agent) --desired--> Fleet pool (N workers) --Updater.install--> slots
    reporter (one)   --windows--> Outbox (per agent) --AgentLink sender--> broker
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt

import corral
from agent.config import AgentConfig, default_profiles_dir
from agent.enrol import enrol
from agent.errors import AgentError, SmokeTestError, UpdateError
from agent.mqtt import AgentLink
from agent.outbox import Outbox
from agent.pipeline import HIST_BINS
from agent.pollselect import lift_select_limit
from agent.service import InstallBackoff
from agent.shadow import ShadowReconciler, shadow_of
from agent.slots import Slots
from agent.updater import Updater
from corral.bundle import Bundle
from corral.client import RegistryClient
from corral.errors import ContractError
from corral.payloads import installed_event
from corral.profiles import FirmwareProfile, HardwareFacts, load_profiles
from corral.topics import topic
from corral.version import Version

__all__ = [
    "Cohort",
    "Fleet",
    "FleetSummary",
    "SimulatedAgent",
    "SimulatedModel",
    "parse_cohort",
]

logger = logging.getLogger(__name__)

SIM_PROFILE = "x86-cpu"
_FACTS = HardwareFacts(arch="x86_64")


class CohortError(AgentError):
    """A cohort specification that cannot be parsed or does not add up."""


@dataclass(frozen=True)
class Cohort:
    """How a group of simulated agents behaves.

    Args:
        name: a short name (lowercase letters, digits, ``-``); it goes into device ids.
        fraction: the share of the fleet in this cohort (normalised over all cohorts).
        fps: frames per second each agent reports.
        latency_ms: the median inference latency (lognormal, about ±25 %).
        accuracy: the accuracy on labelled frames; ``None`` uses the bundle's own
            test accuracy (``metrics.accuracy``), else 0.9.
        accuracy_delta: added to the accuracy (a cohort whose cameras see worse).
        accuracy_by_version: per-version accuracy, over both of the above.
        latency_by_version: per-version median latency, over ``latency_ms``.
        crash: the probability that installing a version crashes the new model
            (a ``smoke_test`` failure: the old model keeps running).
        crash_from: crash only on versions at or above this one (``None``: every version).
    """

    name: str = "default"
    fraction: float = 1.0
    fps: float = 15.0
    latency_ms: float = 5.0
    accuracy: float | None = None
    accuracy_delta: float = 0.0
    accuracy_by_version: Mapping[str, float] = field(default_factory=dict)
    latency_by_version: Mapping[str, float] = field(default_factory=dict)
    crash: float = 0.0
    crash_from: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not all(c.isdigit() or c == "-" or "a" <= c <= "z" for c in self.name):
            raise CohortError(
                f"cohort name should be lowercase letters, digits, '-': {self.name!r}"
            )
        if not self.fraction > 0:
            raise CohortError(f"cohort {self.name}: fraction must be positive, got {self.fraction}")
        if self.fps < 0 or self.latency_ms <= 0:
            raise CohortError(f"cohort {self.name}: fps >= 0 and latency_ms > 0 expected")
        if not 0.0 <= self.crash <= 1.0:
            raise CohortError(f"cohort {self.name}: crash is a probability, got {self.crash}")
        if self.crash_from is not None:
            try:
                Version.parse(self.crash_from)
            except ContractError as e:
                raise CohortError(f"cohort {self.name}: crash_from: {e}") from e

    def accuracy_for(self, bundle: Bundle) -> float:
        """The accuracy an agent of this cohort reports for ``bundle``."""
        if bundle.version in self.accuracy_by_version:
            base = self.accuracy_by_version[bundle.version]
        elif self.accuracy is not None:
            base = self.accuracy
        else:
            measured = bundle.metrics.get("accuracy")
            base = float(measured) if isinstance(measured, int | float) else 0.9
        return min(1.0, max(0.0, base + self.accuracy_delta))

    def latency_for(self, bundle: Bundle) -> float:
        """The median latency in ms an agent of this cohort reports for ``bundle``."""
        return float(self.latency_by_version.get(bundle.version, self.latency_ms))

    def crashes_on(self, version: str, rng: random.Random) -> bool:
        """Whether this install of ``version`` crashes (a draw, for ``crash`` < 1)."""
        if self.crash <= 0.0:
            return False
        if self.crash_from is not None and Version.parse(version) < Version.parse(self.crash_from):
            return False
        return rng.random() < self.crash


_COHORT_KEYS: dict[str, Callable[[str], Any]] = {
    "fps": float,
    "latency_ms": float,
    "accuracy": float,
    "delta": float,
    "crash": float,
    "crash_from": str,
}


def parse_cohort(text: str) -> Cohort:
    """Parse ``name=fraction[:key=value,...]``.

    Keys: ``fps``, ``latency_ms``, ``accuracy``, ``delta`` (added to the
    accuracy), ``crash`` (probability), ``crash_from`` (a version), and
    ``accuracy@VERSION`` and ``latency_ms@VERSION`` for one version. Example:
    ``slow=0.2:latency_ms=40,fps=5,accuracy@1.1.0=0.8,latency_ms@1.1.0=80,crash=0.1``.

    Raises:
        CohortError: the text does not follow that form.
    """
    head, _, rest = text.partition(":")
    name, sep, fraction_text = head.partition("=")
    if not sep:
        raise CohortError(f"cohort {text!r} should start with name=fraction")
    try:
        fraction = float(fraction_text)
    except ValueError:
        raise CohortError(f"cohort {name!r}: fraction {fraction_text!r} is not a number") from None
    fields: dict[str, Any] = {}
    by_version: dict[str, float] = {}
    latency_by_version: dict[str, float] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        key = key.strip()
        try:
            if key.startswith("accuracy@"):
                by_version[key.removeprefix("accuracy@")] = float(value)
            elif key.startswith("latency_ms@"):
                latency_by_version[key.removeprefix("latency_ms@")] = float(value)
            elif sep and key in _COHORT_KEYS:
                fields[key] = _COHORT_KEYS[key](value.strip())
            else:
                raise CohortError(
                    f"cohort {name!r}: unknown setting {item!r}; known: "
                    f"{sorted(_COHORT_KEYS)}, accuracy@VERSION and latency_ms@VERSION"
                )
        except ValueError:
            raise CohortError(f"cohort {name!r}: {key} {value!r} is not a number") from None
    if "delta" in fields:
        fields["accuracy_delta"] = fields.pop("delta")
    return Cohort(
        name=name,
        fraction=fraction,
        accuracy_by_version=by_version,
        latency_by_version=latency_by_version,
        **fields,
    )


def split_fleet(n: int, cohorts: Sequence[Cohort]) -> list[Cohort]:
    """Assign ``n`` agents to cohorts by fraction (largest remainders), in cohort order."""
    total = sum(c.fraction for c in cohorts)
    exact = [n * c.fraction / total for c in cohorts]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(cohorts)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return [c for c, k in zip(cohorts, counts, strict=True) for _ in range(k)]


class SimulatedModel:
    """Stands in for a ``ModelRuntime``: knows its bundle, runs nothing.

    Args:
        bundle: the installed bundle.
        crash: make :meth:`smoke_test` fail, as a model that crashes at load would.
        variant: the bundle variant it stands for.
    """

    def __init__(self, bundle: Bundle, crash: bool = False, variant: str = "fp32") -> None:
        self._bundle = bundle
        self.crash = crash
        self.variant = variant

    @property
    def bundle(self) -> Bundle:
        """The bundle this model came from."""
        return self._bundle

    def smoke_test(self) -> float:
        """Nothing to run: 0.0, or the simulated crash.

        Raises:
            SmokeTestError: the cohort made this install crash.
        """
        if self.crash:
            raise SmokeTestError(
                f"{self._bundle.name} {self._bundle.version}: the simulated model crashed "
                "on its golden samples (cohort crash); the current model keeps running"
            )
        return 0.0


class SimulatedAgent:
    """One enrolled device: real updater, outbox and MQTT link; a simulated camera and model.

    Args:
        config: the device's enrolment (``agent.json``).
        profile: its firmware profile.
        cohort: how it behaves.
        schedule: hands an install over to the fleet's worker pool; ``None``
            installs on the caller's thread (tests).
        seed: seeds its random draws.
    """

    def __init__(
        self,
        config: AgentConfig,
        profile: FirmwareProfile,
        cohort: Cohort,
        schedule: Callable[[Callable[[], None]], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.config = config
        self.profile = profile
        self.cohort = cohort
        self._schedule = schedule or (lambda job: job())
        self._rng = random.Random(seed)
        self._np = np.random.default_rng(seed)
        # A simulated agent needs crash safety, not power-cut safety (see Outbox).
        self.outbox = Outbox(config.data_dir, config.device_id, durable=False)
        # A simulated device has no GPU of its own: the host's must not pick its variant.
        self.updater = Updater(
            config, profile, runtime_loader=self._load, tensorrt_device=lambda: None
        )
        self.backoff = InstallBackoff()
        self.link = AgentLink(
            config.device_id,
            config.mqtt_host,
            config.mqtt_port,
            self.outbox,
            on_desired=self._on_desired,
            status_body=self.status_body,
            username=config.device_id,
            password=config.device_token,
            tls=config.broker_tls,
        )
        self.shadow_model: SimulatedModel | None = None
        self.shadows = ShadowReconciler(
            Slots(config.data_dir / "shadow"), self.updater, self._event
        )
        self.model: SimulatedModel | None = None
        current = self.updater.current()
        if current is not None:
            self.model = SimulatedModel(current.bundle)
        self.installs = 0
        self.failures = 0
        self._desired: tuple[str, str] | None = None
        self._desired_seq = -1
        self._variant: str | None = None
        self._pending = False
        self._lock = threading.Lock()
        self._window_started = time.monotonic()
        self._stopped = False
        self.last_seq: int | None = None  # the last seq used, once stopped

    @property
    def device_id(self) -> str:
        """The enrolled device id."""
        return self.config.device_id

    @property
    def installed(self) -> tuple[str, str] | None:
        """(model, version) the simulated model runs, or ``None``."""
        model = self.model
        return None if model is None else (model.bundle.name, model.bundle.version)

    def status_body(self) -> dict[str, Any]:
        """The status fields besides ``state``, as the real agent sends them."""
        installed, shadow = self.installed, self.shadow
        return {
            "model": installed[0] if installed else None,
            "version": installed[1] if installed else None,
            "profile": self.profile.name,
            "variant": None if self.model is None else self.model.variant,
            "agent_version": corral.__version__,
            "cameras": ["sim0"],
            "simulated": self.cohort.name,
            "shadow": None if shadow is None else {"model": shadow[0], "version": shadow[1]},
        }

    @property
    def shadow(self) -> tuple[str, str] | None:
        """(model, version) of the candidate run in shadow, or None."""
        model = self.shadow_model
        return None if model is None else (model.bundle.name, model.bundle.version)

    def set_shadow(self, runtime: SimulatedModel | None) -> None:
        """Compare ``runtime`` with the current model in every window from now on (or stop)."""
        self.shadow_model = runtime

    def start(self) -> None:
        """Connect in the background; the retained desired hint arrives on subscribe."""
        self._window_started = time.monotonic()
        self.link.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Last window out, ``offline`` acknowledged (bounded), everything closed."""
        with self._lock:
            self._stopped = True
        self.report()
        self.link.stop(timeout=timeout)
        self.last_seq = self.outbox.next_seq() - 1
        self.outbox.close()
        self.updater.close()

    # --- installs ------------------------------------------------------------------

    def _load(
        self, bundle: Bundle, path: Path, variant: str, profile: FirmwareProfile
    ) -> SimulatedModel:
        # The Updater's runtime seam: no ONNX Runtime, just the cohort's draw.
        crash = self.cohort.crashes_on(bundle.version, self._rng)
        return SimulatedModel(bundle, crash=crash, variant=variant)

    def _on_desired(self, body: Mapping[str, Any]) -> None:
        # paho's thread: remember, and hand the install to the pool.
        model, version, seq = body.get("model"), body.get("version"), body.get("seq")
        with self._lock:
            fresh = isinstance(seq, int) and seq > self._desired_seq
            if fresh:
                # A new hint from the registry retries a failed version at once.
                assert isinstance(seq, int)
                self._desired_seq = seq
                if isinstance(model, str) and isinstance(version, str):
                    self.backoff.clear((model, version))
            self.shadows.want(shadow_of(body), fresh)
            variant = body.get("variant")
            self._variant = variant if isinstance(variant, str) else None
            if isinstance(model, str) and isinstance(version, str):
                self._desired = (model, version)
            if self._pending or self._stopped:
                return
            self._pending = True
        self._schedule(self.reconcile)

    def due(self, now: float) -> bool:
        """Whether a failed install may be retried now (the fleet's reporter asks)."""
        with self._lock:
            desired, pending = self._desired, self._pending
        shadow = self.shadows.desired
        return not pending and (
            (
                desired is not None
                and desired != self.installed
                and self.backoff.failures(desired) > 0
                and self.backoff.allowed(desired, now)
            )
            or (
                shadow is not None
                and shadow != self.shadow
                and self.shadows.backoff.failures(shadow) > 0
                and self.shadows.backoff.allowed(shadow, now)
            )
        )

    def retry(self) -> None:
        """Schedule a reconcile (a failed version's backoff ran out)."""
        with self._lock:
            if self._pending or self._stopped:
                return
            self._pending = True
        self._schedule(self.reconcile)

    def reconcile(self) -> None:
        """Install the desired version if it differs from the installed one, then the shadow.

        Runs on a pool worker; reports ``installed`` or ``install_failed`` and a new status.
        """
        try:
            with self._lock:
                stopped = self._stopped
            if stopped:
                return
            self._reconcile_model()
            shadow = self.shadow
            self.shadows.reconcile(self, self.installed)
            if self.shadow != shadow:
                self.link.publish_status()
        finally:
            with self._lock:
                self._pending = False

    def _reconcile_model(self) -> None:
        with self._lock:
            desired = self._desired
        if desired is None or desired == self.installed:
            return
        if not self.backoff.allowed(desired, time.monotonic()):
            return
        try:
            result = self.updater.install(*desired, variant=self._variant)
        except UpdateError as e:
            self.failures += 1
            self._event("install_failed", str(e), **self.backoff.record(desired, e))
            return
        assert isinstance(result.runtime, SimulatedModel)
        self.report()  # the old version's last window
        self.model = result.runtime
        self.installs += 1
        self.link.publish(
            "events",
            installed_event(
                result.model,
                result.version,
                seconds=result.seconds,
                smoke_diff=result.smoke_max_diff,
                swap_ms=0.0,  # nothing to swap: no pipeline
                variant=result.variant,
            ),
        )
        self.link.publish_status()

    def _event(self, event: str, message: str, **fields: Any) -> None:
        self.link.publish("events", {"event": event, "message": message, **fields})

    # --- reports -------------------------------------------------------------------

    def report(self) -> None:
        """Publish the ``inference`` and ``accuracy`` windows since the last report."""
        now = time.monotonic()
        window_s = max(now - self._window_started, 1e-3)
        self._window_started = now
        model = self.model
        if model is None:
            return  # no model: nothing is inferred, nothing reported (as the real agent)
        inference, accuracy = self.window(model.bundle, window_s)
        self.link.publish("inference", inference)
        self.link.publish("accuracy", accuracy)

    def window(self, bundle: Bundle, window_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """Synthesise one window's ``inference`` and ``accuracy`` bodies from the cohort."""
        cohort, rng = self.cohort, self._np
        labels = list(bundle.output.labels)
        frames = int(rng.poisson(cohort.fps * window_s)) if cohort.fps > 0 else 0
        batch = max(1, self.profile.batch_size)
        if frames:
            median = cohort.latency_for(bundle)
            draws = np.exp(rng.normal(math.log(median), 0.25, size=min(frames, 256)))
            p50, p95, p99 = np.percentile(draws, (50, 95, 99))
            latency: dict[str, float | None] = {
                "p50": round(float(p50), 3),
                "p95": round(float(p95), 3),
                "p99": round(float(p99), 3),
                "mean": round(float(draws.mean()), 3),
                "max": round(float(draws.max()), 3),
            }
        else:
            latency = {"p50": None, "p95": None, "p99": None, "mean": None, "max": None}
        support = rng.multinomial(frames, [1 / len(labels)] * len(labels))
        acc = cohort.accuracy_for(bundle)
        correct_per = rng.binomial(support, acc)
        wrong = support - correct_per
        # A wrong answer goes to the next label (two classes: the other one).
        predicted = correct_per + np.roll(wrong, 1)
        hist = np.zeros(HIST_BINS, dtype=np.int64)
        hist[-2:] = [frames - int(frames * acc), int(frames * acc)]
        batches = math.ceil(frames / batch)
        inference = {
            "window_s": round(window_s, 3),
            "frames": frames,
            "fps": round(frames / window_s, 3),
            "latency_ms": latency,
            "drops": 0,
            "queue_depth": 0,
            "batches": batches,
            "mean_batch": round(frames / batches, 3) if batches else 0.0,
            "errors": 0,
            "class_counts": {
                label: int(n) for label, n in zip(labels, predicted, strict=True) if n
            },
            "confidence_hist": {"bins": HIST_BINS, "counts": [int(n) for n in hist]},
            "model": bundle.name,
            "version": bundle.version,
        }
        per_class: dict[str, dict[str, float | int]] = {}
        for label, s, p, tp in zip(labels, support, predicted, correct_per, strict=True):
            if not s and not p:
                continue
            precision = tp / p if p else 0.0
            recall = tp / s if s else 0.0
            f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
            per_class[label] = {
                "precision": round(float(precision), 6),
                "recall": round(float(recall), 6),
                "f1": round(float(f1), 6),
                "support": int(s),
                "predicted": int(p),
                "true_positives": int(tp),
            }
        shadow = self.shadow_model
        if shadow is not None:
            inference["shadow"] = self._shadow_block(
                bundle, shadow.bundle, support, correct_per, batches
            )
        correct = int(correct_per.sum())
        accuracy = {
            "window_s": round(window_s, 3),
            "labelled": frames,
            "correct": correct,
            "accuracy": round(correct / frames, 6) if frames else None,
            "per_class": per_class,
            "unknown_labels": 0,
            "model": bundle.name,
            "version": bundle.version,
        }
        return inference, accuracy

    def _shadow_block(
        self,
        current: Bundle,
        candidate: Bundle,
        support: np.ndarray,
        current_correct: np.ndarray,
        batches: int,
    ) -> dict[str, Any]:
        """The ``shadow`` block the real pipeline sends (``agent.shadow``), drawn from the cohort.

        The two models' errors are correlated as real ones are (halfway between
        independent and as aligned as their accuracies allow): both right with
        probability ``(pa * ps + min(pa, ps)) / 2``. Wrong answers go to the next
        label for both, so two wrong answers agree.
        """
        rng, cohort = self._np, self.cohort
        pa, ps = cohort.accuracy_for(current), cohort.accuracy_for(candidate)
        both = (pa * ps + min(pa, ps)) / 2
        right_given_right = both / pa if pa > 0 else 0.0
        right_given_wrong = (ps - both) / (1 - pa) if pa < 1 else 0.0
        cc = rng.binomial(current_correct, min(1.0, right_given_right))
        wc = rng.binomial(support - current_correct, min(1.0, max(0.0, right_given_wrong)))
        shadow_correct = cc + wc
        predicted = shadow_correct + np.roll(support - shadow_correct, 1)
        frames = int(support.sum())
        only_current = int((current_correct - cc).sum())
        only_shadow = int(wc.sum())

        def run_ms(bundle: Bundle) -> dict[str, float | None]:
            if not batches:
                return {"mean": None, "p95": None, "total": 0.0}
            draws = np.exp(rng.normal(math.log(cohort.latency_for(bundle)), 0.25, size=batches))
            return {
                "mean": round(float(draws.mean()), 4),
                "p95": round(float(np.percentile(draws, 95)), 4),
                "total": round(float(draws.sum()), 4),
            }

        labels = list(candidate.output.labels)
        return {
            "model": candidate.name,
            "version": candidate.version,
            "frames": frames,
            "skipped": 0,
            "errors": 0,
            "agree": frames - only_current - only_shadow,
            "agreement": round(1 - (only_current + only_shadow) / frames, 6) if frames else None,
            "batches": batches,
            "run_ms": run_ms(candidate),
            "current_run_ms": run_ms(current),
            "class_counts": {
                label: int(n) for label, n in zip(labels, predicted, strict=True) if n
            },
            "labelled": frames,
            "correct": int(shadow_correct.sum()),
            "current_correct": int(current_correct.sum()),
            "only_shadow_correct": only_shadow,
            "only_current_correct": only_current,
        }


@dataclass(frozen=True)
class FleetSummary:
    """What the fleet looks like now, per cohort and version."""

    agents: int
    connected: int
    versions: dict[str, dict[str, int]]  # cohort -> version (or "-") -> agents
    installs: int
    failures: int
    published: int
    acked: int
    pending: int


def sim_profile() -> FirmwareProfile:
    """The firmware profile simulated agents enrol with (``x86-cpu``)."""
    return load_profiles(default_profiles_dir())[SIM_PROFILE]


class Fleet:
    """N simulated agents in this process, enrolled with one registry.

    Args:
        registry_url: the registry's base URL.
        admin_token: a token allowed to create enrolment tokens (admin).
        data_dir: each agent gets ``data_dir/<device_id>``.
        n: how many agents.
        cohorts: their behaviours; agents are split by fraction. Default: one cohort.
        install_concurrency: the most installs (and enrolments) running at once.
        report_interval_s: how often each agent reports a window.
        prefix: device ids are ``{prefix}-{cohort}-{index:04d}``; default ``sim-<random>``.
        seed: seeds the agents' draws.
    """

    def __init__(
        self,
        registry_url: str,
        admin_token: str,
        data_dir: Path,
        n: int,
        cohorts: Sequence[Cohort] = (),
        *,
        install_concurrency: int = 8,
        report_interval_s: float = 5.0,
        prefix: str | None = None,
        seed: int = 0,
    ) -> None:
        if n < 1:
            raise CohortError(f"a fleet needs at least one agent, got {n}")
        lift_select_limit()  # hundreds of agents in one process pass 1,024 descriptors
        self.registry_url = registry_url
        self.admin_token = admin_token
        self.data_dir = Path(data_dir)
        self.cohorts = list(cohorts) or [Cohort()]
        self.n = n
        self.install_concurrency = max(1, install_concurrency)
        self.report_interval_s = report_interval_s
        self.prefix = prefix or f"sim-{uuid.uuid4().hex[:6]}"
        self.seed = seed
        self.profile = sim_profile()
        self.agents: list[SimulatedAgent] = []
        self._pool = ThreadPoolExecutor(self.install_concurrency, thread_name_prefix="sim-install")
        self._stop = threading.Event()
        self._reporter: threading.Thread | None = None

    @property
    def device_ids(self) -> list[str]:
        """The ids of the agents enrolled so far."""
        return [a.device_id for a in self.agents]

    def cohort_of(self, name: str) -> list[SimulatedAgent]:
        """The agents of cohort ``name``."""
        return [a for a in self.agents if a.cohort.name == name]

    def _schedule(self, job: Callable[[], None]) -> None:
        if not self._stop.is_set():
            future = self._pool.submit(job)
            future.add_done_callback(_log_failure)

    def _enrol_one(self, index: int, cohort: Cohort, client: RegistryClient) -> SimulatedAgent:
        device_id = f"{self.prefix}-{cohort.name}-{index:04d}"
        data_dir = self.data_dir / device_id
        token = str(client.create_enrolment_token(600)["token"])
        config = enrol(
            self.registry_url, token, device_id, data_dir, _FACTS, self.profile, pin_profile=True
        )
        config.report_interval_s = self.report_interval_s
        return SimulatedAgent(
            config, self.profile, cohort, schedule=self._schedule, seed=self.seed * 100_003 + index
        )

    def enrol(self, progress: Callable[[int], None] | None = None) -> None:
        """Enrol every agent (``install_concurrency`` at a time), each with its own token.

        Raises:
            EnrolmentError, ApiError: the registry refused one; those enrolled stay.
        """
        plan = split_fleet(self.n, self.cohorts)
        with RegistryClient(self.registry_url, self.admin_token) as client:
            futures: list[Future[SimulatedAgent]] = [
                self._pool.submit(self._enrol_one, i, cohort, client)
                for i, cohort in enumerate(plan)
            ]
            for future in futures:
                self.agents.append(future.result())
                if progress is not None:
                    progress(len(self.agents))

    def start(self) -> None:
        """Connect every agent and start the reporter."""
        self._stop.clear()
        for agent in self.agents:
            agent.start()
        self._reporter = threading.Thread(
            target=self._report_loop, name="sim-reporter", daemon=True
        )
        self._reporter.start()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until every agent's link is up; whether they all are."""
        deadline = time.monotonic() + timeout
        return all(
            a.link.wait_connected(max(0.0, deadline - time.monotonic())) for a in self.agents
        )

    def stop(self, timeout: float = 5.0, forget: bool = False) -> None:
        """Stop the reporter and the installs, then every agent (offline acknowledged, bounded).

        Args:
            timeout: per agent, how long to wait for its offline status to be acknowledged.
            forget: also clear the agents' retained ``status`` and ``desired`` on the
                broker, so a throwaway fleet (a test, a benchmark) leaves nothing that
                every later subscriber would be sent.
        """
        self._stop.set()
        if self._reporter is not None:
            self._reporter.join(timeout)
        self._pool.shutdown(wait=True, cancel_futures=True)
        with ThreadPoolExecutor(32, thread_name_prefix="sim-stop") as stopper:
            list(stopper.map(lambda a: a.stop(timeout), self.agents))
        if forget and self.agents:
            self._forget(timeout)

    def _forget(self, timeout: float) -> None:
        link = self.agents[0].link
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="")
        if link.tls is not None:
            client.tls_set_context(link.tls.context())
        try:
            client.connect(link.host, link.port)
        except OSError as e:
            logger.warning("could not clear the fleet's retained messages: %s", e)
            return
        client.loop_start()
        try:
            infos = [
                client.publish(topic(a.device_id, kind), b"", qos=1, retain=True)
                for a in self.agents
                for kind in ("status", "desired")
            ]
            for info in infos:
                info.wait_for_publish(timeout)
        finally:
            client.disconnect()
            client.loop_stop()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _report_loop(self) -> None:
        # Spread the agents over the interval, so reports do not arrive in bursts.
        agents = list(self.agents)
        step = self.report_interval_s / max(1, len(agents))
        while not self._stop.is_set():
            for agent in agents:
                if self._stop.wait(step):
                    return
                agent.report()
                if agent.due(time.monotonic()):
                    agent.retry()

    def summary(self) -> FleetSummary:
        """Counts per cohort and version, and the links' totals."""
        versions: dict[str, dict[str, int]] = {}
        for agent in self.agents:
            installed = agent.installed
            key = installed[1] if installed else "-"
            per = versions.setdefault(agent.cohort.name, {})
            per[key] = per.get(key, 0) + 1
        return FleetSummary(
            agents=len(self.agents),
            connected=sum(a.link.connected for a in self.agents),
            versions=versions,
            installs=sum(a.installs for a in self.agents),
            failures=sum(a.failures for a in self.agents),
            published=sum(a.link.stats.published for a in self.agents),
            acked=sum(a.link.stats.acked for a in self.agents),
            pending=sum(a.outbox.count_pending() for a in self.agents),
        )


def _log_failure(future: Future[None]) -> None:
    if not future.cancelled() and (error := future.exception()) is not None:
        logger.error("a simulated install crashed the worker: %r", error, exc_info=error)


def cohorts_from(specs: Iterable[str]) -> list[Cohort]:
    """Parse ``--cohort`` options (see :func:`parse_cohort`).

    Raises:
        CohortError: one does not parse, or two share a name.
    """
    cohorts = [parse_cohort(s) for s in specs]
    names = [c.name for c in cohorts]
    if len(set(names)) != len(names):
        raise CohortError(f"cohort names must differ, got {names}")
    return cohorts
