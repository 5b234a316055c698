"""MQTT payloads and topics: the envelope every message carries and the fields each kind needs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral import (
    PayloadError,
    VariantFallback,
    decode,
    encode,
    installed_event,
    parse_topic,
    rolled_back_event,
    topic,
)

INFERENCE = {
    "window_s": 5.0,
    "frames": 100,
    "fps": 20.0,
    "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0},
    "drops": 3,
    "class_counts": {"cat": 60, "dog": 40},
    "model": "animals",
    "version": "1.0.0",
}


def test_encode_then_decode_gives_back_the_envelope_and_body() -> None:
    raw = encode("inference", "park-1", 42, INFERENCE, ts="2026-11-22T06:00:00.000Z")
    message = decode("inference", raw)
    assert (message.device_id, message.seq, message.ts) == (
        "park-1",
        42,
        "2026-11-22T06:00:00.000Z",
    )
    assert message.body == INFERENCE
    assert json.loads(raw)["schema"] == "corral.inference/1"


@pytest.mark.parametrize(
    ("smoke_diff", "swap_ms", "expected"),
    [
        (
            2.5e-05,
            0.123456,
            '{"event":"installed","message":"installed tiny 1.1.0 in 0.25 s","model":"tiny",'
            '"version":"1.1.0","seconds":0.251,"smoke_diff":2.5e-05,"swap_ms":0.123}',
        ),
        (
            None,
            0.0,
            '{"event":"installed","message":"installed tiny 1.1.0 in 0.25 s","model":"tiny",'
            '"version":"1.1.0","seconds":0.251,"smoke_diff":null,"swap_ms":0.0}',
        ),
    ],
    ids=["agent", "no-smoke-diff"],
)
def test_the_installed_event_keeps_its_wire_shape(
    smoke_diff: float | None, swap_ms: float, expected: str
) -> None:
    body = installed_event("tiny", "1.1.0", seconds=0.2514, smoke_diff=smoke_diff, swap_ms=swap_ms)
    # Byte for byte what the agent and the simulator sent before they shared it.
    assert json.dumps(body, separators=(",", ":")) == expected
    assert decode("events", encode("events", "park-1", 7, body)).body == body


@pytest.mark.parametrize(
    ("fallback", "message", "extra"),
    [
        (None, "installed tiny 1.1.0 (trt-fp16-l4-trt10.3) in 0.25 s", {}),
        (
            VariantFallback("trt-fp16-l4-trt10.3", "smoke_test", "differs by 3"),
            "installed tiny 1.1.0 (fp32; trt-fp16-l4-trt10.3 failed its smoke test) in 0.25 s",
            {
                "fallback": {
                    "variant": "trt-fp16-l4-trt10.3",
                    "reason": "smoke_test",
                    "detail": "differs by 3",
                }
            },
        ),
        (
            VariantFallback("trt-fp16-l4-trt10.3", "incompatible", "x" * 2000),
            "installed tiny 1.1.0 (fp32; trt-fp16-l4-trt10.3 did not load) in 0.25 s",
            {
                "fallback": {
                    "variant": "trt-fp16-l4-trt10.3",
                    "reason": "incompatible",
                    "detail": "x" * 500,
                }
            },
        ),
    ],
    ids=["variant", "fallback-smoke-test", "fallback-load-detail-capped"],
)
def test_the_installed_event_names_the_variant_and_a_fallback_when_given(
    fallback: VariantFallback | None, message: str, extra: dict[str, object]
) -> None:
    variant = "fp32" if fallback else "trt-fp16-l4-trt10.3"
    body = installed_event(
        "tiny",
        "1.1.0",
        seconds=0.2514,
        smoke_diff=0.0,
        swap_ms=0.1,
        variant=variant,
        fallback=fallback,
    )
    assert body["message"] == message
    assert body["variant"] == variant
    assert {k: body[k] for k in extra} == extra
    assert ("fallback" in body) == (fallback is not None)
    assert decode("events", encode("events", "park-1", 7, body)).body == body


@pytest.mark.parametrize(
    ("stage", "figures", "message"),
    [
        (
            "start",
            {},
            "tiny 1.1.0 rolled back to tiny 1.0.0 at start (smoke_test): off by 0.4; "
            "it is installed again only on a new rollout",
        ),
        (
            "probation",
            {"frames": 40, "nonfinite": 40, "swap_ms": 0.2},
            "tiny 1.1.0 rolled back to tiny 1.0.0 (smoke_test): off by 0.4; "
            "it is installed again only on a new rollout",
        ),
    ],
)
def test_the_rolled_back_event_says_from_what_to_what_and_why(
    stage: str, figures: dict[str, object], message: str
) -> None:
    body = rolled_back_event(
        "tiny",
        "1.1.0",
        reason="smoke_test",
        stage=stage,
        to=("tiny", "1.0.0"),
        why="off by 0.4",
        **figures,
    )
    assert body["message"] == message
    assert body["event"] == "rolled_back" and body["stage"] == stage
    assert (body["to_model"], body["to_version"]) == ("tiny", "1.0.0")
    assert {k: body[k] for k in figures} == figures
    assert decode("events", encode("events", "park-1", 8, body)).body == body


def test_unknown_body_fields_are_kept_for_newer_senders() -> None:
    message = decode("inference", encode("inference", "park-1", 1, {**INFERENCE, "new": [1]}))
    assert message.body["new"] == [1]


@pytest.mark.parametrize(
    ("kind", "body", "message"),
    [
        ("inference", {k: v for k, v in INFERENCE.items() if k != "fps"}, "missing field 'fps'"),
        ("inference", {**INFERENCE, "frames": "100"}, "wrong type"),
        ("inference", {**INFERENCE, "frames": True}, "wrong type"),
        ("inference", {**INFERENCE, "fps": float("nan")}, "must be finite"),
        ("status", {"state": "sleeping", "model": None, "version": None, "profile": None}, "state"),
        ("nonsense", {}, "unknown message kind"),
    ],
    ids=["missing", "string-for-int", "bool-for-int", "nan", "bad-state", "bad-kind"],
)
def test_bad_bodies_are_refused_before_they_leave(
    kind: str, body: dict[str, Any], message: str
) -> None:
    with pytest.raises(PayloadError, match=message):
        encode(kind, "park-1", 1, body)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"schema": "corral.telemetry/1"}', "schema"),
        (
            b'{"schema": "corral.inference/1", "device_id": "UPPER", "seq": 1, "ts": "x"}',
            "device id",
        ),
        (b'{"schema": "corral.inference/1", "device_id": "a", "seq": -1, "ts": "x"}', "seq"),
        (b"x" * 300_000, "limit"),
    ],
    ids=["not-json", "array", "wrong-schema", "bad-device", "negative-seq", "too-large"],
)
def test_bad_payloads_from_the_wire_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        decode("inference", raw)


def test_topics_round_trip_and_refuse_strangers() -> None:
    assert topic("park-1", "telemetry") == "corral/v1/devices/park-1/telemetry"
    assert parse_topic("corral/v1/devices/park-1/telemetry") == ("park-1", "telemetry")
    for bad in ("corral/v1/devices/park-1", "other/v1/devices/a/status", "corral/v1/devices/a/rm"):
        with pytest.raises(PayloadError):
            parse_topic(bad)
    with pytest.raises(PayloadError, match="device id"):
        topic("park/1", "status")


@given(
    device=st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True),
    seq=st.integers(min_value=0, max_value=2**53),
    counts=st.dictionaries(st.text(min_size=1, max_size=5), st.integers(0, 10**6), max_size=5),
)
def test_any_valid_inference_message_round_trips(
    device: str, seq: int, counts: dict[str, int]
) -> None:
    body = {**INFERENCE, "class_counts": counts}
    message = decode("inference", encode("inference", device, seq, body))
    assert (message.device_id, message.seq, message.body) == (device, seq, body)
