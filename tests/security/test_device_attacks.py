"""Attacks by a device, or by someone holding one device's credentials.

Every test runs on SQLite and on PostgreSQL, against a Mosquitto of its own
that knows only what ``registry.broker`` wrote into its password, ACL and
configuration files (``secured``: devices on their own listener, where every
client id is the device id), with the registry's MQTT bridge logged in to it. Devices are
enrolled and updated by the agent's own code (``agent.enrol``, ``agent.updater``)
where the attack goes through them.

Cases elsewhere, not repeated here:

- a device publishing under another device's topics, and reading another
  device's desired version: tests/registry/test_broker.py
  (``test_a_device_cannot_publish_under_another_devices_topics``,
  ``test_a_device_cannot_read_another_devices_desired_version``);
- a payload naming another device on the device's own topic is dropped:
  tests/registry/test_mqtt.py (``test_ingest_is_idempotent_...``, the
  ``someone-else`` telemetry);
- a device token reading another device's desired version over HTTP, an
  enrolment token used twice or expired, at the API: tests/registry/test_enrol.py.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from tuf.api import exceptions as tuf_errors

from agent.enrol import enrol
from agent.errors import DownloadError, EnrolmentError
from corral.payloads import encode
from corral.topics import topic
from registry._time import utcnow
from registry.tables import EnrolmentToken
from tests.registry.mosquitto import Client
from tests.registry.test_broker import (
    ACCEPTED,
    REFUSED,
    Login,
    Secured,
    regenerate,
    telemetry,
)
from tests.security.conftest import FACTS, Site, profile, registry_state


@pytest.fixture
def registry(secured: Secured, registry: Any) -> Any:
    """The registry of conftest, started after (and so connected to) the secured broker."""
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    return registry


def login(secured: Secured, user: str, password: str) -> Client:
    """An MQTT client of the secured broker with this login (not connected yet)."""
    return Client(secured.broker.port, user, password)


@pytest.fixture
def two(site: Site, secured: Secured) -> Iterator[tuple[Any, Any]]:
    """Devices ``a`` (assigned 1.0.0) and ``b`` (assigned 1.1.0), both in the broker's files."""
    for version in ("1.0.0", "1.1.0"):
        site.push(version)
    a, b = site.agent("a"), site.agent("b")
    site.assign(a, "1.0.0")
    site.assign(b, "1.1.0")
    regenerate(site.registry, secured, until=Login(b.id, b.token))
    yield a, b


# --- downloads ----------------------------------------------------------------------------


def test_a_device_cannot_install_a_model_assigned_to_another_device(
    site: Site, two: tuple[Any, Any]
) -> None:
    a, _ = two
    before = registry_state(site.registry)

    with pytest.raises(DownloadError) as caught:
        a.updater.install("tiny", "1.1.0")

    cause = caught.value.__cause__
    assert isinstance(cause, tuf_errors.DownloadHTTPError) and cause.status_code == 403
    assert a.snapshot() == (None, None, [])
    assert registry_state(site.registry) == before
    assert a.updater.install("tiny", "1.0.0").version == "1.0.0"  # its own one installs


def test_a_device_cannot_fetch_another_versions_blob_under_its_own_versions_path(
    site: Site, two: tuple[Any, Any]
) -> None:
    # Target names carry the digest, and the digest picks the blob: a device assigned
    # 1.0.0 asks for 1.1.0's model file (its digest is in the public targets metadata)
    # under the 1.0.0 path it may use.
    a, _ = two
    theirs = site.bundles["1.1.0"].model_file("fp32").sha256
    mine = site.bundles["1.0.0"].model_file("fp32").sha256
    with site.registry.client(a.token) as device:
        assert device.get(f"/tuf/targets/models/tiny/1.0.0/{mine}.model.onnx").status_code == 200
        swapped = device.get(f"/tuf/targets/models/tiny/1.0.0/{theirs}.model.onnx")
        straight = device.get(f"/tuf/targets/models/tiny/1.1.0/{theirs}.model.onnx")

    assert swapped.status_code == 403, swapped.content[:80]
    assert "only the files of tiny 1.0.0" in swapped.json()["detail"]
    assert straight.status_code == 403
    assert "not assigned tiny 1.1.0" in straight.json()["detail"]


