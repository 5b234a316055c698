"""The registry's TUF repository, built on python-tuf's Metadata API.

Four top-level roles, one online ed25519 key each, kept in ``{data_dir}/keys``
(private keys mode 0600). Root is online too in this skeleton: moving root
offline with a threshold of keys, and key rotation, are a later issue.

Every signed version of every role is stored (table ``tuf_metadata``) and
served as it was signed, with consistent snapshots:
``{N}.root.json``, ``{N}.targets.json``, ``{N}.snapshot.json`` and the
unversioned ``timestamp.json``.

Adding targets, in this order, under one lock and one transaction:

1. load the newest targets, add the TargetFiles, bump version and expiry, sign;
2. snapshot: point at the new targets version, bump, sign;
3. timestamp: point at the new snapshot version, bump, sign;
4. commit, together with whatever the caller added to the session (the model
   version rows), so a model version and its signatures appear at once.

``refresh`` re-signs snapshot and timestamp once half their lifetime has
passed; ``TufRefresher`` calls it from a background thread.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from registry._time import as_utc, utcnow
from registry.core.db import SessionFactory
from registry.errors import ConfigError, NotFoundError
from registry.tables import TufMetadata

__all__ = ["EXPIRY", "ROLES", "TufRefresher", "TufRepository"]

logger = logging.getLogger(__name__)

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
EXPIRY = {
    Root.type: timedelta(days=365),
    Targets.type: timedelta(days=90),
    Snapshot.type: timedelta(days=7),
    Timestamp.type: timedelta(days=1),
}
_SERIALIZER = JSONSerializer(compact=False)
_S = TypeVar("_S", Root, Targets, Snapshot, Timestamp)


def _load_or_generate_key(path: Path) -> CryptoSigner:
    if path.exists():
        private_key = load_pem_private_key(path.read_bytes(), None)
        return CryptoSigner(private_key)
    signer = CryptoSigner.generate_ed25519()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(signer.private_bytes)
        handle.flush()
        os.fsync(handle.fileno())
    logger.info("generated TUF key %s", path)
    return signer


class TufRepository:
    """Signs and stores the registry's TUF metadata.

    Args:
        keys_dir: where the role keys live (generated on first use).
        sessions: the database session factory.
    """

    def __init__(self, keys_dir: Path, sessions: SessionFactory) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        keys_dir = Path(keys_dir)
        keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._signers = {role: _load_or_generate_key(keys_dir / f"{role}.pem") for role in ROLES}

    # --- set-up -------------------------------------------------------------------

    def initialise(self) -> None:
        """Create and sign version 1 of every role, unless metadata exists.

        Raises:
            ConfigError: the stored root does not trust the keys on disk.
        """
        with self._lock, self._sessions() as session:
            if self._latest_row(session, Root.type) is not None:
                self._check_keys(session)
                return
            now = utcnow()
            root = Root(expires=now + EXPIRY[Root.type], consistent_snapshot=True)
            for role, signer in self._signers.items():
                root.add_key(signer.public_key, role)
            targets = Targets(expires=now + EXPIRY[Targets.type])
            snapshot = Snapshot(expires=now + EXPIRY[Snapshot.type])
            snapshot.meta[f"{Targets.type}.json"] = MetaFile(version=1)
            timestamp = Timestamp(
                expires=now + EXPIRY[Timestamp.type], snapshot_meta=MetaFile(version=1)
            )
            self._store(session, root)
            self._store(session, targets)
            self._store(session, snapshot)
            self._store(session, timestamp)
            session.commit()
            logger.info("created TUF repository (root, targets, snapshot, timestamp v1)")

    def _check_keys(self, session: Session) -> None:
        root = self._load(session, Root)
        for role, signer in self._signers.items():
            if signer.public_key.keyid not in root.roles[role].keyids:
                raise ConfigError(
                    f"the {role} key in the keys directory is not the one root trusts; "
                    "restore the original keys directory for this data directory"
                )

    # --- reading ------------------------------------------------------------------

    def metadata(self, role: str, version: int | None = None) -> bytes:
        """The signed bytes of ``role`` at ``version`` (newest when None).

        Args:
            role: root, targets, snapshot or timestamp.
            version: the version wanted.

        Returns:
            The metadata as signed.

        Raises:
            NotFoundError: no such role or version.
        """
        with self._sessions() as session:
            if version is None:
                row = self._latest_row(session, role)
            else:
                row = session.scalar(
                    select(TufMetadata).where(
                        TufMetadata.role == role, TufMetadata.version == version
                    )
                )
        if row is None:
            which = "any version" if version is None else f"version {version}"
            raise NotFoundError(f"no {role} metadata at {which}")
        return row.data

    def root_dict(self) -> dict[str, Any]:
        """The newest root as a JSON object, for enrolment."""
        import json

        return cast(dict[str, Any], json.loads(self.metadata(Root.type)))

    # --- writing ------------------------------------------------------------------

    def add_targets(self, session: Session, targets: Iterable[TargetFile]) -> int:
        """Sign ``targets`` into a new targets version and commit ``session``.

        Args:
            session: the caller's session; everything in it is committed with the
                new metadata.
            targets: the target files to add (an existing path is replaced).

        Returns:
            The new targets version.

        Raises:
            sqlalchemy.exc.IntegrityError: the caller's rows clash with stored ones;
                nothing is committed.
        """
        with self._lock:
            md = self._load(session, Targets)
            for target in targets:
                md.targets[target.path] = target
            self._bump(session, md)
            self._sign_snapshot_and_timestamp(session, md.version)
            session.commit()
            return md.version

    def refresh(self, now: datetime | None = None) -> bool:
        """Re-sign snapshot and timestamp if half their lifetime has passed.

        Args:
            now: the reference time (for tests); the current time by default.

        Returns:
            Whether anything was re-signed.
        """
        now = now or utcnow()
        with self._lock, self._sessions() as session:
            snapshot = self._load(session, Snapshot)
            timestamp = self._load(session, Timestamp)
            root = self._load(session, Root)
            if as_utc(root.expires) - now < EXPIRY[Root.type] / 4:
                logger.warning("TUF root expires at %s; rotate it", root.expires)
            if as_utc(snapshot.expires) - now < EXPIRY[Snapshot.type] / 2:
                targets_version = snapshot.meta[f"{Targets.type}.json"].version
                self._sign_snapshot_and_timestamp(session, targets_version)
            elif as_utc(timestamp.expires) - now < EXPIRY[Timestamp.type] / 2:
                timestamp.snapshot_meta = MetaFile(version=snapshot.version)
                self._bump(session, timestamp)
            else:
                return False
            session.commit()
            logger.info("re-signed TUF snapshot/timestamp before expiry")
            return True

    def _sign_snapshot_and_timestamp(self, session: Session, targets_version: int) -> None:
        snapshot = self._load(session, Snapshot)
        snapshot.meta[f"{Targets.type}.json"] = MetaFile(version=targets_version)
        self._bump(session, snapshot)
        timestamp = self._load(session, Timestamp)
        timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        self._bump(session, timestamp)

    # --- storage ------------------------------------------------------------------

    @staticmethod
    def _latest_row(session: Session, role: str) -> TufMetadata | None:
        newest = select(func.max(TufMetadata.version)).where(TufMetadata.role == role)
        return session.scalar(
            select(TufMetadata).where(
                TufMetadata.role == role, TufMetadata.version == newest.scalar_subquery()
            )
        )

    def _load(self, session: Session, kind: type[_S]) -> _S:
        row = self._latest_row(session, kind.type)
        if row is None:
            raise NotFoundError(f"no {kind.type} metadata; the repository is not initialised")
        return cast(_S, Metadata.from_bytes(row.data).signed)

    def _bump(self, session: Session, signed: _S) -> None:
        signed.version += 1
        signed.expires = utcnow() + EXPIRY[signed.type]
        self._store(session, signed)

    def _store(self, session: Session, signed: _S) -> None:
        md = Metadata(signed)
        md.sign(self._signers[signed.type])
        session.add(
            TufMetadata(
                role=signed.type,
                version=signed.version,
                expires=signed.expires,
                data=md.to_bytes(_SERIALIZER),
            )
        )
        session.flush()


class TufRefresher:
    """A daemon thread that calls :meth:`TufRepository.refresh` every ``interval_s``.

    Args:
        repository: the repository to keep fresh.
        interval_s: seconds between checks.
    """

    def __init__(self, repository: TufRepository, interval_s: float) -> None:
        self._repository = repository
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (it checks once at once)."""
        self._thread = threading.Thread(target=self._run, name="tuf-refresher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._repository.refresh()
            except Exception:
                # A failed refresh is retried next round; expiry is days away.
                logger.exception("TUF refresh failed; retrying in %.0f s", self._interval_s)
            self._stop.wait(self._interval_s)
