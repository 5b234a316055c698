"""Mosquitto's password and ACL files, made from the device table.

A device logs in to the broker with its device id as user name and its device
token (from enrolment) as password. The registry keeps only the SHA-256 of
that token for its HTTP API, which Mosquitto cannot check, so enrolment also
stores the token's hash in Mosquitto's own format (PBKDF2-SHA512, ``$7$``,
as ``mosquitto_passwd`` writes it) in ``devices.mqtt_password_hash``.
Devices enrolled before that column existed get theirs the next time they
call the API with their token (``remember_credential``, from
``api.deps.identify``); the agent polls its desired version, so that is soon.

What the files allow, from ``corral.topics`` (one ACL for every device, by
``pattern`` rules on ``%u``, so the ACL file does not change as the fleet does)::

    device <id>        write  corral/v1/devices/<id>/{status,telemetry,inference,accuracy,events}
                       read   corral/v1/devices/<id>/desired
    registry account   read   corral/v1/devices/#
                       write  corral/v1/devices/+/desired

Anything not granted is denied: Mosquitto drops a denied publish (an MQTT
3.1.1 client is not told) and delivers no message a client may not read,
whatever it subscribed to. The registry account's name is not a valid device
id (it has an underscore), so no device can enrol under it.

``write_broker_files`` writes, each atomically (temp file, fsync,
``os.replace``): ``passwd`` (every enrolled, unrevoked device with a broker
credential, and the registry account, which goes into ``registry-passwd``
instead with two listeners), ``acl``, and ``corral.conf`` (the
settings that turn them on). Mosquitto rereads them on ``SIGHUP`` and
disconnects clients whose credentials are gone, so a revoked device is cut
off once the files are written again and the broker is told.

Client ids: Mosquitto lets a client take any client id, and a second
connection with an id in use closes the first, so one device could knock
another off the broker. Given two :class:`Listener` s, ``corral.conf``
declares them with ``per_listener_settings true``::

    devices listener   use_username_as_clientid true   passwd (devices only)
    registry listener  client ids as sent (replicas)   registry-passwd (registry only)

On the devices listener every client id is the user name, the device id, so
no device can take another's; the registry account cannot log in there, so
replicas, which share it, cannot end up with one id either. Devices cannot log
in on the registry's listener. Without listeners ``corral.conf`` is the old
single fragment for a listener of the operator's, and the gap stays open.
"""

from __future__ import annotations

import base64
import grp
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.errors import PayloadError
from corral.topics import AGENT_KINDS, PREFIX, REGISTRY_KINDS, check_device_id
from registry.alerts.engine import ALERT_TOPIC
from registry.errors import ConfigError
from registry.tables import Device

__all__ = [
    "DEFAULT_REGISTRY_USER",
    "BrokerFiles",
    "Listener",
    "acl_file",
    "check_password",
    "conf_file",
    "hash_password",
    "password_file",
    "remember_credential",
    "write_broker_files",
]

#: The registry's broker account unless ``CORRAL_MQTT_USERNAME`` names another.
DEFAULT_REGISTRY_USER = "corral_registry"

#: mosquitto_passwd's defaults for ``$7$`` (Mosquitto 2): 12 bytes of salt, 101 rounds.
#: Device passwords are 256-bit random tokens, which more rounds would not make
#: harder to guess; they would only cost the broker CPU in a reconnect storm.
_ITERATIONS = 101
_HASH = re.compile(r"^\$7\$([0-9]{1,7})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)$")
# What Mosquitto's files can hold; it must also not be a device id (corral.topics).
_SERVICE_USER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_MIN_SERVICE_PASSWORD = 16

