"""Prometheus metrics of the fleet at ``GET /metrics`` (viewer token).

A fleet of thousands of devices must not become thousands of series, so no
series carries a device id: everything is aggregated over devices at scrape
time, from one ``SELECT`` of the device summaries (never a query per device).
Label values come from small, operator-controlled sets (state, firmware
profile, model name and version) and the ingest outcome.

=========================================  =========  ===================================
series                                     type       over
=========================================  =========  ===================================
``corral_devices{state}``                  gauge      online, offline, unknown (never
                                                      reported a status)
``corral_devices_by_profile{profile}``     gauge      every device
``corral_devices_by_version{model,         gauge      every device (``none`` when it
version}``                                            reported no model)
``corral_fleet_fps``                       gauge      sum over devices not offline
``corral_device_latency_p95_ms``           histogram  devices not offline: each one's
                                                      latest p95 is one observation
``corral_fleet_accuracy_mean``, ``_min``   gauge      devices with labelled frames
``corral_fleet_accuracy_devices``          gauge      how many devices that is
``corral_fleet_gpu_temp_max_celsius``      gauge      devices not offline
``corral_ingest_messages_total{outcome}``  counter    this replica's ingest: received,
                                                      stored, duplicates, skipped
``corral_ingest_dropped_total{reason}``    counter    this replica's drops by reason
``corral_mqtt_connected``                  gauge      1 when this replica's bridge is up
=========================================  =========  ===================================

Revoked devices are left out of every fleet series. An offline device's last
fps, latency and temperature are stale, so they are left out of those; its
accuracy is still a fact about the version it ran, so it stays in. A series
over an empty set (no device with labelled frames, no GPU) is absent rather
than a made-up number. Ingest counters are per process: with several
replicas, sum them in PromQL.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.api.deps import ContextDep, SessionDep, ViewerDep
from registry.schemas import PROBLEM_RESPONSES
from registry.tables import Device

__all__ = ["LATENCY_BUCKETS_MS", "FleetCollector", "router"]

router = APIRouter(tags=["metrics"], responses=PROBLEM_RESPONSES)

#: Upper bounds (ms) of the p95 latency histogram; +Inf is added.
LATENCY_BUCKETS_MS = (1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0)

_STATES = ("online", "offline", "unknown")
_DROPPED = "dropped_"


@dataclass(frozen=True)
class _Row:
    state: str | None
    profile: str | None
    model: str | None
    version: str | None
    fps: float | None
    latency_p95_ms: float | None
    correct: int | None
    labelled: int | None
    gpu_temp_c: float | None


def _fleet_rows(session: Session) -> list[_Row]:
    """The one query: the summary columns of every device not revoked."""
    query = select(
        Device.state,
        Device.profile,
        Device.model,
        Device.version,
        Device.fps,
        Device.latency_p95_ms,
        Device.correct,
        Device.labelled,
        Device.gpu_temp_c,
    ).where(Device.revoked_at.is_(None))
    return [_Row(*row) for row in session.execute(query)]


class FleetCollector(Collector):
    """Turns device rows and ingest counts into metric families.

    Args:
        rows: the devices, from one query.
        ingest_counts: ``Ingest.counts`` of this replica.
        mqtt_connected: whether this replica's MQTT bridge is connected.
    """

    def __init__(
        self, rows: Sequence[_Row], ingest_counts: dict[str, int], mqtt_connected: bool
    ) -> None:
        self._rows = rows
        self._counts = ingest_counts
        self._connected = mqtt_connected

    def collect(self) -> Iterable[Metric]:
        yield from self._devices()
        yield from self._performance()
        yield from self._accuracy()
        yield from self._ingest()
        connected = GaugeMetricFamily(
            "corral_mqtt_connected", "1 when this registry's MQTT bridge is connected"
        )
        connected.add_metric([], 1.0 if self._connected else 0.0)
        yield connected

    def _devices(self) -> Iterator[Metric]:
        states = Counter(r.state if r.state in _STATES else "unknown" for r in self._rows)
        by_state = GaugeMetricFamily(
            "corral_devices", "Enrolled devices, not revoked, by reported state", labels=["state"]
        )
        for state in _STATES:  # all three always, so a dashboard never shows "no data"
            by_state.add_metric([state], states[state])
        yield by_state
        by_profile = GaugeMetricFamily(
            "corral_devices_by_profile", "Devices by firmware profile", labels=["profile"]
        )
        for profile, n in sorted(Counter(r.profile or "unknown" for r in self._rows).items()):
            by_profile.add_metric([profile], n)
        yield by_profile
        by_version = GaugeMetricFamily(
            "corral_devices_by_version",
            "Devices by the model version they report running",
            labels=["model", "version"],
        )
        versions = Counter((r.model or "none", r.version or "none") for r in self._rows)
        for (model, version), n in sorted(versions.items()):
            by_version.add_metric([model, version], n)
        yield by_version

    def _performance(self) -> Iterator[Metric]:
        live = [r for r in self._rows if r.state != "offline"]
        fps = GaugeMetricFamily(
            "corral_fleet_fps", "Frames per second summed over devices not offline"
        )
        fps.add_metric([], sum(r.fps for r in live if r.fps is not None))
        yield fps
        latencies = [r.latency_p95_ms for r in live if r.latency_p95_ms is not None]
        buckets: list[tuple[str, float]] = []
        for bound in LATENCY_BUCKETS_MS:
            buckets.append((_bound(bound), sum(1 for x in latencies if x <= bound)))
        buckets.append(("+Inf", len(latencies)))
        histogram = HistogramMetricFamily(
            "corral_device_latency_p95_ms",
            "Devices (not offline) by their latest p95 inference latency in ms",
        )
        histogram.add_metric([], buckets, sum_value=sum(latencies))
        yield histogram
        temps = [r.gpu_temp_c for r in live if r.gpu_temp_c is not None]
        if temps:
            hottest = GaugeMetricFamily(
                "corral_fleet_gpu_temp_max_celsius",
                "Hottest GPU over devices not offline, in degrees Celsius",
            )
            hottest.add_metric([], max(temps))
            yield hottest

    def _accuracy(self) -> Iterator[Metric]:
        accuracies = [
            r.correct / r.labelled for r in self._rows if r.labelled and r.correct is not None
        ]
        devices = GaugeMetricFamily(
            "corral_fleet_accuracy_devices",
            "Devices with labelled frames since their current model version",
        )
        devices.add_metric([], len(accuracies))
        yield devices
        if not accuracies:
            return
        mean = GaugeMetricFamily(
            "corral_fleet_accuracy_mean",
            "Mean over devices with labelled frames of each one's accuracy since its version",
        )
        mean.add_metric([], sum(accuracies) / len(accuracies))
        yield mean
        lowest = GaugeMetricFamily(
            "corral_fleet_accuracy_min", "Lowest accuracy of a device with labelled frames"
        )
        lowest.add_metric([], min(accuracies))
        yield lowest

    def _ingest(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "corral_ingest_messages",
            "MQTT messages this registry received, and what became of them",
            labels=["outcome"],
        )
        for outcome in ("received", "stored", "duplicates", "skipped"):
            messages.add_metric([outcome], self._counts.get(outcome, 0))
        yield messages
        dropped = CounterMetricFamily(
            "corral_ingest_dropped",
            "MQTT messages this registry dropped, by reason",
            labels=["reason"],
        )
        for key, n in sorted(self._counts.items()):
            if key.startswith(_DROPPED):
                dropped.add_metric([key.removeprefix(_DROPPED)], n)
        yield dropped


def _bound(value: float) -> str:
    # Prometheus writes integral bounds as 5.0, as prometheus_client's own Histogram does.
    return repr(float(value))


@router.get("/metrics", response_class=Response)
def metrics(context: ContextDep, session: SessionDep, _caller: ViewerDep) -> Response:
    """The fleet in Prometheus text format.

    Raises:
        AuthError: no viewer token (403).
    """
    collector = FleetCollector(
        _fleet_rows(session), context.ingest.counts, context.bridge.connected.is_set()
    )
    # A registry per scrape: the collector holds this scrape's rows, and apps in one
    # process (tests, replicas) must not share prometheus_client's global registry.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return Response(content=generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
