"""The registry's online signing keys: the unencrypted PEM files in ``{data_dir}/keys``.

Keys are found by key id, not by file name: every ``*.pem`` in the directory is
loaded, and :class:`registry.signing.TufRepository` signs each role with the
keys the newest root lists for it. Encrypted files are skipped with a warning
(an offline root key does not belong here). Files are created with mode 0600
and never overwritten.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

__all__ = ["KeyRing", "write_key_file"]

logger = logging.getLogger(__name__)


def write_key_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and fsync it.

    Raises:
        FileExistsError: ``path`` exists (a key is never overwritten).
        OSError: it cannot be written.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


class KeyRing:
    """The unencrypted private keys in one directory, by key id."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._signers: dict[str, CryptoSigner] = {}
        self._paths: dict[str, Path] = {}
        self.reload()

    def reload(self) -> None:
        """Read every ``*.pem`` in the directory again."""
        signers: dict[str, CryptoSigner] = {}
        paths: dict[str, Path] = {}
        for path in sorted(self.directory.glob("*.pem")):
            try:
                private = load_pem_private_key(path.read_bytes(), None)
            except TypeError:
                logger.warning(
                    "%s is encrypted and is not used: the registry signs only with its online "
                    "keys; an offline root key does not belong in its data directory, move it "
                    "back to its holder (docs/keys.md)",
                    path,
                )
                continue
            except (ValueError, UnsupportedAlgorithm, OSError) as e:
                logger.warning("cannot read the key file %s (%s); it is not used", path, e)
                continue
            signer = CryptoSigner(private)
            signers[signer.public_key.keyid] = signer
            paths[signer.public_key.keyid] = path
        self._signers, self._paths = signers, paths

    def named(self, name: str) -> CryptoSigner | None:
        """The key in ``{name}.pem``, if it is loaded."""
        path = self.directory / f"{name}.pem"
        for keyid, loaded in self._paths.items():
            if loaded == path:
                return self._signers[keyid]
        return None

    def generate(self, name: str | None = None, *, prefix: str = "key") -> CryptoSigner:
        """A new ed25519 key in ``{name}.pem`` (default ``{prefix}-{key id[:12]}.pem``).

        Raises:
            FileExistsError: the file exists.
            OSError: it cannot be written.
        """
        signer = CryptoSigner.generate_ed25519()
        path = self.directory / f"{name or f'{prefix}-{signer.public_key.keyid[:12]}'}.pem"
        write_key_file(path, signer.private_bytes)
        self._signers[signer.public_key.keyid] = signer
        self._paths[signer.public_key.keyid] = path
        logger.info("generated TUF key %s", path)
        return signer

    def held(self, keyids: Iterable[str]) -> list[CryptoSigner]:
        """The loaded keys among ``keyids``, in that order."""
        return [self._signers[k] for k in keyids if k in self._signers]

    def path(self, keyid: str) -> Path | None:
        """The file of a loaded key."""
        return self._paths.get(keyid)

    def keyids(self) -> set[str]:
        """Ids of every loaded key."""
        return set(self._signers)

    def remove(self, keyid: str) -> Path | None:
        """Delete a loaded key's file; return its path (None if no such key is loaded).

        Raises:
            OSError: the file cannot be removed.
        """
        path = self._paths.pop(keyid, None)
        self._signers.pop(keyid, None)
        if path is not None:
            path.unlink(missing_ok=True)
        return path
