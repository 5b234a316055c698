"""MQTT ingest: agent payloads into the messages table and the device summary.

The bridge's network thread only queues; one worker thread drains the queue
in batches (up to ``batch_size`` per transaction) so a burst costs one commit,
then acknowledges the batch. A batch costs a handful of statements whatever
its size:

1. every message is checked: ``parse_topic`` (a ``desired`` message, our own,
   is skipped), ``corral.payloads.decode``, and the payload's device id must
   be the topic's;
2. the batch's devices are locked in id order (``SELECT ... FOR UPDATE`` on
   PostgreSQL, so two registries ingesting for one device fold their
   messages into its summary one after the other and never deadlock on each
   other's batches; on SQLite, which has no row locks, the database's one
   write lock) and loaded in one query; a device must be enrolled and not
   revoked;
3. a seq that retention has already folded into its buckets and deleted
   (``folded_ranges``, read after the locks, so retention cannot fold in
   between) is a redelivery: ignored, like a seq twice in one batch and the
   next case;
4. the new messages go in one multi-row ``INSERT ... ON CONFLICT (device_id,
   seq) DO NOTHING RETURNING``: a row not returned was stored before, a
   redelivery, ignored. The database decides, so two workers racing on one
   redelivery cannot both store it, and neither aborts its transaction on a
   unique violation (which on PostgreSQL would throw away the whole batch);
5. each stored message is folded, in arrival order, into its device's
   summary (see ``_apply``), which is written once at the commit.

A message that fails 1-2 is logged, counted and dropped (and acknowledged, so
the broker does not send it again); it never stops the worker. A batch whose
commit fails is retried one message at a time so one poison message cannot
hold back the rest.

The summary's ``accuracy`` is cumulative: correct / labelled summed over every
accuracy window since the device reported its current model version (the
counts reset when the reported model or version changes); the latest window's
own figure is kept too (``accuracy_window``).

The summary's ``variant`` (fp32, int8, a TensorRT variant) is the latest
status's; null when that status had none (no model, or an agent that predates
the field), and from an inference window naming another version until the
status that follows it.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, false, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from corral.errors import PayloadError
from corral.payloads import Message as Payload
from corral.payloads import decode
from corral.topics import parse_topic
from registry._time import as_utc, utcnow
from registry.core.db import SessionFactory
from registry.folded_runs import covers, read_runs
from registry.mqtt import IncomingMessage
from registry.tables import Device, Event, Message

__all__ = ["Ingest", "lock_devices"]

#: A bundle variant's name, as ``corral.bundle`` checks it (``trt-fp16-l4-trt10.3``).
_VARIANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

#: Per device, the (first, last) seq runs retention folded, sorted.

logger = logging.getLogger(__name__)


class _DropError(Exception):
    """A message that breaks the contract; the reason is the message."""

    def __init__(self, reason: str, counter: str) -> None:
        super().__init__(reason)
        self.counter = counter


class Ingest:
    """Stores agent payloads; ``submit`` is safe to call from any thread.

    Args:
        sessions: the database session factory.
        batch_size: most messages per transaction.
    """

    def __init__(self, sessions: SessionFactory, batch_size: int = 200) -> None:
        self._sessions = sessions
        self._batch_size = batch_size
        self._queue: queue.Queue[IncomingMessage | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    @property
    def counts(self) -> dict[str, int]:
        """How many messages were received, stored, duplicates, and dropped by reason."""
        with self._lock:
            return dict(self._counts)

    def submit(self, message: IncomingMessage) -> None:
        """Queue a message from the broker."""
        self._count("received")
        self._queue.put(message)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread = threading.Thread(target=self._run, name="mqtt-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Store what is queued, then stop the worker."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self._batch_size:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._store_batch(batch)

    def _store_batch(self, batch: list[IncomingMessage]) -> None:
        try:
            with self._sessions() as session:
                outcome = self._store(session, batch)
                session.commit()
        except SQLAlchemyError:
            logger.exception("storing a batch of %d failed; retrying one by one", len(batch))
            outcome = []
            for message in batch:
                try:
                    with self._sessions() as session:
                        outcome += self._store(session, [message])
                        session.commit()
                except SQLAlchemyError:
                    logger.exception("dropping message on %s after a database error", message.topic)
                    outcome.append("dropped_db_error")
        for key in outcome:
            self._count(key)
        for message in batch:
            message.ack()

    def _store(self, session: Session, batch: list[IncomingMessage]) -> list[str]:
        """Store a batch in ``session``'s transaction; the outcome of each message, in order.

        A handful of statements per batch, whatever its size: the devices are
        locked and loaded once, the new messages go in one multi-row insert that
        returns which were new, and each device's summary is written once, at
        the commit, after every message of the batch was folded into it.
        """
        decoded: list[Payload | str] = []  # a payload, or why it goes no further
        for incoming in batch:
            try:
                message = self._decode(incoming)
            except _DropError as e:
                logger.warning("dropped message on %s: %s", incoming.topic, e)
                decoded.append(e.counter)
                continue
            decoded.append("skipped" if message is None else message)
        ids = lock_devices(session, {p.device_id for p in decoded if not isinstance(p, str)})
        devices = (
            {d.id: d for d in session.scalars(select(Device).where(Device.id.in_(ids)))}
            if ids
            else {}
        )
        folded = read_runs(session, ids)
        now = utcnow()
        outcome: list[str] = []
        rows: list[dict[str, Any]] = []
        candidates: dict[tuple[str, int], Payload] = {}
        for item in decoded:
            if isinstance(item, str):
                outcome.append(item)
                continue
            payload = item
            device = devices.get(payload.device_id)
            key = (payload.device_id, payload.seq)
            if device is None:
                logger.warning("dropped message from unenrolled device %s", payload.device_id)
                outcome.append("dropped_unknown_device")
            elif device.revoked_at is not None:
                logger.warning("dropped message from revoked device %s", payload.device_id)
                outcome.append("dropped_revoked")
            elif key in candidates or covers(folded.get(payload.device_id, []), payload.seq):
                # Twice in this batch, or folded by retention long ago: a redelivery.
                outcome.append("duplicates")
            else:
                candidates[key] = payload
                outcome.append("")  # decided by the insert, below
                rows.append(
                    {
                        "device_id": payload.device_id,
                        "seq": payload.seq,
                        "kind": payload.kind,
                        "ts": payload.ts,
                        "received_at": now,
                        "payload": payload.to_dict(),
                    }
                )
        inserted: set[tuple[str, int]] = set()
        if rows:
            # RETURNING names the rows that were new: the others were stored before.
            returned = session.execute(
                _insert_new(session, rows).returning(Message.device_id, Message.seq)
            )
            inserted = {(device_id, seq) for device_id, seq in returned}
        pending = iter(candidates.items())
        for i, result in enumerate(outcome):
            if result:
                continue
            key, new = next(pending)
            if key in inserted:
                _apply(session, devices[new.device_id], new)
                outcome[i] = "stored"
            else:
                outcome[i] = "duplicates"
        return outcome

    @staticmethod
    def _decode(incoming: IncomingMessage) -> Payload | None:
        try:
            device_id, kind = parse_topic(incoming.topic)
        except PayloadError as e:
            raise _DropError(str(e), "dropped_bad_topic") from e
        if kind == "desired":
            return None
        try:
            payload = decode(kind, incoming.payload)
        except PayloadError as e:
            raise _DropError(str(e), "dropped_bad_payload") from e
        if payload.device_id != device_id:
            raise _DropError(
                f"payload device_id {payload.device_id!r} differs from the topic's {device_id!r}",
                "dropped_bad_payload",
            )
        return payload


def lock_devices(session: Session, device_ids: Iterable[str]) -> list[str]:
    """Lock these devices for the rest of the session's transaction, as ingest does.

    PostgreSQL: ``SELECT ... FOR UPDATE`` on their rows, in id order. Two
    replicas whose batches name the same devices in different orders would
    otherwise each lock one and wait for the other's: a deadlock, which
    PostgreSQL breaks by aborting one batch (then retried one by one).
    SQLite has no row locks: a write that changes nothing takes its one write
    lock now, so nothing read from here on can change before the commit.
    Retention (``registry.retention``) takes the same locks before it folds.

    Args:
        session: the session, before it has written anything.
        device_ids: the devices.

    Returns:
        The ids, sorted.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database failed (or, on SQLite, stayed
            locked past its busy timeout).
    """
    ids = sorted(set(device_ids))
    if not ids:
        return ids
    if session.get_bind().dialect.name == "sqlite":
        session.execute(
            update(Device).where(false()).values(id=Device.id),
            execution_options={"synchronize_session": False},
        )
    else:
        query = select(Device.id).where(Device.id.in_(ids)).order_by(Device.id)
        session.execute(query.with_for_update())
    return ids


def _insert_new(session: Session, rows: list[dict[str, Any]]) -> Insert:
    """``INSERT ... ON CONFLICT (device_id, seq) DO NOTHING`` of ``rows``, in this dialect."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return (
            postgresql.insert(Message)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["device_id", "seq"])
        )
    if name == "sqlite":
        return (
            sqlite.insert(Message)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["device_id", "seq"])
        )
    raise NotImplementedError(f"ingest supports SQLite and PostgreSQL, not {name}")


