"""One process owns a data folder: an ``flock`` on ``{data_dir}/agent.lock``.

Two agents on one data folder would install into the same slots, share one
outbox's sequence counter and fight over ``state.json``. ``corral agent run``
takes an exclusive, non-blocking ``flock`` on ``agent.lock`` at start and
holds it for the process's life; the kernel drops it when the process ends,
however it ends (a SIGKILL included), so a stale lock file never blocks a
restart. The file holds the owner's pid, for the error message only.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path
from types import TracebackType

from agent.errors import DataDirLockedError

__all__ = ["LOCK_FILE", "DataDirLock"]

logger = logging.getLogger(__name__)

LOCK_FILE = "agent.lock"


class DataDirLock:
    """The exclusive lock of one data folder.

    Args:
        data_dir: the agent's data folder (created if missing).
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock, or fail at once if another process has it.

        Raises:
            DataDirLockedError: another process owns the folder.
            OSError: the lock file cannot be created.
        """
        if self._fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirLockedError(
                f"another agent (pid {owner}) is running on {self.data_dir}; stop it first, "
                "or give this one its own --data-dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        logger.debug("holding %s", self.path)

    def release(self) -> None:
        """Let the lock go (the file stays; a lock file without a lock means nothing)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