PASSWORD_FILE = "passwd"
REGISTRY_PASSWORD_FILE = "registry-passwd"
ACL_FILE = "acl"
CONF_FILE = "corral.conf"
# What Mosquitto's `listener` line takes as a bind address: a host name or an IP address.
_ADDRESS = re.compile(r"^[A-Za-z0-9_.:-]{1,253}$")


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = _ITERATIONS
) -> str:
    """Hash ``password`` the way ``mosquitto_passwd`` does (PBKDF2-SHA512, ``$7$``).

    Args:
        password: the password (a device token).
        salt: the salt; 12 random printable bytes when None.
        iterations: PBKDF2 rounds.

    Returns:
        ``$7$<iterations>$<salt, base64>$<hash, base64>``.
    """
    # Printable salt bytes (12 base64url characters, 72 random bits): Mosquitto takes
    # any bytes, and EMQX's user import wants the salt as text (docs/broker.md).
    salt = secrets.token_urlsafe(9).encode() if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(encoded: str, password: str) -> bool:
    """Whether ``password`` matches a ``$7$`` hash (as Mosquitto would decide).

    Args:
        encoded: the hash, from :func:`hash_password` or ``mosquitto_passwd``.
        password: the password to check.

    Returns:
        Whether it matches; False for a hash that is not ``$7$``.
    """
    match = _HASH.match(encoded)
    if match is None:
        return False
    iterations, salt, expected = match.groups()
    salt_bytes = base64.b64decode(salt)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt_bytes, int(iterations), 64)
    return hmac.compare_digest(base64.b64encode(digest).decode(), expected)


def remember_credential(device: Device, token: str) -> bool:
    """Give a device enrolled before broker credentials its password hash.

    Args:
        device: the device row; the caller commits.
        token: the device token that just authenticated as ``device``.

    Returns:
        Whether the row changed (it had no hash).
    """
    if device.mqtt_password_hash:
        return False
    device.mqtt_password_hash = hash_password(token)
    return True


def acl_file(registry_user: str) -> str:
    """The ACL file: devices by ``%u`` pattern, the registry account by name.

    Args:
        registry_user: the registry's broker user name.

    Returns:
        The file's text.

    Raises:
        ConfigError: the user name could be a device id, or holds characters
            Mosquitto's files cannot take.
    """
    _check_registry_user(registry_user)
    lines = [
        "# Written by `corral registry broker-files`; regenerate rather than edit.",
        "# Each device (user name = device id) publishes under its own topics only",
        "# and reads only its own desired version.",
    ]
    lines += [f"pattern write {PREFIX}/%u/{kind}" for kind in AGENT_KINDS]
    lines += [f"pattern read {PREFIX}/%u/{kind}" for kind in REGISTRY_KINDS]
    lines += [
        "",
        "# The registry reads every device topic, publishes desired versions and alerts.",
        f"user {registry_user}",
        f"topic read {PREFIX}/#",
    ]
    lines += [f"topic write {PREFIX}/+/{kind}" for kind in REGISTRY_KINDS]
    lines += [f"topic write {ALERT_TOPIC}/#"]
    return "\n".join(lines) + "\n"


@dataclass
class BrokerFiles:
    """What :func:`write_broker_files` wrote and whom it left out.

    ``devices`` could log in; ``revoked`` and ``without_credential`` could not
    (the latter were enrolled before broker credentials and have not called
    the API since).
    """

    directory: Path
    registry_user: str
    devices: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    without_credential: list[str] = field(default_factory=list)
    #: Whether ``corral.conf`` declares the two listeners (client ids closed).
    listeners: bool = False

    @property
    def password_path(self) -> Path:
        """The password file: devices, and with one listener the registry account."""
        return self.directory / PASSWORD_FILE

    @property
    def registry_password_path(self) -> Path | None:
        """The registry listener's password file; None with one listener for all."""
        return self.directory / REGISTRY_PASSWORD_FILE if self.listeners else None

    @property
    def acl_path(self) -> Path:
        """The ACL file."""
        return self.directory / ACL_FILE

    @property
    def conf_path(self) -> Path:
        """The Mosquitto configuration fragment that uses both."""
        return self.directory / CONF_FILE


