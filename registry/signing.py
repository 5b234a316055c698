"""The registry's TUF repository, built on python-tuf's Metadata API.

Keys and the two root modes
---------------------------
Four top-level roles. ``targets``, ``snapshot`` and ``timestamp`` are online:
one ed25519 key each in ``{data_dir}/keys`` (unencrypted PEM, mode 0600,
generated with the repository), used to sign every push and to re-sign
snapshot and timestamp before they expire. Root runs in one of two modes,
logged at start and shown by ``corral keys show``:

- **online root** (local mode, the demo): ``keys/root.pem`` is generated with
  the repository and signs root alone (threshold 1). Whoever copies the data
  directory can sign a new root.
- **offline root** (production): root is signed by a threshold of keys kept
  away from the registry (``corral keys``, :mod:`registry.keys`,
  ``docs/keys.md``). The registry holds no root key: it signs only targets,
  snapshot, timestamp and the signed time.

Key files are found by key id, not by name: every unencrypted ``*.pem`` in the
keys directory is loaded, and a role signs with the keys the newest root lists
for it. So a rotation done by ``corral keys rotate`` in another process is
picked up at the next signature, without a restart (a key root no longer
trusts makes the keys directory be read again).

Stored metadata
---------------
Every signed version of every role is stored (table ``tuf_metadata``) and
served as it was signed, with consistent snapshots: ``{N}.root.json``,
``{N}.targets.json``, ``{N}.snapshot.json`` and the unversioned
``timestamp.json``.

Adding targets, in this order, under one lock and one transaction:

1. load the newest targets, add the TargetFiles, bump version and expiry, sign;
2. snapshot: point at the new targets version, bump, sign;
3. timestamp: point at the new snapshot version, bump, sign;
4. commit, together with whatever the caller added to the session (the model
   version rows), so a model version and its signatures appear at once.

A new root (:meth:`TufRepository.store_root`) is accepted only when it is the
next version and carries a threshold of valid signatures by the previous
root's root keys and a threshold by its own (what the agent's TUF client
checks when it walks from root N to N+1). In the same transaction targets,
snapshot and timestamp are re-signed with the keys the new root names, so a
rotated online key is in use at once and agents never see a timestamp signed
by a key their new root has revoked. Key files the new root no longer trusts
are then removed.

``refresh`` re-signs snapshot and timestamp once half their lifetime has
passed; ``TufRefresher`` calls it from a background thread.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from securesystemslib.signer import CryptoSigner, Key
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from tuf.api.exceptions import RepositoryError
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

from corral.signedtime import SignedTime, check_nonce, sign_time
from registry._time import as_utc, utcnow
from registry.core.db import SessionFactory
from registry.errors import ConfigError, NotFoundError, RegistryError
from registry.keyring import KeyRing
from registry.metadata_cache import MetadataCache
from registry.tables import TufMetadata

__all__ = [
    "EXPIRY",
    "ONLINE_ROLES",
    "ROLES",
    "RootStatus",
    "SigningError",
    "TufRefresher",
    "TufRepository",
]

logger = logging.getLogger(__name__)

ROLES = (Root.type, Targets.type, Snapshot.type, Timestamp.type)
#: The roles the registry signs itself, with keys in its data directory.
ONLINE_ROLES = (Targets.type, Snapshot.type, Timestamp.type)
EXPIRY = {
    Root.type: timedelta(days=365),
    Targets.type: timedelta(days=90),
    Snapshot.type: timedelta(days=7),
    Timestamp.type: timedelta(days=1),
}
_SERIALIZER = JSONSerializer(compact=False)
_S = TypeVar("_S", Root, Targets, Snapshot, Timestamp)


class SigningError(RegistryError):
    """Metadata cannot be signed or stored as asked.

    For example a new root without a threshold of signatures by the old root's
    keys and by its own, or one that is not the next version.
    """


@dataclass(frozen=True)
class RootStatus:
    """Which root is in force, and whether the registry can sign it alone.

    ``held`` counts the root keys the registry's keys directory holds: when it
    reaches the threshold, root is online.
    """

    version: int
    expires: datetime
    threshold: int
    keyids: tuple[str, ...]
    held: int
    online_keys: dict[str, tuple[str, ...]]

    @property
    def online(self) -> bool:
        """Whether the registry holds enough root keys to sign root by itself."""
        return self.held >= self.threshold

    def describe(self) -> str:
        """One line for logs and the CLI."""
        if self.online:
            return (
                f"ONLINE root (local/demo mode): root v{self.version} is signed by a key in the "
                "registry's data directory; for production take it offline with "
                "`corral keys sign-root` (docs/keys.md)"
            )
        return (
            f"OFFLINE root: root v{self.version} is signed by {self.threshold} of "
            f"{len(self.keyids)} keys kept off this registry, which signs only targets, "
            "snapshot, timestamp and the signed time"
        )


class TufRepository:
    """Signs and stores the registry's TUF metadata.

    Args:
        keys_dir: where the online keys live (generated on first use).
        sessions: the database session factory.
        newest_ttl_s: how long the newest metadata read is served before it is
            read again (registry.metadata_cache): what another process stores
            (a replica, ``corral keys``) is served after at most this long.
    """

    def __init__(self, keys_dir: Path, sessions: SessionFactory, newest_ttl_s: float = 1.0) -> None:
        self._sessions = sessions
        self._lock = threading.Lock()
        self.keys_dir = Path(keys_dir)
        self.keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._keys = KeyRing(self.keys_dir)
        self._cache = MetadataCache(self._read, newest_ttl_s)
        self._parsed_root: tuple[bytes, Root] | None = None

    # --- set-up -------------------------------------------------------------------

    def initialise(self) -> None:
        """Create version 1 of every role with an online root, unless metadata exists.

        An existing repository is checked instead: the keys directory must hold
        the online keys root names. The root mode is logged either way.

        Raises:
            ConfigError: the stored root names online keys the keys directory lacks.
        """
        with self._lock, self._sessions() as session:
            existing = self._latest_row(session, Root.type)
            if existing is not None:
                root = cast(Root, Metadata.from_bytes(existing.data).signed)
                for role in ONLINE_ROLES:
                    self._signers_for(root, role)
            else:
                root_key = self._keys.named(Root.type) or self._keys.generate(Root.type)
                root = Root(expires=utcnow() + EXPIRY[Root.type], consistent_snapshot=True)
                root.add_key(root_key.public_key, Root.type)
                for role, key in self._ensure_online_keys().items():
                    root.add_key(key, role)
                md = Metadata(root)
                md.sign(root_key)
                self._add_row(session, md)
                self._create_online_roles(session, root)
                session.commit()
                self._cache.forget_newest()
                logger.info("created TUF repository (root, targets, snapshot, timestamp v1)")
        status = self.status()
        if status.online:
            logger.warning("TUF: %s", status.describe())
        else:
            logger.info("TUF: %s", status.describe())

    def _ensure_online_keys(self) -> dict[str, Key]:
        return {
            role: (self._keys.named(role) or self._keys.generate(role)).public_key
            for role in ONLINE_ROLES
        }

    def ensure_online_keys(self) -> dict[str, Key]:
        """The public online keys for a new repository's first root (generated if missing).

        Returns:
            targets, snapshot and timestamp's public keys, from ``{role}.pem``.
        """
        with self._lock:
            return self._ensure_online_keys()

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
        data = self._cache.get(role, version)
        if data is None:
            which = "any version" if version is None else f"version {version}"
            raise NotFoundError(f"no {role} metadata at {which}")
        return data

    def _read(self, role: str, version: int | None) -> bytes | None:
        with self._sessions() as session:
            if version is None:
                row = self._latest_row(session, role)
            else:
                row = session.scalar(
                    select(TufMetadata).where(
                        TufMetadata.role == role, TufMetadata.version == version
                    )
                )
            return None if row is None else row.data

    def root_dict(self) -> dict[str, Any]:
        """The newest root as a JSON object, for enrolment.

        Raises:
            NotFoundError: the repository is not initialised.
        """
        return cast(dict[str, Any], json.loads(self.metadata(Root.type)))

    def current_root(self) -> Metadata[Root] | None:
        """The newest signed root, or None before the repository exists."""
        with self._sessions() as session:
            row = self._latest_row(session, Root.type)
        return None if row is None else Metadata[Root].from_bytes(row.data)

    def status(self) -> RootStatus:
        """Which root is in force and whether it is online.

        Raises:
            NotFoundError: the repository is not initialised.
        """
        md = self.current_root()
        if md is None:
            raise NotFoundError("no root metadata; the repository is not initialised")
        root = md.signed
        role = root.roles[Root.type]
        return RootStatus(
            version=root.version,
            expires=as_utc(root.expires),
            threshold=role.threshold,
            keyids=tuple(role.keyids),
            held=len(self._keys.held(role.keyids)),
            online_keys={r: tuple(root.roles[r].keyids) for r in ONLINE_ROLES},
        )

    def key_path(self, keyid: str) -> Path | None:
        """The file in the keys directory holding ``keyid``, if any."""
        return self._keys.path(keyid)

    def root_signers(self, root: Root) -> list[CryptoSigner]:
        """The keys in the keys directory that ``root`` trusts to sign root (online root).

        Args:
            root: the root whose root role is asked about.

        Returns:
            The signers (none once root is offline).
        """
        self._keys.reload()
        return self._keys.held(root.roles[Root.type].keyids)

    def signed_time(self, nonce: str) -> bytes:
        """The current time with ``nonce``, signed by the timestamp keys root names.

        Args:
            nonce: the agent's nonce (16-128 of ``A-Za-z0-9_-``).

        Returns:
            The JSON answer (see :mod:`corral.signedtime`).

        Raises:
            SignedTimeError: the nonce is malformed.
            NotFoundError: the repository is not initialised.
            ConfigError: the timestamp key root names is not in the keys directory.
        """
        check_nonce(nonce)
        return sign_time(
            SignedTime(utcnow(), nonce), self._signers_for(self._newest_root(), Timestamp.type)
        )

    def _newest_root(self) -> Root:
        data = self.metadata(Root.type)
        parsed = self._parsed_root
        if parsed is None or parsed[0] is not data:
            parsed = (data, cast(Root, Metadata.from_bytes(data).signed))
            self._parsed_root = parsed
        return parsed[1]

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
            ConfigError: the keys directory lacks a key root names for an online role.
            sqlalchemy.exc.IntegrityError: the caller's rows clash with stored ones;
                nothing is committed.
        """
        with self._lock:
            root = self._load(session, Root)
            md = self._load(session, Targets)
            for target in targets:
                md.targets[target.path] = target
            self._bump(session, md, root)
            self._sign_snapshot_and_timestamp(session, md.version, root)
            session.commit()
            self._cache.forget_newest()
            return md.version

    def refresh(self, now: datetime | None = None) -> bool:
        """Re-sign snapshot and timestamp if half their lifetime has passed.

        Args:
            now: the reference time (for tests); the current time by default.

        Returns:
            Whether anything was re-signed.

        Raises:
            ConfigError: the keys directory lacks a key root names for an online role.
        """
        now = now or utcnow()
        with self._lock, self._sessions() as session:
            snapshot = self._load(session, Snapshot)
            timestamp = self._load(session, Timestamp)
            root = self._load(session, Root)
            if as_utc(root.expires) - now < EXPIRY[Root.type] / 4:
                logger.warning(
                    "TUF root v%d expires at %s; sign the next version before then "
                    "(`corral keys sign-root`, docs/keys.md)",
                    root.version,
                    root.expires,
                )
            if as_utc(snapshot.expires) - now < EXPIRY[Snapshot.type] / 2:
                targets_version = snapshot.meta[f"{Targets.type}.json"].version
                self._sign_snapshot_and_timestamp(session, targets_version, root)
            elif as_utc(timestamp.expires) - now < EXPIRY[Timestamp.type] / 2:
                timestamp.snapshot_meta = MetaFile(version=snapshot.version)
                self._bump(session, timestamp, root)
            else:
                return False
            session.commit()
            self._cache.forget_newest()
            logger.info("re-signed TUF snapshot/timestamp before expiry")
            return True

    def new_online_key(self, role: str) -> Key:
        """Generate a key in the keys directory for an online role's rotation.

        Args:
            role: the role it is for (it names the file, ``{role}-{key id}.pem``).

        Returns:
            Its public key, to be listed in the next root.
        """
        with self._lock:
            return self._keys.generate(prefix=role).public_key

    def discard_key(self, keyid: str) -> None:
        """Remove a key made by :meth:`new_online_key` that no root came to list."""
        with self._lock:
            self._keys.remove(keyid)

    def store_root(self, md: Metadata[Root]) -> list[Path]:
        """Store a new root version, re-sign the online roles, drop untrusted key files.

        Args:
            md: root version N+1 (or 1 for a new repository), already signed.

        Returns:
            The key files removed from the keys directory because the new root no
            longer lists them (the online root key, a rotated online key).

        Raises:
            SigningError: not the next version, expired, without consistent
                snapshots, or short of a threshold of valid signatures by the
                previous root's keys or by its own.
            ConfigError: the keys directory lacks a key the new root names for an
                online role.
        """
        new = md.signed
        with self._lock, self._sessions() as session:
            row = self._latest_row(session, Root.type)
            previous = None if row is None else Metadata[Root].from_bytes(row.data).signed
            expected = 1 if previous is None else previous.version + 1
            if new.version != expected:
                raise SigningError(
                    f"expected root version {expected} instead got version {new.version}; "
                    "sign a new root from the newest one (someone else may have just stored one)"
                )
            if new.is_expired(utcnow()):
                raise SigningError(f"root v{new.version} expired at {new.expires}; sign it anew")
            if not new.consistent_snapshot:
                raise SigningError("root must enable consistent snapshots (agents rely on them)")
            if previous is not None:
                _check_threshold(previous, md, f"root v{previous.version}'s keys")
            _check_threshold(new, md, "its own keys")
            self._keys.reload()
            for role in ONLINE_ROLES:
                self._signers_for(new, role)
            self._add_row(session, md)
            if previous is None:
                self._create_online_roles(session, new)
            else:
                # Re-sign everything below root with the keys the new root names.
                targets = self._load(session, Targets)
                self._bump(session, targets, new)
                self._sign_snapshot_and_timestamp(session, targets.version, new)
            session.commit()
            self._cache.forget_newest()
            trusted = {k for role in new.roles.values() for k in role.keyids}
            removed = [
                path
                for keyid in sorted(self._keys.keyids() - trusted)
                if (path := self._keys.remove(keyid)) is not None
            ]
        for path in removed:
            logger.info("removed %s: root v%d no longer lists its key", path, new.version)
        logger.info("stored TUF root v%d; %s", new.version, self.status().describe())
        return removed

    def _create_online_roles(self, session: Session, root: Root) -> None:
        now = utcnow()
        targets = Targets(expires=now + EXPIRY[Targets.type])
        snapshot = Snapshot(expires=now + EXPIRY[Snapshot.type])
        snapshot.meta[f"{Targets.type}.json"] = MetaFile(version=1)
        timestamp = Timestamp(
            expires=now + EXPIRY[Timestamp.type], snapshot_meta=MetaFile(version=1)
        )
        self._store(session, targets, root)
        self._store(session, snapshot, root)
        self._store(session, timestamp, root)

    def _sign_snapshot_and_timestamp(
        self, session: Session, targets_version: int, root: Root
    ) -> None:
        snapshot = self._load(session, Snapshot)
        snapshot.meta[f"{Targets.type}.json"] = MetaFile(version=targets_version)
        self._bump(session, snapshot, root)
        timestamp = self._load(session, Timestamp)
        timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        self._bump(session, timestamp, root)

    def _signers_for(self, root: Root, role: str) -> list[CryptoSigner]:
        """The keys to sign ``role`` with: those ``root`` names for it that are on disk.

        Raises:
            ConfigError: fewer than the role's threshold are on disk.
        """
        wanted = root.roles[role]
        held = self._keys.held(wanted.keyids)
        if len(held) < wanted.threshold:
            self._keys.reload()  # another process may have rotated the key
            held = self._keys.held(wanted.keyids)
        if len(held) < wanted.threshold:
            ids = ", ".join(k[:12] for k in wanted.keyids)
            raise ConfigError(
                f"root v{root.version} trusts key(s) {ids} for {role} ({wanted.threshold} "
                f"needed) and {self.keys_dir} holds {len(held)}: restore this data directory's "
                f"keys directory, or rotate the key (`corral keys rotate --role {role}`, "
                "docs/keys.md)"
            )
        return held

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

    def _bump(self, session: Session, signed: _S, root: Root) -> None:
        signed.version += 1
        signed.expires = utcnow() + EXPIRY[signed.type]
        self._store(session, signed, root)

    def _store(self, session: Session, signed: _S, root: Root) -> None:
        md = Metadata(signed)
        for signer in self._signers_for(root, signed.type):
            md.sign(signer, append=True)
        self._add_row(session, md)

    @staticmethod
    def _add_row(session: Session, md: Metadata[Any]) -> None:
        session.add(
            TufMetadata(
                role=md.signed.type,
                version=md.signed.version,
                expires=md.signed.expires,
                data=md.to_bytes(_SERIALIZER),
            )
        )
        session.flush()


def _check_threshold(delegator: Root, md: Metadata[Root], whose: str) -> None:
    """Raise unless ``md`` carries a threshold of valid signatures by ``delegator``'s root keys."""
    try:
        result = delegator.get_verification_result(Root.type, md.signed_bytes, md.signatures)
    except (RepositoryError, ValueError) as e:
        raise SigningError(f"cannot check root v{md.signed.version}'s signatures: {e}") from e
    if not result:
        missing = ", ".join(k[:12] for k in result.unsigned)
        raise SigningError(
            f"root v{md.signed.version} carries {len(result.signed)} valid signature(s) by "
            f"{whose}, {result.threshold} needed; sign with more of them (unsigned: {missing})"
        )


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
