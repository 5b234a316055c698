"""The agent's MQTT link over TLS, against a private Mosquitto with a TLS listener.

Each test starts its own broker (``tests/corral/pki.py``) with certificates made
at test time: one the link trusts, one from another CA, one for another name,
and, for mutual TLS, client certificates from both CAs. A refused connection is
shown by the link's explanation (:attr:`AgentLink.last_error`), waited for, and
by its never having connected.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.mqtt import AgentLink
from agent.outbox import Outbox
from corral.errors import TlsConfigError
from corral.payloads import decode
from corral.tls import BrokerTls
from corral.topics import parse_topic
from registry.broker import hash_password, password_file
from tests.agent.fixtures import wait_for
from tests.corral.pki import Pki, Subscriber, make_pki, start_tls_broker
from tests.registry.mosquitto import Mosquitto, free_port

DEVICE = "park-1"
TELEMETRY = {"cpu_percent": 1.0, "memory_percent": 2.0, "disk_percent": 3.0, "gpus": []}
WAIT_S = 30.0

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
    reason="NO MOSQUITTO BINARY: TLS link tests SKIPPED; apt-get install mosquitto",
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "agent", DEVICE)
    yield box
    box.close()


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[list[Mosquitto]]:
    """The brokers a test started, stopped after it."""
    started: list[Mosquitto] = []
    yield started
    for broker in started:
        broker.stop()


def broker(
    brokers: list[Mosquitto],
    tmp_path: Path,
    pki: Pki,
    server: str = "server",
    require_certificate: bool = False,
) -> Mosquitto:
    started = start_tls_broker(
        tmp_path / f"broker-{len(brokers)}",
        pki,
        server=server,
        require_certificate=require_certificate,
    )
    brokers.append(started)
    return started


def link(host: str, port: int, outbox: Outbox, tls: BrokerTls) -> AgentLink:
    # Retry fast: the refusal tests wait for the first explained failure.
    return AgentLink(DEVICE, host, port, outbox, tls=tls, reconnect_delay_s=(1, 2))


def refused(link_: AgentLink) -> str:
    """Start the link and return its explanation of the first failed connect."""
    link_.start()
    try:
        assert wait_for(lambda: link_.last_error, timeout=WAIT_S), "no failure within 30 s"
        message = link_.last_error
        assert message is not None
    finally:
        link_.stop(timeout=0)
    assert link_.stats.connects == 0
    assert not link_.connected
    return message


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_link_delivers_over_tls_in_seq_order(
    tmp_path: Path, pki: Pki, brokers: list[Mosquitto], outbox: Outbox, host: str
) -> None:
    server = broker(brokers, tmp_path, pki)
    watcher = Subscriber(server.port, pki, f"corral/v1/devices/{DEVICE}/+")
    for _ in range(20):
        outbox.put("telemetry", TELEMETRY)
    agent = link(host, server.port, outbox, BrokerTls(ca_file=pki.ca))
    try:
        agent.start()
        assert agent.wait_connected(WAIT_S), agent.last_error
        agent.publish("telemetry", TELEMETRY)
        # 20 queued + 1 live telemetry, the online status, then the clean offline.
        watcher.wait(22)
        assert agent.stop()
        messages = watcher.wait(23)
    finally:
        watcher.close()
    decoded = [decode(parse_topic(t)[1], p) for t, p in messages]
    telemetry = [m.seq for m in decoded if m.kind == "telemetry"]
    assert telemetry == sorted(telemetry) and len(telemetry) == 21
    assert sorted(m.seq for m in decoded) == list(range(23))
    assert [m.body["state"] for m in decoded if m.kind == "status"] == ["online", "offline"]
    assert agent.last_error is None


def test_mutual_tls_with_a_client_certificate_delivers(
    tmp_path: Path, pki: Pki, brokers: list[Mosquitto], outbox: Outbox
) -> None:
    server = broker(brokers, tmp_path, pki, require_certificate=True)
    watcher = Subscriber(server.port, pki, f"corral/v1/devices/{DEVICE}/telemetry")
    tls = BrokerTls(ca_file=pki.ca, cert_file=pki.cert("client"), key_file=pki.key("client"))
    agent = link("127.0.0.1", server.port, outbox, tls)
    try:
        agent.start()
        assert agent.wait_connected(WAIT_S), agent.last_error
        seq = agent.publish("telemetry", TELEMETRY)
        [(_, payload)] = watcher.wait(1)
    finally:
        agent.stop()
        watcher.close()
    assert decode("telemetry", payload).seq == seq


def test_a_broker_certificate_from_another_ca_is_refused_naming_host_and_ca_file(
    tmp_path: Path, pki: Pki, brokers: list[Mosquitto], outbox: Outbox
) -> None:
    server = broker(brokers, tmp_path, pki, server="rogue-server")
    message = refused(link("127.0.0.1", server.port, outbox, BrokerTls(ca_file=pki.ca)))
    assert f"the MQTT broker at 127.0.0.1:{server.port}" in message
    assert f"the CA file {pki.ca} does not vouch for" in message


def test_a_broker_certificate_for_another_name_is_refused(
    tmp_path: Path, pki: Pki, brokers: list[Mosquitto], outbox: Outbox
) -> None:
    server = broker(brokers, tmp_path, pki, server="misnamed-server")
    message = refused(link("127.0.0.1", server.port, outbox, BrokerTls(ca_file=pki.ca)))
    assert f"the MQTT broker at 127.0.0.1:{server.port}" in message
    assert "not valid for the name '127.0.0.1'" in message


def test_hostname_checking_is_on_unless_turned_off(
    tmp_path: Path, pki: Pki, brokers: list[Mosquitto], outbox: Outbox
) -> None:
    # The same misnamed broker as above, with the check off: the issuer is still checked.
    server = broker(brokers, tmp_path, pki, server="misnamed-server")
    agent = link("127.0.0.1", server.port, outbox, BrokerTls(ca_file=pki.ca, check_hostname=False))
    try:
        agent.start()
        assert agent.wait_connected(WAIT_S), agent.last_error
    finally:
        agent.stop()


def test_mutual_tls_without_a_client_certificate_is_refused(
    tmp_path: Path, pki: Pki, brokers: list[Mosquitto], outbox: Outbox
) -> None:
    server = broker(brokers, tmp_path, pki, require_certificate=True)
    message = refused(link("127.0.0.1", server.port, outbox, BrokerTls(ca_file=pki.ca)))
    assert f"the MQTT broker at 127.0.0.1:{server.port} requires a client certificate" in message


def test_a_client_certificate_from_another_ca_is_refused(
    tmp_path: Path, pki: Pki, brokers: list[Mosquitto], outbox: Outbox
) -> None:
    server = broker(brokers, tmp_path, pki, require_certificate=True)
    tls = BrokerTls(
        ca_file=pki.ca, cert_file=pki.cert("rogue-client"), key_file=pki.key("rogue-client")
    )
    message = refused(link("127.0.0.1", server.port, outbox, tls))
    assert f"refused this client's certificate {pki.cert('rogue-client')}" in message


def test_the_device_login_still_counts_over_tls(
    tmp_path: Path, pki: Pki, brokers: list[Mosquitto], outbox: Outbox
) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text(password_file([(DEVICE, hash_password("the device token"))]))
    server = start_tls_broker(
        tmp_path / "broker", pki, auth=f"allow_anonymous false\npassword_file {passwd}\n"
    )
    brokers.append(server)
    wrong = AgentLink(
        DEVICE,
        "127.0.0.1",
        server.port,
        outbox,
        username=DEVICE,
        password="not the token",
        tls=BrokerTls(ca_file=pki.ca),
        reconnect_delay_s=(1, 2),
    )
    message = refused(wrong)
    assert f"the MQTT broker at 127.0.0.1:{server.port}: it refused the login" in message
    assert "Not authorized" in message
    right = AgentLink(
        DEVICE,
        "127.0.0.1",
        server.port,
        outbox,
        username=DEVICE,
        password="the device token",
        tls=BrokerTls(ca_file=pki.ca),
    )
    try:
        right.start()
        assert right.wait_connected(WAIT_S), right.last_error
    finally:
        right.stop()


def test_tls_to_a_plain_listener_says_so(tmp_path: Path, pki: Pki, outbox: Outbox) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "corral.conf").write_text("allow_anonymous true\n")
    server = Mosquitto.start(plain, free_port())
    try:
        message = refused(link("127.0.0.1", server.port, outbox, BrokerTls(ca_file=pki.ca)))
    finally:
        server.stop()
    assert f"is port {server.port} the broker's TLS listener" in message


def test_an_unusable_ca_file_is_refused_when_the_link_is_made(
    tmp_path: Path, outbox: Outbox
) -> None:
    with pytest.raises(TlsConfigError, match=str(tmp_path / "nowhere.pem")):
        link("127.0.0.1", 8883, outbox, BrokerTls(ca_file=tmp_path / "nowhere.pem"))


# --- agent.json -----------------------------------------------------------------------


def config(data_dir: Path, **extra: object) -> dict[str, object]:
    return {
        "device_id": DEVICE,
        "device_token": "t" * 20,
        "registry_url": "https://registry.example",
        "mqtt_host": "broker.example",
        "mqtt_port": 8883,
        "metadata_url": "https://registry.example/tuf/metadata/",
        "targets_url": "https://registry.example/tuf/targets/",
        **extra,
    }


def test_tls_settings_round_trip_and_relative_paths_are_in_the_data_folder(
    tmp_path: Path,
) -> None:
    document = config(
        tmp_path,
        mqtt_tls=True,
        mqtt_ca_file="mqtt-ca.pem",
        mqtt_cert_file="/etc/corral/me.pem",
        mqtt_key_file="me.key",
        mqtt_tls_check_hostname=True,
    )
    loaded = AgentConfig.from_dict(dict(document), tmp_path)
    assert loaded.broker_tls == BrokerTls(
        ca_file=tmp_path / "mqtt-ca.pem",
        cert_file=Path("/etc/corral/me.pem"),
        key_file=tmp_path / "me.key",
    )
    loaded.save()
    again = AgentConfig.load(tmp_path)
    assert again.to_dict() == loaded.to_dict()
    assert again.to_dict()["mqtt_ca_file"] == "mqtt-ca.pem"  # still relative: the folder may move


def test_a_plain_config_stays_plain_and_writes_no_tls_keys(tmp_path: Path) -> None:
    loaded = AgentConfig.from_dict(config(tmp_path), tmp_path)
    assert loaded.broker_tls is None
    assert not any(key.startswith("mqtt_tls") or key.endswith("_file") for key in loaded.to_dict())


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param({"mqtt_ca_file": "ca.pem"}, "mqtt_tls is false", id="ca-without-tls"),
        pytest.param(
            {"mqtt_tls": True, "mqtt_key_file": "me.key"}, "without mqtt_cert_file", id="key-only"
        ),
        pytest.param({"mqtt_tls": "yes"}, "wrong type", id="tls-not-bool"),
        pytest.param({"mqtt_tls": True, "mqtt_ca_file": 3}, "wrong type", id="path-not-text"),
    ],
)
def test_tls_settings_that_do_not_go_together_are_refused(
    tmp_path: Path, extra: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigError, match=expected):
        AgentConfig.from_dict(config(tmp_path, **extra), tmp_path)
