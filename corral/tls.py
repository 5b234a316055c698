"""TLS to the MQTT broker: the client's settings, its SSL context, and why a connect failed.

The agent and the registry reach the broker the same way, so both build their
``ssl.SSLContext`` here and hand it to paho (``Client.tls_set_context``):

- TLS 1.2 or newer;
- the broker's certificate must chain to ``ca_file`` (a PEM bundle), or to the
  system's trusted CAs when ``ca_file`` is None;
- the certificate must name the host that was dialled (``check_hostname``, on by
  default). Python checks it during the handshake, so a wrong name fails there
  with the same kind of error as an untrusted issuer;
- with ``cert_file`` (and ``key_file``, unless the key is in the same PEM) the
  client shows a certificate of its own, for brokers that require one
  (Mosquitto's ``require_certificate true``: mutual TLS).

paho retries a failed connect on its own thread and passes on little of why.
:class:`ConnectWatch` collects what there is (the exception of a failed
connect attempt; the text of the read error paho logs when the broker drops
the connection before its CONNACK, which is how a TLS 1.3 broker refuses a
client certificate) and :func:`explain_failure` turns it into a message that
names the broker, the CA file and what to do. Nothing here imports paho: the
shared package stays light, and the client is driven through its attributes.
"""

from __future__ import annotations

import logging
import re
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import TlsConfigError

__all__ = ["BrokerTls", "ConnectWatch", "check_ca_pem", "explain_failure"]

# OpenSSL's X509_V_ERR_* codes that have their own advice.
_NOT_YET_VALID, _EXPIRED = 9, 10
_HOSTNAME_MISMATCH, _IP_MISMATCH = 62, 64
# The reason in paho's log line of a failed read: "... [SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] ..."
_SSL_REASON = re.compile(r"\[SSL: ([A-Z0-9_]+)\]")
# paho's MQTT_LOG_ERR (paho.mqtt.enums.LogLevel), not imported to keep paho out of here.
_PAHO_LOG_ERR = 8


@dataclass(frozen=True)
class BrokerTls:
    """How to speak TLS to the broker.

    Args:
        ca_file: PEM bundle of the CAs that may sign the broker's certificate;
            None trusts the system's CAs (a broker with a public certificate).
        cert_file: this client's certificate (PEM), for brokers that require one.
        key_file: its private key (PEM, unencrypted); None when it is in ``cert_file``.
        check_hostname: refuse a certificate that does not name the host dialled.
            Leave it on; turn it off only for a broker reached by an address its
            certificate cannot name, and reissue the certificate instead when you can.

    Raises:
        TlsConfigError: a key without a certificate.
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    check_hostname: bool = True

    def __post_init__(self) -> None:
        if self.key_file is not None and self.cert_file is None:
            raise TlsConfigError(
                f"a TLS client key ({self.key_file}) is set without its certificate; "
                "set the certificate file too, or neither"
            )

    @property
    def trust(self) -> str:
        """What vouches for the broker, for messages: the CA file or the system's CAs."""
        return f"the CA file {self.ca_file}" if self.ca_file is not None else "the system's CAs"

    def context(self) -> ssl.SSLContext:
        """A client context: TLS >= 1.2, the broker verified, our certificate if any.

        Returns:
            The context, for paho's ``tls_set_context``.

        Raises:
            TlsConfigError: the CA file, the certificate or the key is missing,
                unreadable, not PEM, or the key does not belong to the certificate.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostname checked
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = self.check_hostname
        if self.ca_file is None:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            try:
                context.load_verify_locations(cafile=str(self.ca_file))
            except (OSError, ssl.SSLError) as e:
                raise TlsConfigError(
                    f"cannot use {self.ca_file} as the broker's CA bundle: {_why(e)}; it should "
                    "be the PEM certificate of the CA that signed the broker's certificate"
                ) from e
        if self.cert_file is not None:
            try:
                context.load_cert_chain(
                    str(self.cert_file), None if self.key_file is None else str(self.key_file)
                )
            except (OSError, ssl.SSLError) as e:
                key = self.key_file if self.key_file is not None else "the same file"
                raise TlsConfigError(
                    f"cannot use the TLS client certificate {self.cert_file} with the key in "
                    f"{key}: {_why(e)}; both must be PEM, the key unencrypted and matching "
                    "the certificate"
                ) from e
        return context


def check_ca_pem(pem: str, source: str) -> None:
    """Check that ``pem`` holds at least one CA certificate in PEM.

    Args:
        pem: the PEM text.
        source: where it came from, for the message.

    Raises:
        TlsConfigError: no certificate could be read from it.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as e:
        raise TlsConfigError(
            f"{source} is not a PEM CA certificate: {_why(e)}; expected "
            "'-----BEGIN CERTIFICATE-----' blocks"
        ) from e