@dataclass(frozen=True)
class Listener:
    """A listener ``corral.conf`` declares: port, bind address, and optionally TLS.

    With ``certfile`` (and ``keyfile``) it speaks only TLS (1.2 or newer);
    ``cafile`` is the CA that vouches for client certificates, needed with
    ``require_certificate`` (mutual TLS). Paths are written as given, resolved.

    Raises:
        ConfigError: a port outside 1..65535, an address Mosquitto cannot take,
            a key without its certificate (or the reverse), or TLS options
            without a certificate.
    """

    port: int
    #: None: every address of the machine.
    address: str | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    cafile: Path | None = None
    require_certificate: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"a listener's port should be 1..65535, got {self.port}")
        if self.address is not None and not _ADDRESS.match(self.address):
            raise ConfigError(
                f"a listener's address should be a host name or an IP address, "
                f"got {self.address!r:.80}"
            )
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError(
                "a TLS listener needs both the broker's certificate and its key; "
                "give --tls-certfile and --tls-keyfile together"
            )
        if self.certfile is None and (self.cafile is not None or self.require_certificate):
            raise ConfigError(
                "a CA file or --require-certificate without the broker's certificate; "
                "give --tls-certfile and --tls-keyfile too"
            )
        if self.require_certificate and self.cafile is None:
            raise ConfigError(
                "--require-certificate needs the CA that signs client certificates (--tls-cafile)"
            )

    @classmethod
    def parse(cls, spec: str) -> Listener:
        """A plain listener from ``PORT`` or ``ADDRESS:PORT`` (``[::1]:PORT`` for IPv6).

        Args:
            spec: the port, optionally after the bind address.

        Returns:
            The listener; ``dataclasses.replace`` adds TLS.

        Raises:
            ConfigError: the port is not a number in 1..65535, or the address is unusable.
        """
        address, _, port = spec.rpartition(":")
        if not port.isdigit() or (":" in address and not address.startswith("[")):
            raise ConfigError(
                f"a listener is PORT or ADDRESS:PORT ([ADDRESS]:PORT for IPv6), got {spec!r:.80}"
            )
        return cls(int(port), address.strip("[]") or None)

    @property
    def tls(self) -> bool:
        """Whether the listener speaks TLS."""
        return self.certfile is not None

    def describe(self) -> str:
        """``ADDRESS:PORT`` (``*`` for every address), and ``TLS`` when it speaks it."""
        return f"{self.address or '*'}:{self.port}{' TLS' if self.tls else ''}"

    def lines(self) -> list[str]:
        """The ``listener`` line and its TLS options."""
        lines = [f"listener {self.port}" + (f" {self.address}" if self.address else "")]
        if self.certfile is not None and self.keyfile is not None:
            if self.cafile is not None:
                lines.append(f"cafile {Path(self.cafile).resolve()}")
            lines += [
                f"certfile {Path(self.certfile).resolve()}",
                f"keyfile {Path(self.keyfile).resolve()}",
                "tls_version tlsv1.2",
            ]
            if self.require_certificate:
                lines.append("require_certificate true")
        return lines


def conf_file(
    directory: Path, devices: Listener | None = None, registry: Listener | None = None
) -> str:
    """``corral.conf``: authentication, queue limits and, given both, the two listeners.

    Args:
        directory: where the password and ACL files are (their paths go in resolved).
        devices: the agents' listener, where each client id is its user name.
        registry: the registry's listener, where replicas keep their own client ids.

    Returns:
        The file's text.

    Raises:
        ConfigError: one listener without the other, or both on one port.
    """
    if (devices is None) != (registry is None):
        raise ConfigError(
            "give both listeners (--devices-listener and --registry-listener) or neither: "
            "the registry cannot share the devices' listener, where every client id is "
            "the user name and replicas would knock each other off"
        )
    directory = Path(directory).resolve()
    lines = ["# Written by `corral registry broker-files`; regenerate rather than edit."]
    if devices is None or registry is None:
        lines += [
            "# Corral's broker authentication: add a listener; reload Mosquitto (SIGHUP)",
            "# after writing the files again.",
            "allow_anonymous false",
            f"password_file {directory / PASSWORD_FILE}",
            f"acl_file {directory / ACL_FILE}",
        ]
    else:
        if devices.port == registry.port:
            raise ConfigError(
                f"the devices' and the registry's listeners are both on port {devices.port}; "
                "give them different ports"
            )
        lines += [
            "# Corral's listeners and broker authentication: Mosquitto needs no other",
            "# listener. Reload Mosquitto (SIGHUP) after writing the files again.",
            "# Every listener below has its own authentication settings.",
            "per_listener_settings true",
        ]
    lines += [
        "# Mosquitto drops what it holds for a client past 1,000 messages by default, even",
        "# messages it acknowledged to the sender: a registry a burst behind (a restart, a",
        "# fleet back after an outage) would lose reports. Hold more; cap the memory.",
        "max_queued_messages 200000",
        "max_queued_bytes 268435456",
    ]
    if devices is not None and registry is not None:
        lines += [
            "",
            "# Agents. Every client id is the user name, the device id: no device can take",
            "# another's and knock it off the broker. The registry account cannot log in here.",
            *devices.lines(),
            "allow_anonymous false",
            f"password_file {directory / PASSWORD_FILE}",
            f"acl_file {directory / ACL_FILE}",
            "use_username_as_clientid true",
            "",
            "# The registry: each replica keeps its own client id. Only the registry",
            "# account logs in here.",
            *registry.lines(),
            "allow_anonymous false",
            f"password_file {directory / REGISTRY_PASSWORD_FILE}",
            f"acl_file {directory / ACL_FILE}",
        ]
    return "\n".join(lines) + "\n"


