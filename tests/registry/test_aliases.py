"""Model aliases: production/staging/champion per model, every move recorded with its reason."""

from __future__ import annotations

from typing import Any


def _push(registry: Any, *versions: str) -> None:
    for version in versions:
        bundle, files = registry.make_bundle(version=version)
        assert registry.push(bundle, files).status_code == 201


def test_moves_are_recorded_and_listed_newest_first(registry: Any) -> None:
    _push(registry, "1.0.0", "1.1.0")
    path = "/api/v1/models/animals/aliases/production"
    assert registry.admin.get(path).status_code == 404
    assert registry.admin.get(f"{path}/history").json() == []
    first = registry.admin.put(path, json={"version": "1.0.0", "reason": "first release"})
    assert first.status_code == 200, first.text
    assert (first.json()["version"], first.json()["moved_by"]) == ("1.0.0", "admin")
    with registry.client(registry.api_token("operator", name="release-bot")) as bot:
        moved = bot.put(path, json={"version": "1.1.0", "reason": "better on night frames"})
        assert moved.status_code == 200
    staging = "/api/v1/models/animals/aliases/staging"
    assert (
        registry.admin.put(staging, json={"version": "1.1.0", "reason": "try"}).status_code == 200
    )

    now = registry.admin.get(path).json()
    assert (now["alias"], now["version"], now["moved_by"]) == ("production", "1.1.0", "release-bot")
    history = registry.admin.get(f"{path}/history").json()
    assert [(h["from_version"], h["to_version"], h["moved_by"], h["reason"]) for h in history] == [
        ("1.0.0", "1.1.0", "release-bot", "better on night frames"),
        (None, "1.0.0", "admin", "first release"),
    ]
    assert all(h["moved_at"].endswith("Z") for h in history)
    listed = registry.admin.get("/api/v1/models/animals/aliases").json()
    assert [(a["alias"], a["version"]) for a in listed] == [
        ("production", "1.1.0"),
        ("staging", "1.1.0"),
    ]
    # The bundle route still answers beside the alias routes.
    assert registry.admin.get("/api/v1/models/animals/1.1.0").status_code == 200


def test_bad_moves_change_nothing(registry: Any) -> None:
    _push(registry, "1.0.0")
    base = "/api/v1/models/animals/aliases"
    cases = [
        (f"{base}/production", {"version": "9.9.9", "reason": "r"}, 404),
        (f"{base}/canary", {"version": "1.0.0", "reason": "r"}, 422),
        (f"{base}/production", {"version": "1.0.0"}, 422),
        (f"{base}/production", {"version": "1.0.0", "reason": ""}, 422),
        ("/api/v1/models/other/aliases/production", {"version": "1.0.0", "reason": "r"}, 404),
    ]
    for path, body, status in cases:
        answer = registry.admin.put(path, json=body)
        assert answer.status_code == status, (path, body, answer.text)
    assert registry.admin.get(base).json() == []
    assert registry.admin.get(f"{base}/production/history").json() == []
    assert registry.admin.get("/api/v1/audit", params={"action": "alias.move"}).json() == []
