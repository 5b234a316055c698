"""Console benchmarks: the fleet page in headless Chromium with a thousand devices.

Two registry processes (``corral registry serve`` through
:class:`corral.local.LocalFleet`, SQLite, each with an embedded broker of its
own, so nothing lands on a shared one): one holds 1,000 devices, the other 10 (the
baseline), seeded by ``tests.console.fleet_load.seed_devices`` as the browser
test seeds them. Debian's Chromium (``/usr/bin/chromium``, or
``CORRAL_CHROMIUM``), driven by Playwright, signs in to each with a viewer
token, then reloads the two fleet pages in turn, ``ROUNDS`` times each, and
times each reload until the page shows every device and its first page of
rows (``tests.console.fleet_load.load_fleet_page_ms``).

``console.fleet_1000_load_ms`` is the median over the rounds; the ratio is
that over the 10-device page's median: what the fleet's size costs the page.
Without Chromium the benchmark says so and reports nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from benchmarks.common import Figure, median

ROUNDS = 11
SIZES = (10, 1000)


def _signed_in(browser: Any, url: str, token: str, total: int) -> Any:
    """A tab on the fleet page of the registry at ``url``, signed in, showing ``total``."""
    from tests.console.fleet_load import load_fleet_page_ms

    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    page.set_default_timeout(60_000)
    # The token in the fragment signs in once (kept for the tab's session, reloads too).
    page.goto(f"{url}/#token={token}")
    page.wait_for_selector("#nav", state="visible")
    load_fleet_page_ms(page, total)  # a first load warms the caches of both sides
    return page


def bench_fleet_1000(workdir: Path) -> list[Figure]:
    """console.fleet_1000_load_ms: the fleet page with 1,000 devices, against 10."""
    from corral.local import LocalFleet
    from tests.console.conftest import CHROMIUM
    from tests.console.fleet_load import load_fleet_page_ms, seed_devices

    if not CHROMIUM.exists():
        print(
            f"console.fleet_1000 SKIPPED: no Chromium at {CHROMIUM}; apt-get install "
            "chromium (Debian's) or set CORRAL_CHROMIUM"
        )
        return []
    from playwright.sync_api import sync_playwright

    timings: dict[int, list[float]] = {n: [] for n in SIZES}
    with ExitStack() as stack:
        pages = {}
        for n in SIZES:
            local = stack.enter_context(LocalFleet(workdir / f"fleet{n}", python=sys.executable))
            local.start_broker()  # embedded, its own: the page needs no agent traffic
            local.start_registry()
            with local.client() as client:
                viewer = client.create_api_token(f"bench-viewer-{n}", "viewer")["token"]
            seed_devices(local.data_dir / "registry", n)
            pages[n] = (local.registry_url, viewer)
        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        stack.callback(browser.close)
        tabs = {n: _signed_in(browser, url, token, n) for n, (url, token) in pages.items()}
        for _ in range(ROUNDS):
            for n, tab in tabs.items():
                timings[n].append(load_fleet_page_ms(tab, n))
    small, large = (median(timings[n]) for n in SIZES)
    return [
        Figure(
            name="console.fleet_1000_load_ms",
            value=round(large, 1),
            unit="ms",
            baseline=f"the same page with {SIZES[0]} devices, interleaved in the same run: "
            f"{small:.1f} ms (medians of {ROUNDS} reloads; 1,000: "
            f"{[round(t) for t in timings[SIZES[1]]]}, {SIZES[0]}: "
            f"{[round(t) for t in timings[SIZES[0]]]})",
            ratio=round(large / small, 3),
            goal="<= 2.0",
        )
    ]


BENCHMARKS: dict[str, Callable[[Path], list[Figure]]] = {
    "console.fleet_1000": bench_fleet_1000,
}
