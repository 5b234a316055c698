"""On-disk model slots: the installed models and which one is current.

Layout under the agent's data folder::

    state.json                         {"current": "<slot>", "previous": "<slot>" | null}
    models/
      digits-1.2.0-3f2a9c1b7d4e/       a complete slot: bundle.json (the signed bytes),
        bundle.json                    the model file of one variant, and slot.json
        model.onnx                     ({"variant": ...}) saying which
        slot.json
      .staging-k2j4x9/                 an install in progress (or one a crash left)

A slot is named ``<model>-<version>-<first 12 hex of the model file's SHA-256>``.

Crash safety, step by step (``commit``):

1. files are written into ``models/.staging-XXXX`` and fsynced;
2. the staging folder is renamed to its slot name (atomic), ``models/`` fsynced;
3. ``state.json`` is replaced atomically (temp file, fsync, ``os.replace``,
   fsync of the folder): this is the switch;
4. slots other than current and previous are removed.

A kill at any moment leaves ``state.json`` pointing at a complete slot: before
step 3 it still names the old slot, after it the new one. What a crash leaves
behind (a staging folder, a renamed slot nobody points at) is removed by
:meth:`Slots.recover` at the next start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.config import fsync_dir, write_file_atomic
from agent.errors import UpdateError
from corral.bundle import BUNDLE_FILE, Bundle, BundleFile
from corral.errors import BundleError

__all__ = ["MODELS_DIR", "SLOT_FILE", "STATE_FILE", "Slot", "Slots", "slot_name"]

logger = logging.getLogger(__name__)

STATE_FILE = "state.json"
MODELS_DIR = "models"
SLOT_FILE = "slot.json"
_STAGING = ".staging-"
_TRASH = ".trash-"
_SLOT_NAME = re.compile(r"^[a-z0-9][A-Za-z0-9.+-]{0,200}$")


def slot_name(bundle: Bundle, variant: str) -> str:
    """``<model>-<version>-<short digest of the variant's file>``.

    Args:
        bundle: the bundle being installed.
        variant: the variant whose file the slot holds.

    Returns:
        The slot's folder name.

    Raises:
        BundleError: the bundle has no such variant.
    """
    return f"{bundle.name}-{bundle.version}-{bundle.model_file(variant).sha256[:12]}"


@dataclass(frozen=True)
class Slot:
    """A complete installed model: its folder, bundle and the variant it holds."""

    name: str
    path: Path
    bundle: Bundle
    variant: str

    @property
    def model(self) -> str:
        """The model's name."""
        return self.bundle.name

    @property
    def version(self) -> str:
        """The model's version."""
        return self.bundle.version

    @property
    def model_file(self) -> BundleFile:
        """The bundle entry of the file this slot holds."""
        return self.bundle.model_file(self.variant)

    def verify(self) -> None:
        """Check the model file's length and SHA-256 against the bundle (reads it all).

        Raises:
            BundleError: the file is missing or differs from what was signed.
        """
        _only(self.bundle, self.variant).verify_files(self.path)


