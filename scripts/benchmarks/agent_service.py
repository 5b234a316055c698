"""Agent service benchmarks: the real agent process, measured from outside with psutil.

Each benchmark starts ``corral agent run`` as a process of its own: the agent
CLI's typer app run directly (``agent.cli``), as on a park computer where only
the agent extra is installed (the dev venv's ``corral`` would also mount the
registry's and trainer's commands and import FastAPI, SQLAlchemy and more).
Before it starts, this process enrols a data folder against a real TUF
repository served over HTTP (``tests.agent.tuf_repo``) and installs a tiny
signed model through the real ``Updater``; that repository also answers the
agent's polls for its desired version with the installed one. The agent
publishes to the MQTT broker on 127.0.0.1:1883 when one answers (it keeps its
messages in the outbox otherwise); a unique device id keeps it apart from
other users of the broker, and its retained status is cleared afterwards.

- ``agent.idle_cpu_percent`` and ``agent.idle_rss_mb``: one model loaded and
  one folder camera at 1 frame per second (an idle scene), measured over 10 s
  after a 5 s settle: CPU (user + system) as a percentage of one core, and the
  resident set at the end. Goals from the issue: under 2 % and under 200 MB.
- ``agent.rss_slope_mb_per_h``: the same agent with its camera at full speed
  (a folder camera unpaced: a new frame as soon as the pipeline took the last
  one). After a 20 s warm-up, the resident set is sampled every 5 s for
  ``CORRAL_BENCH_SOAK_S`` seconds (default 90; the issue's soak is 1800) and a
  least-squares line through the samples gives the growth per hour; the
  baseline text adds the line through the second half alone, which is flat
  when the growth was a cache filling up rather than a leak. A short soak
  extrapolates 40-fold: 0.1 MB of allocator noise reads as 4 MB/h. Runs only
  when named (``scripts/bench agent.rss_slope_mb_per_h``): about 2 minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
from benchmarks.common import Figure

ROOT = Path(__file__).resolve().parents[2]
BROKER = ("127.0.0.1", 1883)
#: The agent CLI (``corral agent``) without the other roles' commands.
_AGENT = "import sys; from agent.cli import app; sys.exit(app(prog_name='corral agent'))"
IDLE_SETTLE_S = 5.0
IDLE_MEASURE_S = 10.0
SOAK_WARMUP_S = 20.0
SOAK_SAMPLE_S = 5.0


def _camera_folder(root: Path) -> Path:
    """An ImageFolder tree of 28x28 gray PNGs, for a folder camera."""
    import cv2

    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            image = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            cv2.imwrite(str(root / label / f"{i}.png"), image)
    return root


def _broker_up() -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(BROKER) == 0


def _clear_retained(device_id: str) -> None:
    """Remove the agent's retained status from the shared broker."""
    import paho.mqtt.client as mqtt

    from corral.topics import topic

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex}")
    client.connect(*BROKER)
    client.loop_start()
    try:
        client.publish(topic(device_id, "status"), b"", qos=1, retain=True).wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _wait(
    condition: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + 120.0
    while not condition():
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}: {log.read_text()[-800:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within 120 s; see {log}")
        time.sleep(0.2)


@contextmanager
def running_agent(workdir: Path, camera: str) -> Iterator[psutil.Process]:
    """An enrolled agent process with one installed model and ``camera``, running.

    Yields:
        The agent's process, once it logged that it runs.
    """
    from agent.updater import Updater
    from corral.profiles import load_profile
    from tests.agent.tuf_repo import (
        MODEL_FILE,
        TufRepo,
        enrolled,
        make_bundle,
        make_model,
        publish_bundle,
        serve_repo,
    )

    repo = TufRepo()
    model = make_model(1)
    publish_bundle(repo, make_bundle("tiny", "1.0.0", model), {MODEL_FILE: model})
    device_id = f"bench-{uuid.uuid4().hex[:10]}"
    desired = json.dumps({"model": "tiny", "version": "1.0.0"}).encode()
    repo.files[f"/api/v1/devices/{device_id}/desired"] = desired
    data_dir = workdir / "agent"
    log = workdir / "agent.log"
    with serve_repo(repo) as url:
        config = enrolled(
            data_dir,
            repo,
            url,
            device_id=device_id,
            device_token=uuid.uuid4().hex,
            mqtt_host=BROKER[0],
            mqtt_port=BROKER[1],
            profile="x86-cpu",
        )
        updater = Updater(config, load_profile(ROOT / "firmware-profiles" / "x86-cpu.toml"))
        try:
            updater.install("tiny", "1.0.0")
        finally:
            updater.close()
        args = ["run", "--data-dir", str(data_dir), "--camera", camera, "--log-level", "INFO"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", _AGENT, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        try:
            _wait(lambda: "running: profile" in log.read_text(), "the agent's start", proc, log)
            yield psutil.Process(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if _broker_up():
                _clear_retained(device_id)


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _mib(process: psutil.Process) -> float:
    return float(process.memory_info().rss) / 2**20


def bench_idle(workdir: Path) -> list[Figure]:
    """agent.idle_cpu_percent and agent.idle_rss_mb: the agent with a 1 fps camera."""
    camera = f"folder:{_camera_folder(workdir / 'camera')}?fps=1"
    broker = "broker up" if _broker_up() else "no broker (messages kept in the outbox)"
    with running_agent(workdir, camera) as agent:
        time.sleep(IDLE_SETTLE_S)
        cpu0, wall0 = _cpu_s(agent), time.monotonic()
        peak = 0.0
        while time.monotonic() - wall0 < IDLE_MEASURE_S:
            time.sleep(1.0)
            peak = max(peak, _mib(agent))
        cpu = 100.0 * (_cpu_s(agent) - cpu0) / (time.monotonic() - wall0)
        rss = _mib(agent)
        threads = agent.num_threads()
    what = (
        f"agent with one model (28x28) and one folder camera at 1 fps, {broker}, "
        f"{threads} threads, over {IDLE_MEASURE_S:g} s after a {IDLE_SETTLE_S:g} s settle"
    )
    return [
        Figure("agent.idle_cpu_percent", round(cpu, 2), "% of one core", what, None, "< 2"),
        Figure(
            "agent.idle_rss_mb",
            round(rss, 1),
            "MiB",
            f"{what}; peak {peak:.1f} MiB",
            None,
            "< 200",
        ),
    ]


def bench_rss_slope(workdir: Path) -> list[Figure]:
    """agent.rss_slope_mb_per_h: resident-set growth of an agent inferring at full speed."""
    soak_s = float(os.environ.get("CORRAL_BENCH_SOAK_S", "90"))
    camera = f"folder:{_camera_folder(workdir / 'camera')}?fps=max"
    with running_agent(workdir, camera) as agent:
        time.sleep(SOAK_WARMUP_S)
        cpu0, start = _cpu_s(agent), time.monotonic()
        times, rss = [], []
        while True:
            times.append(time.monotonic() - start)
            rss.append(_mib(agent))
            if times[-1] >= soak_s:
                break
            time.sleep(SOAK_SAMPLE_S)
        cpu = 100.0 * (_cpu_s(agent) - cpu0) / (time.monotonic() - start)
    t, mib = np.asarray(times), np.asarray(rss)
    slope_per_s = float(np.polyfit(t, mib, 1)[0])
    # A cache that fills up once and a leak look alike in one line over the whole
    # soak; the second half's own line tells them apart (flat: it was filling up).
    late = t >= t[-1] / 2
    late_per_s = float(np.polyfit(t[late], mib[late], 1)[0])
    load = os.getloadavg()
    return [
        Figure(
            "agent.rss_slope_mb_per_h",
            round(slope_per_s * 3600.0, 2),
            "MiB/h",
            f"least squares over {len(rss)} samples every {SOAK_SAMPLE_S:g} s for "
            f"{soak_s:g} s after a {SOAK_WARMUP_S:g} s warm-up: {rss[0]:.1f} → {rss[-1]:.1f} "
            f"MiB (min {min(rss):.1f}, max {max(rss):.1f}); second half alone "
            f"{late_per_s * 3600.0:.2f} MiB/h; agent at full speed on a folder camera and the "
            f"28x28 model, {cpu:.0f} % of one core; load average {load[0]:.1f} / {load[2]:.1f} "
            "(1 / 15 min) at the end",
            None,
            "< 1",
        )
    ]


BENCHMARKS: dict[str, Callable[[Path], list[Figure]]] = {
    "agent.idle_cpu_percent": bench_idle,
    "agent.rss_slope_mb_per_h": bench_rss_slope,
}
#: A soak of a few minutes (see the module docstring): run only when named.
ONLY_WHEN_NAMED = {"agent.rss_slope_mb_per_h"}
