"""The registry's SQLAlchemy tables.

::

    devices ─┬─< messages          every agent payload, unique on (device_id, seq)
             ├─< events            the events kind, for the console and audits
             ├─< series_buckets    reports folded per device, kind and hour (registry.retention)
             ├─< folded_ranges     the seqs folded so far, so a late redelivery stays a duplicate
             └─< rollout_devices >─ rollouts ─< rollout_log
    shadow_trials                  a candidate run beside the current model, compared only
    enrolment_tokens               sha256 of one-time tokens, never the tokens, and the
                                   site/group/tags a device enrolled with one gets
    model_versions ─< model_files  immutable (name, version) with their files
    model_aliases                  production/staging/champion → a version, per model
    alias_moves                    every move of an alias: who, when, from, to, why
    api_tokens                     named people/CI tokens with a role (sha256 only)
    audit_log                      every state change: who, what, target, when, details
    alerts, silences               firing/resolved alerts per (rule, subject); mutes
    policy_actions                 what a governance policy did about an alert
    tuf_metadata                   every signed version of every TUF role

Secrets (enrolment, device and API tokens) are stored as SHA-256 hex digests:
a leaked database does not let anyone enrol, act as a device or call the API.
The schema is Alembic's (``registry/migrations``); a change here needs a new
revision there, and ``tests/registry/test_migrations.py`` fails until it has one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Alert",
    "AliasMove",
    "ApiToken",
    "AuditEntry",
    "Base",
    "Device",
    "EnrolmentToken",
    "Event",
    "FoldedRange",
    "Message",
    "ModelAlias",
    "ModelFile",
    "ModelVersion",
    "PolicyAction",
    "Rollout",
    "RolloutDevice",
    "RolloutLogEntry",
    "SeriesBucket",
    "ShadowTrial",
    "Silence",
    "TufMetadata",
]


class Base(DeclarativeBase):
    """Declarative base of every registry table."""

    # Named constraints, so migrations can refer to them on every database.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
        list[str]: JSON,
    }


def _tags() -> Mapped[list[str]]:
    # The server default fills rows that existed before the column (migration 0002).
    return mapped_column(default=list, server_default="[]")


class Device(Base):
    """An enrolled device and the summary of what it last reported."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    profile: Mapped[str | None] = mapped_column(String(128))
    facts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    agent_version: Mapped[str | None] = mapped_column(String(64))
    enrolled_at: Mapped[datetime]
    # Desired state, set by rollouts; desired_seq numbers the registry's desired hints.
    desired_model: Mapped[str | None] = mapped_column(String(63))
    desired_version: Mapped[str | None] = mapped_column(String(64))
    desired_seq: Mapped[int] = mapped_column(Integer, default=0)
    # The file variant a rollout asked for (int8, a TensorRT plan...); None: the agent's choice.
    desired_variant: Mapped[str | None] = mapped_column(String(64))
    # A candidate to run beside the desired model and only compare (a shadow trial).
    shadow_model: Mapped[str | None] = mapped_column(String(63))
    shadow_version: Mapped[str | None] = mapped_column(String(64))
    # Reported state, from MQTT.
    state: Mapped[str | None] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(63))
    version: Mapped[str | None] = mapped_column(String(64))
    # The bundle variant that version runs as (fp32, int8, a TensorRT variant), from
    # the status; None: no model, not reported (agents before it), or not yet known.
    variant: Mapped[str | None] = mapped_column(String(64))
    fps: Mapped[float | None] = mapped_column(Float)
    latency_p50_ms: Mapped[float | None] = mapped_column(Float)
    latency_p95_ms: Mapped[float | None] = mapped_column(Float)
    frames: Mapped[int] = mapped_column(Integer, default=0)
    drops: Mapped[int] = mapped_column(Integer, default=0)
    # Accuracy: cumulative correct/labelled since the version in acc_model/acc_version.
    acc_model: Mapped[str | None] = mapped_column(String(63))
    acc_version: Mapped[str | None] = mapped_column(String(64))
    correct: Mapped[int] = mapped_column(Integer, default=0)
    labelled: Mapped[int] = mapped_column(Integer, default=0)
    accuracy_window: Mapped[float | None] = mapped_column(Float)
    cpu_percent: Mapped[float | None] = mapped_column(Float)
    memory_percent: Mapped[float | None] = mapped_column(Float)
    gpu_temp_c: Mapped[float | None] = mapped_column(Float)
    last_seen: Mapped[datetime | None]
    # Where it is and how it is grouped: from the enrolment token, editable later.
    site: Mapped[str | None] = mapped_column(String(128))
    group: Mapped[str | None] = mapped_column("device_group", String(128))
    tags: Mapped[list[str]] = _tags()
    # A revoked device's token is refused and its MQTT messages are dropped.
    revoked_at: Mapped[datetime | None]
    # The device token in Mosquitto's PBKDF2 format, for the broker's password
    # file (registry.broker); a slow hash of a random token, never the token.
    mqtt_password_hash: Mapped[str | None] = mapped_column(String(200))

    @property
    def accuracy(self) -> float | None:
        """Cumulative accuracy since the reported version was installed."""
        return self.correct / self.labelled if self.labelled else None


