"""Registry benchmarks: artifact downloads against nginx, and many agents' update checks.

Both run a real registry process (``corral registry serve`` on SQLite, through
:class:`corral.local.LocalFleet`, one uvicorn worker) and, as the baseline in
the same run, nginx (one worker, ``sendfile on``) serving the same bytes from
the same disk. nginx must be installed (``apt-get install nginx-light``).

``registry.download_ratio_nginx``
    A 50 MB model file pushed to the registry, downloaded whole from
    ``/tuf/targets/...`` (streamed from the blob store, with ``ETag`` and
    ``Range``) by curl over loopback, against nginx serving the blob file
    itself. Five interleaved rounds, median throughput; the ratio is
    registry / nginx (goal >= 0.5). A ranged request is checked too (206 and
    the right length), and the bare disk read of the file is given for scale.

``registry.update_checks_rps_500`` and ``registry.update_checks_p99_ms_500``
    N agents (``CORRAL_BENCH_AGENTS``, default 500), enrolled and assigned a
    model, each checking for updates back to back over its own keep-alive
    connection, for 15 s after 3 s of warm-up. One update check is what an
    agent asks when nothing changed: its desired version
    (``GET /api/v1/devices/{id}/desired``, device token), then ngclient's
    refresh: the registry's signed time for a fresh nonce, the next root
    (404: the root it has is the newest), ``timestamp.json`` (the same
    version, so snapshot and targets come from its cache). The load comes
    from two processes of a small asyncio HTTP/1.1 client (so the client's
    Python stays small next to the registry's). Figures: good checks per
    second and the 99th percentile of one check's four round trips (a failed
    check, an error answer or a dropped connection, counts in the latency and
    is reported); the baseline is the same load against nginx serving the same
    four answers as static files.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from benchmarks.common import Figure, median

BLOB_BYTES = 50 * 1000 * 1000
ROUNDS = 5
WARMUP_S = 3.0
MEASURE_S = 15.0
LOAD_PROCESSES = 2
#: An agent gives a check up after this long (its fetcher's read timeout is 30 s).
CHECK_TIMEOUT_S = 35.0
#: How long to wait for the registry to answer again after the load.
RECOVERY_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "")
    if not found:
        raise RuntimeError("nginx is not installed (the baseline); apt-get install nginx-light")
    return found


@contextmanager
def _nginx(workdir: Path, root: Path) -> Iterator[str]:
    """nginx serving ``root`` on a free port of 127.0.0.1: one worker, sendfile, no access log."""
    prefix = workdir / "nginx"
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    port = _free_port()
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the test's files
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\ndaemon off;\npid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'logs' / 'error.log'};\n"
        "events { worker_connections 4096; }\n"
        "http {\n  sendfile on; tcp_nopush on; access_log off; keepalive_requests 1000000;\n"
        f"  client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;\n"
        f"  fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi;\n"
        f"  scgi_temp_path {prefix}/scgi;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n"
    )
    process = subprocess.Popen(
        [_nginx_binary(), "-p", str(prefix), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            if process.poll() is not None:
                log = (prefix / "logs" / "error.log").read_text(errors="replace")[-1000:]
                raise RuntimeError(f"nginx exited: {log}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen within 10 s") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGQUIT)  # graceful: finish, then exit
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def _registry(workdir: Path) -> Iterator[Any]:
    """A registry process on SQLite with an MQTT broker (127.0.0.1:1883, else the embedded one)."""
    from corral.local import LocalFleet

    with LocalFleet(workdir, python=sys.executable) as local:
        try:
            with socket.create_connection(("127.0.0.1", 1883), timeout=1):
                local.start_broker("127.0.0.1:1883")
        except OSError:
            local.start_broker()
        local.start_registry()
        yield local


def _push(url: str, token: str, name: str, files: dict[str, bytes]) -> None:
    """Push ``name`` 1.0.0 whose files are ``files`` (the registry runs no model)."""
    from tests.registry.conftest import make_bundle

    bundle, files = make_bundle(name, "1.0.0", files)
    parts: list[tuple[str, tuple[str, bytes, str]]] = [
        ("bundle", ("bundle.json", bundle, "application/json"))
    ]
    parts += [("files", (n, data, "application/octet-stream")) for n, data in files.items()]
    headers = {"Authorization": f"Bearer {token}"}
    answer = httpx.post(f"{url}/api/v1/models", files=parts, headers=headers, timeout=300)
    answer.raise_for_status()


def _curl(url: str, token: str | None = None, byte_range: str | None = None) -> tuple[float, int]:
    """(seconds, bytes) of one download by curl, body thrown away."""
    command = [
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{time_total} %{size_download} %{http_code}",
    ]
    if token:
        command += ["-H", f"Authorization: Bearer {token}"]
    if byte_range:
        command += ["-r", byte_range]
    out = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout
    seconds, size, status = out.split()
    if status not in ("200", "206"):
        raise RuntimeError(f"{url}: HTTP {status}")
    return float(seconds), int(size)


def _disk_read_mb_s(path: Path) -> float:
    start = time.perf_counter()
    with path.open("rb") as handle:
        while handle.read(1 << 20):
            pass
    return path.stat().st_size / 1e6 / (time.perf_counter() - start)


def bench_download(workdir: Path) -> list[Figure]:
    """registry.download_ratio_nginx: a 50 MB target from the registry vs nginx, same file."""
    if shutil.which("curl") is None:
        raise RuntimeError("curl is not installed; apt-get install curl")
    _nginx_binary()
    payload = os.urandom(BLOB_BYTES)
    digest = hashlib.sha256(payload).hexdigest()
    with _registry(workdir) as local:
        _push(local.registry_url, local.admin_token, "bench", {"model.onnx": payload})
        del payload
        blobs = workdir / "registry" / "blobs"
        blob = next(blobs.rglob(digest))
        target = f"{local.registry_url}/tuf/targets/models/bench/1.0.0/{digest}.model.onnx"
        half = BLOB_BYTES // 2
        _, ranged = _curl(target, local.admin_token, f"{half}-")
        if ranged != BLOB_BYTES - half:
            raise RuntimeError(f"a Range request got {ranged} bytes, not {BLOB_BYTES - half}")
        with _nginx(workdir, blobs) as nginx:
            static = f"{nginx}/{blob.relative_to(blobs)}"
            ours: list[float] = []
            theirs: list[float] = []
            for _ in range(ROUNDS):
                seconds, size = _curl(target, local.admin_token)
                assert size == BLOB_BYTES
                ours.append(size / 1e6 / seconds)
                seconds, size = _curl(static)
                assert size == BLOB_BYTES
                theirs.append(size / 1e6 / seconds)
        disk = _disk_read_mb_s(blob)
    registry_mb_s, nginx_mb_s = median(ours), median(theirs)
    return [
        Figure(
            name="registry.download_ratio_nginx",
            value=round(registry_mb_s / nginx_mb_s, 3),
            unit="x nginx",
            baseline=f"registry {registry_mb_s:.0f} MB/s vs nginx {nginx_mb_s:.0f} MB/s (1 worker, "
            f"sendfile), 50 MB over loopback by curl, median of {ROUNDS}; disk read "
            f"{disk:.0f} MB/s",
            ratio=round(registry_mb_s / nginx_mb_s, 3),
            goal=">= 0.5",
        )
    ]


# --- update checks ----------------------------------------------------------------------


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, token: str
) -> int:
    """One keep-alive GET; the body is read and dropped; returns the status."""
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return int(head[9:12])


async def _agent(
    host: str, port: int, device: str, token: str, root: int, until: float
) -> list[tuple[float, float, bool]]:
    """One agent checking back to back until ``until``: (start, end, good) of every check.

    A check fails when an answer is not the expected one (a 5xx, say), the
    connection drops, or it takes over ``CHECK_TIMEOUT_S``; the agent then
    reconnects and goes on.
    """
    checks: list[tuple[float, float, bool]] = []
    n = 0
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.monotonic() < until:
            n += 1
            paths = (
                f"/api/v1/devices/{device}/desired",
                f"/tuf/time?nonce={device}-{n:012d}",
                f"/tuf/metadata/{root + 1}.root.json",
                "/tuf/metadata/timestamp.json",
            )
            start = time.monotonic()
            statuses: tuple[int, ...] = ()
            try:
                async with asyncio.timeout(CHECK_TIMEOUT_S):
                    for path in paths:
                        statuses += (await _exchange(reader, writer, path, token),)
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                statuses = ()
            good = statuses == (200, 200, 404, 200)
            checks.append((start, time.monotonic(), good))
            if not good:
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()
    return checks


def _load(
    url: str, agents: list[tuple[str, str]], root: int, start_at: float
) -> list[tuple[float, float, bool]]:
    """One load process: ``agents`` checking back to back from ``start_at``; every check."""
    host, _, port = url.removeprefix("http://").partition(":")
    until = start_at + WARMUP_S + MEASURE_S

    async def run() -> list[tuple[float, float, bool]]:
        while time.monotonic() < start_at:
            await asyncio.sleep(0.01)
        results = await asyncio.gather(
            *(_agent(host, int(port), d, t, root, until) for d, t in agents)
        )
        return [check for r in results for check in r]

    return asyncio.run(run())


def _run_load(url: str, agents: list[tuple[str, str]], root: int) -> tuple[float, float, int]:
    """(good checks per second, p99 seconds, failed checks) of ``agents`` against ``url``.

    Checks per second count the good checks that ended in the measured window
    (after the warm-up); the p99 is over every check that started in it, good or
    not (one that timed out counts ``CHECK_TIMEOUT_S``).
    """
    context = multiprocessing.get_context("spawn")
    start_at = time.monotonic() + 3.0  # every process connects at the same moment
    warm, until = start_at + WARMUP_S, start_at + WARMUP_S + MEASURE_S
    shares = [agents[i::LOAD_PROCESSES] for i in range(LOAD_PROCESSES)]
    with context.Pool(LOAD_PROCESSES) as pool:
        parts = pool.starmap(_load, [(url, share, root, start_at) for share in shares])
    checks = [check for part in parts for check in part]
    good = sum(1 for _, end, ok in checks if ok and warm <= end <= until)
    started = sorted(end - start for start, end, _ in checks if warm <= start <= until)
    started = started or sorted(end - start for start, end, _ in checks)  # none in the window
    p99 = started[min(len(started) - 1, int(len(started) * 0.99))]
    return good / MEASURE_S, p99, sum(1 for *_, ok in checks if not ok)


def _recovery_s(url: str, token: str) -> float | None:
    """Seconds until the registry answers ``timestamp.json`` again after the load, or None."""
    start = time.monotonic()
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() - start < RECOVERY_S:
        try:
            answer = httpx.get(f"{url}/tuf/metadata/timestamp.json", headers=headers, timeout=5)
            if answer.status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(1)
    return None


def _static_copy(workdir: Path, url: str, agents: list[tuple[str, str]], root: int) -> Path:
    """The four answers of an update check as files, at the same paths, for nginx."""
    static = workdir / "static"
    device, token = agents[0]
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        desired = client.get(f"/api/v1/devices/{device}/desired").content
        signed_time = client.get("/tuf/time", params={"nonce": "b" * 32}).content
        timestamp = client.get("/tuf/metadata/timestamp.json").content
    for d, _ in agents:
        path = static / "api" / "v1" / "devices" / d / "desired"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(desired)
    (static / "tuf" / "metadata").mkdir(parents=True)
    (static / "tuf" / "time").write_bytes(signed_time)
    (static / "tuf" / "metadata" / "timestamp.json").write_bytes(timestamp)
    assert not (static / "tuf" / "metadata" / f"{root + 1}.root.json").exists()
    return static


def _enrolled(database: Path, n: int) -> list[tuple[str, str]]:
    """``n`` devices written straight into the registry's database, as enrolment leaves them."""
    from registry.core.db import make_engine, make_session_factory
    from tests.registry.conftest import write_devices

    engine = make_engine(f"sqlite:///{database}")
    try:
        return write_devices(make_session_factory(engine), n, prefix="bench")
    finally:
        engine.dispose()


