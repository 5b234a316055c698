"""Offline root keys: make them, sign root with a threshold of them, rotate keys.

What ``corral keys`` runs; ``docs/keys.md`` is the operator's guide. Root keys
are ed25519 keys in encrypted PEM files (PKCS#8, one passphrase per file), each
kept by its holder away from the registry. ``generate_root_keys`` writes them
with ``root-keys.json``, the public half of the set (key ids, public keys, the
threshold), which is not secret.

Every change to root takes the same path:

1. read the newest root, version N, from the registry's database;
2. build N+1 from it: a new root key set and threshold (:func:`sign_root`),
   an online role's key swapped for a new one the registry generates
   (:func:`rotate_online_key`), or one root key swapped (:func:`rotate_root_key`);
3. sign N+1 with every given key that N or N+1 lists for root, and with any
   root key the registry still holds (the online root of local mode, which
   signs the step that takes root offline);
4. store it: :meth:`TufRepository.store_root` accepts N+1 only with a
   threshold of valid signatures by N's root keys and a threshold by its own
   (TUF's rule, the one the agent checks when it walks from N to N+1), and in
   the same transaction re-signs targets, snapshot and timestamp with the keys
   N+1 names. Key files in the registry's keys directory that N+1 no longer
   lists are removed.

Nothing is stored unless every check passes; a key generated for a rotation
that fails is removed again.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner, Key
from tuf.api.metadata import Metadata, Root

from registry._time import utcnow
from registry.errors import RegistryError
from registry.keyring import write_key_file
from registry.signing import EXPIRY, ONLINE_ROLES, SigningError, TufRepository

__all__ = [
    "KEY_SET_FILE",
    "MIN_PASSPHRASE_LENGTH",
    "PASSPHRASE_ENV",
    "KeyFileError",
    "RootChange",
    "RootKeySet",
    "generate_key_file",
    "generate_root_keys",
    "load_key_file",
    "rotate_online_key",
    "rotate_root_key",
    "sign_root",
]

logger = logging.getLogger(__name__)

#: Where the commands read a passphrase when there is no terminal to ask (CI, tests).
PASSPHRASE_ENV = "CORRAL_ROOT_KEY_PASSPHRASE"
KEY_SET_FILE = "root-keys.json"
MIN_PASSPHRASE_LENGTH = 8


class KeyFileError(RegistryError):
    """A key file cannot be made, read or decrypted, or a key set file is malformed."""


def _check_passphrase(passphrase: str) -> bytes:
    if len(passphrase) < MIN_PASSPHRASE_LENGTH:
        raise KeyFileError(
            f"a root key passphrase needs at least {MIN_PASSPHRASE_LENGTH} characters"
        )
    return passphrase.encode()


def generate_key_file(path: Path, passphrase: str) -> CryptoSigner:
    """Make one ed25519 root key, encrypted with ``passphrase``, in ``path`` (mode 0600).

    Args:
        path: the new file; an existing file is never overwritten.
        passphrase: at least :data:`MIN_PASSPHRASE_LENGTH` characters.

    Returns:
        The key, ready to sign.

    Raises:
        KeyFileError: the passphrase is too short, or the file exists or cannot be written.
    """
    secret = _check_passphrase(passphrase)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(secret))
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_key_file(path, pem)
    except FileExistsError as e:
        raise KeyFileError(f"{path} exists; a key is never overwritten, choose another path") from e
    except OSError as e:
        raise KeyFileError(f"cannot write {path}: {e.strerror or e}") from e
    return CryptoSigner(private)


def load_key_file(path: Path, passphrase: str) -> CryptoSigner:
    """Read and decrypt a root key file.

    Args:
        path: an encrypted PEM file made by :func:`generate_key_file`.
        passphrase: its passphrase.

    Returns:
        The key, ready to sign.

    Raises:
        KeyFileError: the file is missing, not encrypted, not a private key, or
            the passphrase is wrong.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFileError(f"cannot read the key file {path}: {e.strerror or e}") from e
    try:
        private = load_pem_private_key(data, passphrase.encode())
    except TypeError as e:
        raise KeyFileError(
            f"{path} is not encrypted; root keys are kept encrypted: make a new one with "
            "`corral keys init` and rotate this one out (docs/keys.md)"
        ) from e
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(
            f"cannot decrypt {path}: wrong passphrase, or not a private key file ({e})"
        ) from e
    return CryptoSigner(private)


