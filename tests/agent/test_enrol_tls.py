"""Enrolment with a registry whose broker speaks TLS: the broker's CA comes with the answer.

Uses the tiny HTTP registry of ``test_enrol`` (it answers whatever the test sets).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import MQTT_CA_FILE, AgentConfig
from agent.enrol import enrol
from agent.errors import EnrolmentError
from corral.profiles import FirmwareProfile
from corral.tls import BrokerTls
from tests.agent.test_enrol import FACTS, FakeRegistry, answer, profile, registry
from tests.agent.tuf_repo import TufRepo
from tests.corral.pki import Pki, make_pki

__all__ = ["profile", "registry"]  # fixtures, imported to be used here


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_answer(repo: TufRepo, **mqtt: Any) -> dict[str, Any]:
    document = answer(repo, "http://tuf.example")
    document["mqtt"] = {"host": "broker.local", "port": 8883, **mqtt}
    return document


def test_the_broker_ca_is_kept_and_trusted(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile, pki: Pki
) -> None:
    registry.answer = tls_answer(TufRepo(), tls=True, ca_pem=pki.ca.read_text())

    config = enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)

    assert (tmp_path / MQTT_CA_FILE).read_bytes() == pki.ca.read_bytes()
    assert config.broker_tls == BrokerTls(ca_file=tmp_path / MQTT_CA_FILE)
    assert AgentConfig.load(tmp_path) == config


def test_tls_without_a_ca_trusts_the_system_cas(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile
) -> None:
    registry.answer = tls_answer(TufRepo(), tls=True, ca_pem=None)

    config = enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)

    assert config.broker_tls == BrokerTls(ca_file=None)
    assert not (tmp_path / MQTT_CA_FILE).exists()


@pytest.mark.parametrize(
    ("mqtt", "expected"),
    [
        pytest.param({"tls": True, "ca_pem": "not a certificate"}, "not a PEM CA", id="ca-not-pem"),
        pytest.param({"tls": True, "ca_pem": 7}, "not text", id="ca-not-text"),
        pytest.param({"tls": "yes"}, "non-boolean mqtt.tls", id="tls-not-bool"),
    ],
)
def test_a_bad_broker_ca_is_refused_and_nothing_is_written(
    tmp_path: Path,
    registry: FakeRegistry,
    profile: FirmwareProfile,
    mqtt: dict[str, Any],
    expected: str,
) -> None:
    registry.answer = tls_answer(TufRepo(), **mqtt)

    with pytest.raises(EnrolmentError, match=expected):
        enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)

    assert list(tmp_path.iterdir()) == []


def test_enrolling_again_with_a_plain_broker_drops_the_old_ca(
    tmp_path: Path, registry: FakeRegistry, profile: FirmwareProfile, pki: Pki
) -> None:
    repo = TufRepo()
    registry.answer = tls_answer(repo, tls=True, ca_pem=pki.ca.read_text())
    enrol(registry.url, "one-time", "park-1", tmp_path, FACTS, profile)
    registry.answer = answer(repo, "http://tuf.example")  # a registry from before TLS

    config = enrol(registry.url, "another", "park-1", tmp_path, FACTS, profile, force=True)

    assert config.broker_tls is None
    assert not (tmp_path / MQTT_CA_FILE).exists()
    assert "mqtt_tls" not in AgentConfig.load(tmp_path).to_dict()
