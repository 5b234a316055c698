"""Pydantic models of the HTTP API (docs/contracts.md), apart from the tables."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from corral.errors import PayloadError
from corral.topics import check_device_id

__all__ = [
    "Desired",
    "DeviceDetail",
    "DeviceSummary",
    "EnrolRequest",
    "EnrolResponse",
    "EnrolmentTokenRequest",
    "EnrolmentTokenResponse",
    "EventOut",
    "ModelPushed",
    "ModelSummary",
    "MqttEndpoint",
    "RolloutDeviceOut",
    "RolloutOut",
    "RolloutRequest",
    "SeqStats",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnrolmentTokenRequest(_Strict):
    """Body of ``POST /api/v1/enrolment-tokens``; ttl_s None means the configured default."""

    ttl_s: int | None = Field(default=None, gt=0, le=30 * 24 * 3600)


class EnrolmentTokenResponse(BaseModel):
    """A new one-time enrolment token; shown once, stored only as a hash."""

    token: str
    expires: str


class EnrolRequest(BaseModel):
    """Body of ``POST /api/v1/enrol``; extra fields from newer agents are ignored."""

    token: str = Field(min_length=1, max_length=256)
    device_id: str
    facts: dict[str, Any] = Field(default_factory=dict)
    profile: str | None = Field(default=None, max_length=128)
    agent_version: str | None = Field(default=None, max_length=64)

    @field_validator("device_id")
    @classmethod
    def _valid_device_id(cls, value: str) -> str:
        try:
            return check_device_id(value)
        except PayloadError as e:
            raise ValueError(str(e)) from e


class MqttEndpoint(BaseModel):
    """Where the agent's MQTT connection goes."""

    host: str
    port: int


class EnrolResponse(BaseModel):
    """What a freshly enrolled device needs: its token, the broker, and the TUF root."""

    device_id: str
    device_token: str
    mqtt: MqttEndpoint
    tuf_root: dict[str, Any]
    metadata_url: str
    targets_url: str


class DeviceSummary(BaseModel):
    """What the fleet view shows per device."""

    device_id: str
    profile: str | None
    state: str | None
    model: str | None
    version: str | None
    desired_model: str | None
    desired_version: str | None
    fps: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    frames: int
    drops: int
    #: Cumulative correct/labelled since the reported version was installed.
    accuracy: float | None
    labelled: int
    cpu_percent: float | None
    memory_percent: float | None
    gpu_temp_c: float | None
    last_seen: str | None


class EventOut(BaseModel):
    """One agent event."""

    seq: int
    ts: str
    event: str
    message: str
    data: dict[str, Any]


class SeqStats(BaseModel):
    """Accounting over a device's stored messages; ``missing`` counts lost seqs."""

    min: int | None
    max: int | None
    count: int
    missing: int


class DeviceDetail(DeviceSummary):
    """One device: the summary, its last 50 events (newest first) and seq accounting."""

    events: list[EventOut]
    seq: SeqStats


class Desired(BaseModel):
    """A device's desired model version (nulls when none)."""

    model: str | None
    version: str | None


class ModelPushed(BaseModel):
    """Answer to a model push."""

    name: str
    version: str
    files: list[str]


class ModelSummary(BaseModel):
    """A row of the model list."""

    name: str
    version: str
    created: str
    metrics: dict[str, Any]
    lineage: dict[str, Any]


class RolloutRequest(_Strict):
    """Body of ``POST /api/v1/rollouts``; devices None means every enrolled device."""

    model: str = Field(min_length=1, max_length=63)
    version: str = Field(min_length=1, max_length=64)
    devices: list[str] | None = None


class RolloutDeviceOut(BaseModel):
    """One device of a rollout: what it should run and what it reports."""

    device_id: str
    desired_model: str | None
    desired_version: str | None
    reported_model: str | None
    reported_version: str | None
    state: str | None
    #: Whether the device reports the rollout's version.
    done: bool


class RolloutOut(BaseModel):
    """A rollout and its devices."""

    id: int
    model: str
    version: str
    created_at: str
    devices: list[RolloutDeviceOut]
