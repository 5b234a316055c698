"""The registry's side of TLS to the broker: its settings, its bridge, and enrolment.

Each test that needs a broker starts its own Mosquitto with a TLS listener
(``tests/corral/pki.py``) and points the registry at it through the same
``CORRAL_MQTT_*`` variables an operator sets. The bridges that ingest here are
built from the registry's own settings (``Settings.broker_tls``) and feed the
registry's own ingest worker, so what is stored is what the registry stores.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import MQTT_CA_FILE, AgentConfig
from agent.enrol import enrol
from agent.mqtt import AgentLink
from agent.outbox import Outbox
from corral.payloads import encode
from corral.profiles import HardwareFacts, load_profile
from corral.tls import BrokerTls
from corral.topics import topic
from registry.core.config import Settings
from registry.errors import ConfigError
from registry.mqtt import MqttBridge
from tests.corral.pki import Pki, Subscriber, make_pki, start_tls_broker
from tests.registry.conftest import wait_for
from tests.registry.mosquitto import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
NOTHING_INSTALLED = {"model": None, "version": None, "profile": None}
TELEMETRY = {"cpu_percent": 7.0, "memory_percent": 1.0, "disk_percent": 1.0, "gpus": []}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_broker(
    request: pytest.FixtureRequest, tmp_path: Path, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Mosquitto]:
    """A TLS broker (mutual TLS with ``indirect`` param True), and the registry pointed at it."""
    broker = start_tls_broker(
        tmp_path / "broker", pki, require_certificate=getattr(request, "param", False)
    )
    monkeypatch.setenv("CORRAL_MQTT_PORT", str(broker.port))
    monkeypatch.setenv("CORRAL_MQTT_TLS", "true")
    monkeypatch.setenv("CORRAL_MQTT_CA_FILE", str(pki.ca))
    monkeypatch.setenv("CORRAL_MQTT_CERT_FILE", str(pki.cert("client")))
    monkeypatch.setenv("CORRAL_MQTT_KEY_FILE", str(pki.key("client")))
    yield broker
    broker.stop()


@pytest.fixture
def registry(tls_broker: Mosquitto, registry: Any) -> Any:
    """The registry of conftest, made after the broker (and so with its settings)."""
    return registry


def tls_bridge(registry: Any) -> MqttBridge:
    """A bridge built as the registry builds its own, from its settings, feeding its ingest."""
    settings = registry.context.settings
    bridge = MqttBridge(
        settings.mqtt_host,
        settings.mqtt_port,
        f"corral-registry-test-{uuid.uuid4().hex[:8]}",
        registry.context.ingest.submit,
        session_expiry_s=60,
        tls=settings.broker_tls(),
    )
    bridge.start()
    try:
        registry.wait_for(bridge.connected.is_set, what="the bridge on the TLS broker")
    except AssertionError as e:
        bridge.stop()
        raise AssertionError(f"{e}; its last failure: {bridge.last_error}") from e
    return bridge


def reported(registry: Any, device_id: str) -> bool:
    detail = registry.admin.get(f"/api/v1/devices/{device_id}").json()
    return bool(detail["state"] == "online" and detail["cpu_percent"] == 7.0)


def test_enrolment_hands_out_the_broker_ca_and_the_agent_reports_over_tls(
    registry: Any, tls_broker: Mosquitto, pki: Pki, tmp_path: Path
) -> None:
    device_id = registry.unique_id("tls")
    token = registry.admin.post("/api/v1/enrolment-tokens", json={"ttl_s": 600}).json()["token"]
    profile = load_profile(ROOT / "firmware-profiles" / "x86-cpu.toml")
    data_dir = tmp_path / "agent"

    config = enrol(registry.url, token, device_id, data_dir, HardwareFacts(arch="x86_64"), profile)

    # The technician copied nothing: the CA came with the enrolment.
    assert (data_dir / MQTT_CA_FILE).read_bytes() == pki.ca.read_bytes()
    assert AgentConfig.load(data_dir) == config
    assert config.broker_tls == BrokerTls(ca_file=data_dir / MQTT_CA_FILE)
    assert (config.mqtt_host, config.mqtt_port) == ("127.0.0.1", tls_broker.port)

    bridge = tls_bridge(registry)
    outbox = Outbox(data_dir, device_id)
    link = AgentLink(
        device_id,
        config.mqtt_host,
        config.mqtt_port,
        outbox,
        username=device_id,
        password=config.device_token,
        tls=config.broker_tls,
    )
    try:
        link.start()
        assert link.wait_connected(30), link.last_error
        link.publish("telemetry", TELEMETRY)
        registry.wait_for(lambda: reported(registry, device_id), 30, "the registry to see it")
    finally:
        link.stop()
        outbox.close()
        bridge.stop()


@pytest.mark.parametrize("tls_broker", [True], ids=["mutual-tls"], indirect=True)
def test_the_bridge_ingests_over_mutual_tls(registry: Any, tls_broker: Mosquitto, pki: Pki) -> None:
    device_id = registry.unique_id("mtls")
    registry.enrol(device_id)
    bridge = tls_bridge(registry)
    assert bridge.tls is not None and bridge.tls.cert_file == pki.cert("client")
    device = Subscriber(tls_broker.port, pki, topic(device_id, "desired"))
    try:
        device.publish(
            topic(device_id, "status"),
            encode("status", device_id, 0, {"state": "online", **NOTHING_INSTALLED}),
        )
        device.publish(topic(device_id, "telemetry"), encode("telemetry", device_id, 1, TELEMETRY))
        registry.wait_for(lambda: reported(registry, device_id), 30, "the registry to store it")
    finally:
        device.close()
        bridge.stop()


def test_the_bridge_explains_a_broker_it_does_not_trust(tmp_path: Path, pki: Pki) -> None:
    broker = start_tls_broker(tmp_path / "broker", pki, server="rogue-server")
    received: list[object] = []
    bridge = MqttBridge(
        "127.0.0.1",
        broker.port,
        f"corral-registry-test-{uuid.uuid4().hex[:8]}",
        received.append,
        tls=BrokerTls(ca_file=pki.ca),
    )
    try:
        bridge.start()
        message = wait_for(lambda: bridge.last_error, 30, "the bridge to record a failure")
    finally:
        bridge.stop()
        broker.stop()
    assert f"the MQTT broker at 127.0.0.1:{broker.port}" in message
    assert f"the CA file {pki.ca} does not vouch for" in message
    assert not bridge.connected.is_set()
    assert received == []


def test_an_unreadable_ca_file_fails_enrolment_before_the_token_is_spent(
    registry: Any, tmp_path: Path
) -> None:
    token = registry.admin.post("/api/v1/enrolment-tokens", json={"ttl_s": 600}).json()["token"]
    settings = registry.context.settings
    good = settings.mqtt_ca_file
    body = {"token": token, "device_id": registry.unique_id("ca"), "profile": "x86-cpu"}
    settings.mqtt_ca_file = tmp_path / "gone.pem"
    try:
        refused = registry.anon.post("/api/v1/enrol", json=body)
    finally:
        settings.mqtt_ca_file = good
    assert refused.status_code == 500, refused.text
    assert str(tmp_path / "gone.pem") in refused.text
    # The token was not spent: the same one enrols once the file is back.
    answer = registry.anon.post("/api/v1/enrol", json=body)
    assert answer.status_code == 201, answer.text
    assert answer.json()["mqtt"]["tls"] is True
    assert answer.json()["mqtt"]["ca_pem"] == good.read_text()


# --- settings ---------------------------------------------------------------------------


def test_plain_settings_hand_out_no_ca(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, mqtt_tls=False)
    assert settings.broker_tls() is None
    assert settings.broker_ca_pem() is None


def test_tls_settings(tmp_path: Path, pki: Pki) -> None:
    settings = Settings(
        data_dir=tmp_path,
        mqtt_tls=True,
        mqtt_ca_file=pki.ca,
        mqtt_cert_file=pki.cert("client"),
        mqtt_key_file=pki.key("client"),
    )
    assert settings.broker_tls() == BrokerTls(
        ca_file=pki.ca, cert_file=pki.cert("client"), key_file=pki.key("client")
    )
    assert settings.broker_ca_pem() == pki.ca.read_text()


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"mqtt_ca_file": "ca.pem"}, "CORRAL_MQTT_TLS is off", id="ca-without-tls"),
        pytest.param(
            {"mqtt_tls": True, "mqtt_key_file": "k.pem"}, "without its certificate", id="key-only"
        ),
    ],
)
def test_tls_settings_that_do_not_go_together_are_refused(
    tmp_path: Path, fields: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        Settings(data_dir=tmp_path, **fields).broker_tls()


def test_a_ca_file_that_is_not_pem_is_refused_before_it_is_handed_out(
    tmp_path: Path, pki: Pki
) -> None:
    settings = Settings(data_dir=tmp_path, mqtt_tls=True, mqtt_ca_file=pki.key("ca"))
    with pytest.raises(ConfigError, match="is not a PEM CA certificate"):
        settings.broker_ca_pem()