def _report_running(site: Site, secured: Secured, device: Any, version: str, seq: int) -> None:
    """``device`` says, over MQTT as itself, on its own topic, that it runs ``version``."""
    body = {"state": "online", "model": "tiny", "version": version, "profile": "x86-cpu"}
    client = login(secured, device.id, device.token)
    try:
        assert client.connect() == ACCEPTED
        client.publish(topic(device.id, "status"), encode("status", device.id, seq, body))
    finally:
        client.close()

    def stored() -> bool:
        detail = site.registry.admin.get(f"/api/v1/devices/{device.id}").json()
        return bool(detail["version"] == version)

    site.registry.wait_for(stored, what=f"the registry to store {device.id}'s status")


def test_a_device_claiming_to_run_a_version_cannot_download_it_unless_it_was_assigned(
    site: Site, secured: Secured, two: tuple[Any, Any]
) -> None:
    a, _ = two
    digest = site.bundles["1.1.0"].model_file("fp32").sha256
    url = f"/tuf/targets/models/tiny/1.1.0/{digest}.model.onnx"
    # What a device reports running is its own say-so (a status message it may publish).
    _report_running(site, secured, a, "1.1.0", seq=1)
    with site.registry.client(a.token) as device:
        claimed = device.get(url)
    assert claimed.status_code == 403, "a device's own claim got it another device's model"
    assert "not assigned tiny 1.1.0" in claimed.json()["detail"]

    # Control: once a rollout did move it to 1.1.0 (and on to 1.0.0 since), the version
    # it really runs stays downloadable.
    site.assign(a, "1.1.0")
    site.assign(a, "1.0.0")
    _report_running(site, secured, a, "1.1.0", seq=2)
    with site.registry.client(a.token) as device:
        assert device.get(url).status_code == 200


# --- impersonation ------------------------------------------------------------------------


def test_a_device_token_speaks_only_for_its_own_device_over_http(
    site: Site, two: tuple[Any, Any]
) -> None:
    a, b = two
    digest = site.bundles["1.1.0"].model_file("fp32").sha256
    with site.registry.client(a.token) as device:
        answers = {
            "desired": device.get(f"/api/v1/devices/{b.id}/desired"),
            "model": device.get(f"/tuf/targets/models/tiny/1.1.0/{digest}.model.onnx"),
            "device": device.get(f"/api/v1/devices/{b.id}"),
            "revoke": device.post(f"/api/v1/devices/{b.id}/revoke", json={}),
        }
    assert {k: v.status_code for k, v in answers.items()} == dict.fromkeys(answers, 403)
    assert b.token not in "".join(v.text for v in answers.values())


def test_a_device_cannot_log_in_to_the_broker_as_another(
    site: Site, secured: Secured, two: tuple[Any, Any]
) -> None:
    a, b = two
    for user, password in ((b.id, a.token), (b.id, a.token + "x"), (a.id, b.token)):
        client = login(secured, user, password)
        try:
            assert client.connect() == REFUSED, (user, password[:4])
        finally:
            client.close()


def test_a_device_cannot_knock_another_off_the_broker_with_its_client_id(
    site: Site, secured: Secured, two: tuple[Any, Any]
) -> None:
    a, b = two
    b_client = Client(secured.broker.port, b.id, b.token, client_id=f"corral-agent-{b.id}")
    try:
        assert b_client.connect() == ACCEPTED
        # b's id as its agent sends it, and as the broker files it (its user name).
        for seq, stolen in enumerate((f"corral-agent-{b.id}", b.id), start=1):
            a_client = Client(secured.broker.port, a.id, a.token, client_id=stolen)
            try:
                assert a_client.connect() == ACCEPTED  # a logs in, as itself
                b_client.publish(topic(b.id, "telemetry"), telemetry(b.id, seq))  # b is still there
                assert b_client.disconnects == 0, stolen
            finally:
                a_client.close()
    finally:
        b_client.close()


# --- revocation ---------------------------------------------------------------------------


