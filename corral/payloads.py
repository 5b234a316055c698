"""MQTT payloads: one JSON envelope, one body shape per kind.

Every payload is a JSON object with ``schema`` (``corral.<kind>/1``),
``device_id``, ``seq`` (per device, monotonic across all of a device's
topics, surviving restarts) and ``ts`` (UTC, ISO 8601), plus the fields of its
kind. The registry stores by ``(device_id, seq)``, so a redelivered message is
harmless and a gap in ``seq`` is a measurable loss.

The last will of an agent is its ``offline`` status with a seq reserved at
connect time, so a will that fires fills its place in the sequence.

Validation checks the fields every consumer relies on and keeps the rest, so a
newer agent can add fields without breaking an older registry.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from corral.errors import PayloadError
from corral.topics import AGENT_KINDS, REGISTRY_KINDS, check_device_id

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "Message",
    "VariantFallback",
    "decode",
    "encode",
    "installed_event",
    "rolled_back_event",
    "utc_now",
]

MAX_PAYLOAD_BYTES = 256 * 1024
#: The most characters of a fallback's detail that go into an event.
_MAX_DETAIL = 500

_NUM = (int, float)
# Fields each kind must carry, with their JSON types. None in a tuple allows null.
_REQUIRED: dict[str, dict[str, tuple[type | None, ...]]] = {
    "status": {
        "state": (str,),
        "model": (str, None),
        "version": (str, None),
        "profile": (str, None),
    },
    "telemetry": {
        "cpu_percent": _NUM,
        "memory_percent": _NUM,
        "disk_percent": _NUM,
        "gpus": (list,),
    },
    "inference": {
        "window_s": _NUM,
        "frames": (int,),
        "fps": _NUM,
        "latency_ms": (dict,),
        "drops": (int,),
        "class_counts": (dict,),
        "model": (str, None),
        "version": (str, None),
    },
    "accuracy": {
        "window_s": _NUM,
        "labelled": (int,),
        "correct": (int,),
        "accuracy": (*_NUM, None),
        "per_class": (dict,),
        "model": (str, None),
        "version": (str, None),
    },
    "events": {"event": (str,), "message": (str,)},
    "desired": {"model": (str, None), "version": (str, None)},
}
_STATES = ("online", "offline")


def utc_now() -> str:
    """The current UTC time as ISO 8601 with milliseconds and a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class VariantFallback:
    """A variant the agent chose for itself that failed, so the usual one was installed.

    Attributes:
        variant: the variant that failed (a TensorRT variant built for this device).
        reason: ``incompatible`` (ONNX Runtime could not load it) or ``smoke_test``
            (its golden outputs were wrong).
        detail: the error, as the agent logged it.
    """

    variant: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"variant": self.variant, "reason": self.reason, "detail": self.detail[:_MAX_DETAIL]}


_FAILED = {"incompatible": "did not load", "smoke_test": "failed its smoke test"}


def installed_event(
    model: str,
    version: str,
    *,
    seconds: float,
    smoke_diff: float | None,
    swap_ms: float,
    variant: str | None = None,
    fallback: VariantFallback | None = None,
) -> dict[str, Any]:
    """The body of the ``events`` payload that says a model version was installed.

    One builder for every sender (the agent, the fleet simulator), so the
    registry (which reads ``model`` and ``version``: rollouts, model cards) sees
    one shape.

    Args:
        model: the model's name.
        version: the version now running.
        seconds: how long the install took.
        smoke_diff: the largest difference from the golden outputs in the smoke
            test; None when it was not measured.
        swap_ms: how long the pipeline took to switch to it.
        variant: the bundle variant now running; None leaves it out (older senders).
        fallback: the variant chosen first that failed, when ``variant`` is the
            fallback; None leaves it out.

    Returns:
        ``{"event": "installed", "message", "model", "version", "seconds",
        "smoke_diff", "swap_ms"}``, times rounded to the millisecond, then
        ``variant`` and ``fallback`` (``{"variant", "reason", "detail"}``) when
        given; the message names them too. Without them the bytes are those of
        senders that predate them.

    Raises:
        Nothing.
    """
    what = f"{model} {version}"
    if variant is not None:
        failed = ""
        if fallback is not None:
            done = _FAILED.get(fallback.reason, f"failed ({fallback.reason})")
            failed = f"; {fallback.variant} {done}"
        what += f" ({variant}{failed})"
    body: dict[str, Any] = {
        "event": "installed",
        "message": f"installed {what} in {seconds:.2f} s",
        "model": model,
        "version": version,
        "seconds": round(float(seconds), 3),
        "smoke_diff": None if smoke_diff is None else float(smoke_diff),
        "swap_ms": round(swap_ms, 3),
    }
    if variant is not None:
        body["variant"] = variant
    if fallback is not None:
        body["fallback"] = fallback.to_dict()
    return body


