"""Fixtures: a real registry on uvicorn in a thread, on SQLite and PostgreSQL, the real broker.

``registry`` (and ``database_url``) run every test that uses them twice: on a
SQLite file and in a fresh schema of the PostgreSQL database at
``CORRAL_TEST_POSTGRES`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``).
Without a server the PostgreSQL half is skipped, loudly.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy.engine import make_url

from corral.bundle import Bundle, BundleFile, InputSpec, OutputSpec
from registry import RegistryContext, Settings, create_app
from registry.alerts import AlertRules

BROKER = ("127.0.0.1", 1883)
POSTGRES = os.environ.get(
    "CORRAL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
_postgres_down: list[str] = []


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

    def push(
        self, bundle: bytes, files: dict[str, bytes], client: httpx.Client | None = None
    ) -> httpx.Response:
        parts: list[tuple[str, tuple[str, bytes, str]]] = [
            ("bundle", ("bundle.json", bundle, "application/json"))
        ]
        parts += [("files", (n, data, "application/octet-stream")) for n, data in files.items()]
        return (client or self.admin).post("/api/v1/models", files=parts)

    def client(self, token: str) -> httpx.Client:
        """A client sending ``token``; the caller closes it."""
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"})

    def api_token(self, role: str, name: str | None = None) -> str:
        """A new API token with ``role``, made by the bootstrap admin."""
        body = {"name": name or unique_id(role), "role": role}
        answer = self.admin.post("/api/v1/tokens", json=body)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["token"])

    @staticmethod
    def make_bundle(
        name: str = "animals",
        version: str = "1.0.0",
        files: dict[str, bytes] | None = None,
        **extra: Any,
    ) -> tuple[bytes, dict[str, bytes]]:
        return make_bundle(name, version, files, **extra)

    @staticmethod
    def unique_id(prefix: str = "dev") -> str:
        return unique_id(prefix)

    @staticmethod
    def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
        return wait_for(predicate, timeout, what)


def make_bundle(
    name: str = "animals",
    version: str = "1.0.0",
    files: dict[str, bytes] | None = None,
    **extra: Any,
) -> tuple[bytes, dict[str, bytes]]:
    """bundle.json bytes and the files it lists (arbitrary bytes: the registry runs no model).

    ``extra`` goes to :class:`Bundle` (``drift_baseline=...``, for example).
    """
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
        **extra,
    )
    return bundle.to_bytes(), files


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def unique_id(prefix: str = "dev") -> str:
    """A device id no earlier run used (retained messages outlive test runs)."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def postgres_database() -> Iterator[str]:
    """A URL whose tables land in a fresh, empty schema (dropped afterwards).

    A schema per test, not a database: CREATE DATABASE copies a template and
    checkpoints (about a second on a loaded two-core machine), a schema costs
    milliseconds and isolates just as well, since the URL pins ``search_path``.

    Skips, loudly, without a server.
    """
    import psycopg

    if _postgres_down:
        pytest.skip(_postgres_down[0])
    server = make_url(POSTGRES)
    schema = f"corral_test_{uuid.uuid4().hex[:12]}"
    admin_dsn = server.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        admin = psycopg.connect(admin_dsn, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        _postgres_down.append(
            f"NO POSTGRESQL at {server.render_as_string()}: PostgreSQL tests SKIPPED ({e}); "
            "start it (scripts/test tries) or set CORRAL_TEST_POSTGRES"
        )
        pytest.skip(_postgres_down[0])
    with admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            url = server.update_query_dict({"options": f"-csearch_path={schema}"})
            yield url.render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A SQLAlchemy URL of an empty database: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'registry.db'}"
        return
    with postgres_database() as url:
        yield url


@pytest.fixture
def registry(tmp_path: Path, database_url: str) -> Iterator[RunningRegistry]:
    """A registry with its data in ``tmp_path``, served by uvicorn on a free port."""
    with serve(tmp_path, database_url) as running:
        yield running


@contextmanager
def serve(tmp_path: Path, database_url: str, **settings: Any) -> Iterator[RunningRegistry]:
    """A registry as the ``registry`` fixture has it, with ``settings`` changed."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(
        Settings(
            data_dir=tmp_path / "registry",
            database_url=database_url,
            public_url=url,
            mqtt_client_id=f"corral-registry-test-{uuid.uuid4().hex[:8]}",
            mqtt_session_expiry_s=60,
            # Tests evaluate alerts themselves, at the moments they choose.
            alerts=AlertRules(interval_s=3600),
            **settings,
        )
    )
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
    try:
        with (
            httpx.Client(base_url=url, headers=headers) as admin,
            httpx.Client(base_url=url) as anon,
        ):
            yield RunningRegistry(url, context, admin, anon)
    finally:
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


def write_devices(sessions: Any, n: int, prefix: str = "crowd") -> list[tuple[str, str]]:
    """``n`` devices as enrolment leaves them, as (id, token), written in one commit.

    Setup for load (enrolling hundreds over HTTP takes minutes of commits): the
    rows hold what ``POST /api/v1/enrol`` writes, the token's SHA-256 and its
    broker hash (without that, each device's first request would write it).
    """
    from registry._time import utcnow
    from registry.broker import hash_password
    from registry.core.security import hash_token, new_token
    from registry.tables import Device

    agents = [(unique_id(prefix), new_token()) for _ in range(n)]
    with sessions() as session:
        session.add_all(
            Device(
                id=device,
                token_hash=hash_token(token),
                mqtt_password_hash=hash_password(token, iterations=1),
                profile="x86-cpu",
                facts={},
                enrolled_at=utcnow(),
                tags=[],
            )
            for device, token in agents
        )
        session.commit()
    return agents
