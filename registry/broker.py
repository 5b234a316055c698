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
credential, and the registry account), ``acl``, and ``corral.conf`` (the
three settings that turn them on). Mosquitto rereads them on ``SIGHUP`` and
disconnects clients whose credentials are gone, so a revoked device is cut
off once the files are written again and the broker is told.
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
    "acl_file",
    "check_password",
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
ACL_FILE = "acl"
CONF_FILE = "corral.conf"


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

    @property
    def password_path(self) -> Path:
        """The password file."""
        return self.directory / PASSWORD_FILE

    @property
    def acl_path(self) -> Path:
        """The ACL file."""
        return self.directory / ACL_FILE

    @property
    def conf_path(self) -> Path:
        """The Mosquitto configuration fragment that uses both."""
        return self.directory / CONF_FILE


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
) -> BrokerFiles:
    """Write ``passwd``, ``acl`` and ``corral.conf`` for the devices in the database.

    Args:
        session: a database session.
        directory: where to write (created if missing).
        registry_user: the registry's broker account name.
        registry_password: its password (``CORRAL_MQTT_PASSWORD``).
        group: the group the files get (mode 0640), so that Mosquitto, which
            reads them after dropping root, can; None keeps the writer's group.

    Returns:
        What was written, and which devices were left out and why.

    Raises:
        ConfigError: the registry account's name could be a device id, or its
            password is shorter than 16 characters; the group does not exist;
            or the directory cannot be written.
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
    result = BrokerFiles(Path(directory), registry_user)
    entries = [(registry_user, hash_password(registry_password))]
    for device in session.scalars(select(Device).order_by(Device.id)):
        if device.revoked_at is not None:
            result.revoked.append(device.id)
        elif not device.mqtt_password_hash:
            result.without_credential.append(device.id)
        else:
            result.devices.append(device.id)
            entries.append((device.id, device.mqtt_password_hash))
    conf = (
        "# Written by `corral registry broker-files`: Corral's broker authentication.\n"
        "# Add a listener; reload Mosquitto (SIGHUP) after writing the files again.\n"
        "allow_anonymous false\n"
        f"password_file {result.password_path.resolve()}\n"
        f"acl_file {result.acl_path.resolve()}\n"
        "# Mosquitto drops what it holds for a client past 1,000 messages by default, even\n"
        "# messages it acknowledged to the sender: a registry a burst behind (a restart, a\n"
        "# fleet back after an outage) would lose reports. Hold more; cap the memory.\n"
        "max_queued_messages 200000\n"
        "max_queued_bytes 268435456\n"
    )
    try:
        result.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(result.password_path, password_file(entries), gid)
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
