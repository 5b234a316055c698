"""Devices: scope from the enrolment token, editable; revocation refuses the token and MQTT."""

from __future__ import annotations

from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from corral.payloads import encode
from corral.topics import topic


def _enrol_scoped(registry: Any, device_id: str, **scope: Any) -> dict[str, Any]:
    token = registry.admin.post("/api/v1/enrolment-tokens", json=scope).json()["token"]
    answer = registry.anon.post("/api/v1/enrol", json={"token": token, "device_id": device_id})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_enrolment_token_scope_becomes_the_devices_and_is_editable(registry: Any) -> None:
    _enrol_scoped(registry, "cam-1", site="north gate", group="gates", tags=["outdoor", "ir"])
    _enrol_scoped(registry, "cam-2", site="lake", tags=["outdoor"])
    registry.enrol("cam-3")
    one = registry.admin.get("/api/v1/devices/cam-1").json()
    assert (one["site"], one["group"], one["tags"]) == ("north gate", "gates", ["ir", "outdoor"])

    def ids(**params: Any) -> list[str]:
        return [d["device_id"] for d in registry.admin.get("/api/v1/devices", params=params).json()]

    assert ids(tag="outdoor") == ["cam-1", "cam-2"]
    assert ids(tag=["outdoor", "ir"]) == ["cam-1"]
    assert ids(site="lake") == ["cam-2"]
    assert ids(group="gates") == ["cam-1"]

    edited = registry.admin.patch("/api/v1/devices/cam-1", json={"group": None, "tags": ["x"]})
    assert edited.status_code == 200
    assert (edited.json()["site"], edited.json()["group"], edited.json()["tags"]) == (
        "north gate",
        None,
        ["x"],
    )
    assert registry.admin.patch("/api/v1/devices/nope", json={}).status_code == 404
    bad = registry.admin.patch("/api/v1/devices/cam-1", json={"tags": ["two words"]})
    assert bad.status_code == 422


def test_a_revoked_device_token_no_longer_reads_desired(registry: Any) -> None:
    token = registry.enrol("cam-1")["device_token"]
    registry.enrol("cam-2")
    with registry.client(token) as device:
        assert device.get("/api/v1/devices/cam-1/desired").status_code == 200
        revoked = registry.admin.post("/api/v1/devices/cam-1/revoke", json={"reason": "stolen"})
        assert revoked.status_code == 200
        assert revoked.json()["revoked_at"] is not None
        refused = device.get("/api/v1/devices/cam-1/desired")
    assert refused.status_code == 403
    assert "revoked" in refused.json()["detail"]
    assert registry.admin.post("/api/v1/devices/cam-1/revoke").status_code == 409
    # A rollout to "all" leaves the revoked device out; naming it is a conflict.
    bundle, files = registry.make_bundle()
    assert registry.push(bundle, files).status_code == 201
    everyone = registry.admin.post(
        "/api/v1/rollouts", json={"model": "animals", "version": "1.0.0"}
    )
    assert [d["device_id"] for d in everyone.json()["devices"]] == ["cam-2"]
    named = registry.admin.post(
        "/api/v1/rollouts", json={"model": "animals", "version": "1.0.0", "devices": ["cam-1"]}
    )
    assert named.status_code == 409


@pytest.mark.usefixtures("broker")
def test_a_revoked_devices_mqtt_messages_are_dropped_and_counted(registry: Any) -> None:
    device = registry.unique_id()
    registry.enrol(device)
    registry.wait_for(registry.context.bridge.connected.is_set, what="registry on the broker")
    assert registry.admin.post(f"/api/v1/devices/{device}/revoke").status_code == 200
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=registry.unique_id("test"))
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        body = {"state": "online", "model": None, "version": None, "profile": "x86-cpu"}
        message = encode("status", device, 1, body)
        client.publish(topic(device, "status"), message, qos=1).wait_for_publish(timeout=5)
        registry.wait_for(
            lambda: registry.context.ingest.counts.get("dropped_revoked", 0) >= 1,
            what="the revoked device's message to be dropped",
        )
    finally:
        client.publish(topic(device, "status"), b"", qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
    detail = registry.admin.get(f"/api/v1/devices/{device}").json()
    assert detail["seq"]["count"] == 0
    assert detail["state"] is None