def password_file(entries: Iterable[tuple[str, str]]) -> str:
    """A Mosquitto password file of ``(user, $7$ hash)`` pairs, in the order given.

    Args:
        entries: user names and their hashes.

    Returns:
        The file's text.

    Raises:
        ConfigError: a user name holds ``:`` or a line break, or a hash is not ``$7$``.
    """
    lines = []
    for user, encoded in entries:
        if ":" in user or "\n" in user or not _HASH.match(encoded):
            raise ConfigError(f"cannot write a password file entry for {user!r:.80}")
        lines.append(f"{user}:{encoded}")
    return "\n".join(lines) + "\n" if lines else ""


def write_broker_files(
    session: Session,
    directory: Path,
    registry_user: str,
    registry_password: str,
    *,
    group: str | None = None,
    devices: Listener | None = None,
    registry: Listener | None = None,
) -> BrokerFiles:
    """Write ``passwd``, ``acl`` and ``corral.conf`` for the devices in the database.

    Given both listeners, the registry account goes into ``registry-passwd``
    (the registry's listener) instead of ``passwd`` (the devices').

    Args:
        session: a database session.
        directory: where to write (created if missing).
        registry_user: the registry's broker account name.
        registry_password: its password (``CORRAL_MQTT_PASSWORD``).
        group: the group the files get (mode 0640), so that Mosquitto, which
            reads them after dropping root, can; None keeps the writer's group.
        devices: the agents' listener (see :func:`conf_file`); None with ``registry``
            None: one fragment for a listener of the operator's.
        registry: the registry's listener.

    Returns:
        What was written, and which devices were left out and why.

    Raises:
        ConfigError: the registry account's name could be a device id, or its
            password is shorter than 16 characters; one listener without the
            other; the group does not exist; or the directory cannot be written.
    """
    _check_registry_user(registry_user)
    if len(registry_password) < _MIN_SERVICE_PASSWORD:
        raise ConfigError(
            f"the registry's broker password (CORRAL_MQTT_PASSWORD) is shorter than "
            f"{_MIN_SERVICE_PASSWORD} characters; set a long random one"
        )
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError as e:
            raise ConfigError(f"no group {group!r} on this machine; name Mosquitto's group") from e
    conf = conf_file(directory, devices, registry)
    result = BrokerFiles(Path(directory), registry_user, listeners=devices is not None)
    service = [(registry_user, hash_password(registry_password))]
    entries = [] if result.listeners else list(service)
    for device in session.scalars(select(Device).order_by(Device.id)):
        if device.revoked_at is not None:
            result.revoked.append(device.id)
        elif not device.mqtt_password_hash:
            result.without_credential.append(device.id)
        else:
            result.devices.append(device.id)
            entries.append((device.id, device.mqtt_password_hash))
    try:
        result.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(result.password_path, password_file(entries), gid)
        if result.registry_password_path is not None:
            _write_atomic(result.registry_password_path, password_file(service), gid)
        _write_atomic(result.acl_path, acl_file(registry_user), gid)
        _write_atomic(result.conf_path, conf, gid)
    except OSError as e:
        raise ConfigError(f"cannot write the broker files into {directory}: {e}") from e
    return result


def _check_registry_user(user: str) -> None:
    try:
        check_device_id(user)
    except PayloadError:
        could_be_a_device = False
    else:
        could_be_a_device = True
    if could_be_a_device or not _SERVICE_USER.match(user):
        raise ConfigError(
            f"the registry's broker user {user!r:.80} could be a device id (or holds characters "
            "other than letters, digits, '_', '.', '-'); give it an underscore, "
            f"like {DEFAULT_REGISTRY_USER!r}"
        )


def _write_atomic(path: Path, text: str, gid: int) -> None:
    # 0640: the password file holds only hashes, but only the broker needs them.
    # Mosquitto started as root reads its files after dropping to its own user:
    # hence the group. A new inode every time, so the group is set every time.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).chmod(0o640)
        if gid != -1:
            os.chown(tmp, -1, gid)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