def _why(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error)


def _explain_verification(
    error: ssl.SSLCertVerificationError, where: str, host: str, tls: BrokerTls | None
) -> str:
    trust = tls.trust if tls is not None else "the system's CAs"
    message = error.verify_message
    if error.verify_code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        return (
            f"{where} presented a certificate that is not valid for the name {host!r} "
            f"({message}); connect by a name the certificate lists (its subjectAltName), "
            f"or reissue the broker's certificate with {host!r} in it"
        )
    if error.verify_code in (_NOT_YET_VALID, _EXPIRED):
        return (
            f"{where} presented a certificate that failed verification against {trust}: "
            f"{message}; check this computer's clock, and renew the broker's certificate "
            "if it is out of date"
        )
    return (
        f"{where} presented a certificate that {trust} does not vouch for ({message}); "
        "the broker's certificate must be signed by a CA in that bundle: check that it "
        "is the CA that issued the broker's certificate (agents get it at enrolment)"
    )


def _explain_reason(reason: str, detail: str, where: str, port: int, tls: BrokerTls) -> str:
    if "CERTIFICATE_REQUIRED" in reason or (
        "HANDSHAKE_FAILURE" in reason and tls.cert_file is None
    ):
        return (
            f"{where} requires a client certificate (mutual TLS) and none is configured "
            f"({detail}); give this client a certificate and key signed by a CA the broker trusts"
        )
    if any(r in reason for r in ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN")) or (
        "CERTIFICATE_EXPIRED" in reason or "DECRYPT_ERROR" in reason
    ):
        return (
            f"{where} refused this client's certificate {tls.cert_file} ({detail}); it must be "
            "signed by a CA in the broker's cafile and be valid now"
        )
    if "WRONG_VERSION_NUMBER" in reason or "PACKET_LENGTH_TOO_LONG" in reason:
        return (
            f"{where} does not speak TLS ({detail}); is port {port} the broker's TLS listener "
            "(usually 8883)?"
        )
    if "PROTOCOL_VERSION" in reason or "UNSUPPORTED_PROTOCOL" in reason:
        return (
            f"{where} offers no TLS version this client accepts ({detail}); Corral needs TLS "
            "1.2 or newer: configure the broker's listener for it"
        )
    return f"TLS with {where} failed: {detail}"


def _ssl_reason(error: BaseException | str) -> str | None:
    """OpenSSL's reason (``TLSV13_ALERT_CERTIFICATE_REQUIRED``...) in an error or a log line."""
    if isinstance(error, ssl.SSLError):
        # Set on errors raised by OpenSSL; one made in Python has only its text.
        reason = getattr(error, "reason", None)
        if reason:
            return str(reason)
        error = str(error)
    if isinstance(error, str):
        found = _SSL_REASON.search(error)
        return found.group(1) if found is not None else None
    return None


def _explain_os_error(error: BaseException, where: str, port: int, tls: BrokerTls | None) -> str:
    if tls is not None and isinstance(error, ConnectionResetError | ssl.SSLEOFError):
        return (
            f"{where} closed the connection during the TLS handshake ({_why(error)}); is port "
            f"{port} the broker's TLS listener (usually 8883)?"
        )
    if tls is None and isinstance(error, ConnectionResetError):
        return (
            f"{where} reset the connection ({_why(error)}); if port {port} is a TLS listener, "
            "turn TLS on for this client"
        )
    if isinstance(error, ConnectionRefusedError):
        return f"{where} refused the connection ({_why(error)}); is the broker running there?"
    if isinstance(error, TimeoutError):
        return f"{where} did not answer in time; check the address and the network"
    return f"cannot connect to {where}: {type(error).__name__}: {_why(error)}"


