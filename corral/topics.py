"""MQTT topic names under ``corral/v1/``.

Agents publish under ``corral/v1/devices/{id}/{kind}``; the registry publishes
the retained ``desired`` hint for each device. ``parse_topic`` is the one place that
turns a topic back into (device id, kind).
"""

from __future__ import annotations

import re

from corral.errors import PayloadError

__all__ = [
    "AGENT_KINDS",
    "ALL_AGENT_TOPICS",
    "PREFIX",
    "REGISTRY_KINDS",
    "check_device_id",
    "parse_topic",
    "topic",
]

PREFIX = "corral/v1/devices"
AGENT_KINDS = ("status", "telemetry", "inference", "accuracy", "events")
REGISTRY_KINDS = ("desired",)
#: What the registry's ingest subscribes to.
ALL_AGENT_TOPICS = f"{PREFIX}/+/+"

_DEVICE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is valid for topics, file names and URLs.

    Raises:
        PayloadError: the id has characters other than lowercase letters, digits and '-'.
    """
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id):
        raise PayloadError(
            f"device id {device_id!r} should be 1-63 lowercase letters, digits and '-', "
            "starting with a letter or digit"
        )
    return device_id


def topic(device_id: str, kind: str) -> str:
    """The topic a ``kind`` message of ``device_id`` travels on.

    Raises:
        PayloadError: bad device id or unknown kind.
    """
    if kind not in AGENT_KINDS and kind not in REGISTRY_KINDS:
        raise PayloadError(
            f"unknown message kind {kind!r}; expected one of {AGENT_KINDS + REGISTRY_KINDS}"
        )
    return f"{PREFIX}/{check_device_id(device_id)}/{kind}"


def parse_topic(name: str) -> tuple[str, str]:
    """Split a topic into (device id, kind).

    Raises:
        PayloadError: the topic is not a Corral device topic.
    """
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != PREFIX:
        raise PayloadError(f"topic {name!r} is not under {PREFIX}/{{id}}/{{kind}}")
    device_id, kind = parts[3], parts[4]
    if kind not in AGENT_KINDS and kind not in REGISTRY_KINDS:
        raise PayloadError(f"topic {name!r} has unknown kind {kind!r}")
    return check_device_id(device_id), kind
