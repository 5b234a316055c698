"""Pydantic models of the HTTP API (docs/contracts.md), apart from the tables."""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from corral.errors import PayloadError
from corral.topics import check_device_id
from registry._time import iso
from registry.core.security import Role
from registry.rollout.plan import RolloutPlan, Selector

if TYPE_CHECKING:
    from registry.tables import AliasMove, AuditEntry

__all__ = [
    "MAX_ID",
    "PROBLEM_RESPONSES",
    "Alias",
    "AliasMoveOut",
    "AliasMoveRequest",
    "AliasOut",
    "ApiTokenCreated",
    "ApiTokenOut",
    "ApiTokenRequest",
    "AuditEntryOut",
    "Desired",
    "DeviceDetail",
    "DeviceRevokeRequest",
    "DeviceSummary",
    "DeviceUpdate",
    "EnrolRequest",
    "EnrolResponse",
    "EnrolmentTokenRequest",
    "EnrolmentTokenResponse",
    "EventOut",
    "ExperimentRequest",
    "ModelAudit",
    "ModelAuditAliases",
    "ModelAuditApproval",
    "ModelAuditBundle",
    "ModelAuditDevice",
    "ModelAuditEvent",
    "ModelAuditEvents",
    "ModelAuditFile",
    "ModelAuditOrigin",
    "ModelAuditRollout",
    "ModelAuditShadow",
    "ModelAuditStage",
    "ModelPushed",
    "ModelSummary",
    "MqttEndpoint",
    "Problem",
    "RolloutDeviceOut",
    "RolloutLogOut",
    "RolloutNote",
    "RolloutOut",
    "RolloutRequest",
    "RolloutStageOut",
    "RowId",
    "SeqStats",
    "ShadowRef",
    "ShadowRequest",
    "VariantAdded",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: A site, group or tag: short, printable, no surrounding blanks.
Label = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=r"^\S.*$")
]
Tag = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^\S+$")
]

#: Tags of a device: a set, kept sorted.
Tags = Annotated[list[Tag], Field(max_length=32), AfterValidator(lambda t: sorted(set(t)))]


class EnrolmentTokenRequest(_Strict):
    """Body of ``POST /api/v1/enrolment-tokens``.

    ``ttl_s`` None means the configured default; ``site``, ``group`` and ``tags``
    are the scope the device enrolled with the token starts with.
    """

    ttl_s: int | None = Field(default=None, gt=0, le=30 * 24 * 3600)
    site: Label | None = None
    group: Label | None = None
    tags: Tags = Field(default_factory=list)


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
    """Where the agent's MQTT connection goes, and how.

    ``tls``: speak TLS to the broker. ``ca_pem``: the CA certificate(s) that vouch
    for the broker (PEM), which the agent keeps as ``mqtt-ca.pem``; None with TLS
    means the agent trusts its system's CAs.
    """

    host: str
    port: int
    tls: bool = False
    ca_pem: str | None = None


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
    #: The bundle variant the reported version runs as (``fp32``, ``int8``, a TensorRT
    #: variant such as ``trt-fp16-l4-trt10.3``); null: no model, or not reported.
    variant: str | None
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
    site: str | None = None
    group: str | None = None
    tags: list[str] = Field(default_factory=list)
    #: When the device was revoked (its token refused, its messages dropped), or null.
    revoked_at: str | None = None


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


class ShadowRef(BaseModel):
    """A candidate model version a device runs in shadow."""

    model: str
    version: str


class Desired(BaseModel):
    """A device's desired model version (nulls when none) and its shadow candidate, if any."""

    model: str | None
    version: str | None
    #: The file variant a rollout asked for; None leaves it to the device's profile.
    variant: str | None = None
    shadow: ShadowRef | None = None


class ModelPushed(BaseModel):
    """Answer to a model push."""

    name: str
    version: str
    files: list[str]


class VariantAdded(BaseModel):
    """Answer to adding a derived variant to a version."""

    name: str
    version: str
    variant: str
    file: str
    bundle_sha256: str