def test_a_revoked_device_is_refused_everywhere(
    site: Site, secured: Secured, two: tuple[Any, Any]
) -> None:
    a, b = two
    a.updater.install("tiny", "1.0.0")
    site.assign(a, "1.1.0")
    mqtt = login(secured, a.id, a.token)
    assert mqtt.connect() == ACCEPTED
    try:
        answer = site.registry.admin.post(f"/api/v1/devices/{a.id}/revoke", json={"reason": "x"})
        assert answer.status_code == 200
        before = registry_state(site.registry)
        dropped = site.registry.context.ingest.counts.get("dropped_revoked", 0)

        # 1. its updates: the agent keeps what it runs
        with pytest.raises(DownloadError) as caught:
            a.updater.install("tiny", "1.1.0")
        cause = caught.value.__cause__
        assert isinstance(cause, tuf_errors.DownloadHTTPError) and cause.status_code == 403
        a.assert_still_runs("1.0.0")
        # 2. its HTTP API
        with site.registry.client(a.token) as device:
            desired = device.get(f"/api/v1/devices/{a.id}/desired")
        assert desired.status_code == 403 and "revoked" in desired.json()["detail"]
        # 3. what it still publishes before the broker's files are written again
        mqtt.publish(topic(a.id, "telemetry"), telemetry(a.id, 1))
        site.registry.wait_for(
            lambda: site.registry.context.ingest.counts.get("dropped_revoked", 0) > dropped,
            what="the revoked device's telemetry to be dropped",
        )
        assert registry_state(site.registry) == before
        # 4. the broker, once its files are written again
        regenerate(site.registry, secured, until=Login(b.id, b.token))
        mqtt.wait_disconnected()
    finally:
        mqtt.close()
    again = login(secured, a.id, a.token)
    try:
        assert again.connect() == REFUSED
    finally:
        again.close()
    # 5. enrolling again under the same id
    token = site.registry.admin.post("/api/v1/enrolment-tokens", json={}).json()["token"]
    with pytest.raises(EnrolmentError, match="already enrolled"):
        enrol(site.registry.url, token, a.id, site.root / "again", FACTS, profile())
    assert not (site.root / "again" / "agent.json").exists()


# --- enrolment tokens ----------------------------------------------------------------------


@pytest.mark.parametrize("spoil", ["used", "expired"])
def test_a_spent_enrolment_token_enrols_no_agent(site: Site, tmp_path: Path, spoil: str) -> None:
    admin = site.registry.admin
    token = admin.post("/api/v1/enrolment-tokens", json={"ttl_s": 600}).json()["token"]
    if spoil == "used":
        first = site.registry.unique_id("first")
        enrol(site.registry.url, token, first, tmp_path / "first", FACTS, profile())
    else:
        with site.registry.context.sessions() as session:
            session.execute(update(EnrolmentToken).values(expires=utcnow() - timedelta(seconds=1)))
            session.commit()
    before = registry_state(site.registry)
    data_dir = tmp_path / "second"

    with pytest.raises(EnrolmentError, match="already used" if spoil == "used" else "expired"):
        second = site.registry.unique_id("second")
        enrol(site.registry.url, token, second, data_dir, FACTS, profile())

    assert not data_dir.exists() or list(data_dir.rglob("*")) == []
    assert registry_state(site.registry) == before


def test_an_enrolment_token_raced_by_many_devices_enrols_exactly_one(site: Site) -> None:
    token = site.registry.admin.post("/api/v1/enrolment-tokens", json={}).json()["token"]
    ids = [site.registry.unique_id("race") for _ in range(8)]
    answers: dict[str, int] = {}
    start = threading.Barrier(len(ids))

    def attempt(device_id: str) -> None:
        with httpx.Client(base_url=site.registry.url) as client:
            start.wait()
            body = {"token": token, "device_id": device_id}
            answers[device_id] = client.post("/api/v1/enrol", json=body).status_code

    threads = [threading.Thread(target=attempt, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(answers.values()) == [201] + [403] * (len(ids) - 1), answers
    listed = {d["device_id"] for d in site.registry.admin.get("/api/v1/devices").json()}
    assert len(listed & set(ids)) == 1
