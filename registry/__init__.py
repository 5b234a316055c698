"""Corral registry: stores and signs model versions, enrols devices, rolls out, watches.

Start it with ``create_app(Settings(...))`` under any ASGI server, or with
``corral registry serve``.
"""

from registry.app import create_app
from registry.blobstore import BlobInfo, BlobStorage, BlobStore
from registry.core.config import Settings
from registry.core.context import RegistryContext
from registry.errors import (
    AuthError,
    BlobMismatchError,
    BlobStoreError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    RegistryError,
)
from registry.ingest import Ingest
from registry.mqtt import IncomingMessage, MqttBridge
from registry.signing import TufRefresher, TufRepository

__all__ = [
    "AuthError",
    "BlobInfo",
    "BlobMismatchError",
    "BlobStorage",
    "BlobStore",
    "BlobStoreError",
    "ConfigError",
    "ConflictError",
    "IncomingMessage",
    "Ingest",
    "InvalidInputError",
    "MqttBridge",
    "NotFoundError",
    "RegistryContext",
    "RegistryError",
    "Settings",
    "TufRefresher",
    "TufRepository",
    "create_app",
]
