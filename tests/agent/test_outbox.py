"""The outbox: one persisted seq counter per device, nothing lost across restarts."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.outbox import Outbox
from corral.errors import PayloadError
from corral.payloads import decode

TELEMETRY = {"cpu_percent": 1.0, "memory_percent": 2.0, "disk_percent": 3.0, "gpus": []}


def test_seq_continues_after_reopening(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "dev-1")
    assert [box.put("telemetry", TELEMETRY) for _ in range(3)] == [0, 1, 2]
    assert box.reserve_seq() == 3
    box.close()
    box = Outbox(tmp_path, "dev-1")
    assert box.put("telemetry", TELEMETRY) == 4
    assert box.next_seq() == 5
    box.close()


def test_pending_survives_a_crash(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "dev-1")
    for _ in range(5):
        box.put("telemetry", TELEMETRY)
    box.mark_sent(1)
    # No orderly shutdown: drop the object without closing, as a killed process would.
    del box
    box = Outbox(tmp_path, "dev-1")
    rows = box.pending()
    assert [r.seq for r in rows] == [0, 2, 3, 4]
    message = decode("telemetry", rows[0].payload)
    assert (message.device_id, message.seq, message.body["cpu_percent"]) == ("dev-1", 0, 1.0)
    assert box.count_pending() == 4
    box.close()


def test_pending_is_in_seq_order_and_pages(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "dev-1")
    will = box.reserve_seq()
    for _ in range(4):
        box.put("telemetry", TELEMETRY)
    # The will's seq goes in last but sorts first.
    box.put(
        "status", {"state": "offline", "model": None, "version": None, "profile": None}, seq=will
    )
    assert [r.seq for r in box.pending()] == [0, 1, 2, 3, 4]
    assert box.pending()[0].kind == "status"
    assert [r.seq for r in box.pending(limit=2, after=1)] == [2, 3]
    box.close()


def test_a_bad_body_stores_nothing_and_spends_no_seq(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "dev-1")
    with pytest.raises(PayloadError):
        box.put("telemetry", {"cpu_percent": 1.0})
    assert box.pending() == []
    assert box.put("telemetry", TELEMETRY) == 0
    box.close()


def test_sent_rows_are_pruned_beyond_the_bound(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "dev-1", keep_sent=10)
    for _ in range(50):
        box.mark_sent(box.put("telemetry", TELEMETRY))
    box.put("telemetry", TELEMETRY)
    assert [r.seq for r in box.pending()] == [50]
    box.close()
    import sqlite3

    db = sqlite3.connect(tmp_path / "outbox.db")
    (kept,) = db.execute("SELECT COUNT(*) FROM outbox WHERE sent = 1").fetchone()
    db.close()
    assert kept <= 10 + 1


def test_payloads_carry_the_device_and_seq(tmp_path: Path) -> None:
    box = Outbox(tmp_path, "dev-7")
    seq = box.put("events", {"event": "installed", "message": "ok", "swap_ms": 0.1})
    data = json.loads(box.pending()[0].payload)
    assert (data["device_id"], data["seq"], data["schema"]) == ("dev-7", seq, "corral.events/1")
    box.close()


def _telemetry(i: int) -> dict[str, object]:
    return {"cpu_percent": float(i), "memory_percent": 1.0, "disk_percent": 1.0, "gpus": []}


def test_over_its_budget_the_outbox_sheds_old_telemetry_and_nothing_else(tmp_path: Path) -> None:
    probe = Outbox(tmp_path / "probe", "dev-1")
    probe.put("telemetry", _telemetry(0))
    size = probe.pending_bytes
    probe.close()
    outbox = Outbox(tmp_path, "dev-1", budget_bytes=size * 12)
    events = []
    for i in range(40):
        outbox.put("telemetry", _telemetry(i))
        if i % 10 == 0:
            events.append(outbox.put("events", {"event": "camera_lost", "message": f"{i}"}))
    pending = outbox.pending(limit=1000)
    kept_events = [r.seq for r in pending if r.kind == "events"]
    telemetry = [r.seq for r in pending if r.kind == "telemetry"]
    assert kept_events == events, "events are never dropped"
    assert outbox.pending_bytes <= size * 12
    assert outbox.dropped == 40 - len(telemetry) > 0
    assert telemetry[-1] == max(r.seq for r in pending if r.kind == "telemetry")
    assert max(telemetry) == max(s for s in range(outbox.next_seq()) if s not in events)
    outbox.close()
    again = Outbox(tmp_path, "dev-1", budget_bytes=size * 12)
    assert again.dropped == 40 - len(telemetry), "the count survives a restart"
    assert again.pending_bytes == sum(len(r.payload) for r in again.pending(limit=1000))
    again.close()


def test_precious_messages_stay_even_over_the_budget(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path, "dev-1", budget_bytes=100)
    for i in range(5):
        outbox.put("events", {"event": "installed", "message": f"{i}"})
    assert outbox.count_pending() == 5 and outbox.dropped == 0
    outbox.close()


def _sqlite_memory_used() -> Callable[[], int]:
    """SQLite's own count of the heap it holds, read from the library Python's sqlite3 uses."""
    maps = Path("/proc/self/maps")
    libraries = {
        line.split()[-1]
        for line in (maps.read_text().splitlines() if maps.exists() else [])
        if "libsqlite3" in line.rsplit("/", 1)[-1]
    }
    if len(libraries) != 1:
        pytest.skip("sqlite3 is not one shared libsqlite3 here (statically linked, or no /proc)")
    lib = ctypes.CDLL(libraries.pop())
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    return lambda: int(lib.sqlite3_memory_used())


def test_the_page_cache_stays_small_while_the_file_grows_to_keep_sent(tmp_path: Path) -> None:
    # SQLite's default 2 MiB cache grew with the file for the agent's first half
    # hour (until keep_sent rows were kept) and read as a leak in the soak.
    memory_used = _sqlite_memory_used()
    box = Outbox(tmp_path, "dev-1", keep_sent=1000, durable=False)
    box.mark_sent(box.put("telemetry", TELEMETRY))
    before = memory_used()
    chips = {f"chip{c}": 50.0 + c for c in range(24)}  # about an inference body's size
    for i in range(1500):
        box.mark_sent(box.put("telemetry", {**_telemetry(i), "temperatures": chips}))
    grown = memory_used() - before
    box.close()  # checkpoints the WAL into the file
    assert (tmp_path / "outbox.db").stat().st_size > 512 * 1024, "the file outgrew the cache"
    assert grown < 192 * 1024, f"SQLite holds {grown} bytes more after 1500 messages"
