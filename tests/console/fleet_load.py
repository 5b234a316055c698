"""A large fleet for the console: device rows seeded into a registry's database, and a timed load.

Shared by ``tests/console/test_browser.py`` (a thousand devices, the load
printed) and ``scripts/benchmarks/console.py`` (``console.fleet_1000_load_ms``
against the same page with ten devices). The rows are what ingest leaves
behind for devices that report (a mix of online, offline and stale ones,
GPUs on two thirds of them), written straight into the registry's SQLite
file: enrolling and ingesting a thousand devices would measure those, not
the page.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert
from sqlalchemy.orm import Session

from registry.tables import Device

__all__ = ["PAGE_ROWS", "load_fleet_page_ms", "seed_devices"]

#: Rows on one page of the fleet table (``registry/static/js/fleet.js``, PAGE).
PAGE_ROWS = 50


def seed_devices(registry_dir: Path, n: int, start: int = 0) -> list[str]:
    """Insert devices ``park-{start:04d}`` onwards into the registry's ``registry.db``.

    Args:
        registry_dir: the registry's data directory (SQLite database inside).
        n: how many devices.
        start: the first index, so that a second call adds devices instead of clashing.

    Returns:
        Their ids.

    Raises:
        sqlalchemy.exc.IntegrityError: one of the ids is already enrolled.
    """
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    for i in range(start, start + n):
        offline = i % 50 == 0
        stale = i % 37 == 0
        rows.append(
            {
                "id": f"park-{i:04d}",
                "token_hash": hashlib.sha256(secrets.token_bytes(16)).hexdigest(),
                "profile": "x86-nvidia" if i % 3 else "x86-cpu",
                "facts": {},
                "enrolled_at": now - timedelta(days=30),
                "desired_model": "tiny",
                "desired_version": "1.2.0",
                "desired_seq": 1,
                "state": "offline" if offline else "online",
                "model": "tiny",
                "version": "1.1.0" if i % 10 == 0 else "1.2.0",
                "variant": "trt-fp16-l4-trt10.3" if i % 3 else "fp32",
                "fps": 15.0 + (i % 7),
                "latency_p50_ms": 5.0 + (i % 5),
                "latency_p95_ms": 8.0 + (i % 11),
                "frames": 10_000 + i,
                "drops": i % 4,
                "correct": 900 + (i % 90),
                "labelled": 1000,
                "cpu_percent": 20.0 + (i % 60),
                "memory_percent": 40.0,
                "gpu_temp_c": 50.0 + (i % 30) if i % 3 else None,
                "last_seen": now - timedelta(seconds=600 if stale else 1 + i % 20),
                "site": f"park-{i % 12}",
                "group": "north" if i % 2 else "south",
                "tags": ["outdoor"],
            }
        )
    engine = create_engine(f"sqlite:///{registry_dir / 'registry.db'}")
    try:
        with Session(engine) as session:
            session.execute(insert(Device), rows)
            session.commit()
    finally:
        engine.dispose()
    return [str(r["id"]) for r in rows]


def load_fleet_page_ms(page: Any, total: int) -> float:
    """Reload the console's fleet page (signed in) until it shows ``total`` devices.

    Done means the page says so (``#page`` ``data-total``) and its first page
    of rows is in the DOM; sparklines load after, and are not waited for.

    Args:
        page: a Playwright page on the fleet overview, signed in.
        total: the devices the registry holds.

    Returns:
        Milliseconds from the reload to a rendered table.

    Raises:
        playwright.sync_api.TimeoutError: the page never got there (the page's timeout).
    """
    rows = min(total, PAGE_ROWS)
    started = time.perf_counter()
    page.reload()
    page.wait_for_function(
        "([total, rows]) => { const p = document.getElementById('page');"
        " return p.dataset.total === String(total) && p.dataset.rows === String(rows)"
        " && document.querySelectorAll('#devices tr[data-device]').length === rows; }",
        arg=[total, rows],
    )
    return (time.perf_counter() - started) * 1000
