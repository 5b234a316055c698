"""The whole loop on one machine, as separate processes: broker, registry, agents.

``scripts/demo`` and the end-to-end tests drive the same :class:`LocalFleet`, so
what the demo shows is what the tests check. Every role runs as its own
process through the ``corral`` command line, exactly as an operator would run
it; this module only starts them, waits for them and stops them. It needs the
registry, agent and trainer extras installed.

Order of use: :meth:`start_broker` (or an existing broker), :meth:`start_registry`,
:meth:`train`, :meth:`push`, :meth:`start_agent` per device, :meth:`rollout`,
:meth:`wait_converged`, and :meth:`stop` (also on errors, via ``with``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from corral.client import RegistryClient
from corral.errors import CorralError

__all__ = ["LocalFleet", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


class LocalFleet:
    """Starts and stops the processes of a one-machine Corral, with logs in ``data_dir/logs``."""

    def __init__(self, data_dir: Path, python: str = sys.executable) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.logs = self.data_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.python = python
        self.broker: tuple[str, int] | None = None
        self.registry_url = ""
        self.admin_token = ""
        self._procs: dict[str, tuple[subprocess.Popen[bytes], IO[bytes]]] = {}
        # A local fleet's registry is throwaway: an hour of broker session is plenty
        # (each new data directory is a new session; old ones must not pile up).
        self._env: dict[str, str] = {
            "CORRAL_MQTT_SESSION_EXPIRY_S": os.environ.get("CORRAL_MQTT_SESSION_EXPIRY_S", "3600")
        }

    # --- processes -------------------------------------------------------------

    def _spawn(self, name: str, args: Sequence[str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self._env}
        proc = subprocess.Popen(
            [self.python, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=self.data_dir,
            start_new_session=True,
        )
        self._procs[name] = (proc, log)
        return proc

    def _check_alive(self, name: str) -> None:
        proc, _ = self._procs[name]
        if proc.poll() is not None:
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
            raise CorralError(f"{name} exited with code {proc.returncode}; last log lines:\n{tail}")

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float) -> None:
        """Poll ``predicate`` until it is true, checking that every process still runs.

        Raises:
            CorralError: a process died, or ``timeout`` seconds passed.
        """
        deadline = time.monotonic() + timeout
        while True:
            for name in self._procs:
                self._check_alive(name)
            with contextlib.suppress(CorralError):
                if predicate():
                    return
            if time.monotonic() > deadline:
                raise CorralError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.5)

    def stop_process(self, name: str, timeout: float = 15.0) -> int | None:
        """SIGTERM then, after ``timeout``, SIGKILL one process; return its exit code."""
        proc, log = self._procs.pop(name)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()
        return proc.returncode

    def stop(self) -> None:
        """Stop agents first (so they say offline), then the registry, then the broker."""
        order = sorted(self._procs, key=lambda n: (n == "broker", n == "registry"))
        for name in order:
            self.stop_process(name)

    def __enter__(self) -> LocalFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- roles -----------------------------------------------------------------

    def start_broker(self, broker: str | None = None) -> tuple[str, int]:
        """Use ``host:port`` if given, else start the embedded amqtt broker on a free port.

        Raises:
            CorralError: the given broker does not answer, or the embedded one does not start.
        """
        if broker:
            host, _, port_text = broker.rpartition(":")
            given = (host or "127.0.0.1", int(port_text))
            if not _port_open(*given):
                raise CorralError(f"no MQTT broker answers on {broker}")
            self.broker = given
            return given
        port = free_port()
        self._spawn("broker", ["-m", "registry.embedded_broker", "--port", str(port)])
        self._env["CORRAL_MQTT_PROTOCOL"] = "3.1.1"  # amqtt speaks no MQTT 5
        self.broker = ("127.0.0.1", port)
        self.wait_for("the embedded broker", lambda: _port_open("127.0.0.1", port), 30)
        return ("127.0.0.1", port)

    def start_registry(self, port: int | None = None) -> RegistryClient:
        """Start ``corral registry serve`` on SQLite in ``data_dir/registry``; return a client.

        Raises:
            CorralError: it does not become healthy within a minute.
        """
        if self.broker is None:
            raise CorralError("start or name a broker before the registry")
        port = port or free_port()
        self.registry_url = f"http://127.0.0.1:{port}"
        registry_dir = self.data_dir / "registry"
        self._spawn(
            "registry",
            [
                "-m", "corral.cli", "registry", "serve",
                "--data-dir", str(registry_dir),
                "--port", str(port),
                "--mqtt-host", self.broker[0],
                "--mqtt-port", str(self.broker[1]),
                "--public-url", self.registry_url,
            ],
        )  # fmt: skip
        probe = RegistryClient(self.registry_url)
        self.wait_for("the registry", probe.health, 90)
        probe.close()
        self.admin_token = (registry_dir / "admin-token").read_text().strip()
        return self.client()

    def client(self) -> RegistryClient:
        """A client with the admin token."""
        return RegistryClient(self.registry_url, self.admin_token)

    def train(self, version: str, out: Path, test_images: Path | None = None, **hyper: Any) -> Path:
        """Run ``corral train`` in the foreground; its output goes to the terminal.

        Raises:
            CorralError: training failed.
        """
        args = [self.python, "-m", "corral.cli", "train", "--out", str(out), "--version", version]
        if test_images is not None:
            args += ["--test-images", str(test_images)]
        for key, value in hyper.items():
            args += [f"--{key.replace('_', '-')}", str(value)]
        if subprocess.run(args, stdin=subprocess.DEVNULL, check=False).returncode != 0:
            raise CorralError(f"training {version} failed; see the output above")
        return out

    def start_agent(self, device_id: str, cameras: Sequence[str]) -> None:
        """Enrol ``device_id`` with a fresh one-time token and start its agent process.

        Raises:
            CorralError: enrolment failed.
        """
        agent_dir = self.data_dir / "agents" / device_id
        with self.client() as client:
            token = client.create_enrolment_token(600)["token"]
        enrol = subprocess.run(
            [
                self.python, "-m", "corral.cli", "agent", "enrol",
                "--registry", self.registry_url,
                "--token", token,
                "--device-id", device_id,
                "--data-dir", str(agent_dir),
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
        if enrol.returncode != 0:
            raise CorralError(f"enrolling {device_id} failed: {enrol.stdout}{enrol.stderr}")
        args = ["-m", "corral.cli", "agent", "run", "--data-dir", str(agent_dir)]
        for camera in cameras:
            args += ["--camera", camera]
        self._spawn(f"agent-{device_id}", args)

    def wait_converged(
        self, version: str, devices: Sequence[str], timeout: float = 180.0
    ) -> list[dict[str, Any]]:
        """Wait until every device in ``devices`` reports running ``version``.

        Raises:
            CorralError: not all converged within ``timeout``.
        """
        result: list[dict[str, Any]] = []

        def converged() -> bool:
            nonlocal result
            with self.client() as client:
                result = [d for d in client.devices() if d["device_id"] in devices]
            return len(result) == len(devices) and all(d.get("version") == version for d in result)

        self.wait_for(f"{len(devices)} device(s) on {version}", converged, timeout)
        return result
