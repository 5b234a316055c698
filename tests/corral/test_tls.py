"""corral.tls without a broker: the context it builds, the files it refuses, what it says."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from corral.errors import TlsConfigError
from corral.tls import BrokerTls, check_ca_pem, explain_failure
from tests.corral.pki import Pki, make_pki

HOST, PORT = "broker.example", 8883


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_the_context_verifies_the_broker_and_its_name_with_tls_1_2_or_newer(pki: Pki) -> None:
    context = BrokerTls(ca_file=pki.ca).context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "corral test ca"),),)
    ]


def test_hostname_checking_can_be_turned_off_but_the_certificate_is_still_verified(
    pki: Pki,
) -> None:
    context = BrokerTls(ca_file=pki.ca, check_hostname=False).context()
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_without_a_ca_file_the_system_cas_are_trusted() -> None:
    context = BrokerTls().context()
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert BrokerTls().trust == "the system's CAs"


def test_a_client_certificate_and_its_key_load(pki: Pki) -> None:
    BrokerTls(ca_file=pki.ca, cert_file=pki.cert("client"), key_file=pki.key("client")).context()


@pytest.mark.parametrize(
    ("ca", "cert", "key", "named", "expected"),
    [
        pytest.param("missing", None, None, "missing", "No such file", id="ca-missing"),
        pytest.param("ca.key", None, None, "ca.key", "broker's CA bundle", id="ca-not-a-cert"),
        pytest.param("ca.pem", "missing", "client.key", "missing", "No such", id="cert-missing"),
        pytest.param(
            "ca.pem", "client.pem", "server.key", "client.pem", "matching", id="key-of-another"
        ),
        pytest.param("ca.pem", "client.pem", None, "client.pem", "same file", id="no-key"),
    ],
)
def test_unusable_files_are_refused_naming_them(
    pki: Pki, ca: str, cert: str | None, key: str | None, named: str, expected: str
) -> None:
    def path(stem: str | None) -> Path | None:
        return None if stem is None else pki.directory / stem

    with pytest.raises(TlsConfigError, match=expected) as caught:
        BrokerTls(ca_file=path(ca), cert_file=path(cert), key_file=path(key)).context()
    assert str(pki.directory / named) in str(caught.value)


def test_a_key_without_its_certificate_is_refused(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="without its certificate"):
        BrokerTls(ca_file=pki.ca, key_file=pki.key("client"))


def test_check_ca_pem(pki: Pki) -> None:
    check_ca_pem(pki.ca.read_text(), "test")
    with pytest.raises(TlsConfigError, match="from the registry is not a PEM CA certificate"):
        check_ca_pem("not a certificate", "from the registry")


def _verification(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    error.verify_code = code
    error.verify_message = message
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    return error


def _log_line(reason: str) -> str:
    return f"failed to receive on socket: [SSL: {reason}] {reason.lower()} (_ssl.c:2580)"


TLS = BrokerTls(ca_file=Path("/etc/corral/mqtt-ca.pem"))
MTLS = BrokerTls(
    ca_file=Path("/etc/corral/mqtt-ca.pem"),
    cert_file=Path("/etc/corral/me.pem"),
    key_file=Path("/etc/corral/me.key"),
)


@pytest.mark.parametrize(
    ("error", "tls", "expected"),
    [
        pytest.param(
            _verification(19, "self-signed certificate in certificate chain"),
            TLS,
            ["the CA file /etc/corral/mqtt-ca.pem does not vouch for", "self-signed"],
            id="untrusted-issuer",
        ),
        pytest.param(
            _verification(20, "unable to get local issuer certificate"),
            BrokerTls(),
            ["the system's CAs does not vouch for"],
            id="untrusted-by-the-system",
        ),
        pytest.param(
            _verification(62, "Hostname mismatch"),
            TLS,
            [f"not valid for the name {HOST!r}", "subjectAltName"],
            id="hostname-mismatch",
        ),
        pytest.param(
            _verification(64, "IP address mismatch"),
            TLS,
            [f"not valid for the name {HOST!r}"],
            id="ip-mismatch",
        ),
        pytest.param(
            _verification(10, "certificate has expired"),
            TLS,
            ["certificate has expired", "clock"],
            id="expired",
        ),
        pytest.param(
            _log_line("TLSV13_ALERT_CERTIFICATE_REQUIRED"),
            TLS,
            ["requires a client certificate (mutual TLS) and none is configured"],
            id="client-certificate-required",
        ),
        pytest.param(
            _log_line("SSLV3_ALERT_HANDSHAKE_FAILURE"),
            TLS,
            ["requires a client certificate"],
            id="tls-1.2-handshake-failure-without-a-certificate",
        ),
        pytest.param(
            _log_line("TLSV1_ALERT_UNKNOWN_CA"),
            MTLS,
            ["refused this client's certificate /etc/corral/me.pem"],
            id="client-certificate-from-another-ca",
        ),
        pytest.param(
            ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
            TLS,
            ["does not speak TLS", "port 8883"],
            id="plain-listener",
        ),
        pytest.param(
            ConnectionResetError(104, "Connection reset by peer"),
            TLS,
            ["closed the connection during the TLS handshake", "TLS listener"],
            id="reset-during-handshake",
        ),
        pytest.param(
            ConnectionResetError(104, "Connection reset by peer"),
            None,
            ["reset the connection", "turn TLS on"],
            id="plain-client-on-a-tls-listener",
        ),
        pytest.param(
            "[Errno 104] Connection reset by peer",
            None,
            ["reset the connection", "turn TLS on"],
            id="plain-client-on-a-tls-listener-after-connect",
        ),
        pytest.param(
            _log_line("TLSV1_ALERT_PROTOCOL_VERSION"),
            TLS,
            ["TLS 1.2 or newer"],
            id="old-tls",
        ),
        pytest.param(
            ConnectionRefusedError(111, "Connection refused"),
            None,
            ["refused the connection (Connection refused)", "running"],
            id="refused",
        ),
        pytest.param(TimeoutError(), None, ["did not answer in time"], id="timeout"),
        pytest.param(
            OSError(-2, "Name or service not known"),
            None,
            ["cannot connect", "Name or service not known"],
            id="other",
        ),
        pytest.param(
            "it refused the login (Not authorized)",
            TLS,
            ["cannot connect to", "refused the login (Not authorized)"],
            id="text",
        ),
    ],
)
def test_failures_are_explained_naming_the_broker(
    error: BaseException | str, tls: BrokerTls | None, expected: list[str]
) -> None:
    message = explain_failure(error, HOST, PORT, tls)
    assert f"{HOST}:{PORT}" in message
    for part in expected:
        assert part in message, message