def explain_failure(error: BaseException | str, host: str, port: int, tls: BrokerTls | None) -> str:
    """Say why a connection to the broker failed, and what to do.

    Args:
        error: the exception of a failed connect attempt, or the text of the
            error paho logged when the connection broke before its CONNACK.
        host: the broker host dialled.
        port: its port.
        tls: the TLS settings in use; None for a plain connection.

    Returns:
        A message naming the broker (and, for TLS, the CA file or client certificate).
    """
    where = f"the MQTT broker at {host}:{port}"
    if isinstance(error, ssl.SSLCertVerificationError):
        return _explain_verification(error, where, host, tls)
    reason = _ssl_reason(error)
    if tls is not None and reason is not None:
        return _explain_reason(reason, str(error), where, port, tls)
    if isinstance(error, str):
        if tls is None and "Connection reset" in error:
            return _explain_os_error(ConnectionResetError(error), where, port, tls)
        return f"cannot connect to {where}: {error}"
    return _explain_os_error(error, where, port, tls)


class ConnectWatch:
    """Why a paho client is not connected: the last reason, explained and logged.

    A new reason is logged at WARNING and a repeat at DEBUG, so a broker that is
    away for an hour does not fill the log with the same line every 30 s.
    paho's log callback formats every line it logs, so it is on only while
    connecting (until a CONNACK), never on the busy connected path.

    The owner of the client calls :meth:`attach` before connecting, and from its
    own paho callbacks :meth:`connected`, :meth:`refused` and :meth:`dropped`.

    Args:
        logger: where to log.
        host: the broker host.
        port: the broker port.
        tls: the TLS settings in use; None for a plain connection.
    """

    def __init__(self, logger: logging.Logger, host: str, port: int, tls: BrokerTls | None) -> None:
        self._logger = logger
        self.host = host
        self.port = port
        self.tls = tls
        self.failures = 0
        self._last: str | None = None
        self._client: Any = None
        self._read_error: str | None = None
        self._refused = False

    @property
    def last_error(self) -> str | None:
        """Why the last attempt failed; None once connected."""
        return self._last

    def attach(self, client: Any) -> None:
        """Watch ``client`` (a paho ``Client``): sets its connect-fail and log callbacks.

        Args:
            client: the paho client, not yet connecting.
        """
        self._client = client
        client.on_connect_fail = self._on_connect_fail
        client.on_log = self._on_log

    def connected(self) -> None:
        """The broker accepted us: forget the failure and stop reading paho's log."""
        self._last = None
        self._read_error = None
        self._refused = False
        if self._client is not None:
            self._client.on_log = None

    def disconnected(self) -> None:
        """An established connection is gone: read paho's log again while reconnecting."""
        if self._client is not None:
            self._client.on_log = self._on_log

    def refused(self, reason: object) -> str:
        """The broker answered CONNACK with a refusal (``Not authorized``...).

        Args:
            reason: the CONNACK's reason.

        Returns:
            The message recorded.
        """
        self._refused = True
        return self._record(
            f"it refused the login ({reason}); check the user name and password "
            "(an agent's are its device id and device token)"
        )

    def dropped(self, reason: object) -> str | None:
        """The connection closed before the broker accepted it: record why.

        Args:
            reason: paho's disconnect reason, used when paho logged no read error.

        Returns:
            The message recorded, or None when a refusal was recorded already.
        """
        read_error, self._read_error = self._read_error, None
        refused, self._refused = self._refused, False
        if read_error is not None:
            return self._record(read_error)
        if refused:
            return None
        hint = ""
        if self.tls is not None and self.tls.cert_file is None:
            hint = "; a broker that requires a client certificate does this"
        return self._record(f"it closed the connection before accepting the login ({reason}){hint}")

    def _record(self, error: BaseException | str) -> str:
        message = explain_failure(error, self.host, self.port, self.tls)
        self.failures += 1
        level = logging.DEBUG if message == self._last else logging.WARNING
        self._last = message
        self._logger.log(level, "%s", message)
        return message

    def _on_connect_fail(self, _client: Any, _userdata: Any) -> None:
        # paho passes no error, but calls this inside its `except OSError` around the
        # connect attempt, so the exception being handled is the reason.
        self._read_error = None
        self._record(sys.exception() or "the connect attempt failed; paho gave no reason")

    def _on_log(self, _client: Any, _userdata: Any, level: int, line: str) -> None:
        # paho logs a failed read ("failed to receive on socket: [SSL: ...] ...") and then
        # reports only "Unspecified error" to on_disconnect.
        if level == _PAHO_LOG_ERR and line.startswith("failed to "):
            self._read_error = line.partition(": ")[2] or line