def rolled_back_event(
    model: str,
    version: str,
    *,
    reason: str,
    stage: str,
    to: tuple[str, str],
    why: str,
    **figures: Any,
) -> dict[str, Any]:
    """The body of the ``events`` payload that says a device rolled a version back.

    Args:
        model: the model's name.
        version: the version rolled back (it is installed again only on a new
            rollout: the agent remembers it as rejected).
        reason: the reason code (``smoke_test``, ``nan``, ``errors``, ``latency``...).
        stage: when: ``start`` (the installed model failed at boot), ``install``
            or ``probation`` (its first minutes after the swap).
        to: the (model, version) running now.
        why: what failed, in words.
        **figures: what the verdict was drawn from (``frames``, ``errors``,
            ``nonfinite``, ``latency_p95_ms``, ``swap_ms``), added as they are.

    Returns:
        ``{"event": "rolled_back", "message", "model", "version", "reason",
        "stage", "to_model", "to_version", **figures}``.

    Raises:
        Nothing.
    """
    when = " at start" if stage == "start" else ""
    return {
        "event": "rolled_back",
        "message": f"{model} {version} rolled back to {to[0]} {to[1]}{when} ({reason}): {why}; "
        "it is installed again only on a new rollout",
        "model": model,
        "version": version,
        "reason": reason,
        "stage": stage,
        "to_model": to[0],
        "to_version": to[1],
        **figures,
    }


@dataclass
class Message:
    """A decoded payload: the envelope fields and the kind's body."""

    kind: str
    device_id: str
    seq: int
    ts: str
    body: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": f"corral.{self.kind}/1",
            "device_id": self.device_id,
            "seq": self.seq,
            "ts": self.ts,
            **self.body,
        }


def _check_body(kind: str, body: Mapping[str, Any]) -> None:
    for key, kinds in _REQUIRED[kind].items():
        if key not in body:
            raise PayloadError(f"{kind} payload is missing field {key!r}")
        value = body[key]
        allowed = tuple(k for k in kinds if k is not None)
        if value is None and None in kinds:
            continue
        if isinstance(value, bool) or not isinstance(value, allowed):
            raise PayloadError(f"{kind} payload field {key!r} has the wrong type: {value!r:.60}")
        if isinstance(value, float) and not math.isfinite(value):
            raise PayloadError(f"{kind} payload field {key!r} must be finite, got {value}")
    if kind == "status" and body["state"] not in _STATES:
        raise PayloadError(f"status state {body['state']!r} should be one of {_STATES}")


def encode(
    kind: str, device_id: str, seq: int, body: Mapping[str, Any], ts: str | None = None
) -> bytes:
    """Build and validate a payload.

    Raises:
        PayloadError: unknown kind, bad device id or seq, or a body missing required fields.
    """
    if kind not in AGENT_KINDS and kind not in REGISTRY_KINDS:
        raise PayloadError(f"unknown message kind {kind!r}")
    check_device_id(device_id)
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise PayloadError(f"seq must be a non-negative integer, got {seq!r}")
    _check_body(kind, body)
    message = Message(kind, device_id, seq, ts or utc_now(), dict(body))
    raw = json.dumps(message.to_dict(), separators=(",", ":"), allow_nan=False).encode()
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"{kind} payload is {len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    return raw


def decode(kind: str, raw: bytes) -> Message:
    """Parse and validate a payload received on a ``kind`` topic.

    Raises:
        PayloadError: not JSON, too large, wrong schema, or missing fields.
    """
    if kind not in AGENT_KINDS and kind not in REGISTRY_KINDS:
        raise PayloadError(f"unknown message kind {kind!r}")
    if len(raw) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"{kind} payload is {len(raw)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PayloadError(f"{kind} payload is not JSON: {e}") from e
    if not isinstance(data, dict):
        raise PayloadError(f"{kind} payload must be a JSON object")
    schema = data.pop("schema", None)
    if not isinstance(schema, str) or not schema.startswith(f"corral.{kind}/"):
        raise PayloadError(f"{kind} payload has schema {schema!r}, expected 'corral.{kind}/1'")
    device_id = data.pop("device_id", None)
    seq = data.pop("seq", None)
    ts = data.pop("ts", None)
    check_device_id(device_id)  # type: ignore[arg-type]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise PayloadError(f"{kind} payload seq must be a non-negative integer, got {seq!r}")
    if not isinstance(ts, str):
        raise PayloadError(f"{kind} payload ts must be an ISO 8601 string")
    _check_body(kind, data)
    return Message(kind, device_id, seq, ts, data)  # type: ignore[arg-type]
