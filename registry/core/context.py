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
from registry.blobstore import BlobStore
from registry.core.config import Settings
from registry.core.db import SessionFactory, make_engine, make_session_factory, migrate
from registry.ingest import Ingest
from registry.mqtt import MqttBridge
from registry.signing import TufRefresher, TufRepository

__all__ = ["RegistryContext"]

logger = logging.getLogger(__name__)


@dataclass
class RegistryContext:
    """Everything a request handler may need."""

    settings: Settings
    engine: Engine
    sessions: SessionFactory
    blobs: BlobStore
    tuf: TufRepository
    ingest: Ingest
    bridge: MqttBridge
    refresher: TufRefresher
    admin_token: str

    @classmethod
    def build(cls, settings: Settings) -> RegistryContext:
        """Open storage and keys for ``settings``.

        Args:
            settings: the registry settings.

        Returns:
            The context, not yet started.

        Raises:
            ConfigError: unusable settings (no admin token outside local mode, or
                keys that the stored root does not trust).
            sqlalchemy.exc.SQLAlchemyError: the database cannot be opened or migrated.
            alembic.util.CommandError: a newer registry migrated the database.
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        admin_token = settings.resolve_admin_token()
        engine = make_engine(settings.sqlalchemy_url)
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
        )
        return cls(
            settings=settings,
            engine=engine,
            sessions=sessions,
            blobs=BlobStore(settings.data_dir / "blobs"),
            tuf=tuf,
            ingest=ingest,
            bridge=bridge,
            refresher=TufRefresher(tuf, settings.tuf_refresh_interval_s),
            admin_token=admin_token,
        )

    def start(self) -> None:
        """Start ingest, the MQTT bridge and the TUF refresher."""
        self.ingest.start()
        self.bridge.start()
        self.refresher.start()

    def stop(self) -> None:
        """Stop in reverse order; queued messages are stored before ingest stops."""
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
        payload = encode("desired", device_id, seq, {"model": model, "version": version})
        return self.bridge.publish(topic(device_id, "desired"), payload, retain=True)
