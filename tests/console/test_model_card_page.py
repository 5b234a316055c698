"""The model card page in a real browser (Debian's Chromium) against a real registry.

Cheaper than ``test_browser.py``'s world: the in-process registry on SQLite
(``tests/registry/conftest.py``), two versions pushed with lineage, aliases
moved, a rollout started and a device's reports fed through the real ingest.
The page must show what the audit document says, link the parent version's
card, and download that same document.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.console.conftest import SCREENSHOTS
from tests.registry.test_model_card import (
    LINEAGE_V1,
    LINEAGE_V2,
    V1,
    V2,
    Reporter,
    audit_of,
    card_bundle,
    move_alias,
    tick_until,
    wait_stored,
)


def _keep_screenshot(page: Any, path: Path) -> None:
    """A screenshot for docs/, in a 256-colour palette as test_browser.py keeps them."""
    page.screenshot(path=str(path))
    with Image.open(path) as image:
        small = image.convert("RGB").quantize(256, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


@pytest.fixture
def seeded(registry: Any) -> Iterator[dict[str, Any]]:
    """Two versions, their aliases, a rollout of 1.1.0 and a device reporting it."""
    for version, lineage in ((V1, LINEAGE_V1), (V2, LINEAGE_V2)):
        bundle, files = card_bundle(version, lineage)
        assert registry.push(bundle, files).status_code == 201
    move_alias(registry, "production", V1, "first release")
    move_alias(registry, "production", V2, "better on night frames")
    device = registry.unique_id("gate-cam")
    registry.enrol(device)
    plan = {"model": "animals", "version": V2, "selector": {"devices": [device]}}
    rollout = registry.admin.post("/api/v1/rollouts", json=plan)
    assert rollout.status_code == 201, rollout.text
    reporter = Reporter(registry, device)
    reporter.event("installed", model="animals", version=V2)
    reporter.status(V2)
    reporter.inference(V2)
    wait_stored(registry, 3)
    # Finished, so nothing in the document moves while the page is compared with it.
    tick_until(registry, rollout.json()["id"], "succeeded")
    viewer = registry.api_token("viewer")
    yield {"device": device, "rollout": rollout.json()["id"], "viewer": viewer}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_version_links_to_its_card_which_shows_and_downloads_its_audit(
    registry: Any, seeded: dict[str, Any], browser: Any, tmp_path: Path
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(f"{registry.url}/#token={seeded['viewer']}")
        page.wait_for_selector("#nav", state="visible")
        page.goto(f"{registry.url}/#/models")
        page.wait_for_selector("#page[data-ready='1']")
        # A click on the row still opens its details (which link the card too) ...
        row = page.locator(f"section[data-model='animals'] tr[data-version='{V2}']")
        row.click()
        page.wait_for_selector("tr.detail a.card-link")
        # ... and the version's name is the link to its card.
        row.locator("a.card-link").click()
        page.wait_for_url(f"**/#/models/animals/{V2}")
        page.wait_for_selector(f"#page[data-ready='1'][data-version='{V2}']")

        cat = page.locator("#card-classes tr[data-class='cat'] td")
        assert [cat.nth(i).inner_text() for i in range(5)] == [
            "cat",
            "0.910",
            "0.960",
            "0.934",
            "1000",
        ]
        assert page.inner_text("#card-bias") == "0.060 (dog over cat)"
        assert "94.0 %" in page.inner_text("#card-scores")
        assert page.inner_text("#card-commit") == "9a8b7c6d5e4f"
        assert "uncommitted changes" in page.inner_text("#card-lineage")
        assert page.inner_text("#card-aliases").strip() == "production"
        moves = page.locator("#card-moves tbody tr")
        assert moves.count() == 1
        assert "better on night frames" in moves.nth(0).inner_text()
        assert page.locator("#card-rollouts tr[data-rollout]").get_attribute("data-rollout") == (
            str(seeded["rollout"])
        )
        ran = page.locator(f"#card-devices tr[data-device='{seeded['device']}']")
        assert ran.get_attribute("data-now") == "1"
        actions = page.locator("#card-audit tr[data-action]")
        assert actions.evaluate_all("rows => rows.map(r => r.dataset.action)") == [
            "rollout.create",
            "alias.move",
            "model.push",
        ]
        page.screenshot(path=str(tmp_path / "model-card.png"), full_page=True)
        if os.environ.get("CORRAL_UPDATE_SCREENSHOTS") == "1":
            _keep_screenshot(page, SCREENSHOTS / "model-card.png")

        with page.expect_download() as waiting:
            page.click("#card-download")
        download = waiting.value
        assert download.suggested_filename == f"animals-{V2}-audit.json"
        saved = json.loads(Path(download.path()).read_text())
        served = audit_of(registry, V2)
        assert {k: v for k, v in saved.items() if k != "generated_at"} == {
            k: v for k, v in served.items() if k != "generated_at"
        }

        # The parent version is a link to its own card.
        page.click("#card-parent a")
        page.wait_for_url(f"**/#/models/animals/{V1}")
        page.wait_for_selector(f"#page[data-ready='1'][data-version='{V1}']")
        assert page.locator("#card-devices tr[data-device]").count() == 0
        assert page.inner_text("#card-parent") == "–"

        page.goto(f"{registry.url}/#/models/animals/9.9.9")
        page.wait_for_selector("#card-error")
        assert "No model animals 9.9.9" in page.inner_text("#card-error")
    finally:
        context.close()
    # The 404 of the unknown version is the one error the page may log.
    assert [e for e in errors if "404" not in e] == []