class ModelSummary(BaseModel):
    """A row of the model list."""

    name: str
    version: str
    created: str
    metrics: dict[str, Any]
    lineage: dict[str, Any]


class RolloutRequest(RolloutPlan):
    """Body of ``POST /api/v1/rollouts``: a plan, plus two conveniences.

    ``devices`` is short for ``selector.devices``. A request with neither
    ``stages`` nor ``gates`` is an immediate rollout (the walking skeleton's):
    one stage of every selected device, install failures do not stop it, and
    it takes over devices from other active rollouts.
    """

    devices: list[str] | None = None
    supersede: bool = False

    def plan(self) -> tuple[RolloutPlan, bool]:
        """The plan to run and whether it supersedes active rollouts."""
        data = self.model_dump(exclude={"devices", "supersede"})
        if self.devices is not None:
            data["selector"]["devices"] = self.devices
        immediate = not ({"stages", "gates"} & self.model_fields_set)
        if immediate:
            data["gates"]["max_install_failure_percent"] = 100.0
        return RolloutPlan.model_validate(data), self.supersede or immediate


class ExperimentRequest(_Strict):
    """Body of ``POST /api/v1/experiments``: an A/B split of a selection."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    model: str = Field(min_length=1, max_length=63)
    a: str = Field(min_length=1, max_length=64, description="Control version.")
    b: str = Field(min_length=1, max_length=64, description="Candidate version.")
    selector: Selector = Field(default_factory=Selector)
    split: float = Field(default=0.5, gt=0, lt=1, description="Cohort B's share.")


class ShadowRequest(_Strict):
    """Body of ``POST /api/v1/shadows``: run a candidate in shadow on a selection."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    model: str = Field(min_length=1, max_length=63)
    version: str = Field(min_length=1, max_length=64, description="The candidate version.")
    selector: Selector = Field(default_factory=Selector)


class RolloutNote(_Strict):
    """Body of approve, pause, resume and abort: why, for the decision log."""

    note: str = Field(default="", max_length=500)


class RolloutDeviceOut(BaseModel):
    """One device of a rollout: its stage, its way there, what it reports."""

    device_id: str
    stage: int
    #: waiting, moving, converged, failed, timeout, rolling_back, restored, stuck,
    #: skipped or superseded (registry.tables.RolloutDevice).
    progress: str
    previous_version: str | None
    reason: str
    desired_model: str | None
    desired_version: str | None
    reported_model: str | None
    reported_version: str | None
    #: The device's own online/offline state.
    state: str | None
    #: Whether the device reports the rollout's version.
    done: bool


class RolloutStageOut(BaseModel):
    """One stage: its rules and where its devices are."""

    index: int
    name: str
    size: int | str
    devices: int
    converged: int
    failed: int
    #: pending, active, passed, failed.
    status: str
    #: The latest gate evaluation: decision, waiting_for and results.
    gates: dict[str, Any] | None


class RolloutLogOut(BaseModel):
    """One decision-log entry."""

    at: str
    actor: str
    action: str
    message: str
    data: dict[str, Any]


class RolloutOut(BaseModel):
    """A rollout: its plan, state, stages with gate numbers, devices and decision log."""

    id: int
    model: str
    version: str
    created_at: str
    created_by: str
    environment: str
    #: running, waiting_approval, paused, rolling_back, succeeded, failed, aborted,
    #: superseded.
    state: str
    reason: str
    stage: int
    plan: dict[str, Any]
    stages: list[RolloutStageOut]
    devices: list[RolloutDeviceOut]
    log: list[RolloutLogOut]


class DeviceUpdate(_Strict):
    """Body of ``PATCH /api/v1/devices/{id}``: fields left out stay; null clears site or group."""

    site: Label | None = None
    group: Label | None = None
    tags: Tags | None = None


class DeviceRevokeRequest(_Strict):
    """Body of ``POST /api/v1/devices/{id}/revoke``."""

    reason: str = Field(default="", max_length=500)


