"""Registry settings, read from ``CORRAL_*`` environment variables.

``Settings()`` reads the environment; tests and the CLI pass values directly.
In local mode (the default) a missing admin token is generated once into
``{data_dir}/admin-token`` (mode 0600) and reused; outside local mode the
registry refuses to start without ``CORRAL_ADMIN_TOKEN``.

Two broker addresses: ``mqtt_*`` is where this registry's bridge connects,
``agent_mqtt_*`` what agents are told at enrolment (each unset falls back to
the registry's own). They differ when the broker gives devices a listener of
their own (docs/broker.md, "Client ids").
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from corral.errors import TlsConfigError
from corral.tls import BrokerTls, check_ca_pem
from registry.alerts.rules import AlertRules
from registry.errors import ConfigError
from registry.retention import RetentionPolicy

if TYPE_CHECKING:
    from registry.governance import Policy

__all__ = ["AgentBroker", "Settings"]

ADMIN_TOKEN_FILE = "admin-token"


@dataclass(frozen=True)
class AgentBroker:
    """The broker as agents are told it at enrolment (:meth:`Settings.agent_broker`).

    ``ca_file``: the CA bundle handed to agents; None with ``tls`` means they
    trust their system's CAs.
    """

    host: str
    port: int
    tls: bool
    ca_file: Path | None


class Settings(BaseSettings):
    """Everything the registry needs to know at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="CORRAL_", extra="forbid", env_nested_delimiter="__"
    )

    data_dir: Path = Path(".corral/registry")
    #: SQLAlchemy URL; None means a SQLite file ``registry.db`` in ``data_dir``.
    database_url: str | None = None
    #: How agents reach this registry; the base of metadata_url and targets_url.
    public_url: str = "http://127.0.0.1:8080"
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    #: None derives a stable id from data_dir, so the persistent session survives restarts.
    mqtt_client_id: str | None = None
    #: Several replicas on one database share ingest through the MQTT 5 shared
    #: subscription ``$share/<group>/...`` (the broker hands each message to one of
    #: them). None: MQTT 3.1.1 and a plain subscription, as a lone registry needs.
    mqtt_shared_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    #: MQTT 5 (persistent sessions that expire) or 3.1.1 (brokers without 5, e.g. amqtt).
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    #: How long the broker keeps queueing for this registry while it is away (MQTT 5).
    mqtt_session_expiry_s: int = Field(default=24 * 3600, ge=0)
    #: The registry's broker account (registry.broker); None connects anonymously.
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    #: Speak TLS (1.2 or newer) to the broker, e.g. on port 8883. Agents enrolled
    #: from now on are told to do the same (unless ``agent_mqtt_tls`` says otherwise),
    #: and are handed ``mqtt_ca_file``.
    mqtt_tls: bool = False
    #: PEM bundle of the CA that signed the broker's certificate; None trusts the
    #: system's CAs. Handed to agents at enrolment (unless ``agent_mqtt_ca_file`` is
    #: set), so they trust the same broker.
    mqtt_ca_file: Path | None = None
    #: This registry's client certificate and key (PEM), for a broker that requires
    #: one (Mosquitto ``require_certificate true``); the key may sit in the certificate file.
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    #: Refuse a broker certificate that does not name ``mqtt_host``. Leave it on.
    mqtt_tls_check_hostname: bool = True
    #: The broker address agents are told at enrolment, when it is not the registry's
    #: own: Mosquitto's devices-only listener (docs/broker.md, "Client ids"). None:
    #: ``mqtt_host`` / ``mqtt_port``. With TLS the host must be a name in the broker's
    #: certificate: agents check it.
    agent_mqtt_host: str | None = None
    agent_mqtt_port: int | None = Field(default=None, ge=1, le=65535)
    #: Whether agents speak TLS to that address; None: as this registry does (``mqtt_tls``).
    agent_mqtt_tls: bool | None = None
    #: The CA bundle (PEM) handed to agents for that address; None: ``mqtt_ca_file``.
    #: Refused while agents do not speak TLS.
    agent_mqtt_ca_file: Path | None = None
    admin_token: SecretStr | None = None
    #: Local mode allows a generated admin token; turn off for shared deployments.
    local: bool = True
    enrolment_ttl_s: int = Field(default=3600, gt=0, le=30 * 24 * 3600)
    #: At most this many API requests use the database at once; the rest queue, and
    #: one that waited ``request_wait_s`` gets 503 with Retry-After (registry.api.admission).
    #: The database pool is sized from it: this many plus the registry's own workers'.
    max_db_requests: int = Field(default=24, ge=1, le=1000)
    request_wait_s: float = Field(default=10.0, gt=0, le=300)
    #: How often the rollout engine advances active rollouts (registry.rollout).
    rollout_interval_s: float = Field(default=2.0, gt=0)
    #: Refuse production rollouts of a version with no passed, approved staging rollout.
    require_staging: bool = False
    #: Alert rules and their thresholds (registry.alerts), e.g. CORRAL_ALERTS__MIN_ACCURACY=0.9.
    alerts: AlertRules = Field(default_factory=AlertRules)
    #: How long reports are kept (registry.retention): raw for days, per-bucket figures
    #: for months, e.g. CORRAL_RETENTION__RAW_DAYS=14, CORRAL_RETENTION__AGGREGATE_DAYS=400.
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    #: Governance policies (registry.governance.Policy), as JSON; or a TOML file of
    #: ``[[policy]]`` tables in ``policies_file``.
    policies: list[dict[str, Any]] = Field(default_factory=list)
    policies_file: Path | None = None
    #: How often the TUF refresher looks at snapshot and timestamp expiry.
    tuf_refresh_interval_s: float = Field(default=600.0, gt=0)
    #: Where model files live: ``local`` (``data_dir/blobs``) or ``s3``, an
    #: S3-compatible bucket (registry.s3blobs); credentials come from boto3's own
    #: chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, a pod role).
    blob_store: Literal["local", "s3"] = "local"
    s3_bucket: str | None = None
    #: None for AWS itself; e.g. http://minio:9000 for another S3-compatible store.
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    #: Key prefix of the blobs in the bucket, so one bucket can hold several registries.
    s3_prefix: str = Field(default="blobs/", pattern=r"^([A-Za-z0-9._-]+/)*$")

    def broker_tls(self) -> BrokerTls | None:
        """The TLS settings of the bridge to the broker; None for plain MQTT.

        Raises:
            ConfigError: a CA, certificate or key file is set while ``mqtt_tls`` is off,
                or a key without its certificate.
        """
        files = {
            "CORRAL_MQTT_CA_FILE": self.mqtt_ca_file,
            "CORRAL_MQTT_CERT_FILE": self.mqtt_cert_file,
            "CORRAL_MQTT_KEY_FILE": self.mqtt_key_file,
        }
        if not self.mqtt_tls:
            stray = [name for name, value in files.items() if value is not None]
            if stray:
                raise ConfigError(
                    f"{', '.join(stray)} set but CORRAL_MQTT_TLS is off; set CORRAL_MQTT_TLS=true "
                    "(and a TLS port, usually 8883) or unset them"
                )
            return None
        try:
            return BrokerTls(
                ca_file=self.mqtt_ca_file,
                cert_file=self.mqtt_cert_file,
                key_file=self.mqtt_key_file,
                check_hostname=self.mqtt_tls_check_hostname,
            )
        except TlsConfigError as e:
            raise ConfigError(f"CORRAL_MQTT_KEY_FILE: {e}") from e

    def agent_broker(self) -> AgentBroker:
        """The broker address, TLS and CA file agents are told at enrolment.

        Each ``agent_mqtt_*`` setting left unset is the registry's own; the CA file
        is ``agent_mqtt_ca_file``, else ``mqtt_ca_file``, and only with TLS.

        Raises:
            ConfigError: ``agent_mqtt_ca_file`` is set while agents do not speak TLS.
        """
        tls = self.mqtt_tls if self.agent_mqtt_tls is None else self.agent_mqtt_tls
        if not tls and self.agent_mqtt_ca_file is not None:
            raise ConfigError(
                "CORRAL_AGENT_MQTT_CA_FILE set but agents do not speak TLS to the broker; set "
                "CORRAL_AGENT_MQTT_TLS=true (and CORRAL_AGENT_MQTT_PORT to the TLS listener's "
                "port, usually 8883) or unset it"
            )
        ca_file = self.agent_mqtt_ca_file or (self.mqtt_ca_file if self.mqtt_tls else None)
        return AgentBroker(
            host=self.agent_mqtt_host or self.mqtt_host,
            port=self.agent_mqtt_port or self.mqtt_port,
            tls=tls,
            ca_file=ca_file if tls else None,
        )

    def broker_ca_pem(self) -> str | None:
        """The broker's CA certificate(s) in PEM, as agents get them at enrolment.

        Returns:
            The text of :meth:`agent_broker`'s CA file; None without TLS or without a
            CA file (agents then trust their system's CAs).

        Raises:
            ConfigError: the file cannot be read or holds no PEM certificate, or the
                agents' TLS settings contradict each other (:meth:`agent_broker`).
        """
        path = self.agent_broker().ca_file
        if path is None:
            return None
        setting = "CORRAL_AGENT_MQTT_CA_FILE" if self.agent_mqtt_ca_file else "CORRAL_MQTT_CA_FILE"
        try:
            pem = path.read_text()
            check_ca_pem(pem, f"{setting} {path}")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the broker's CA file {path} ({setting}): {e}") from e
        except TlsConfigError as e:
            raise ConfigError(str(e)) from e
        return pem

    def load_policies(self) -> list[Policy]:
        """The policies in force: ``policies`` and those of ``policies_file``.

        Raises:
            ConfigError: the file cannot be read, or a policy is malformed.
        """
        from registry.governance import Policy  # the policy model lives with its engine

        raw = list(self.policies)
        if self.policies_file is not None:
            try:
                raw += tomllib.loads(self.policies_file.read_text()).get("policy", [])
            except (OSError, tomllib.TOMLDecodeError) as e:
                raise ConfigError(f"cannot read policies from {self.policies_file}: {e}") from e
        try:
            policies = [Policy.model_validate(p) for p in raw]
        except ValidationError as e:
            raise ConfigError(f"a governance policy is malformed: {e}") from e
        names = [p.name for p in policies]
        if len(names) != len(set(names)):
            raise ConfigError(f"governance policy names must differ: {names}")
        return policies

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL to connect to."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'registry.db').resolve()}"

    @property
    def metadata_url(self) -> str:
        """Where agents fetch TUF metadata."""
        return f"{self.public_url.rstrip('/')}/tuf/metadata/"

    @property
    def targets_url(self) -> str:
        """Where agents fetch TUF targets."""
        return f"{self.public_url.rstrip('/')}/tuf/targets/"

    @property
    def client_id(self) -> str:
        """The MQTT client id of this registry's bridge."""
        if self.mqtt_client_id:
            return self.mqtt_client_id
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:10]
        return f"corral-registry-{digest}"

    @property
    def admin_token_path(self) -> Path:
        """Where a generated admin token lives."""
        return self.data_dir / ADMIN_TOKEN_FILE

    def resolve_admin_token(self) -> str:
        """The admin token: configured, or (local mode) read or generated once.

        Returns:
            The token string.

        Raises:
            ConfigError: no token is configured outside local mode.
        """
        if self.admin_token is not None:
            value = self.admin_token.get_secret_value()
            if len(value) < 16:
                raise ConfigError(
                    "CORRAL_ADMIN_TOKEN is shorter than 16 characters; use a longer one"
                )
            return value
        if not self.local:
            raise ConfigError(
                "CORRAL_ADMIN_TOKEN is not set and CORRAL_LOCAL is false; "
                "set a long random admin token for a shared registry"
            )
        path = self.admin_token_path
        if path.exists():
            return path.read_text().strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        # O_EXCL: two registries starting at once must not write two different tokens.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
        return token
