"""The registry's side of TLS to the broker: its settings, its bridge, and enrolment.

Each test that needs a broker starts its own Mosquitto with a TLS listener
(``tests/corral/pki.py``) and points the registry at it through the same
``CORRAL_MQTT_*`` variables an operator sets. The bridges that ingest here are
built from the registry's own settings (``Settings.broker_tls``) and feed the
registry's own ingest worker, so what is stored is what the registry stores.
Agents may be told another listener than the registry's own
(``CORRAL_AGENT_MQTT_*``, ``Settings.agent_broker``): a TLS one of theirs while
the registry stays on a plain one, as ``registry.broker`` declares them.
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
from registry import create_app
from registry.broker import DEFAULT_REGISTRY_USER, Listener
from registry.core.config import AgentBroker, Settings
from registry.errors import ConfigError
from registry.mqtt import MqttBridge
from tests.corral.pki import Pki, Subscriber, make_pki, start_tls_broker
from tests.registry.conftest import serve, wait_for
from tests.registry.mosquitto import Mosquitto, free_port
from tests.registry.test_broker import SERVICE_PASSWORD, start_secured

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
    try:
        _report_through_the_broker(registry, config, data_dir, device_id)
    finally:
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


def test_agents_get_their_own_tls_listener_while_the_registry_keeps_a_plain_one(
    tmp_path: Path, database_url: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The listeners `corral registry broker-files --devices-listener 127.0.0.1:P
    # --tls-certfile ... --registry-listener 127.0.0.1:Q` declares.
    devices = Listener(
        free_port(), "127.0.0.1", certfile=pki.cert("server"), keyfile=pki.key("server")
    )
    secured = start_secured(tmp_path / "broker", devices)
    for name, value in {
        "CORRAL_MQTT_PORT": str(secured.broker.registry_port),
        "CORRAL_MQTT_USERNAME": DEFAULT_REGISTRY_USER,
        "CORRAL_MQTT_PASSWORD": SERVICE_PASSWORD,
        "CORRAL_AGENT_MQTT_HOST": "localhost",  # a name in the broker's certificate
        "CORRAL_AGENT_MQTT_PORT": str(devices.port),
        "CORRAL_AGENT_MQTT_TLS": "true",
        "CORRAL_AGENT_MQTT_CA_FILE": str(pki.ca),
    }.items():
        monkeypatch.setenv(name, value)
    try:
        with serve(tmp_path, database_url) as registry:
            registry.wait_for(registry.context.bridge.connected.is_set, what="the registry")
            assert registry.context.bridge.tls is None  # the registry's own link stays plain
            device_id = registry.unique_id("split")
            token = registry.admin.post("/api/v1/enrolment-tokens", json={}).json()["token"]
            profile = load_profile(ROOT / "firmware-profiles" / "x86-cpu.toml")
            data_dir = tmp_path / "agent"
            config = enrol(
                registry.url, token, device_id, data_dir, HardwareFacts(arch="x86_64"), profile
            )
            assert (config.mqtt_host, config.mqtt_port) == ("localhost", devices.port)
            assert config.broker_tls == BrokerTls(ca_file=data_dir / MQTT_CA_FILE)
            assert (data_dir / MQTT_CA_FILE).read_bytes() == pki.ca.read_bytes()
            with registry.context.sessions() as session:
                secured.write(session)
            secured.broker.reload()  # the link retries until the broker has reread them

            _report_through_the_broker(registry, config, data_dir, device_id)
    finally:
        secured.broker.stop()


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({}, AgentBroker("b", 1884, False, None), id="the-registrys-own"),
        pytest.param(
            {"agent_mqtt_host": "broker.example", "agent_mqtt_port": 1883},
            AgentBroker("broker.example", 1883, False, None),
            id="another-address",
        ),
        pytest.param(
            {"mqtt_tls": True, "mqtt_ca_file": "CA"},
            AgentBroker("b", 1884, True, "CA"),
            id="both-tls-one-ca",
        ),
        pytest.param(
            {"agent_mqtt_port": 8883, "agent_mqtt_tls": True, "agent_mqtt_ca_file": "CA"},
            AgentBroker("b", 8883, True, "CA"),
            id="agents-tls-registry-plain",
        ),
        pytest.param(
            {"agent_mqtt_tls": True}, AgentBroker("b", 1884, True, None), id="agents-system-cas"
        ),
        pytest.param(
            {"mqtt_tls": True, "mqtt_ca_file": "CA", "agent_mqtt_tls": False},
            AgentBroker("b", 1884, False, None),
            id="registry-tls-agents-plain",
        ),
    ],
)
def test_agents_are_told_the_registrys_broker_unless_told_another(
    tmp_path: Path, pki: Pki, fields: dict[str, Any], expected: AgentBroker
) -> None:
    def ca(value: Any) -> Any:
        return pki.ca if value == "CA" else value

    settings = Settings(
        data_dir=tmp_path,
        mqtt_host="b",
        mqtt_port=1884,
        **{name: ca(value) for name, value in fields.items()},
    )
    assert settings.agent_broker() == AgentBroker(
        expected.host, expected.port, expected.tls, ca(expected.ca_file)
    )
    if expected.ca_file:
        assert settings.broker_ca_pem() == pki.ca.read_text()
    else:
        assert settings.broker_ca_pem() is None


def test_a_ca_for_agents_who_do_not_speak_tls_is_refused_at_start(tmp_path: Path, pki: Pki) -> None:
    settings = Settings(data_dir=tmp_path, mqtt_port=1, agent_mqtt_ca_file=pki.ca)
    with pytest.raises(ConfigError, match="CORRAL_AGENT_MQTT_CA_FILE set but agents do not"):
        create_app(settings)


def test_an_unreadable_agents_ca_file_is_named(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, agent_mqtt_tls=True, agent_mqtt_ca_file=tmp_path / "gone.pem"
    )
    with pytest.raises(ConfigError, match=r"gone\.pem \(CORRAL_AGENT_MQTT_CA_FILE\)"):
        settings.broker_ca_pem()


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


def _report_through_the_broker(
    registry: Any, config: AgentConfig, data_dir: Path, device_id: str
) -> None:
    """The enrolled agent's link connects as ``config`` says and its report reaches the registry."""
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
