"""Fixtures: a real registry on uvicorn in a thread, a real SQLite file, the real broker."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from corral.bundle import Bundle, BundleFile, InputSpec, OutputSpec
from registry import RegistryContext, Settings, create_app

BROKER = ("127.0.0.1", 1883)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker_up() -> bool:
    """Whether the MQTT broker answers on 127.0.0.1:1883."""
    try:
        with socket.create_connection(BROKER, timeout=1):
            return True
    except OSError:
        return False


@dataclass
class RunningRegistry:
    """A registry served on a free port."""

    url: str
    context: RegistryContext
    admin: httpx.Client
    anon: httpx.Client

    def enrol(self, device_id: str, **extra: Any) -> dict[str, Any]:
        token = self.admin.post("/api/v1/enrolment-tokens", json={"ttl_s": 600}).json()["token"]
        body = {"token": token, "device_id": device_id, "profile": "x86-cpu", **extra}
        response = self.anon.post("/api/v1/enrol", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    def push(self, bundle: bytes, files: dict[str, bytes]) -> httpx.Response:
        parts: list[tuple[str, tuple[str, bytes, str]]] = [
            ("bundle", ("bundle.json", bundle, "application/json"))
        ]
        parts += [("files", (n, data, "application/octet-stream")) for n, data in files.items()]
        return self.admin.post("/api/v1/models", files=parts)

    @staticmethod
    def make_bundle(
        name: str = "animals", version: str = "1.0.0", files: dict[str, bytes] | None = None
    ) -> tuple[bytes, dict[str, bytes]]:
        return make_bundle(name, version, files)

    @staticmethod
    def unique_id(prefix: str = "dev") -> str:
        return unique_id(prefix)

    @staticmethod
    def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
        return wait_for(predicate, timeout, what)


def make_bundle(
    name: str = "animals", version: str = "1.0.0", files: dict[str, bytes] | None = None
) -> tuple[bytes, dict[str, bytes]]:
    """bundle.json bytes and the files it lists (arbitrary bytes: the registry runs no model)."""
    files = files if files is not None else {"model.onnx": b"not really onnx " * 64}
    bundle = Bundle(
        name=name,
        version=version,
        input=InputSpec(name="input", shape=[None, 1, 28, 28]),
        output=OutputSpec(name="logits", labels=["cat", "dog"]),
        files=[
            BundleFile(name=n, sha256=_sha256(data), length=len(data)) for n, data in files.items()
        ],
        metrics={"accuracy": 0.9},
        lineage={"dataset_version": "abc123"},
        created="2025-01-01T00:00:00Z",
    )
    return bundle.to_bytes(), files


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def unique_id(prefix: str = "dev") -> str:
    """A device id no earlier run used (retained messages outlive test runs)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RunningRegistry]:
    """A registry with its data in ``tmp_path``, served by uvicorn on a free port."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        data_dir=tmp_path / "registry",
        public_url=url,
        mqtt_client_id=f"corral-registry-test-{uuid.uuid4().hex[:8]}",
    )
    app = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start in 10 s"
        time.sleep(0.02)
    context: RegistryContext = app.state.registry
    headers = {"Authorization": f"Bearer {context.admin_token}"}
    with httpx.Client(base_url=url, headers=headers) as admin, httpx.Client(base_url=url) as anon:
        yield RunningRegistry(url, context, admin, anon)
    server.should_exit = True
    thread.join(timeout=15)


@pytest.fixture
def broker() -> None:
    """Skip, loudly, when there is no MQTT broker on 127.0.0.1:1883."""
    if not broker_up():
        pytest.skip(
            "NO MQTT BROKER on 127.0.0.1:1883: MQTT tests SKIPPED; "
            "start mosquitto (scripts/test does)"
        )


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