class EnrolmentToken(Base):
    """A one-time, expiring enrolment token (its SHA-256 only)."""

    __tablename__ = "enrolment_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires: Mapped[datetime]
    used_at: Mapped[datetime | None]
    device_id: Mapped[str | None] = mapped_column(String(63))
    # The scope a device enrolled with this token starts with.
    site: Mapped[str | None] = mapped_column(String(128))
    group: Mapped[str | None] = mapped_column("device_group", String(128))
    tags: Mapped[list[str]] = _tags()


class ModelVersion(Base):
    """An immutable model version: its bundle.json as uploaded and its files."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    version: Mapped[str] = mapped_column(String(64))
    created: Mapped[str] = mapped_column(String(64), default="")
    registered_at: Mapped[datetime]
    bundle: Mapped[dict[str, Any]]
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    bundle_length: Mapped[int]
    files: Mapped[list[ModelFile]] = relationship(
        back_populates="model_version", cascade="all, delete-orphan", lazy="selectin"
    )


class ModelFile(Base):
    """One file of a model version, stored in the blob store by its SHA-256."""

    __tablename__ = "model_files"
    __table_args__ = (UniqueConstraint("model_version_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    name: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int]
    variant: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[ModelVersion] = relationship(back_populates="files")


class Message(Base):
    """One agent payload as received; (device_id, seq) makes redelivery harmless."""

    __tablename__ = "messages"
    __table_args__ = (UniqueConstraint("device_id", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    seq: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))
    ts: Mapped[str] = mapped_column(String(40))
    # Indexed: retention deletes by arrival age, alerts and rollout gates read recent arrivals.
    received_at: Mapped[datetime] = mapped_column(index=True)
    payload: Mapped[dict[str, Any]]


class Event(Base):
    """An agent event (install, swap, rollback, camera lost, error)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    seq: Mapped[int]
    ts: Mapped[str] = mapped_column(String(40))
    event: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class SeriesBucket(Base):
    """The reports of one device, kind and model version in one time bucket (registry.retention).

    ``figures`` holds the folded statistics (``registry.retention.Fold``): per
    field its count, weighted total, weight and greatest value, summed class
    counts and per-class counts, so buckets merge exactly. ``model`` and
    ``version`` are empty for telemetry.
    """

    __tablename__ = "series_buckets"
    __table_args__ = (
        UniqueConstraint(
            *("device_id", "kind", "start", "bucket_s", "model", "version"),
            name="uq_series_buckets_key",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    kind: Mapped[str] = mapped_column(String(16))
    start: Mapped[datetime] = mapped_column(index=True)
    bucket_s: Mapped[int]
    model: Mapped[str] = mapped_column(String(63), default="")
    version: Mapped[str] = mapped_column(String(64), default="")
    #: How many reports were folded in, and the greatest seq among them.
    reports: Mapped[int] = mapped_column(Integer, default=0)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    figures: Mapped[dict[str, Any]] = mapped_column(default=dict)


class FoldedRange(Base):
    """A run of a device's seqs (inclusive) that retention folded into buckets.

    Ingest treats a seq inside a range as a redelivery, so a report whose raw
    row was deleted is not stored, nor counted, twice.
    """

    __tablename__ = "folded_ranges"
    __table_args__ = (UniqueConstraint("device_id", "first_seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    first_seq: Mapped[int]
    last_seq: Mapped[int]


class Rollout(Base):
    """A staged move of selected devices to one model version (``registry.rollout``).

    ``plan`` is the :class:`~registry.rollout.plan.RolloutPlan` as accepted;
    ``state`` is one of ``running``, ``waiting_approval``, ``paused``,
    ``rolling_back``, ``succeeded``, ``failed``, ``aborted``, ``superseded``;
    ``gates`` maps a stage index to its latest gate evaluation.
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(63))
    version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(80), default="")
    plan: Mapped[dict[str, Any]] = mapped_column(default=dict)
    environment: Mapped[str] = mapped_column(String(16), default="production")
    state: Mapped[str] = mapped_column(String(24), default="running", index=True)
    # What a rollback ends as: "failed" (a gate) or "aborted" (a person).
    verdict: Mapped[str] = mapped_column(String(16), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    stage: Mapped[int] = mapped_column(Integer, default=0)
    stage_started_at: Mapped[datetime | None]
    stage_settled_at: Mapped[datetime | None]
    updated_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    gates: Mapped[dict[str, Any]] = mapped_column(default=dict)
    devices: Mapped[list[RolloutDevice]] = relationship(
        back_populates="rollout", cascade="all, delete-orphan", lazy="selectin"
    )
    log: Mapped[list[RolloutLogEntry]] = relationship(
        back_populates="rollout",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="RolloutLogEntry.id",
    )


class RolloutDevice(Base):
    """One device of a rollout: its stage, where it came from, and how its move went.

    ``state``: ``waiting`` (its stage has not started), ``moving``,
    ``converged``, ``failed`` (install failed or rolled back locally),
    ``timeout``, ``rolling_back``, ``restored``, ``stuck`` (did not come back
    in time), ``skipped`` (never moved), ``superseded`` (a later rollout took it).
    """

    __tablename__ = "rollout_devices"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"))
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"))
    desired_seq: Mapped[int]
    stage: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="moving")
    previous_model: Mapped[str | None] = mapped_column(String(63))
    previous_version: Mapped[str | None] = mapped_column(String(64))
    moved_at: Mapped[datetime | None]
    settled_at: Mapped[datetime | None]
    # The newest events row id when it moved: install failures after it count.
    event_mark: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    rollout: Mapped[Rollout] = relationship(back_populates="devices")
    device: Mapped[Device] = relationship(lazy="joined")


class RolloutLogEntry(Base):
    """The decision log of a rollout: every start, stage, gate verdict, approval and undo."""

    __tablename__ = "rollout_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    rollout: Mapped[Rollout] = relationship(back_populates="log")


class ShadowTrial(Base):
    """A candidate version run in shadow beside the current model on selected devices.

    ``state`` is ``running`` or ``stopped``; ``devices`` lists the ids it was
    started on (``registry.rollout.shadow``).
    """

    __tablename__ = "shadow_trials"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(63))
    version: Mapped[str] = mapped_column(String(64))
    selector: Mapped[dict[str, Any]] = mapped_column(default=dict)
    devices: Mapped[list[str]] = _tags()
    state: Mapped[str] = mapped_column(String(16), default="running", index=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(80), default="")
    stopped_at: Mapped[datetime | None]
    stopped_by: Mapped[str | None] = mapped_column(String(80))


class Alert(Base):
    """One firing (or resolved) alert: a rule about one subject, deduplicated while open.

    ``subject`` is ``device:<id>``, ``rollout:<id>`` or ``fleet``; at most one
    alert per (rule, subject) is open (``resolved_at`` null) at a time.
    """

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    rule: Mapped[str] = mapped_column(String(40), index=True)
    subject: Mapped[str] = mapped_column(String(200), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    value: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None] = mapped_column(index=True)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(80))
    silenced: Mapped[bool] = mapped_column(default=False)
    # Delivery: "fired" and "resolved" once each, to the webhook and MQTT.
    notified: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Silence(Base):
    """While active, matching alerts are still recorded but not delivered."""

    __tablename__ = "silences"

    id: Mapped[int] = mapped_column(primary_key=True)
    rule: Mapped[str | None] = mapped_column(String(40))
    #: An exact subject, or a prefix ending in ``*`` (``device:park-*``); null: any.
    subject: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class PolicyAction(Base):
    """What a governance policy did (or waits to do) about one alert (registry.governance).

    ``state``: ``pending`` (waits for approval), ``queued``, ``running``,
    ``done`` or ``failed``; ``result`` holds what it made (a rollout, a version).
    """

    __tablename__ = "policy_actions"

    id: Mapped[int] = mapped_column(primary_key=True)
    policy: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(16))
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id"))
    rule: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime]
    decided_by: Mapped[str | None] = mapped_column(String(80))
    finished_at: Mapped[datetime | None]
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    log: Mapped[str] = mapped_column(Text, default="")


class TufMetadata(Base):
    """One signed version of one TUF role, byte for byte as served."""

    __tablename__ = "tuf_metadata"
    __table_args__ = (UniqueConstraint("role", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    version: Mapped[int]
    expires: Mapped[datetime]
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ModelAlias(Base):
    """Where an alias (production, staging, champion) of a model points now."""

    __tablename__ = "model_aliases"
    __table_args__ = (UniqueConstraint("model", "alias"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(63))
    alias: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(64))
    moved_at: Mapped[datetime]
    moved_by: Mapped[str] = mapped_column(String(80))


class AliasMove(Base):
    """One move of an alias; the history is never rewritten."""

    __tablename__ = "alias_moves"

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(63), index=True)
    alias: Mapped[str] = mapped_column(String(16))
    from_version: Mapped[str | None] = mapped_column(String(64))
    to_version: Mapped[str] = mapped_column(String(64))
    moved_at: Mapped[datetime]
    moved_by: Mapped[str] = mapped_column(String(80))
    reason: Mapped[str] = mapped_column(Text)


class ApiToken(Base):
    """A named API token with a role (its SHA-256 only); revoked tokens are kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(80))
    revoked_at: Mapped[datetime | None]


class AuditEntry(Base):
    """One state change: who (a token name or ``device:<id>``), what, on what, when.

    ``details`` never holds a secret: token values are shown once to their
    creator and stored nowhere else.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(80), index=True)
    action: Mapped[str] = mapped_column(String(40), index=True)
    target: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
