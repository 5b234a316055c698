"""Store-and-forward for everything the agent publishes.

Every message is encoded and written to ``{data_dir}/outbox.db`` (SQLite, WAL,
``synchronous=FULL``) before anything tries to send it, with the next value of
the device's one sequence counter. The MQTT link sends unsent rows in seq
order and marks each sent only when the broker acknowledged it, so a broker
outage, a crash or a restart loses nothing that was enqueued: rows are sent
later, at worst twice (the registry stores by ``(device_id, seq)``).

The counter lives in the same database and moves in the same transaction as
the row it numbers, so it survives restarts and never repeats. A seq can also
be reserved without a row: the last will's ``offline`` status is built at
connect time with a reserved seq, so a will the broker fires fills its own
place in the sequence.

Sent rows are kept (bounded by ``keep_sent``) for inspection, then pruned.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.payloads import encode

__all__ = ["OUTBOX_FILE", "Outbox", "OutboxRow"]

logger = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counter (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    next_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO counter (id, next_seq) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent, seq);
CREATE TABLE IF NOT EXISTS shed (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    dropped INTEGER NOT NULL
);
INSERT OR IGNORE INTO shed (id, dropped) VALUES (0, 0);
"""
#: Kinds that may be shed when the outbox is over its disk budget, first halved
#: (downsampled), then dropped oldest first. Everything else is never dropped.
_SHEDDABLE = ("telemetry",)
DEFAULT_BUDGET_BYTES = 64 * 1024 * 1024
#: SQLite's page cache per outbox, in KiB (see Outbox.__init__).
_CACHE_KIB = 128


@dataclass(frozen=True)
class OutboxRow:
    """One stored message: its seq, kind (which picks the topic) and encoded payload."""

    seq: int
    kind: str
    payload: bytes


