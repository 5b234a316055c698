"""The agent's configuration: one dataclass persisted as ``{data_dir}/agent.json``.

Enrolment writes the file (``corral agent enrol``); every later start reads it.
The file holds the device's credential, so it is written with mode 0600, through
a temporary file, ``fsync`` and ``os.replace``: a crash leaves either the old file
or the new one, never half of one. Unknown keys are refused, so a typo or a file
from a newer agent fails loudly instead of being silently ignored.

TLS to the broker (``mqtt_tls``): the CA bundle, client certificate and key
are file paths, relative to the data folder unless absolute. Enrolment writes
the CA the registry hands out to ``{data_dir}/mqtt-ca.pem``. The TLS keys are
written only when TLS is on, so a plain configuration stays readable by an
older agent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from corral.profiles import default_profiles_dir
from corral.tls import BrokerTls

__all__ = [
    "CONFIG_FILE",
    "MQTT_CA_FILE",
    "AgentConfig",
    "default_profiles_dir",
    "fsync_dir",
    "write_file_atomic",
]

logger = logging.getLogger(__name__)

CONFIG_FILE = "agent.json"
#: Where enrolment puts the broker's CA certificate, in the data folder.
MQTT_CA_FILE = "mqtt-ca.pem"
_ENROL_HINT = "run `corral agent enrol --registry URL --token TOKEN` to enrol this device"
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "device_id": str,
    "device_token": str,
    "registry_url": str,
    "mqtt_host": str,
    "mqtt_port": int,
    "metadata_url": str,
    "targets_url": str,
}
_OPTIONAL: dict[str, type | tuple[type, ...]] = {
    "profile": (str, type(None)),
    "profiles_dir": (str, type(None)),
    "report_interval_s": (int, float),
    "poll_interval_s": (int, float),
    "mqtt_tls": bool,
    "mqtt_ca_file": (str, type(None)),
    "mqtt_cert_file": (str, type(None)),
    "mqtt_key_file": (str, type(None)),
    "mqtt_tls_check_hostname": bool,
}
_TLS_FILES = ("mqtt_ca_file", "mqtt_cert_file", "mqtt_key_file")


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (renames, new files) to disk.

    Args:
        directory: the directory whose entries changed.

    Raises:
        OSError: the directory cannot be opened.
    """
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file.

    The data goes to a temporary file in the same directory (created with
    ``mode`` from the start, so a secret is never readable by others), is
    fsynced, renamed over ``path``, and the directory is fsynced.

    Args:
        path: the file to write; its directory must exist.
        data: the whole new content.
        mode: permission bits of the new file.

    Raises:
        OSError: the file cannot be written.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp).replace(path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            Path(tmp).unlink()
        raise
    fsync_dir(path.parent)


@dataclass
class AgentConfig:
    """Everything the agent needs to talk to its registry and broker.

    ``data_dir`` is where the file lives and is not stored in it. ``profile`` is a
    firmware profile name, or ``None`` to detect the hardware at each start.
    ``profiles_dir`` ``None`` means :func:`default_profiles_dir`.

    With ``mqtt_tls`` the agent speaks TLS to the broker: ``mqtt_ca_file`` is the
    CA bundle that vouches for the broker (None: the system's CAs), and
    ``mqtt_cert_file`` / ``mqtt_key_file`` a client certificate for a broker that
    requires one. Relative paths are relative to ``data_dir``.
    """

    data_dir: Path
    device_id: str
    device_token: str
    registry_url: str
    mqtt_host: str
    mqtt_port: int
    metadata_url: str
    targets_url: str
    profile: str | None = None
    profiles_dir: Path | None = None
    report_interval_s: float = 5.0
    poll_interval_s: float = 30.0
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_tls_check_hostname: bool = True

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if self.profiles_dir is not None:
            self.profiles_dir = Path(self.profiles_dir)
        for name in _TLS_FILES:
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        if not self.mqtt_tls:
            stray = [name for name in _TLS_FILES if getattr(self, name) is not None]
            if stray:
                raise ConfigError(
                    f"{', '.join(stray)} set but mqtt_tls is false; set mqtt_tls to true "
                    "(and mqtt_port to the broker's TLS port, usually 8883) or remove them"
                )
        if self.mqtt_key_file is not None and self.mqtt_cert_file is None:
            raise ConfigError("mqtt_key_file is set without mqtt_cert_file; set both, or neither")
        if not 0 < self.mqtt_port < 65536:
            raise ConfigError(f"mqtt_port should be 1..65535, got {self.mqtt_port}")
        for name in ("report_interval_s", "poll_interval_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("registry_url", "metadata_url", "targets_url"):
            url = getattr(self, name)
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"{name} should be an http:// or https:// URL, got {url!r}")
        if not self.device_token:
            raise ConfigError("device_token is empty; " + _ENROL_HINT)

    @property
    def path(self) -> Path:
        """``{data_dir}/agent.json``."""
        return self.data_dir / CONFIG_FILE

    @property
    def tuf_metadata_dir(self) -> Path:
        """TUF ngclient's metadata folder; enrolment puts the trusted root.json here."""
        return self.data_dir / "tuf" / "metadata"

    @property
    def downloads_dir(self) -> Path:
        """Partial downloads of model files, resumed after a drop or a restart."""
        return self.data_dir / "downloads"

    @property
    def broker_tls(self) -> BrokerTls | None:
        """The TLS settings for the broker link (paths resolved), or None for plain MQTT.

        The files are read when the link is made (:class:`agent.mqtt.AgentLink`).
        """
        if not self.mqtt_tls:
            return None

        def resolve(path: Path | None) -> Path | None:
            return None if path is None else self.data_dir / path

        return BrokerTls(
            ca_file=resolve(self.mqtt_ca_file),
            cert_file=resolve(self.mqtt_cert_file),
            key_file=resolve(self.mqtt_key_file),
            check_hostname=self.mqtt_tls_check_hostname,
        )

    @property
    def resolved_profiles_dir(self) -> Path:
        """``profiles_dir``, or the default folder when it is not set."""
        return self.profiles_dir if self.profiles_dir is not None else default_profiles_dir()

    def to_dict(self) -> dict[str, Any]:
        """The JSON document stored in agent.json (``data_dir`` is not stored)."""
        document: dict[str, Any] = {
            "device_id": self.device_id,
            "device_token": self.device_token,
            "registry_url": self.registry_url,
            "mqtt_host": self.mqtt_host,
            "mqtt_port": self.mqtt_port,
            "metadata_url": self.metadata_url,
            "targets_url": self.targets_url,
            "profile": self.profile,
            "profiles_dir": None if self.profiles_dir is None else str(self.profiles_dir),
            "report_interval_s": self.report_interval_s,
            "poll_interval_s": self.poll_interval_s,
        }
        if self.mqtt_tls:
            document["mqtt_tls"] = True
            for name in _TLS_FILES:
                value = getattr(self, name)
                document[name] = None if value is None else str(value)
            document["mqtt_tls_check_hostname"] = self.mqtt_tls_check_hostname
        return document

    @classmethod
    def from_dict(cls, data: dict[str, Any], data_dir: Path) -> AgentConfig:
        """Validate a parsed agent.json.

        Args:
            data: the parsed document.
            data_dir: the folder it came from.

        Returns:
            The configuration.

        Raises:
            ConfigError: unknown keys, missing keys or values of the wrong type.
        """
        where = str(Path(data_dir) / CONFIG_FILE)
        if not isinstance(data, dict):
            raise ConfigError(f"{where} should hold a JSON object; {_ENROL_HINT}")
        unknown = set(data) - set(_REQUIRED) - set(_OPTIONAL)
        if unknown:
            raise ConfigError(
                f"{where} has unknown keys {sorted(unknown)}; allowed: "
                f"{sorted({*_REQUIRED, *_OPTIONAL})}"
            )
        missing = set(_REQUIRED) - set(data)
        if missing:
            raise ConfigError(f"{where} lacks {sorted(missing)}; {_ENROL_HINT}")
        for key, kind in (_REQUIRED | _OPTIONAL).items():
            if key not in data:
                continue
            value = data[key]
            # bool is an int to isinstance: refuse it where a number is expected.
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ConfigError(f"{where}: {key} has the wrong type: {value!r:.60}")
        return cls(data_dir=Path(data_dir), **data)

    @classmethod
    def load(cls, data_dir: Path) -> AgentConfig:
        """Read ``{data_dir}/agent.json``.

        Args:
            data_dir: the agent's data folder.

        Returns:
            The configuration.

        Raises:
            ConfigError: the file is missing, unreadable, not JSON or not valid.
        """
        path = Path(data_dir) / CONFIG_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"this device is not enrolled: {path} does not exist; " f"{_ENROL_HINT}"
            ) from None
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}") from e
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); {_ENROL_HINT}") from e
        return cls.from_dict(data, Path(data_dir))

    def save(self) -> None:
        """Write agent.json atomically with mode 0600 (it holds the device token).

        Raises:
            ConfigError: the file cannot be written.
        """
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            body = json.dumps(self.to_dict(), indent=2).encode() + b"\n"
            write_file_atomic(self.path, body, mode=0o600)
        except OSError as e:
            raise ConfigError(f"cannot write {self.path}: {e.strerror}") from e
        logger.info("wrote %s", self.path)
