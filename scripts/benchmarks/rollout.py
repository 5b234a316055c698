"""Rollout benchmarks: simulated agents (agent.simulate) against a real registry and Mosquitto.

A registry process on SQLite, the broker on 127.0.0.1:1883, a tiny bundle in
two versions. A fleet of 50 simulated agents gets v1 (the baseline), then a
fleet of N (``CORRAL_BENCH_SIM_N``, default 500) gets v1: rollout start to
every device reporting it. Reported per agent, as a ratio to the baseline.
During the large rollout and the steady reporting after it, the registry's
CPU (psutil on its process); over 25 s of steady reporting, the messages it
stored per second (its ingest counter on ``/metrics``) against those the
simulated agents published in the same seconds.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
from benchmarks.common import Figure

BASELINE_N = 50


def _registry_process() -> psutil.Process:
    for child in psutil.Process().children(recursive=True):
        if "serve" in child.cmdline() and "registry" in child.cmdline():
            return child
    raise RuntimeError("the registry process is not a child of this one")


def _stored(registry_url: str, token: str) -> int:
    """Messages the registry's ingest stored so far (its Prometheus counter: one cheap GET)."""
    headers = {"Authorization": f"Bearer {token}"}
    text = httpx.get(f"{registry_url}/metrics", headers=headers, timeout=30).text
    for line in text.splitlines():
        if line.startswith('corral_ingest_messages_total{outcome="stored"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    raise RuntimeError("the registry's /metrics has no stored-messages counter")


def _rollout(local: object, n: int, version: str, root: Path) -> tuple[float, object, list[str]]:
    from agent.simulate import Fleet

    fleet = Fleet(
        local.registry_url,  # type: ignore[attr-defined]
        local.admin_token,  # type: ignore[attr-defined]
        root,
        n,
        install_concurrency=8,
        report_interval_s=2.0,
    )
    fleet.enrol()
    fleet.start()
    if not fleet.wait_connected(120):
        raise RuntimeError(f"not all {n} simulated agents connected to the broker in 120 s")
    ids = fleet.device_ids
    start = time.perf_counter()
    with local.client() as client:  # type: ignore[attr-defined]
        client.start_rollout("tiny", version, ids)
    local.wait_converged(version, ids, timeout=600)  # type: ignore[attr-defined]
    return time.perf_counter() - start, fleet, ids


def bench_rollout(workdir: Path) -> list[Figure]:
    """rollout.sim500_*: convergence time, registry CPU and ingest rate with N simulated agents."""
    from corral.local import LocalFleet
    from tests.agent.test_simulate import tiny_bundle

    n = int(os.environ.get("CORRAL_BENCH_SIM_N", "500"))
    with LocalFleet(workdir, python=sys.executable) as local:
        local.start_broker("127.0.0.1:1883")
        local.start_registry()
        with local.client() as client:
            client.push_model(tiny_bundle(workdir / "b1", "1.0.0"))
        registry = _registry_process()
        base_s, base_fleet, _ = _rollout(local, BASELINE_N, "1.0.0", workdir / "base")
        base_fleet.stop(forget=True)  # type: ignore[attr-defined]
        registry.cpu_percent(None)
        big_s, fleet, ids = _rollout(local, n, "1.0.0", workdir / "big")
        cpu_rollout = registry.cpu_percent(None)
        # Steady state: every agent reporting a window pair every 2 s. Offered is what
        # the simulated agents published in the same 20 s, not what they were asked to.
        url = local.registry_url  # type: ignore[attr-defined]
        published = fleet.summary  # type: ignore[attr-defined]
        token = local.admin_token  # type: ignore[attr-defined]
        before, sent0, t0 = _stored(url, token), published().published, time.perf_counter()
        time.sleep(25)
        after, sent1, t1 = _stored(url, token), published().published, time.perf_counter()
        cpu_steady = registry.cpu_percent(None)
        summary = fleet.summary()  # type: ignore[attr-defined]
        fleet.stop(forget=True)  # type: ignore[attr-defined]
    per_agent, base_per_agent = big_s / n, base_s / BASELINE_N
    rate, offered = (after - before) / (t1 - t0), (sent1 - sent0) / (t1 - t0)
    return [
        Figure(
            name=f"rollout.sim{n}_converge_s",
            value=round(big_s, 2),
            unit="s",
            baseline=f"{BASELINE_N} agents, same registry and run: {base_s:.2f} s; ratio is "
            f"per-agent time {per_agent * 1000:.1f} ms / {base_per_agent * 1000:.1f} ms",
            ratio=round(per_agent / base_per_agent, 3),
            goal="<= 1.5",
        ),
        Figure(
            name=f"rollout.sim{n}_registry_cpu_percent",
            value=round(cpu_rollout, 1),
            unit="% of one core",
            baseline=f"steady reporting afterwards: {cpu_steady:.1f} %",
            ratio=None,
            goal=None,
        ),
        Figure(
            name=f"rollout.sim{n}_mqtt_msgs_per_s",
            value=round(rate, 1),
            unit="msg/s",
            baseline=f"offered: what the {n} agents published in the same window, "
            f"{offered:.0f} msg/s (asked for {n} x 2 windows / 2 s = {n} msg/s; published "
            f"{summary.published}, acked {summary.acked} in all)",
            ratio=round(rate / offered, 3),
            goal=">= 0.95",
        ),
    ]


BENCHMARKS: dict[str, Callable[[Path], list[Figure]]] = {
    "rollout.sim500": bench_rollout,
}
#: Long (about 4 minutes, most of both cores): run only when named.
ONLY_WHEN_NAMED = {"rollout.sim500"}