class Outbox:
    """The persistent queue and sequence counter of one device.

    Args:
        data_dir: where ``outbox.db`` lives (created if missing).
        device_id: the device whose payloads this outbox numbers.
        keep_sent: how many sent rows to keep before pruning the oldest.
        budget_bytes: the most bytes of unsent payloads to keep. Over it, unsent
            telemetry is thinned to every other message, then dropped oldest first,
            and the drops are counted (:attr:`dropped`); status, events, inference
            and accuracy are never dropped, even over the budget.
        durable: fsync every enqueue (the agent); False keeps crash safety only.

    Raises:
        sqlite3.Error: the database cannot be opened or is not an outbox.
    """

    def __init__(
        self,
        data_dir: Path,
        device_id: str,
        keep_sent: int = 1000,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        durable: bool = True,
    ) -> None:
        self.path = Path(data_dir) / OUTBOX_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.keep_sent = keep_sent
        self._lock = threading.Lock()
        # One connection shared by the agent's threads, serialised by self._lock.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: every enqueue is on disk before put() returns, power cut or not.
        # NORMAL (WAL): survives a crash of the process, not of the machine; for
        # the fleet simulator, whose hundreds of agents would otherwise spend
        # their time in fsync.
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        # SQLite's page cache (2 MiB by default) takes in every page the file
        # grows to until keep_sent rows are kept: half a MiB of C heap added over
        # an agent's first half hour (1,000 rows at three messages every 5 s),
        # which reads as a leak. The outbox reads back only a few pages (the
        # counter, the newest rows, the index) and the OS caches the file, so a
        # small cache fills within minutes and costs nothing measurable.
        self._db.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        self._db.executescript(_SCHEMA)
        self._since_prune = 0
        self.budget_bytes = budget_bytes
        (pending,) = self._db.execute(
            "SELECT COALESCE(SUM(length(payload)), 0) FROM outbox WHERE sent = 0"
        ).fetchone()
        self._pending_bytes = int(pending)

    def close(self) -> None:
        """Close the database; unsent rows stay for the next start."""
        with self._lock:
            self._db.close()

    def _next_seq(self) -> int:
        # Inside a transaction: take the counter and move it on.
        (seq,) = self._db.execute("SELECT next_seq FROM counter WHERE id = 0").fetchone()
        self._db.execute("UPDATE counter SET next_seq = ? WHERE id = 0", (seq + 1,))
        return int(seq)

    def reserve_seq(self) -> int:
        """Take the next seq without storing a message (for the last will).

        Returns:
            The reserved seq; no later call returns it again.
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._next_seq()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return seq

    def put(self, kind: str, body: Mapping[str, Any], seq: int | None = None) -> int:
        """Encode a message with the next seq and store it unsent.

        Args:
            kind: the payload kind (``status``, ``telemetry``, ...).
            body: the kind's fields.
            seq: a seq from :meth:`reserve_seq` to use instead of a new one.

        Returns:
            The message's seq.

        Raises:
            PayloadError: the body breaks the payload contract (nothing is stored).
        """
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if seq is None:
                    seq = self._next_seq()
                payload = encode(kind, self.device_id, seq, body)
                self._db.execute(
                    "INSERT OR REPLACE INTO outbox (seq, kind, payload, sent) VALUES (?, ?, ?, 0)",
                    (seq, kind, payload),
                )
                self._pending_bytes += len(payload)
                if self._pending_bytes > self.budget_bytes:
                    self._shed()
            except BaseException:
                self._db.execute("ROLLBACK")
                self._pending_bytes = self._count_pending_bytes()
                raise
            self._db.execute("COMMIT")
        return seq

    def _count_pending_bytes(self) -> int:
        (pending,) = self._db.execute(
            "SELECT COALESCE(SUM(length(payload)), 0) FROM outbox WHERE sent = 0"
        ).fetchone()
        return int(pending)

    def _shed(self) -> None:
        # Inside put's transaction. First every other unsent sheddable message
        # (keeping the newest), then the oldest ones, until under the budget.
        marks = ",".join("?" * len(_SHEDDABLE))
        rows = self._db.execute(
            f"SELECT seq, length(payload) FROM outbox WHERE sent = 0 AND kind IN ({marks}) "
            "ORDER BY seq",
            _SHEDDABLE,
        ).fetchall()
        halved = set(rows[-2::-2])  # every other one, the newest kept
        order = sorted(halved) + [r for r in rows if r not in halved]
        dropped: list[int] = []
        for seq, size in order:
            if self._pending_bytes <= self.budget_bytes:
                break
            dropped.append(seq)
            self._pending_bytes -= int(size)
        if dropped:
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in dropped])
            self._db.execute("UPDATE shed SET dropped = dropped + ? WHERE id = 0", (len(dropped),))
            logger.warning(
                "outbox over its %d-byte budget: dropped %d unsent telemetry message(s)",
                self.budget_bytes,
                len(dropped),
            )

    @property
    def dropped(self) -> int:
        """Messages shed to keep within the budget, over the outbox's whole life."""
        with self._lock:
            (n,) = self._db.execute("SELECT dropped FROM shed WHERE id = 0").fetchone()
        return int(n)

    @property
    def pending_bytes(self) -> int:
        """Bytes of unsent payloads."""
        with self._lock:
            return self._pending_bytes

    def pending(self, limit: int = 100, after: int = -1) -> list[OutboxRow]:
        """Unsent messages in seq order.

        Args:
            limit: the most rows to return.
            after: only rows with a seq above this.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, kind, payload FROM outbox WHERE sent = 0 AND seq > ? "
                "ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
        return [OutboxRow(int(s), str(k), bytes(p)) for s, k, p in rows]

    def count_pending(self) -> int:
        """How many messages wait to be sent."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM outbox WHERE sent = 0").fetchone()
        return int(n)

    def is_sent(self, seq: int) -> bool:
        """Whether the message ``seq`` was acknowledged (or pruned after it was)."""
        with self._lock:
            row = self._db.execute("SELECT sent FROM outbox WHERE seq = ?", (seq,)).fetchone()
        return row is None or bool(row[0])

    def mark_sent(self, seq: int) -> None:
        """Record that the broker acknowledged ``seq``; prune old sent rows now and then."""
        with self._lock:
            row = self._db.execute(
                "SELECT length(payload) FROM outbox WHERE seq = ? AND sent = 0", (seq,)
            ).fetchone()
            if row is not None:
                self._pending_bytes -= int(row[0])
            self._db.execute("UPDATE outbox SET sent = 1 WHERE seq = ?", (seq,))
            self._since_prune += 1
            if self._since_prune >= max(1, self.keep_sent // 10):
                self._since_prune = 0
                self._prune()

    def mark_unsent(self, seqs: Iterable[int]) -> int:
        """Send acknowledged messages again (those still kept); for a broker that lost them.

        Returns:
            How many rows went back to unsent.
        """
        wanted = sorted(set(seqs))
        if not wanted:
            return 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            rows = self._db.execute(
                f"SELECT seq, length(payload) FROM outbox WHERE sent = 1 AND seq IN "
                f"({','.join('?' * len(wanted))})",
                wanted,
            ).fetchall()
            self._db.executemany(
                "UPDATE outbox SET sent = 0 WHERE seq = ?", [(r[0],) for r in rows]
            )
            self._db.execute("COMMIT")
            self._pending_bytes += sum(int(r[1]) for r in rows)
        return len(rows)

    def _prune(self) -> None:
        self._db.execute(
            "DELETE FROM outbox WHERE sent = 1 AND seq NOT IN "
            "(SELECT seq FROM outbox WHERE sent = 1 ORDER BY seq DESC LIMIT ?)",
            (self.keep_sent,),
        )

    def next_seq(self) -> int:
        """The seq the next message will get."""
        with self._lock:
            (seq,) = self._db.execute("SELECT next_seq FROM counter WHERE id = 0").fetchone()
        return int(seq)