@dataclass(frozen=True)
class RootKeySet:
    """The public half of a set of root keys, and how many must sign.

    Args:
        threshold: how many keys must sign a root.
        keys: public keys by key id.
        files: the file each key was written to, by key id (a hint for people).

    Raises:
        KeyFileError: the threshold is not between 1 and the number of keys.
    """

    threshold: int
    keys: dict[str, Key]
    files: dict[str, str]

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= len(self.keys):
            raise KeyFileError(
                f"a root threshold of {self.threshold} with {len(self.keys)} key(s) is "
                "impossible; it must be between 1 and the number of keys"
            )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``root-keys.json``."""
        return {
            "threshold": self.threshold,
            "keys": [
                {"keyid": keyid, "file": self.files.get(keyid), "key": key.to_dict()}
                for keyid, key in self.keys.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> RootKeySet:
        """Parse ``root-keys.json``.

        Raises:
            KeyFileError: it is malformed.
        """
        try:
            keys = {k["keyid"]: Key.from_dict(k["keyid"], dict(k["key"])) for k in data["keys"]}
            files = {k["keyid"]: str(k["file"]) for k in data["keys"] if k.get("file")}
            threshold = data["threshold"]
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise KeyFileError(f"not a root key set ({type(e).__name__}: {e})") from e
        if not isinstance(threshold, int) or isinstance(threshold, bool):
            raise KeyFileError(f"a root key set's threshold is a number, got {threshold!r}")
        return cls(threshold, keys, files)

    def save(self, path: Path) -> None:
        """Write it as JSON (public: nothing secret in it).

        Raises:
            KeyFileError: the file exists or cannot be written.
        """
        try:
            with path.open("x") as handle:
                json.dump(self.to_dict(), handle, indent=2)
                handle.write("\n")
        except FileExistsError as e:
            raise KeyFileError(f"{path} exists; choose an empty directory") from e
        except OSError as e:
            raise KeyFileError(f"cannot write {path}: {e.strerror or e}") from e

    @classmethod
    def load(cls, path: Path) -> RootKeySet:
        """Read ``root-keys.json``.

        Raises:
            KeyFileError: it is missing or malformed.
        """
        try:
            data = json.loads(path.read_bytes())
        except OSError as e:
            raise KeyFileError(
                f"cannot read the root key set {path}: {e.strerror or e}; it is written by "
                "`corral keys init` beside the keys"
            ) from e
        except ValueError as e:
            raise KeyFileError(f"{path} is not JSON: {e}") from e
        try:
            return cls.from_dict(data)
        except KeyFileError as e:
            raise KeyFileError(f"{path}: {e}") from e


def generate_root_keys(out: Path, count: int, threshold: int, passphrase: str) -> RootKeySet:
    """Make ``count`` encrypted root keys ``root-1.pem``... and ``root-keys.json`` in ``out``.

    Args:
        out: a directory (made if missing) on the medium the keys will live on.
        count: how many keys (one per holder).
        threshold: how many of them must sign a root.
        passphrase: the passphrase of every key (at least 8 characters).

    Returns:
        The key set, as saved in ``out/root-keys.json``.

    Raises:
        KeyFileError: impossible counts, a short passphrase, or files that exist
            or cannot be written.
    """
    if count < 1 or not 1 <= threshold <= count:
        raise KeyFileError(
            f"--count {count} --threshold {threshold}: the threshold must be between 1 and "
            "the number of keys (e.g. --count 3 --threshold 2)"
        )
    _check_passphrase(passphrase)
    paths = [out / f"root-{i}.pem" for i in range(1, count + 1)]
    taken = [p for p in (*paths, out / KEY_SET_FILE) if p.exists()]
    if taken:
        raise KeyFileError(f"{taken[0]} exists; choose an empty directory for new keys")
    signers = [generate_key_file(path, passphrase) for path in paths]
    key_set = RootKeySet(
        threshold,
        {s.public_key.keyid: s.public_key for s in signers},
        {s.public_key.keyid: p.name for s, p in zip(signers, paths, strict=True)},
    )
    key_set.save(out / KEY_SET_FILE)
    return key_set


@dataclass(frozen=True)
class RootChange:
    """What a stored root change did, for the command's report.

    ``signed_by`` lists the key ids whose signatures the new root carries;
    ``removed`` the key files taken out of the registry's keys directory.
    """

    version: int
    threshold: int
    root_keyids: tuple[str, ...]
    signed_by: tuple[str, ...]
    removed: tuple[Path, ...]
    online: bool


def _next_root(current: Root, expires: timedelta) -> Root:
    new = Root.from_dict(copy.deepcopy(current.to_dict()))
    new.version = current.version + 1
    new.expires = (utcnow() + expires).replace(microsecond=0)
    return new


def _current(repository: TufRepository) -> Root:
    md = repository.current_root()
    if md is None:
        raise SigningError(
            "the registry has no TUF repository yet: run `corral keys sign-root --root-keys ...` "
            "to create one with an offline root, or `corral registry migrate` for an online one"
        )
    return md.signed


def _sign_and_store(
    repository: TufRepository, previous: Root | None, new: Root, signers: Sequence[CryptoSigner]
) -> RootChange:
    allowed = set(new.roles[Root.type].keyids)
    if previous is not None:
        allowed |= set(previous.roles[Root.type].keyids)
    for signer in signers:
        keyid = signer.public_key.keyid
        if keyid not in allowed:
            which = f"v{previous.version} or v{new.version}" if previous else f"v{new.version}"
            raise SigningError(
                f"the key {keyid[:12]} is not a root key of root {which}; pass the keys "
                "`corral keys show` lists for root"
            )
    everyone = list(signers)
    if previous is not None:
        everyone += repository.root_signers(previous)  # the online root, taken offline
    md = Metadata(new)
    for signer in {s.public_key.keyid: s for s in everyone}.values():
        md.sign(signer, append=True)
    removed = repository.store_root(md)
    status = repository.status()
    return RootChange(
        version=new.version,
        threshold=new.roles[Root.type].threshold,
        root_keyids=tuple(new.roles[Root.type].keyids),
        signed_by=tuple(md.signatures),
        removed=tuple(removed),
        online=status.online,
    )


def sign_root(
    repository: TufRepository,
    signers: Sequence[CryptoSigner],
    key_set: RootKeySet | None = None,
    expires: timedelta = EXPIRY[Root.type],
) -> RootChange:
    """Sign the next root version with offline keys.

    With ``key_set`` the new root's root keys and threshold become the set's:
    this takes an online root offline, creates a new repository whose root was
    never online, or replaces the whole set. Without it the root keys stay
    (re-signing root before it expires).

    Args:
        repository: the registry's repository.
        signers: the offline root keys at hand (decrypted).
        key_set: the root key set to install, from ``root-keys.json``.
        expires: the new root's lifetime.

    Returns:
        What was stored.

    Raises:
        SigningError: too few valid signatures for the old or the new root, a key
            that is no root key, or the current root is online and no key set given.
        ConfigError: the registry's keys directory lacks an online key root names.
    """
    current = repository.current_root()
    previous = None if current is None else current.signed
    if previous is None:
        if key_set is None:
            raise SigningError(
                "a new repository needs its root key set: pass --root-keys root-keys.json "
                "(written by `corral keys init`)"
            )
        new = Root(expires=(utcnow() + expires).replace(microsecond=0), consistent_snapshot=True)
        for role, key in repository.ensure_online_keys().items():
            new.add_key(key, role)
    else:
        new = _next_root(previous, expires)
        if key_set is None and repository.root_signers(previous):
            raise SigningError(
                f"root v{previous.version} is online (its key is in the registry's data "
                "directory); to take it offline pass --root-keys root-keys.json from "
                "`corral keys init`"
            )
    if key_set is not None:
        for keyid in list(new.roles[Root.type].keyids):
            new.revoke_key(keyid, Root.type)
        for key in key_set.keys.values():
            new.add_key(key, Root.type)
        new.roles[Root.type].threshold = key_set.threshold
    return _sign_and_store(repository, previous, new, signers)


def rotate_online_key(
    repository: TufRepository,
    signers: Sequence[CryptoSigner],
    role: str,
    expires: timedelta = EXPIRY[Root.type],
) -> RootChange:
    """Replace the key of ``role`` (targets, snapshot or timestamp) with a new one.

    The registry generates the new key in its keys directory; the next root
    lists it instead of the old one, which is revoked: its signatures are
    refused by every agent that has walked to the new root.

    Args:
        repository: the registry's repository.
        signers: a threshold of root keys (none needed while root is online).
        role: targets, snapshot or timestamp.
        expires: the new root's lifetime.

    Returns:
        What was stored.

    Raises:
        SigningError: not an online role, or too few valid root signatures.
    """
    if role not in ONLINE_ROLES:
        raise SigningError(
            f"--role {role!r}: online roles are {', '.join(ONLINE_ROLES)}; a root key is "
            "rotated with --role root --revoke KEYID --new-key FILE"
        )
    previous = _current(repository)
    new = _next_root(previous, expires)
    key = repository.new_online_key(role)
    try:
        for keyid in list(new.roles[role].keyids):
            new.revoke_key(keyid, role)
        new.add_key(key, role)
        return _sign_and_store(repository, previous, new, signers)
    except BaseException:
        repository.discard_key(key.keyid)
        raise


def rotate_root_key(
    repository: TufRepository,
    signers: Sequence[CryptoSigner],
    revoke: str,
    new_key: Key | None,
    expires: timedelta = EXPIRY[Root.type],
) -> RootChange:
    """Revoke one root key and, usually, list a new one in its place.

    Args:
        repository: the registry's repository.
        signers: a threshold of the current root keys and a threshold of the new
            set (the new key usually among them).
        revoke: the key id to revoke, or a unique prefix of it (8 characters or more).
        new_key: the public key replacing it; None only shrinks the set.
        expires: the new root's lifetime.

    Returns:
        What was stored.

    Raises:
        SigningError: no such root key, an ambiguous prefix, a set left smaller
            than its threshold, or too few valid signatures.
    """
    previous = _current(repository)
    new = _next_root(previous, expires)
    role = new.roles[Root.type]
    matches = [k for k in role.keyids if len(revoke) >= 8 and k.startswith(revoke)]
    if len(matches) != 1:
        listed = ", ".join(k[:12] for k in role.keyids)
        raise SigningError(
            f"--revoke {revoke!r} names {len(matches)} of root v{previous.version}'s keys "
            f"({listed}); give one key id, or a unique prefix of at least 8 characters"
        )
    new.revoke_key(matches[0], Root.type)
    if new_key is not None:
        new.add_key(new_key, Root.type)
    if len(role.keyids) < role.threshold:
        raise SigningError(
            f"without {matches[0][:12]} root would have {len(role.keyids)} key(s) for a "
            f"threshold of {role.threshold}; add a new key (--new-key) in its place"
        )
    return _sign_and_store(repository, previous, new, signers)
