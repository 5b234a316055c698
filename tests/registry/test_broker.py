"""Broker access control: the files `corral registry broker-files` writes, on a real Mosquitto.

Each test runs its own Mosquitto, configured only by the files
``registry.broker`` wrote from the registry's device table, with its two
listeners on free ports: the devices' (where every client id is the user
name) and the registry's. A registry (on SQLite and on PostgreSQL) logs in on
its listener with the registry's broker account and tells agents the devices'
(``CORRAL_AGENT_MQTT_PORT``). Devices log in as their agent does: device id
and device token.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from corral.payloads import encode
from corral.topics import topic
from registry.broker import (
    DEFAULT_REGISTRY_USER,
    Listener,
    acl_file,
    conf_file,
    hash_password,
    password_file,
    write_broker_files,
)
from tests.registry.mosquitto import Client, Mosquitto, free_port

SERVICE_PASSWORD = secrets.token_urlsafe(24)
TELEMETRY = {"cpu_percent": 12.5, "memory_percent": 40.0, "disk_percent": 10.0, "gpus": []}
ACCEPTED = "Success"
REFUSED = "Not authorized"


@dataclass
class Secured:
    """The broker of one test, its two listeners and the directory its files live in."""

    broker: Mosquitto
    files: Path
    devices: Listener
    registry: Listener

    def client(self, user: str | None, password: str | None, **args: Any) -> Client:
        """A client of the devices' listener (not connected yet)."""
        return Client(self.broker.port, user, password, **args)

    def service(self) -> Client:
        """A client of the registry's listener with its account, as an operator's tool would."""
        client = Client(self.broker.registry_port, DEFAULT_REGISTRY_USER, SERVICE_PASSWORD)
        assert client.connect() == ACCEPTED
        return client

    def write(self, session: Any) -> None:
        """Write the files from the database, as `corral registry broker-files` does."""
        write_broker_files(
            session,
            self.files,
            DEFAULT_REGISTRY_USER,
            SERVICE_PASSWORD,
            devices=self.devices,
            registry=self.registry,
        )


def start_secured(files: Path, devices: Listener) -> Secured:
    """Mosquitto with the files of a registry that has no devices yet, and ``devices``.

    The registry's listener is plain, on 127.0.0.1.
    """
    files.mkdir(parents=True, exist_ok=True)
    registry = Listener(free_port(), "127.0.0.1")
    (files / "passwd").write_text(password_file([]))
    (files / "registry-passwd").write_text(
        password_file([(DEFAULT_REGISTRY_USER, hash_password(SERVICE_PASSWORD))])
    )
    (files / "acl").write_text(acl_file(DEFAULT_REGISTRY_USER))
    (files / "corral.conf").write_text(conf_file(files, devices, registry))
    broker = Mosquitto.start(files, devices.port, registry_port=registry.port)
    return Secured(broker, files, devices, registry)


@dataclass
class Login:
    """An enrolled device's broker login."""

    id: str
    token: str


@pytest.fixture
def secured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Secured]:
    """Mosquitto with the files of a registry that has no devices yet.

    The registry fixture reads its broker address, the agents' and its account from
    these variables.
    """
    secured = start_secured(tmp_path / "broker", Listener(free_port(), "127.0.0.1"))
    monkeypatch.setenv("CORRAL_MQTT_PORT", str(secured.broker.registry_port))
    monkeypatch.setenv("CORRAL_AGENT_MQTT_PORT", str(secured.broker.port))
    monkeypatch.setenv("CORRAL_MQTT_USERNAME", DEFAULT_REGISTRY_USER)
    monkeypatch.setenv("CORRAL_MQTT_PASSWORD", SERVICE_PASSWORD)
    yield secured
    secured.broker.stop()


@pytest.fixture
def registry(secured: Secured, registry: Any) -> Any:
    """The registry of conftest, started after (and so connected to) the secured broker."""
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    return registry


def enrol(registry: Any, name: str) -> Login:
    device_id = registry.unique_id(name)
    return Login(device_id, registry.enrol(device_id)["device_token"])


def regenerate(registry: Any, secured: Secured, until: Login) -> None:
    """Write the files from the database, reload Mosquitto, wait until ``until`` may log in."""
    with registry.context.sessions() as session:
        secured.write(session)
    secured.broker.reload()

    def accepted() -> bool:
        probe = secured.client(until.id, until.token)
        try:
            return probe.connect() == ACCEPTED
        finally:
            probe.close()

    registry.wait_for(accepted, what=f"the reloaded broker to accept {until.id}")


def connected(secured: Secured, device: Login) -> Client:
    client = secured.client(device.id, device.token)
    assert client.connect() == ACCEPTED
    return client


