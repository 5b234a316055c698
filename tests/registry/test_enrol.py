"""Enrolment: one-time expiring tokens, per-device credentials, errors as 403/409/422."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from registry._time import utcnow
from registry.tables import EnrolmentToken


def test_enrol_returns_credentials_and_tuf_root(registry: Any) -> None:
    answer = registry.enrol("cam-1", facts={"cpu": "x86"}, agent_version="0.1.0")
    assert answer["device_id"] == "cam-1"
    assert len(answer["device_token"]) >= 32
    assert answer["mqtt"] == {"host": "127.0.0.1", "port": 1883}
    assert answer["tuf_root"]["signed"]["_type"] == "root"
    assert answer["tuf_root"]["signed"]["consistent_snapshot"] is True
    assert answer["metadata_url"] == f"{registry.url}/tuf/metadata/"
    assert answer["targets_url"] == f"{registry.url}/tuf/targets/"
    root = registry.anon.get("/tuf/metadata/1.root.json").json()
    assert root == answer["tuf_root"]


def test_token_works_once(registry: Any) -> None:
    token = registry.admin.post("/api/v1/enrolment-tokens", json={"ttl_s": 60}).json()["token"]
    first = registry.anon.post("/api/v1/enrol", json={"token": token, "device_id": "cam-1"})
    assert first.status_code == 201
    second = registry.anon.post("/api/v1/enrol", json={"token": token, "device_id": "cam-2"})
    assert second.status_code == 403
    assert "already used" in second.json()["detail"]


def test_expired_token_is_refused(registry: Any) -> None:
    token = registry.admin.post("/api/v1/enrolment-tokens", json={"ttl_s": 60}).json()["token"]
    with registry.context.sessions() as session:
        session.execute(update(EnrolmentToken).values(expires=utcnow() - timedelta(seconds=1)))
        session.commit()
    answer = registry.anon.post("/api/v1/enrol", json={"token": token, "device_id": "cam-1"})
    assert answer.status_code == 403
    assert "expired" in answer.json()["detail"]


def test_unknown_token_is_refused(registry: Any) -> None:
    answer = registry.anon.post("/api/v1/enrol", json={"token": "nope", "device_id": "cam-1"})
    assert answer.status_code == 403


def test_taken_device_id_is_a_conflict_and_keeps_the_token(registry: Any) -> None:
    registry.enrol("cam-1")
    token = registry.admin.post("/api/v1/enrolment-tokens", json={}).json()["token"]
    clash = registry.anon.post("/api/v1/enrol", json={"token": token, "device_id": "cam-1"})
    assert clash.status_code == 409
    retry = registry.anon.post("/api/v1/enrol", json={"token": token, "device_id": "cam-2"})
    assert retry.status_code == 201


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"device_id": "cam-1"}, id="no-token"),
        pytest.param({"token": "t", "device_id": "Cam_1"}, id="bad-device-id"),
        pytest.param({"token": "t", "device_id": "cam-1", "facts": [1]}, id="facts-not-object"),
        pytest.param([], id="not-an-object"),
    ],
)
def test_bad_body_is_422_with_a_message(registry: Any, body: Any) -> None:
    answer = registry.anon.post("/api/v1/enrol", json=body)
    assert answer.status_code == 422
    assert isinstance(answer.json()["detail"], str)


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="none"),
        pytest.param({"Authorization": "Bearer wrong"}, id="wrong"),
        pytest.param({"Authorization": "Basic abc"}, id="not-bearer"),
    ],
)
def test_token_creation_needs_admin(registry: Any, headers: dict[str, str]) -> None:
    answer = registry.anon.post("/api/v1/enrolment-tokens", json={}, headers=headers)
    assert answer.status_code == 403
    assert "token" in answer.json()["detail"]


def test_desired_is_readable_by_its_device_only(registry: Any) -> None:
    mine = registry.enrol("cam-1")["device_token"]
    other = registry.enrol("cam-2")["device_token"]
    own = registry.anon.get(
        "/api/v1/devices/cam-1/desired", headers={"Authorization": f"Bearer {mine}"}
    )
    assert own.status_code == 200
    assert own.json() == {"model": None, "version": None, "variant": None, "shadow": None}
    theirs = registry.anon.get(
        "/api/v1/devices/cam-1/desired", headers={"Authorization": f"Bearer {other}"}
    )
    assert theirs.status_code == 403
    assert registry.admin.get("/api/v1/devices/cam-1/desired").status_code == 200
    assert registry.admin.get("/api/v1/devices/nope/desired").status_code == 404


def test_admin_token_is_generated_once_with_mode_0600(registry: Any) -> None:
    path = registry.context.settings.admin_token_path
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == registry.context.admin_token
    assert registry.context.settings.resolve_admin_token() == registry.context.admin_token