#: An API token's name: what the audit log shows for everything done with it.
TokenName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


class ApiTokenRequest(_Strict):
    """Body of ``POST /api/v1/tokens``."""

    name: TokenName
    role: Role


class ApiTokenOut(BaseModel):
    """An API token, without its secret."""

    name: str
    role: Role
    created_at: str
    created_by: str
    revoked_at: str | None


class ApiTokenCreated(ApiTokenOut):
    """A new API token; ``token`` is shown this once and stored only as a hash."""

    token: str


class AuditEntryOut(BaseModel):
    """One audit log row."""

    id: int
    at: str
    actor: str
    action: str
    target: str
    details: dict[str, Any]

    @classmethod
    def of(cls, entry: AuditEntry) -> AuditEntryOut:
        """The API view of an ``audit_log`` row."""
        return cls(
            id=entry.id,
            at=iso(entry.at) or "",
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            details=entry.details,
        )


class Alias(StrEnum):
    """The aliases a model may have."""

    PRODUCTION = "production"
    STAGING = "staging"
    CHAMPION = "champion"


class AliasMoveRequest(_Strict):
    """Body of ``PUT /api/v1/models/{name}/aliases/{alias}``."""

    version: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000)


class AliasOut(BaseModel):
    """Where an alias points now."""

    model: str
    alias: Alias
    version: str
    moved_at: str
    moved_by: str


class AliasMoveOut(BaseModel):
    """One move of an alias."""

    model: str
    alias: Alias
    from_version: str | None
    to_version: str
    moved_at: str
    moved_by: str
    reason: str

    @classmethod
    def of(cls, move: AliasMove) -> AliasMoveOut:
        """The API view of an ``alias_moves`` row."""
        return cls(
            model=move.model,
            alias=Alias(move.alias),
            from_version=move.from_version,
            to_version=move.to_version,
            moved_at=iso(move.moved_at) or "",
            moved_by=move.moved_by,
            reason=move.reason,
        )


class Problem(BaseModel):
    """An error answer, RFC 9457 problem details (``registry.api.errors`` writes them)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str


def _problem(description: str) -> dict[str, Any]:
    schema = Problem.model_json_schema()
    return {"description": description, "content": {"application/problem+json": {"schema": schema}}}


#: What any operation may answer besides its own success, for every router's
#: ``responses``: so the OpenAPI document says what the error answers are (and
#: FastAPI's default 422 schema, which is not what the registry sends, is left out).
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": _problem(
        "A problem: 403 not allowed, 404 absent, 409 conflict, 422 invalid input; "
        "`detail` says what to do"
    ),
    503: _problem("A problem: the blob store or the signing keys are unavailable"),
}


#: The largest row id (or seq) a request may name: those columns are 32-bit INTEGER
#: on PostgreSQL, where a larger number in a query is an error (on SQLite, past 64
#: bits), not an absent row; so a larger one is invalid input (422), not a 500.
MAX_ID = 2**31 - 1
#: A row id in a path: ``/api/v1/rollouts/{rollout_id}`` and the like.
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]


# -- The audit export of one model version (registry.modelcard builds it) --------------


class ModelAuditFile(BaseModel):
    """One file of the version, as stored and signed."""

    name: str
    sha256: str
    length: int
    variant: str


class ModelAuditBundle(BaseModel):
    """The version's bundle facts: when it was made and registered, and its signed bytes."""

    name: str
    version: str
    #: When the trainer made it (bundle.json's ``created``).
    created: str
    registered_at: str
    bundle_sha256: str
    bundle_length: int
    files: list[ModelAuditFile]
    variants: list[str]
    labels: list[str]
    compatibility: dict[str, Any]