def telemetry(device_id: str, seq: int) -> bytes:
    return encode("telemetry", device_id, seq, TELEMETRY)


@pytest.fixture(params=["plain", "shared"])
def subscription(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the registry subscribes: one registry, or replicas' MQTT 5 shared subscription."""
    if request.param == "shared":
        monkeypatch.setenv("CORRAL_MQTT_SHARED_GROUP", "corral-registry")
    return str(request.param)


def test_a_device_publishes_its_own_telemetry_and_the_registry_stores_it(
    subscription: str, registry: Any, secured: Secured
) -> None:
    shared = registry.context.settings.mqtt_shared_group is not None
    assert shared == (subscription == "shared")
    a = enrol(registry, "a")
    regenerate(registry, secured, until=a)
    client = connected(secured, a)
    try:
        client.publish(topic(a.id, "telemetry"), telemetry(a.id, 1))
    finally:
        client.close()

    def stored() -> bool:
        detail = registry.admin.get(f"/api/v1/devices/{a.id}").json()
        return bool(detail["seq"]["count"] == 1 and detail["cpu_percent"] == 12.5)

    registry.wait_for(stored, what="the registry to store a's telemetry")


def test_a_device_cannot_publish_under_another_devices_topics(
    registry: Any, secured: Secured
) -> None:
    a, b = enrol(registry, "a"), enrol(registry, "b")
    regenerate(registry, secured, until=a)
    watcher = secured.service()
    b_client = connected(secured, b)
    a_client = connected(secured, a)
    try:
        watcher.subscribe("corral/v1/devices/#")
        b_client.subscribe(topic(b.id, "desired"))
        a_client.publish(topic(b.id, "telemetry"), telemetry(b.id, 1))
        a_client.publish(topic(b.id, "desired"), b'{"forged": true}', retain=True)
        a_client.publish(topic(a.id, "desired"), b'{"forged": true}', retain=True)
        # In order from one client: once this arrives, the ones before it would have.
        a_client.publish(topic(a.id, "telemetry"), telemetry(a.id, 1))
        watcher.wait_message(topic(a.id, "telemetry"))

        assert [t for t, _ in watcher.messages] == [topic(a.id, "telemetry")]
        assert b_client.messages == []
    finally:
        for client in (a_client, b_client, watcher):
            client.close()
    detail = registry.admin.get(f"/api/v1/devices/{b.id}").json()
    assert detail["seq"]["count"] == 0, "the registry stored a message forged under b's topic"


def test_a_device_cannot_read_another_devices_desired_version(
    registry: Any, secured: Secured
) -> None:
    a, b = enrol(registry, "a"), enrol(registry, "b")
    regenerate(registry, secured, until=a)
    # Through the registry's own bridge and account, retained.
    registry.context.publish_desired(b.id, 1, "animals", "9.9.9")
    registry.context.publish_desired(a.id, 1, "animals", "1.0.0")
    watcher = secured.service()
    a_client = connected(secured, a)
    try:
        watcher.subscribe(topic(b.id, "desired"))
        watcher.wait_message(topic(b.id, "desired"))  # the broker holds b's hint
        # Mosquitto grants the subscriptions but delivers nothing a may not read.
        a_client.subscribe(topic(b.id, "desired"))
        a_client.subscribe("corral/v1/devices/+/desired")
        a_client.subscribe(topic(a.id, "desired"))
        assert b"1.0.0" in a_client.wait_message(topic(a.id, "desired"))
        registry.context.publish_desired(b.id, 2, "animals", "9.9.10")
        registry.context.publish_desired(a.id, 2, "animals", "1.0.1")
        registry.wait_for(lambda: sum(b"1.0.1" in p for _, p in a_client.messages) >= 1)

        assert {t for t, _ in a_client.messages} == {topic(a.id, "desired")}
    finally:
        a_client.close()
        watcher.close()


def test_a_revoked_device_is_cut_off_when_the_files_are_written_again(
    registry: Any, secured: Secured
) -> None:
    a, c = enrol(registry, "a"), enrol(registry, "c")
    regenerate(registry, secured, until=c)
    c_client = connected(secured, c)
    try:
        revoked = registry.admin.post(f"/api/v1/devices/{c.id}/revoke", json={"reason": "stolen"})
        assert revoked.status_code == 200, revoked.text
        regenerate(registry, secured, until=a)
        c_client.wait_disconnected()
    finally:
        c_client.close()
    again = secured.client(c.id, c.token)
    try:
        assert again.connect() == REFUSED
    finally:
        again.close()


@pytest.mark.parametrize(
    ("user", "password"),
    [
        pytest.param("right-id", "wrong token", id="wrong-password"),
        pytest.param("nobody", "anything", id="unknown-user"),
        pytest.param(None, None, id="anonymous"),
        pytest.param(DEFAULT_REGISTRY_USER, "not the service password", id="registry-account"),
    ],
)
def test_wrong_credentials_are_refused(
    registry: Any, secured: Secured, user: str | None, password: str | None
) -> None:
    a = enrol(registry, "a")
    regenerate(registry, secured, until=a)
    client = secured.client(a.id if user == "right-id" else user, password)
    try:
        assert client.connect() == REFUSED
    finally:
        client.close()


def test_the_agents_own_link_logs_in_reports_and_gets_its_desired_version(
    registry: Any, secured: Secured, tmp_path: Path
) -> None:
    from agent.mqtt import AgentLink
    from agent.outbox import Outbox

    device_id = registry.unique_id("a")
    answer = registry.enrol(device_id)
    a = Login(device_id, answer["device_token"])
    # Enrolment names the devices' listener, not the registry's.
    assert answer["mqtt"] == {"host": "127.0.0.1", "port": secured.broker.port}
    regenerate(registry, secured, until=a)
    registry.context.publish_desired(a.id, 1, "animals", "1.0.0")
    desired: list[dict[str, Any]] = []
    outbox = Outbox(tmp_path / "agent", a.id)

    def link() -> AgentLink:
        # As agent.service builds it: client id corral-agent-<id>, a persistent session,
        # device id and device token as the broker login. The broker makes the id <id>.
        return AgentLink(
            a.id,
            answer["mqtt"]["host"],
            answer["mqtt"]["port"],
            outbox,
            on_desired=desired.append,
            username=a.id,
            password=a.token,
        )

    def reported(cpu: float) -> bool:
        detail = registry.admin.get(f"/api/v1/devices/{a.id}").json()
        return bool(detail["state"] == "online" and detail["cpu_percent"] == cpu)

    first = link()
    try:
        first.start()
        assert first.wait_connected(10), first.last_error
        registry.wait_for(lambda: desired, what="a's desired hint")
        seq = first.publish("telemetry", {**TELEMETRY, "cpu_percent": 7.0})
        registry.wait_for(lambda: outbox.is_sent(seq), what="the broker to acknowledge it")
        registry.wait_for(lambda: reported(7.0), what="the registry to see a's telemetry")
    finally:
        assert first.stop(), "the broker did not acknowledge the offline status"
    # The agent restarts; a new desired version was published while it was away.
    registry.context.publish_desired(a.id, 2, "animals", "1.0.1")
    second = link()
    try:
        second.start()
        registry.wait_for(lambda: any(d["version"] == "1.0.1" for d in desired))
        seq = second.publish("telemetry", {**TELEMETRY, "cpu_percent": 8.0})
        registry.wait_for(lambda: outbox.is_sent(seq), what="the broker to acknowledge it")
        registry.wait_for(lambda: reported(8.0), what="the registry to see a's telemetry")
    finally:
        second.stop()
        outbox.close()
    assert desired[0]["version"] == "1.0.0"


def test_a_devices_persistent_session_is_kept_under_its_device_id(
    registry: Any, secured: Secured
) -> None:
    a = enrol(registry, "a")
    regenerate(registry, secured, until=a)
    first = secured.client(a.id, a.token, client_id=f"corral-agent-{a.id}", persistent=True)
    try:
        assert first.connect() == ACCEPTED
        first.subscribe(topic(a.id, "desired"))
    finally:
        first.close()
    registry.context.publish_desired(a.id, 1, "animals", "1.0.0")
    # Another client id, the same login: the broker files the session under the user name,
    # so it is the same session, with the subscription and the hint queued for it.
    again = secured.client(a.id, a.token, client_id="anything-else", persistent=True)
    try:
        assert again.connect() == ACCEPTED
        assert again.sessions_present == [True]
        assert b"1.0.0" in again.wait_message(topic(a.id, "desired"))
    finally:
        again.close()


def test_the_registry_and_the_devices_log_in_only_on_their_own_listeners(
    registry: Any, secured: Secured
) -> None:
    a = enrol(registry, "a")
    regenerate(registry, secured, until=a)
    logins = {
        "registry on the devices' listener": Client(
            secured.broker.port, DEFAULT_REGISTRY_USER, SERVICE_PASSWORD
        ),
        "device on the registry's listener": Client(secured.broker.registry_port, a.id, a.token),
    }
    answers = {}
    for name, client in logins.items():
        try:
            answers[name] = client.connect()
        finally:
            client.close()
    assert answers == dict.fromkeys(logins, REFUSED)
