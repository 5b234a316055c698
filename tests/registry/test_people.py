"""People: API tokens with roles, checked per route, and an audit log of every change."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

ROLES = ("viewer", "operator", "admin")

# (what, method, path, body, least role allowed); bodies may be invalid: a role that is
# allowed gets past authorisation (any answer but 403), one that is not gets 403.
ROUTES = [
    ("list-devices", "GET", "/api/v1/devices", None, "viewer"),
    ("one-device", "GET", "/api/v1/devices/cam-1", None, "viewer"),
    ("desired", "GET", "/api/v1/devices/cam-1/desired", None, "viewer"),
    ("list-models", "GET", "/api/v1/models", None, "viewer"),
    ("list-rollouts", "GET", "/api/v1/rollouts", None, "viewer"),
    ("aliases", "GET", "/api/v1/models/animals/aliases", None, "viewer"),
    ("push", "POST", "/api/v1/models", None, "operator"),
    ("rollout", "POST", "/api/v1/rollouts", {"model": "animals", "version": "9.9.9"}, "operator"),
    ("edit-device", "PATCH", "/api/v1/devices/cam-1", {"site": "north"}, "operator"),
    (
        "move-alias",
        "PUT",
        "/api/v1/models/animals/aliases/production",
        {"version": "9.9.9", "reason": "r"},
        "operator",
    ),
    ("enrolment-token", "POST", "/api/v1/enrolment-tokens", {}, "admin"),
    ("api-token", "POST", "/api/v1/tokens", {"name": "x", "role": "viewer"}, "admin"),
    ("list-tokens", "GET", "/api/v1/tokens", None, "admin"),
    ("audit", "GET", "/api/v1/audit", None, "admin"),
    ("revoke-device", "POST", "/api/v1/devices/ghost/revoke", {}, "admin"),
]


def test_each_route_allows_its_roles_and_refuses_the_rest(registry: Any) -> None:
    registry.enrol("cam-1")
    tokens = {role: registry.api_token(role, name=f"{role}-bot") for role in ROLES}
    refused: list[str] = []
    for what, method, path, body, least in ROUTES:
        for role in ROLES:
            with registry.client(tokens[role]) as client:
                answer = client.request(method, path, json=body)
            allowed = ROLES.index(role) >= ROLES.index(least)
            if allowed == (answer.status_code == 403):
                refused.append(f"{what} as {role}: {answer.status_code} {answer.text[:120]}")
            if not allowed:
                assert f"needs the {least} role" in answer.json()["detail"]
    assert refused == []


def test_a_viewer_cannot_start_a_rollout_and_nothing_changes(registry: Any) -> None:
    registry.enrol("cam-1")
    bundle, files = registry.make_bundle()
    assert registry.push(bundle, files).status_code == 201
    before = registry.admin.get("/api/v1/audit").json()
    with registry.client(registry.api_token("viewer")) as viewer:
        answer = viewer.post("/api/v1/rollouts", json={"model": "animals", "version": "1.0.0"})
        assert answer.status_code == 403
        assert viewer.get("/api/v1/rollouts").json() == []
        assert viewer.get("/api/v1/devices/cam-1/desired").json() == {
            "model": None,
            "version": None,
            "variant": None,
            "shadow": None,
        }
    after = registry.admin.get("/api/v1/audit").json()
    assert [e["action"] for e in after[: len(after) - len(before)]] == ["api_token.create"]


def test_an_operator_token_pushes_and_rolls_out_under_its_name(registry: Any) -> None:
    registry.enrol("cam-1")
    with registry.client(registry.api_token("operator", name="ci")) as ci:
        bundle, files = registry.make_bundle()
        assert registry.push(bundle, files, client=ci).status_code == 201
        body = {"model": "animals", "version": "1.0.0", "devices": ["cam-1"]}
        assert ci.post("/api/v1/rollouts", json=body).status_code == 201
        assert ci.post("/api/v1/tokens", json={"name": "y", "role": "admin"}).status_code == 403
    mine = registry.admin.get("/api/v1/audit", params={"actor": "ci"}).json()
    assert [e["action"] for e in mine] == ["rollout.create", "model.push"]


def test_tokens_are_shown_once_listed_without_secrets_and_revocable(registry: Any) -> None:
    created = registry.admin.post("/api/v1/tokens", json={"name": "alice", "role": "operator"})
    assert created.status_code == 201
    secret = created.json()["token"]
    assert created.json()["created_by"] == "admin"
    listed = registry.admin.get("/api/v1/tokens").json()
    assert [(t["name"], t["role"], t["revoked_at"]) for t in listed] == [
        ("alice", "operator", None)
    ]
    assert secret not in json.dumps(listed)
    with registry.client(secret) as alice:
        assert alice.get("/api/v1/models").status_code == 200
        assert registry.admin.post("/api/v1/tokens/alice/revoke").status_code == 200
        refused = alice.get("/api/v1/models")
        assert refused.status_code == 403
        assert "revoked" in refused.json()["detail"]
    assert registry.admin.post("/api/v1/tokens/alice/revoke").status_code == 409
    assert registry.admin.post("/api/v1/tokens/bob/revoke").status_code == 404


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param({"name": "alice", "role": "viewer"}, 409, id="name-taken"),
        pytest.param({"name": "admin", "role": "viewer"}, 409, id="bootstrap-name"),
        pytest.param({"name": "Alice Smith", "role": "viewer"}, 422, id="bad-name"),
        pytest.param({"name": "carol", "role": "root"}, 422, id="bad-role"),
        pytest.param({"name": "carol", "role": "viewer", "extra": 1}, 422, id="unknown-field"),
    ],
)
def test_bad_token_requests(registry: Any, body: dict[str, Any], status: int) -> None:
    registry.api_token("viewer", name="alice")
    answer = registry.admin.post("/api/v1/tokens", json=body)
    assert answer.status_code == status, answer.text
    assert isinstance(answer.json()["detail"], str)


def test_every_change_is_in_the_audit_log_and_no_secret_is(
    registry: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secrets: list[str] = [registry.context.admin_token]
    operator = registry.admin.post("/api/v1/tokens", json={"name": "ops", "role": "operator"})
    secrets.append(operator.json()["token"])
    enrolment = registry.admin.post("/api/v1/enrolment-tokens", json={"site": "north"}).json()
    secrets.append(enrolment["token"])
    enrolled = registry.anon.post(
        "/api/v1/enrol", json={"token": enrolment["token"], "device_id": "cam-1"}
    )
    secrets.append(enrolled.json()["device_token"])
    with registry.client(operator.json()["token"]) as ops:
        bundle, files = registry.make_bundle()
        assert registry.push(bundle, files, client=ops).status_code == 201
        rollout = ops.post("/api/v1/rollouts", json={"model": "animals", "version": "1.0.0"})
        assert rollout.status_code == 201
        moved = ops.put(
            "/api/v1/models/animals/aliases/staging", json={"version": "1.0.0", "reason": "ok"}
        )
        assert moved.status_code == 200
        assert ops.patch("/api/v1/devices/cam-1", json={"tags": ["gate"]}).status_code == 200
    assert registry.admin.post("/api/v1/devices/cam-1/revoke", json={}).status_code == 200
    assert registry.admin.post("/api/v1/tokens/ops/revoke").status_code == 200

    entries = registry.admin.get("/api/v1/audit").json()
    got = [(e["actor"], e["action"], e["target"]) for e in reversed(entries)]
    rollout_id = rollout.json()["id"]
    assert got == [
        ("admin", "api_token.create", "ops"),
        ("admin", "enrolment_token.create", got[1][2]),
        ("device:cam-1", "device.enrol", "cam-1"),
        ("ops", "model.push", "animals/1.0.0"),
        ("ops", "rollout.create", f"rollout:{rollout_id}"),
        ("ops", "alias.move", "animals/staging"),
        ("ops", "device.update", "cam-1"),
        ("admin", "device.revoke", "cam-1"),
        ("admin", "api_token.revoke", "ops"),
    ]
    assert entries[-3]["details"]["site"] == "north"
    assert all(e["at"].endswith("Z") for e in entries)
    stored = json.dumps(entries)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for secret in secrets:
        assert secret not in stored
        assert secret not in logged
    page = registry.admin.get("/api/v1/audit", params={"limit": 2, "before": entries[0]["id"]})
    assert [e["id"] for e in page.json()] == [entries[1]["id"], entries[2]["id"]]


def test_the_bootstrap_admin_token_file_still_works(registry: Any) -> None:
    token = registry.context.settings.admin_token_path.read_text().strip()
    with registry.client(token) as admin:
        assert admin.post("/api/v1/tokens", json={"name": "a", "role": "admin"}).status_code == 201