def _only(bundle: Bundle, variant: str) -> Bundle:
    """A view of ``bundle`` listing only ``variant``'s file, for verify_files."""
    return dataclasses.replace(bundle, files=[bundle.model_file(variant)])


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Slots:
    """The model slots of one agent's data folder.

    Methods are safe to call from several threads (an install in a worker, a
    rollback from the service); only one process may own a data folder.

    Args:
        data_dir: the agent's data folder.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.models_dir = self.data_dir / MODELS_DIR
        self.state_path = self.data_dir / STATE_FILE
        self._lock = threading.RLock()

    # --- state.json -----------------------------------------------------------

    def _read_state(self) -> tuple[str | None, str | None]:
        try:
            data = json.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as e:
            # Written atomically, so this means outside damage: start without a model
            # and let the reconcile loop install the desired one again.
            logger.error(
                "%s is unreadable (%s); starting with no current model", self.state_path, e
            )
            return None, None
        if not isinstance(data, dict):
            logger.error("%s is not a JSON object; starting with no current model", self.state_path)
            return None, None
        names = []
        for key in ("current", "previous"):
            value = data.get(key)
            if value is not None and not (isinstance(value, str) and _SLOT_NAME.match(value)):
                logger.error("%s: %s is not a slot name: %r", self.state_path, key, value)
                value = None
            names.append(value)
        return names[0], names[1]

    def _write_state(self, current: str | None, previous: str | None) -> None:
        body = json.dumps({"current": current, "previous": previous}, indent=2).encode() + b"\n"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        write_file_atomic(self.state_path, body)

    # --- reading slots ----------------------------------------------------------

    def _open(self, name: str) -> Slot:
        """Open slot ``name``; check it is complete (cheap checks, no hashing).

        Raises:
            BundleError: the slot is missing, or a file is missing or has the wrong size.
        """
        path = self.models_dir / name
        try:
            meta = json.loads((path / SLOT_FILE).read_bytes())
        except (OSError, ValueError) as e:
            raise BundleError(f"slot {name}: {SLOT_FILE} is missing or unreadable: {e}") from e
        variant = meta.get("variant") if isinstance(meta, dict) else None
        if not isinstance(variant, str):
            raise BundleError(f"slot {name}: {SLOT_FILE} does not name a variant")
        bundle = Bundle.load(path)
        entry = bundle.model_file(variant)
        try:
            size = (path / entry.name).stat().st_size
        except OSError as e:
            raise BundleError(f"slot {name}: model file {entry.name} is missing") from e
        if size != entry.length:
            raise BundleError(
                f"slot {name}: {entry.name} has {size} bytes, the bundle says {entry.length}"
            )
        return Slot(name=name, path=path, bundle=bundle, variant=variant)

    def _open_or_none(self, name: str | None, role: str) -> Slot | None:
        if name is None:
            return None
        try:
            return self._open(name)
        except BundleError as e:
            logger.error("%s slot is not usable: %s", role, e)
            return None

    def current(self) -> Slot | None:
        """The active slot, or ``None`` when no model is installed (or it is broken).

        Raises:
            Nothing: a broken slot is logged and reported as ``None``.
        """
        with self._lock:
            return self._open_or_none(self._read_state()[0], "current")

    def previous(self) -> Slot | None:
        """The slot that was current before the current one, if it is still usable.

        Raises:
            Nothing: a broken slot is logged and reported as ``None``.
        """
        with self._lock:
            return self._open_or_none(self._read_state()[1], "previous")

    # --- changing slots -----------------------------------------------------------

    def recover(self) -> None:
        """Clean up after a crash: call once at start, before anything else.

        Removes leftover staging and trash folders and slots that are neither
        current nor previous, and repairs state.json if it names a slot that is not
        complete (previous falls back to nothing; a broken current falls back to
        the previous slot, else to nothing).

        Raises:
            OSError: the models folder cannot be listed or cleaned.
        """
        with self._lock:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            current_name, previous_name = self._read_state()
            current = self._open_or_none(current_name, "current")
            previous = self._open_or_none(previous_name, "previous")
            if current is None and previous is not None:
                logger.error("falling back to the previous slot %s", previous.name)
                current, previous = previous, None
            names = (current.name if current else None, previous.name if previous else None)
            if names != (current_name, previous_name):
                self._write_state(*names)
            self._prune(keep={n for n in names if n}, staging_too=True)

    def clear(self) -> None:
        """Forget every slot: state.json names none, and their folders go.

        For slots whose model is expendable (a shadow candidate); never for the
        agent's own, which would leave it nothing to run or roll back to.

        Raises:
            OSError: state.json cannot be written.
        """
        with self._lock:
            self._write_state(None, None)
            if self.models_dir.is_dir():
                self._prune(keep=set(), staging_too=False)

    def _prune(self, keep: set[str], staging_too: bool) -> None:
        for entry in self.models_dir.iterdir():
            if entry.name in keep:
                continue
            if entry.name.startswith(_STAGING) and not staging_too:
                continue  # an install in progress owns it
            logger.info("removing old model folder %s", entry.name)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh ``models/.staging-XXXX`` folder, removed when the block ends.

        After a successful :meth:`commit` the folder has been renamed, so there is
        nothing left to remove; after a failure it goes with whatever it held.

        Yields:
            The staging folder.

        Raises:
            OSError: the folder cannot be created.
        """
        self.models_dir.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=_STAGING, dir=self.models_dir))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, staging: Path, bundle: Bundle, variant: str) -> Slot:
        """Make the complete staging folder a slot and switch ``current`` to it.

        The old current becomes previous; older slots are removed. If the slot
        is already current, nothing changes.

        Args:
            staging: a folder from :meth:`staging` holding bundle.json and the
                variant's file, both already verified.
            bundle: the parsed bundle.json.
            variant: the variant whose file the folder holds.

        Returns:
            The new current slot.

        Raises:
            BundleError: the staging folder lacks bundle.json or the model file.
            OSError: the disk refused a write or rename; state.json is unchanged.
        """
        staging = Path(staging)
        entry = bundle.model_file(variant)
        for needed in (BUNDLE_FILE, entry.name):
            if not (staging / needed).is_file():
                raise BundleError(f"cannot install: {needed} is missing from {staging}")
        write_file_atomic(staging / SLOT_FILE, json.dumps({"variant": variant}).encode() + b"\n")
        for needed in (BUNDLE_FILE, entry.name):
            _fsync_file(staging / needed)
        fsync_dir(staging)
        name = slot_name(bundle, variant)
        final = self.models_dir / name
        with self._lock:
            current, _ = self._read_state()
            if name == current:
                logger.info("%s is already the current slot", name)
                return self._open(name)
            trash = None
            if final.exists():
                # A leftover or the previous slot of the same content: put the fresh,
                # just-verified copy in its place.
                trash = self.models_dir / f"{_TRASH}{uuid.uuid4().hex[:8]}"
                final.rename(trash)
            staging.rename(final)
            fsync_dir(self.models_dir)
            self._write_state(name, current)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
            self._prune(keep={n for n in (name, current) if n}, staging_too=False)
            logger.info("slot %s is current (previous: %s)", name, current)
            return self._open(name)

    def rollback(self) -> Slot:
        """Switch current and previous.

        Returns:
            The slot that is now current.

        Raises:
            UpdateError: there is no usable previous slot (reason ``install``).
            OSError: state.json cannot be written.
        """
        with self._lock:
            current, previous = self._read_state()
            slot = self._open_or_none(previous, "previous")
            if slot is None:
                raise UpdateError(
                    "cannot roll back: there is no previous model on this device", reason="install"
                )
            self._write_state(previous, current)
            logger.info("rolled back to %s (previous: %s)", previous, current)
            return slot
