"""The registry's running parts, built once per app and shared by the routes.

Building opens the database and upgrades its schema (Alembic), loads (or
first creates) the TUF keys and metadata, and resolves the admin token;
``start`` and ``stop`` run the background parts (MQTT bridge, ingest worker,
TUF refresher) and are called from the app's lifespan.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from corral.payloads import encode
from corral.topics import topic
from registry.alerts import Alerts
from registry.blobstore import BlobStorage, BlobStore
from registry.core.config import Settings
from registry.core.db import (
    WORKER_CONNECTIONS,
    SessionFactory,
    make_engine,
    make_session_factory,
    migrate,
)
from registry.governance import Governance
from registry.ingest import Ingest
from registry.mqtt import MqttBridge
from registry.rollout import Hint, Rollouts
from registry.signing import TufRefresher, TufRepository

__all__ = ["RegistryContext"]

logger = logging.getLogger(__name__)


@dataclass
class RegistryContext:
    """Everything a request handler may need."""

    settings: Settings
    engine: Engine
    sessions: SessionFactory
    blobs: BlobStorage
    tuf: TufRepository
    ingest: Ingest
    bridge: MqttBridge
    refresher: TufRefresher
    admin_token: str
    rollouts: Rollouts
    alerts: Alerts
    governance: Governance

    @classmethod
    def build(cls, settings: Settings) -> RegistryContext:
        """Open storage and keys for ``settings``.

        Args:
            settings: the registry settings.

        Returns:
            The context, not yet started.

        Raises:
            ConfigError: unusable settings (no admin token outside local mode,
                contradicting broker TLS settings, keys that the stored root does
                not trust, or an S3 bucket that cannot be reached).
            sqlalchemy.exc.SQLAlchemyError: the database cannot be opened or migrated.
            alembic.util.CommandError: a newer registry migrated the database.
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        admin_token = settings.resolve_admin_token()
        # Contradicting TLS settings for agents fail here, not at the first enrolment.
        settings.agent_broker()
        # A connection for every admitted request and every worker, none beyond:
        # nobody waits for one (registry.api.admission).
        engine = make_engine(
            settings.sqlalchemy_url,
            pool_size=settings.max_db_requests + WORKER_CONNECTIONS,
            max_overflow=0,
        )
        migrate(engine)
        sessions = make_session_factory(engine)
        tuf = TufRepository(settings.data_dir / "keys", sessions)
        tuf.initialise()
        ingest = Ingest(sessions)
        bridge = MqttBridge(
            settings.mqtt_host,
            settings.mqtt_port,
            settings.client_id,
            ingest.submit,
            shared_group=settings.mqtt_shared_group,
            protocol=settings.mqtt_protocol,
            session_expiry_s=settings.mqtt_session_expiry_s,
            username=settings.mqtt_username,
            password=settings.mqtt_password.get_secret_value() if settings.mqtt_password else None,
            tls=settings.broker_tls(),
        )
        rollouts = Rollouts(
            sessions,
            _Publisher(bridge),
            interval_s=settings.rollout_interval_s,
            require_staging=settings.require_staging,
        )
        governance = Governance(
            sessions, rollouts, settings.load_policies(), settings.public_url, admin_token
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            blobs=_blob_storage(settings),
            tuf=tuf,
            ingest=ingest,
            bridge=bridge,
            refresher=TufRefresher(tuf, settings.tuf_refresh_interval_s),
            admin_token=admin_token,
            rollouts=rollouts,
            alerts=Alerts(
                sessions,
                settings.alerts,
                publish=lambda topic_, payload: bridge.publish(topic_, payload),
                on_fire=governance.on_alert,
            ),
            governance=governance,
        )

    def start(self) -> None:
        """Start ingest, the MQTT bridge and the TUF refresher."""
        self.ingest.start()
        self.bridge.start()
        self.refresher.start()
        self.rollouts.start()
        self.governance.start()
        self.alerts.start()

    def stop(self) -> None:
        """Stop in reverse order; queued messages are stored before ingest stops."""
        self.alerts.stop()
        self.governance.stop()
        self.rollouts.stop()
        self.refresher.stop()
        self.bridge.stop()
        self.ingest.stop()
        self.engine.dispose()

    def publish_desired(
        self, device_id: str, seq: int, model: str | None, version: str | None
    ) -> bool:
        """Publish a device's retained desired hint.

        Args:
            device_id: the device.
            seq: the device's desired-hint counter, from the database.
            model: desired model name, or None.
            version: desired version, or None.

        Returns:
            Whether it went out now (False: queued until the broker is back).

        Raises:
            PayloadError: the device id is not valid for topics.
        """
        return _Publisher(self.bridge)(Hint(device_id, seq, model, version))


class _Publisher:
    """Sends the rollout engine's desired hints through the MQTT bridge."""

    def __init__(self, bridge: MqttBridge) -> None:
        self.bridge = bridge

    def __call__(self, hint: Hint) -> bool:
        payload = encode("desired", hint.device_id, hint.seq, hint.body())
        return self.bridge.publish(topic(hint.device_id, "desired"), payload, retain=True)


def _blob_storage(settings: Settings) -> BlobStorage:
    if settings.blob_store == "s3":
        from registry.s3blobs import S3BlobStore  # boto3 only where it is used

        return S3BlobStore.from_settings(settings)
    return BlobStore(settings.data_dir / "blobs")