def _parse_ts(ts: str) -> datetime | None:
    try:
        return as_utc(datetime.fromisoformat(ts.replace("Z", "+00:00")))
    except ValueError:
        return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _variant(value: Any, device_id: str) -> str | None:
    """A status's ``variant`` if it is a variant name (as ``corral.bundle`` allows), else None."""
    if value is None or (isinstance(value, str) and _VARIANT.match(value)):
        return value
    # The rest of the status is good: keep it, and call the variant not reported.
    logger.warning("status of %s has a bad variant %.80r; taken as not reported", device_id, value)
    return None


def _apply(session: Session, device: Device, payload: Payload) -> None:
    """Fold one payload into the device summary, in arrival order."""
    body = payload.body
    now = utcnow()
    # The payload's time, but never in the future: a replayed backlog must not
    # make last_seen jump back, and a fast clock must not make it jump ahead.
    seen = min(_parse_ts(payload.ts) or now, now)
    if device.last_seen is None or as_utc(device.last_seen) < seen:
        device.last_seen = seen
    if payload.kind == "status":
        device.state = body["state"]
        device.model, device.version = body["model"], body["version"]
        device.profile = body["profile"] or device.profile
        # A status says what runs now, so a status without `variant` (an agent that
        # predates it) sets None, "not reported", rather than keep what an earlier
        # status said: that may have been another version or another agent's choice,
        # and a wrong engine name misleads more than no name.
        device.variant = _variant(body.get("variant"), payload.device_id)
    elif payload.kind == "inference":
        latency = body["latency_ms"]
        device.fps = float(body["fps"])
        device.latency_p50_ms = _number(latency.get("p50"))
        device.latency_p95_ms = _number(latency.get("p95"))
        device.frames = (device.frames or 0) + body["frames"]
        device.drops = (device.drops or 0) + body["drops"]
        if body["version"] is not None:
            if (body["model"], body["version"]) != (device.model, device.version):
                # Another version than the last status named (windows can arrive
                # before the status that follows an install): its variant is not
                # known until that status.
                device.variant = None
            device.model, device.version = body["model"], body["version"]
    elif payload.kind == "accuracy":
        if (body["model"], body["version"]) != (device.acc_model, device.acc_version):
            device.acc_model, device.acc_version = body["model"], body["version"]
            device.correct = device.labelled = 0
        device.correct = (device.correct or 0) + body["correct"]
        device.labelled = (device.labelled or 0) + body["labelled"]
        device.accuracy_window = _number(body["accuracy"])
    elif payload.kind == "telemetry":
        device.cpu_percent = float(body["cpu_percent"])
        device.memory_percent = float(body["memory_percent"])
        temps = [
            t
            for gpu in body["gpus"]
            if isinstance(gpu, dict) and (t := _number(gpu.get("temp_c"))) is not None
        ]
        device.gpu_temp_c = max(temps) if temps else None
    elif payload.kind == "events":
        rest = {k: v for k, v in body.items() if k not in ("event", "message")}
        session.add(
            Event(
                device_id=device.id,
                seq=payload.seq,
                ts=payload.ts,
                event=body["event"],
                message=body["message"],
                data=rest,
            )
        )
