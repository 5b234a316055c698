"""Registry replicas sharing ingest: broker checks, clean-up, and the audit of what they stored.

Shared by ``tests/registry/test_replicas.py`` (12 s, two replicas in the test's
process, raw MQTT publishers) and ``scripts/benchmarks/ingest.py`` (5 minutes,
two replica processes, simulated agents). Both end the same way: the devices
say which ``(device_id, seq)`` the broker acknowledged to them, and
:func:`audit_ingest` compares that with the database the replicas share:

- **lost**: acknowledged to a device, never stored;
- **duplicated**: a ``(device_id, seq)`` stored in more than one row; a replica
  counting more stores than there are rows; or a device summary whose frame
  (or labelled-frame) total is not the sum of its stored windows, which is
  what folding one window twice (or missing one) leaves behind; this holds
  while every device reports one model version (a new one resets the
  labelled count).
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import Engine, Integer, cast, func, select

from registry.tables import Device, Message

__all__ = [
    "IngestAudit",
    "audit_ingest",
    "forget_session",
    "mqtt5_client",
    "mqtt5_problem",
]

BROKER = ("127.0.0.1", 1883)


def mqtt5_client(client_id: str) -> mqtt.Client:
    """A paho client speaking MQTT 5 (callback API version 2)."""
    return mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )


def mqtt5_problem(broker: tuple[str, int] = BROKER) -> str | None:
    """Why the broker cannot host replicas (shared subscriptions need MQTT 5); None if it can."""
    probe = mqtt5_client(f"probe-{uuid.uuid4().hex[:8]}")
    accepted = threading.Event()
    probe.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else accepted.set()
    try:
        probe.connect(*broker)
    except OSError as e:
        return f"no MQTT broker on {broker[0]}:{broker[1]} ({e}); start mosquitto"
    probe.loop_start()
    try:
        if not accepted.wait(5):
            return f"the broker on {broker[0]}:{broker[1]} does not speak MQTT 5 (Mosquitto 2 does)"
    finally:
        probe.disconnect()
        probe.loop_stop()
    return None


def forget_session(client_id: str, broker: tuple[str, int] = BROKER) -> None:
    """Drop a replica's persistent MQTT 5 session, so the broker stops queueing for it.

    Raises:
        OSError: the broker cannot be reached.
        TimeoutError: it did not accept the connection within 10 s.
    """
    client = mqtt5_client(client_id)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 0
    connected = threading.Event()
    client.on_connect = lambda _c, _u, _f, rc, _p: None if rc.is_failure else connected.set()
    client.connect(*broker, clean_start=True, properties=properties)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise TimeoutError(f"{client_id} could not reconnect to clean up its session")
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass(frozen=True)
class IngestAudit:
    """What the replicas stored against what the broker acknowledged to the devices."""

    acked: int
    rows: int
    distinct: int
    replica_stores: int
    #: stored, though its device never saw the PUBACK (in flight as it stopped)
    unconfirmed: int
    lost: list[tuple[str, int]] = field(default_factory=list)
    #: device -> (summary total, sum over its stored windows), for frames and labelled
    misfolded: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def duplicated(self) -> int:
        """Rows stored twice, stores counted beyond the rows, and devices folded wrongly."""
        return (
            self.rows - self.distinct
            + max(0, self.replica_stores - self.rows)
            + len(self.misfolded)
        )  # fmt: skip


def _sums(engine: Engine, kind: str, key: str) -> dict[str, int]:
    total = cast(func.sum(Message.payload[key].as_integer()), Integer)
    query = select(Message.device_id, total).where(Message.kind == kind)
    with engine.connect() as conn:
        rows = conn.execute(query.group_by(Message.device_id)).all()
    return {str(device): int(n or 0) for device, n in rows}


def audit_ingest(
    engine: Engine, acked: Mapping[str, Iterable[int]], replica_stores: Iterable[int]
) -> IngestAudit:
    """Compare the shared database with what the devices were told the broker has.

    Args:
        engine: the replicas' database.
        acked: per device, the seqs the broker acknowledged (PUBACK) to it.
        replica_stores: each replica's own count of messages it stored.

    Returns:
        The audit; ``lost`` and ``duplicated`` are what must be zero.
    """
    wanted = {device: set(seqs) for device, seqs in acked.items()}
    stored: dict[str, list[int]] = defaultdict(list)
    with engine.connect() as conn:
        for device, seq in conn.execute(select(Message.device_id, Message.seq)):
            stored[device].append(seq)
        summaries = conn.execute(select(Device.id, Device.frames, Device.labelled)).all()
    lost = sorted(
        (device, seq) for device, seqs in wanted.items() for seq in seqs - set(stored[device])
    )
    unconfirmed = sum(len(set(seqs) - wanted.get(device, set())) for device, seqs in stored.items())
    frames, labelled = _sums(engine, "inference", "frames"), _sums(engine, "accuracy", "labelled")
    misfolded: dict[str, tuple[int, int]] = {}
    for device, summary_frames, summary_labelled in summaries:
        for summary, windows in ((summary_frames, frames), (summary_labelled, labelled)):
            if (summary or 0) != windows.get(device, 0):
                misfolded[device] = (summary or 0, windows.get(device, 0))
    return IngestAudit(
        acked=sum(len(s) for s in wanted.values()),
        rows=sum(len(s) for s in stored.values()),
        distinct=sum(len(set(s)) for s in stored.values()),
        replica_stores=sum(replica_stores),
        unconfirmed=unconfirmed,
        lost=lost,
        misfolded=misfolded,
    )