def bench_update_checks(workdir: Path) -> list[Figure]:
    """registry.update_checks_{rps,p99_ms}_N: N agents checking for updates at once."""
    n = int(os.environ.get("CORRAL_BENCH_AGENTS", "500"))
    _nginx_binary()
    with _registry(workdir) as local:
        _push(local.registry_url, local.admin_token, "tiny", {"model.onnx": b"\0" * 4096})
        agents = _enrolled(workdir / "registry" / "registry.db", n)
        with httpx.Client(base_url=local.registry_url, timeout=60) as anon:
            root = json.loads(anon.get("/tuf/metadata/1.root.json").content)["signed"]["version"]
        with local.client() as client:
            client.start_rollout("tiny", "1.0.0", [d for d, _ in agents])
        static = _static_copy(workdir, local.registry_url, agents, root)
        ours = _run_load(local.registry_url, agents, root)
        recovered = _recovery_s(local.registry_url, agents[0][1])
    with _nginx(workdir, static) as nginx:
        theirs = _run_load(nginx, agents, root)
    (rps, p99, failed), (nginx_rps, nginx_p99, nginx_failed) = ours, theirs
    where = (
        f"{n} agents, 4 requests per check, {MEASURE_S:.0f} s, load from {LOAD_PROCESSES} "
        f"processes on the same machine; failed checks {failed} (nginx {nginx_failed}); "
        + (
            f"the registry answered again {recovered:.0f} s after the load"
            if recovered is not None
            else f"the registry did not answer within {RECOVERY_S:.0f} s after the load"
        )
    )
    return [
        Figure(
            name=f"registry.update_checks_rps_{n}",
            value=round(rps, 1),
            unit="checks/s",
            baseline=f"nginx serving the same answers as files: {nginx_rps:.0f} checks/s; {where}",
            ratio=round(rps / nginx_rps, 3),
            goal=None,
        ),
        Figure(
            name=f"registry.update_checks_p99_ms_{n}",
            value=round(p99 * 1000, 1),
            unit="ms",
            baseline=f"nginx: {nginx_p99 * 1000:.1f} ms; {where}",
            ratio=round(p99 / nginx_p99, 3),
            goal=None,
        ),
    ]


BENCHMARKS: dict[str, Callable[[Path], list[Figure]]] = {
    "registry.download": bench_download,
    "registry.update_checks": bench_update_checks,
}