class ModelAuditOrigin(BaseModel):
    """Where it came from, read out of the lineage (which is also given whole)."""

    dataset_version: str | None
    dataset_manifest_sha256: str | None
    code_commit: str | None
    #: Whether the trainer's checkout had uncommitted changes (None: unknown).
    code_dirty: bool | None
    trainer_version: str | None
    #: How many hyperparameter search trials it won against (0: no search).
    search_trials: int
    parent_name: str | None
    parent_version: str | None
    #: Whether the parent version is registered here.
    parent_registered: bool


class ModelAuditAliases(BaseModel):
    """The aliases that point at this version now, and every move to or from it."""

    current: list[AliasOut]
    #: Oldest first.
    moves: list[AliasMoveOut]


class ModelAuditApproval(BaseModel):
    """An approval recorded on a rollout of this version: a stage, or a staging sign-off."""

    rollout_id: int
    environment: str
    #: The stage approved; None for a finished staging rollout's sign-off.
    stage: int | None
    at: str
    actor: str
    note: str
    message: str


class ModelAuditStage(BaseModel):
    """One stage of a rollout and where its devices are."""

    index: int
    name: str
    size: int | str
    devices: int
    #: Devices of the stage by their progress (``registry.tables.RolloutDevice``).
    progress: dict[str, int]
    #: The latest gate decision (pass, fail, wait), None before the first.
    decision: str | None


class ModelAuditRollout(BaseModel):
    """A rollout of this version: who started it, how far it went, how it ended."""

    id: int
    environment: str
    mode: str
    experiment: str | None
    #: running, waiting_approval, paused, rolling_back, succeeded, failed, aborted, superseded.
    state: str
    #: How a rollback ended it (failed: a gate; aborted: a person), else empty.
    verdict: str
    reason: str
    created_at: str
    created_by: str
    updated_at: str | None
    finished_at: str | None
    #: The stage it reached (an index into ``stages``).
    stage: int
    devices: int
    stages: list[ModelAuditStage]


class ModelAuditShadow(BaseModel):
    """A shadow trial of this version: it ran beside the current model, compared only."""

    name: str
    state: str
    devices: list[str]
    created_at: str
    created_by: str
    stopped_at: str | None
    stopped_by: str | None


class ModelAuditDevice(BaseModel):
    """A device that ran this version: when reports named it, and what it runs now.

    ``first_seen`` and ``last_seen`` are arrival times of its reports (status,
    inference, accuracy) that named this version. Where retention has deleted
    the raw reports, they come from its hourly buckets instead: the start of the
    earliest and the end of the latest, bounds that hold every report, and
    ``exact`` is false. Both are None for a device that reports this version in
    its summary but has no stored report naming it.
    """

    device_id: str
    first_seen: str | None
    last_seen: str | None
    exact: bool
    #: Whether the device reports this version now.
    runs_now: bool
    model: str | None
    version: str | None
    state: str | None
    desired_version: str | None
    revoked: bool


class ModelAuditEvent(BaseModel):
    """A device event about this version: installed, rolled back (from or to it), failed."""

    device_id: str
    #: The device's own time of the event.
    ts: str
    event: str
    message: str


class ModelAuditEvents(BaseModel):
    """Device events about this version: how many, and the newest of them, oldest first."""

    total: int
    items: list[ModelAuditEvent]


class ModelAudit(BaseModel):
    """Everything the registry knows about one model version, for an audit.

    Where it came from (``bundle``, ``lineage`` as the trainer sent it, and
    ``origin`` read out of it), how it scored (``metrics`` as sent), who moved
    its aliases and approved it, every rollout and shadow trial of it, which
    devices ran it and when, their events about it, and the audit-log entries
    that name it. Lists are oldest first.
    """

    format: str
    generated_at: str
    bundle: ModelAuditBundle
    lineage: dict[str, Any]
    origin: ModelAuditOrigin
    metrics: dict[str, Any]
    aliases: ModelAuditAliases
    approvals: list[ModelAuditApproval]
    rollouts: list[ModelAuditRollout]
    shadow_trials: list[ModelAuditShadow]
    devices: list[ModelAuditDevice]
    device_events: ModelAuditEvents
    audit: list[AuditEntryOut]
