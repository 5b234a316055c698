"""A throwaway PKI and a Mosquitto with a TLS listener, for the tests of TLS to the broker.

:func:`make_pki` writes, with the ``cryptography`` package, two unrelated CAs
and certificates signed by them (EC P-256, valid for a day):

=====================  ==========  ==========================================
file stem              signed by   for
=====================  ==========  ==========================================
``ca``                 itself      the CA clients are told to trust
``other-ca``           itself      a CA nobody is told to trust
``server``             ``ca``      the broker; names ``localhost`` and ``127.0.0.1``
``rogue-server``       other-ca    a broker with the right names, wrong issuer
``misnamed-server``    ``ca``      a broker named ``broker.example`` only
``client``             ``ca``      a client certificate the broker accepts
``rogue-client``       other-ca    a client certificate the broker refuses
=====================  ==========  ==========================================

:func:`start_tls_broker` starts a private Mosquitto whose only listener speaks
TLS >= 1.2 with one of the server certificates, optionally requiring client
certificates. :class:`Subscriber` is a paho client over TLS that records what
it receives.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.registry.mosquitto import Mosquitto, free_port

__all__ = ["Pki", "Subscriber", "make_pki", "start_tls_broker"]

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Pki:
    """Where :func:`make_pki` wrote its files: ``{stem}.pem`` and ``{stem}.key``."""

    directory: Path

    def cert(self, stem: str) -> Path:
        """The certificate (PEM) of ``stem``."""
        return self.directory / f"{stem}.pem"

    def key(self, stem: str) -> Path:
        """The private key (PEM, unencrypted) of ``stem``."""
        return self.directory / f"{stem}.key"

    @property
    def ca(self) -> Path:
        """The CA certificate clients trust."""
        return self.cert("ca")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(
    directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
) -> None:
    (directory / f"{stem}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _builder(
    subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + _DAY)
    )


def _ca(directory: Path, stem: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder(f"corral test {stem}", _name(f"corral test {stem}"), key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(directory, stem, key, cert)
    return key, cert


def _leaf(
    directory: Path,
    stem: str,
    issuer: tuple[ec.EllipticCurvePrivateKey, x509.Certificate],
    names: list[x509.GeneralName] | None,
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(stem, issuer[1].subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    _write(directory, stem, key, builder.sign(issuer[0], hashes.SHA256()))


def make_pki(directory: Path) -> Pki:
    """Write the CAs and certificates of the module docstring into ``directory``.

    Returns:
        Where they are.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = _ca(directory, "ca")
    other = _ca(directory, "other-ca")
    local: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    _leaf(directory, "server", ca, local)
    _leaf(directory, "rogue-server", other, local)
    _leaf(directory, "misnamed-server", ca, [x509.DNSName("broker.example")])
    _leaf(directory, "client", ca, None)
    _leaf(directory, "rogue-client", other, None)
    return Pki(directory)


def start_tls_broker(
    directory: Path,
    pki: Pki,
    *,
    server: str = "server",
    require_certificate: bool = False,
    auth: str = "allow_anonymous true\n",
) -> Mosquitto:
    """A private Mosquitto on a free port whose listener speaks only TLS.

    Args:
        directory: its configuration and log go here.
        pki: the certificates.
        server: the stem of the certificate the broker presents.
        require_certificate: refuse clients without a certificate signed by ``pki.ca``.
        auth: the authentication lines (anonymous by default).

    Returns:
        The running broker (the caller stops it).
    """
    directory.mkdir(parents=True, exist_ok=True)
    # Mosquitto.start writes "listener PORT 127.0.0.1" and then this file: the TLS
    # options below belong to the listener before them, so that listener speaks TLS.
    (directory / "corral.conf").write_text(
        f"cafile {pki.ca}\n"
        f"certfile {pki.cert(server)}\n"
        f"keyfile {pki.key(server)}\n"
        "tls_version tlsv1.2\n"
        f"require_certificate {'true' if require_certificate else 'false'}\n" + auth
    )
    return Mosquitto.start(directory, free_port())


class Subscriber:
    """A paho client over TLS (trusting ``pki.ca``, with the ``client`` certificate) that
    subscribes to ``topic_filter`` and records every message."""

    def __init__(self, port: int, pki: Pki, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._changed = threading.Condition()
        context = ssl.create_default_context(cafile=str(pki.ca))
        context.load_cert_chain(str(pki.cert("client")), str(pki.key("client")))
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{uuid.uuid4().hex[:8]}"
        )
        self.client.tls_set_context(context)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic_filter, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), f"no SUBACK for {topic_filter} within 10 s"

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, bytes(message.payload)))
            self._changed.notify_all()

    def wait(self, count: int, timeout: float = 30.0) -> list[tuple[str, bytes]]:
        """Wait until ``count`` messages have arrived; return them all."""
        with self._changed:
            arrived = self._changed.wait_for(lambda: len(self.messages) >= count, timeout)
            assert arrived, f"{len(self.messages)} of {count} messages within {timeout} s"
            return list(self.messages)

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and wait for the PUBACK."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def close(self) -> None:
        """Disconnect and stop paho's thread."""
        self.client.disconnect()
        self.client.loop_stop()
