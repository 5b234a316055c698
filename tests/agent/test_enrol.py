"""Enrolment against a tiny real HTTP server that answers like the registry's /api/v1/enrol."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig
from agent.enrol import enrol
from agent.errors import EnrolmentError
from agent.updater import Updater
from corral.profiles import FirmwareProfile, HardwareFacts, load_profile
from tests.agent.tuf_repo import MODEL_FILE, TufRepo, make_bundle, make_model, publish_bundle
from tests.agent.tuf_repo import serve_repo as serve_tuf

ROOT = Path(__file__).resolve().parents[2]
FACTS = HardwareFacts(arch="x86_64")


@dataclass
class FakeRegistry:
    """Answers POST /api/v1/enrol with ``status`` and ``answer``; records the bodies."""

    status: int = 201
    answer: Any = None
    bodies: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    #: (status, Retry-After) answered, one each, before ``status``: a registry at its limit.
    busy: list[tuple[int, str]] = field(default_factory=list)
    #: When each request arrived (time.monotonic()).
    times: list[float] = field(default_factory=list)


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server names it)
            length = int(self.headers.get("Content-Length", 0))
            fake.bodies.append({"path": self.path, **json.loads(self.rfile.read(length))})
            fake.times.append(time.monotonic())
            body = json.dumps(fake.answer).encode()
            if self.path != "/api/v1/enrol":
                self.send_response(404)
                body = b'{"detail": "Not Found"}'
            elif fake.busy:
                status, retry_after = fake.busy.pop(0)
                self.send_response(status)
                self.send_header("Retry-After", retry_after)
                body = b'{"detail": "the registry is busy; try again"}'
            else:
                self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def profile() -> FirmwareProfile:
    return load_profile(ROOT / "firmware-profiles" / "x86-cpu.toml")


def answer(repo: TufRepo, base: str, device_id: str = "park-1") -> dict[str, Any]:
    return {
        "device_id": device_id,
        "device_token": "dev-token",
        "mqtt": {"host": "broker.local", "port": 8883},
        "tuf_root": json.loads(repo.root_bytes),
        "metadata_url": f"{base}/metadata/",
        "targets_url": f"{base}/targets/",
    }


def test_enrolment_writes_agent_json_and_the_trusted_root(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile
) -> None:
    repo = TufRepo()
    registry.answer = answer(repo, "http://tuf.example")

    config = enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)

    assert registry.bodies == [
        {
            "path": "/api/v1/enrol",
            "token": "one-time",
            "device_id": "park-1",
            "facts": FACTS.to_dict(),
            "profile": "x86-cpu",
            "agent_version": "0.1.0",
        }
    ]
    assert stat.S_IMODE((tmp_path / "agent.json").stat().st_mode) == 0o600
    assert AgentConfig.load(tmp_path) == config
    assert (config.device_token, config.mqtt_host, config.mqtt_port) == (
        "dev-token",
        "broker.local",
        8883,
    )
    assert config.profile is None  # detect again at each start unless pinned
    root = json.loads((tmp_path / "tuf" / "metadata" / "root.json").read_bytes())
    assert root == json.loads(repo.root_bytes)


def test_the_enrolled_device_can_install_from_its_repository(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile
) -> None:
    repo = TufRepo()
    model = make_model(5)
    publish_bundle(repo, make_bundle("tiny", "1.0.0", model), {MODEL_FILE: model})
    repo.required_token = "dev-token"
    with serve_tuf(repo) as base:
        registry.answer = answer(repo, base)
        config = enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)
        updater = Updater(config, profile)
        try:
            assert updater.install("tiny", "1.0.0").version == "1.0.0"
        finally:
            updater.close()


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (403, "unknown, already used or expired"),
        (409, "already has a device called 'park-1'"),
        (422, "refused the enrolment request as invalid: bad facts"),
        (500, "answered HTTP 500"),
    ],
    ids=["403-token", "409-taken", "422-invalid", "500"],
)
def test_refusals_are_enrolment_errors(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile, status: int, message: str
) -> None:
    registry.status = status
    registry.answer = {"detail": "bad facts"}

    with pytest.raises(EnrolmentError, match=message):
        enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)

    assert not (tmp_path / "agent.json").exists()


def test_a_busy_registry_is_asked_again_after_its_retry_after(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile
) -> None:
    repo = TufRepo()
    registry.answer = answer(repo, registry.url)
    registry.busy = [(503, "1"), (429, "0")]

    config = enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)

    assert config.device_token == "dev-token"
    assert len(registry.times) == 3
    assert registry.times[1] - registry.times[0] >= 1.0, "the Retry-After was not waited"


def test_a_registry_busy_over_three_tries_is_an_enrolment_error(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile
) -> None:
    registry.answer = answer(TufRepo(), registry.url)
    registry.busy = [(503, "0")] * 5

    with pytest.raises(EnrolmentError, match="busy .* the token is not spent"):
        enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)

    assert len(registry.times) == 3
    assert not (tmp_path / "agent.json").exists()


def test_an_unreachable_registry_is_an_enrolment_error(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile
) -> None:
    with pytest.raises(EnrolmentError, match="cannot reach the registry"):
        enrol("http://127.0.0.1:9", "one-time", "park-1", tmp_path, FACTS, profile)


@pytest.mark.parametrize(
    "breakage",
    [
        {"tuf_root": {"signed": {"_type": "root"}, "signatures": []}},
        {"device_token": None},
        {"mqtt": {"host": "b"}},
        {"device_id": "park-2"},
    ],
    ids=["bad-root", "no-token", "no-port", "other-device"],
)
def test_an_answer_that_breaks_the_contract_is_refused(
    tmp_path: Path,
    registry: FakeRegistry,
    profile: FirmwareProfile,
    breakage: dict[str, Any],
) -> None:
    registry.answer = answer(TufRepo(), "http://tuf.example") | breakage
    with pytest.raises(EnrolmentError):
        enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)
    assert not (tmp_path / "agent.json").exists()


def test_a_root_not_signed_by_its_own_keys_is_refused(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile
) -> None:
    tampered = answer(TufRepo(), "http://tuf.example")
    tampered["tuf_root"]["signed"]["expires"] = "2099-01-01T00:00:00Z"
    registry.answer = tampered
    with pytest.raises(EnrolmentError, match="not a valid self-signed root"):
        enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)


def test_an_existing_enrolment_is_kept_unless_forced(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile
) -> None:
    registry.answer = answer(TufRepo(), "http://tuf.example")
    enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)
    stale = tmp_path / "tuf" / "metadata" / "timestamp.json"
    stale.write_text("{}")

    with pytest.raises(EnrolmentError, match="already enrolled"):
        enrol(registry.url, "second", "park-1", tmp_path, FACTS, profile)
    assert len(registry.bodies) == 1  # the second token was not spent

    repo = TufRepo()
    registry.answer = answer(repo, "http://tuf.example")
    enrol(registry.url, "second", "park-1", tmp_path, FACTS, profile, force=True, pin_profile=True)
    assert AgentConfig.load(tmp_path).profile == "x86-cpu"
    assert not stale.exists()  # metadata of the old repository is gone
    assert (tmp_path / "tuf" / "metadata" / "root.json").read_bytes() != b""


@pytest.mark.parametrize(
    ("url", "device_id", "message"),
    [("registry:8000", "park-1", "http:// or https://"), (None, "Park_1", "device id")],
    ids=["no-scheme", "bad-id"],
)
def test_bad_arguments_are_refused_before_any_request(
    tmp_path: Path,
    registry: FakeRegistry,
    profile: FirmwareProfile,
    url: str | None,
    device_id: str,
    message: str,
) -> None:
    with pytest.raises(EnrolmentError, match=message):
        enrol(url or registry.url, "t", device_id, tmp_path, FACTS, profile)
    assert registry.bodies == []
