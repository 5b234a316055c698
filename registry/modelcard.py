"""The model card: one version's audit document, from bundle to the devices that ran it.

:func:`model_audit` answers, for one ``(name, version)``: where it came from,
how it scored, who moved its aliases and approved it, where it was rolled out,
which devices ran it and when, and which audit-log entries name it. The API
serves it as ``GET /api/v1/models/{name}/{version}/audit``; the console's
model card and ``corral model audit`` / ``corral model card`` read it.

It reads, in order (each one query, aggregated in the database, so the cost
does not grow with what Python holds):

1. the version row (404 when absent) and, for the parent link, whether the
   lineage's parent is registered;
2. aliases pointing at it now and every alias move from or to it;
3. its rollouts (columns only, not their devices), their devices counted per
   stage and progress, and the ``approve`` entries of their decision logs;
4. its shadow trials;
5. which devices ran it: per device, the first and last arrival of a report
   (status, inference, accuracy) whose payload names this model and version,
   ``GROUP BY device_id`` over ``messages``, then the same over retention's
   ``series_buckets`` (which keep the version as columns) for what retention has
   already deleted; plus devices whose summary reports it without a stored report;
6. device events about it (installed, rolled back from or to it, failed);
7. audit-log entries naming it: its push, alias moves from or to it, rollouts,
   shadow trials and experiments of it, and every later action on those
   rollouts and trials (approve, pause, resume, abort, stop).

Why the payload filter is a JSON path (``payload ->> 'version'`` on PostgreSQL,
``json_extract`` on SQLite, both from SQLAlchemy's JSON comparator): it is
exact and it sees every device, including one that ran the version without a
rollout (a device's desired version only says what it was told). Nothing on
``messages`` indexes the payload, so the scan is bounded by time instead: a
report cannot name a version before this registry had it, so only rows that
arrived since the version was registered are read (``received_at`` is
indexed). Buckets are not bounded that way: they are placed by the device's own
clock, which may be years off.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, lazyload

from registry._time import as_utc, iso, utcnow
from registry.errors import NotFoundError
from registry.rollout.plan import RolloutPlan
from registry.schemas import (
    Alias,
    AliasMoveOut,
    AliasOut,
    AuditEntryOut,
    ModelAudit,
    ModelAuditAliases,
    ModelAuditApproval,
    ModelAuditBundle,
    ModelAuditDevice,
    ModelAuditEvent,
    ModelAuditEvents,
    ModelAuditFile,
    ModelAuditOrigin,
    ModelAuditRollout,
    ModelAuditShadow,
    ModelAuditStage,
)
from registry.tables import (
    AliasMove,
    AuditEntry,
    Device,
    Event,
    Message,
    ModelAlias,
    ModelVersion,
    Rollout,
    RolloutDevice,
    RolloutLogEntry,
    SeriesBucket,
    ShadowTrial,
)

__all__ = ["FORMAT", "MAX_EVENTS", "REPORT_KINDS", "model_audit"]

#: The ``format`` of the document; a change that breaks readers bumps it.
FORMAT = "corral.model-audit/1"
#: The report kinds whose payload names the model version a device runs.
REPORT_KINDS = ("status", "inference", "accuracy")
#: Most device events listed (the newest); ``device_events.total`` counts them all.
MAX_EVENTS = 1000
#: Events that name a version a device installed, ran or left.
_VERSION_EVENTS = ("installed", "install_failed", "rolled_back", "rollback_failed")
#: Bucket kinds retention keeps per model version (telemetry has none).
_BUCKET_KINDS = ("inference", "accuracy")


def model_audit(
    session: Session, name: str, version: str, now: datetime | None = None
) -> ModelAudit:
    """The audit document of one model version (the module docstring says what is in it).

    Args:
        session: a database session (only read).
        name: the model's name.
        version: its version.
        now: the time to stamp as ``generated_at`` (default: now).

    Returns:
        The document.

    Raises:
        NotFoundError: no such model version.
        sqlalchemy.exc.SQLAlchemyError: the database failed.
    """
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )
    if row is None:
        raise NotFoundError(
            f"no model {name} {version}, so no audit for it; `corral model list` shows "
            "what exists"
        )
    bundle: dict[str, Any] = dict(row.bundle)
    lineage: dict[str, Any] = dict(bundle.get("lineage") or {})
    rollouts = _rollouts(session, name, version)
    shadows = _shadows(session, name, version)
    return ModelAudit(
        format=FORMAT,
        generated_at=iso(now or utcnow()) or "",
        bundle=_bundle(row, bundle),
        lineage=lineage,
        origin=_origin(session, name, lineage),
        metrics=dict(bundle.get("metrics") or {}),
        aliases=_aliases(session, name, version),
        approvals=_approvals(session, rollouts),
        rollouts=rollouts,
        shadow_trials=shadows,
        devices=_devices(session, name, version, as_utc(row.registered_at)),
        device_events=_events(session, name, version),
        audit=_audit(session, name, version, [r.id for r in rollouts], [t.name for t in shadows]),
    )


# -- Where it came from ----------------------------------------------------------------


def _bundle(row: ModelVersion, bundle: dict[str, Any]) -> ModelAuditBundle:
    files = [
        ModelAuditFile(name=f.name, sha256=f.sha256, length=f.length, variant=f.variant)
        for f in sorted(row.files, key=lambda f: f.name)
    ]
    output = bundle.get("output") or {}
    labels = output.get("labels") if isinstance(output, dict) else None
    return ModelAuditBundle(
        name=row.name,
        version=row.version,
        created=row.created,
        registered_at=iso(row.registered_at) or "",
        bundle_sha256=row.bundle_sha256,
        bundle_length=row.bundle_length,
        files=files,
        variants=sorted({f.variant for f in files}),
        labels=[str(label) for label in labels] if isinstance(labels, list) else [],
        compatibility=dict(bundle.get("compatibility") or {}),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _parent(lineage: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(name, version)`` of a retrain's parent: ``lineage.parent`` as trainer.retraining
    writes it (``name``, ``version``, ``ref``), or a bare ``NAME@VERSION``."""
    parent = lineage.get("parent")
    if isinstance(parent, dict):
        name, version = _text(parent.get("name")), _text(parent.get("version"))
        if version is None and isinstance(parent.get("ref"), str):
            name, _, version = parent["ref"].rpartition("@")
        return name or None, version or None
    if isinstance(parent, str) and "@" in parent:
        name, _, version = parent.rpartition("@")
        return name or None, version or None
    return None, None


def _origin(session: Session, name: str, lineage: dict[str, Any]) -> ModelAuditOrigin:
    dataset = lineage.get("dataset")
    dataset = dataset if isinstance(dataset, dict) else {}
    search = lineage.get("search")
    trials = search.get("trials") if isinstance(search, dict) else None
    parent_name, parent_version = _parent(lineage)
    registered = False
    if parent_version is not None:
        query = select(ModelVersion.id).where(
            ModelVersion.name == (parent_name or name), ModelVersion.version == parent_version
        )
        registered = session.scalar(query) is not None
    dirty = lineage.get("code_dirty")
    return ModelAuditOrigin(
        dataset_version=_text(lineage.get("dataset_version")) or _text(dataset.get("version")),
        dataset_manifest_sha256=_text(dataset.get("manifest_sha256")),
        code_commit=_text(lineage.get("code_commit")),
        code_dirty=dirty if isinstance(dirty, bool) else None,
        trainer_version=_text(lineage.get("trainer_version")),
        search_trials=len(trials) if isinstance(trials, list) else 0,
        parent_name=parent_name or (name if parent_version else None),
        parent_version=parent_version,
        parent_registered=registered,
    )


# -- Who moved and approved it, where it was rolled out -----------------------------------


def _aliases(session: Session, name: str, version: str) -> ModelAuditAliases:
    current = session.scalars(
        select(ModelAlias)
        .where(ModelAlias.model == name, ModelAlias.version == version)
        .order_by(ModelAlias.alias)
    )
    moves = session.scalars(
        select(AliasMove)
        .where(
            AliasMove.model == name,
            or_(AliasMove.to_version == version, AliasMove.from_version == version),
        )
        .order_by(AliasMove.id)
    )
    return ModelAuditAliases(
        current=[
            AliasOut(
                model=a.model,
                alias=Alias(a.alias),
                version=a.version,
                moved_at=iso(a.moved_at) or "",
                moved_by=a.moved_by,
            )
            for a in current
        ],
        moves=[AliasMoveOut.of(m) for m in moves],
    )


def _rollouts(session: Session, name: str, version: str) -> list[ModelAuditRollout]:
    rows = list(
        session.scalars(
            select(Rollout)
            # Their devices and logs are counted or filtered below, not loaded whole.
            .options(lazyload(Rollout.devices), lazyload(Rollout.log))
            .where(Rollout.model == name, Rollout.version == version)
            .order_by(Rollout.id)
        )
    )
    progress: dict[tuple[int, int], Counter[str]] = {}
    if rows:
        counts = session.execute(
            select(RolloutDevice.rollout_id, RolloutDevice.stage, RolloutDevice.state, func.count())
            .where(RolloutDevice.rollout_id.in_([r.id for r in rows]))
            .group_by(RolloutDevice.rollout_id, RolloutDevice.stage, RolloutDevice.state)
        )
        for rollout_id, index, state, n in counts:
            progress.setdefault((rollout_id, index), Counter())[state] += n
    out = []
    for r in rows:
        plan = RolloutPlan.model_validate(r.plan)
        gates: dict[str, Any] = r.gates or {}
        stages = []
        for i, stage in enumerate(plan.stages):
            counted = progress.get((r.id, i), Counter())
            record = gates.get(str(i))
            decision = record.get("decision") if isinstance(record, dict) else None
            stages.append(
                ModelAuditStage(
                    index=i,
                    name=stage.name,
                    size=stage.size,
                    devices=sum(counted.values()),
                    progress=dict(sorted(counted.items())),
                    decision=decision if isinstance(decision, str) else None,
                )
            )
        out.append(
            ModelAuditRollout(
                id=r.id,
                environment=r.environment,
                mode=plan.mode.value,
                experiment=plan.experiment,
                state=r.state,
                verdict=r.verdict,
                reason=r.reason,
                created_at=iso(r.created_at) or "",
                created_by=r.created_by,
                updated_at=iso(r.updated_at),
                finished_at=iso(r.finished_at),
                stage=r.stage,
                devices=sum(s.devices for s in stages),
                stages=stages,
            )
        )
    return out


def _approvals(session: Session, rollouts: list[ModelAuditRollout]) -> list[ModelAuditApproval]:
    if not rollouts:
        return []
    environment = {r.id: r.environment for r in rollouts}
    entries = session.scalars(
        select(RolloutLogEntry)
        .where(
            RolloutLogEntry.rollout_id.in_(list(environment)),
            RolloutLogEntry.action == "approve",
        )
        .order_by(RolloutLogEntry.id)
    )
    out = []
    for e in entries:
        data = e.data if isinstance(e.data, dict) else {}
        stage = data.get("stage")
        out.append(
            ModelAuditApproval(
                rollout_id=e.rollout_id,
                environment=environment[e.rollout_id],
                stage=stage if isinstance(stage, int) else None,
                at=iso(e.at) or "",
                actor=e.actor,
                note=str(data.get("note") or ""),
                message=e.message,
            )
        )
    return out


def _shadows(session: Session, name: str, version: str) -> list[ModelAuditShadow]:
    trials = session.scalars(
        select(ShadowTrial)
        .where(ShadowTrial.model == name, ShadowTrial.version == version)
        .order_by(ShadowTrial.id)
    )
    return [
        ModelAuditShadow(
            name=t.name,
            state=t.state,
            devices=list(t.devices or []),
            created_at=iso(t.created_at) or "",
            created_by=t.created_by,
            stopped_at=iso(t.stopped_at),
            stopped_by=t.stopped_by,
        )
        for t in trials
    ]


# -- Which devices ran it, and when --------------------------------------------------------


@dataclass
class _Seen:
    """What the stored reports and buckets say about one device and this version."""

    raw_first: datetime | None = None
    raw_last: datetime | None = None
    #: The earliest bucket's start and end, and the latest bucket's end.
    bucket_first: tuple[datetime, datetime] | None = None
    bucket_last_end: datetime | None = None

    def bounds(self) -> tuple[datetime | None, datetime | None, bool]:
        """``(first, last, exact)``: raw arrival times where they still cover the span.

        Raw reports expire oldest first, so while any raw report of the version
        is left, the latest one is raw: ``last`` is exact. ``first`` is raw unless
        a whole bucket of reports lies before the earliest raw one (retention
        deleted them, or the device's clock runs slow): then the bucket's start,
        which no report in it precedes (a report is bucketed by the earlier of
        its own time and its arrival).
        """
        first, last, exact = self.raw_first, self.raw_last, True
        if self.bucket_first is not None and (first is None or self.bucket_first[1] <= first):
            first, exact = self.bucket_first[0], False
        if last is None and self.bucket_last_end is not None:
            last, exact = self.bucket_last_end, False
        return first, last, exact


def _names(payload: Any, name: str, version: str) -> ColumnElement[bool]:
    """SQL: a JSON column's ``model`` and ``version`` are ``name`` and ``version``."""
    return and_(payload["model"].as_string() == name, payload["version"].as_string() == version)


def _devices(
    session: Session, name: str, version: str, registered_at: datetime
) -> list[ModelAuditDevice]:
    seen: dict[str, _Seen] = {}
    # A report arrives after the version was registered; a minute of slack for
    # replicas whose clocks differ a little.
    since = registered_at - timedelta(minutes=1)
    # Grouped by an expression, not the column: on SQLite, grouping by device_id
    # makes the planner walk ix_messages_device_id, a row lookup per message in
    # device order, instead of the received_at range (rows in arrival order):
    # 7x slower on a million rows. PostgreSQL hash-aggregates either way.
    device = (Message.device_id + "").label("device_id")
    raw = session.execute(
        select(device, func.min(Message.received_at), func.max(Message.received_at))
        .where(
            Message.received_at >= since,
            Message.kind.in_(REPORT_KINDS),
            _names(Message.payload, name, version),
        )
        .group_by(device)
    )
    for device_id, earliest, latest in raw:
        seen[device_id] = _Seen(raw_first=as_utc(earliest), raw_last=as_utc(latest))
    buckets = session.execute(
        select(
            SeriesBucket.device_id,
            SeriesBucket.bucket_s,
            func.min(SeriesBucket.start),
            func.max(SeriesBucket.start),
        )
        .where(
            SeriesBucket.kind.in_(_BUCKET_KINDS),
            SeriesBucket.model == name,
            SeriesBucket.version == version,
        )
        .group_by(SeriesBucket.device_id, SeriesBucket.bucket_s)
    )
    for device_id, bucket_s, earliest, latest in buckets:
        entry = seen.setdefault(device_id, _Seen())
        width = timedelta(seconds=bucket_s)
        start, end = as_utc(earliest), as_utc(latest) + width
        if entry.bucket_first is None or start < entry.bucket_first[0]:
            entry.bucket_first = (start, start + width)
        if entry.bucket_last_end is None or end > entry.bucket_last_end:
            entry.bucket_last_end = end
    reporting = session.scalars(
        select(Device.id).where(Device.model == name, Device.version == version)
    )
    for device_id in reporting:
        seen.setdefault(device_id, _Seen())
    if not seen:
        return []
    now_rows = session.execute(
        select(
            Device.id,
            Device.model,
            Device.version,
            Device.state,
            Device.desired_version,
            Device.revoked_at,
        ).where(Device.id.in_(list(seen)))
    )
    current = {r[0]: r for r in now_rows}
    out = []
    for device_id, entry in seen.items():
        first, last, exact = entry.bounds()
        _, model, reported, state, desired, revoked_at = current[device_id]
        out.append(
            ModelAuditDevice(
                device_id=device_id,
                first_seen=iso(first),
                last_seen=iso(last),
                exact=exact and first is not None,
                runs_now=(model, reported) == (name, version),
                model=model,
                version=reported,
                state=state,
                desired_version=desired,
                revoked=revoked_at is not None,
            )
        )
    out.sort(key=lambda d: (d.first_seen is None, d.first_seen or "", d.device_id))
    return out


def _events(session: Session, name: str, version: str) -> ModelAuditEvents:
    about = and_(
        Event.event.in_(_VERSION_EVENTS),
        or_(
            _names(Event.data, name, version),
            and_(
                Event.data["to_model"].as_string() == name,
                Event.data["to_version"].as_string() == version,
            ),
        ),
    )
    total = session.scalar(select(func.count()).select_from(Event).where(about)) or 0
    newest = session.execute(
        select(Event.device_id, Event.ts, Event.event, Event.message)
        .where(about)
        .order_by(Event.id.desc())
        .limit(MAX_EVENTS)
    ).all()
    return ModelAuditEvents(
        total=total,
        items=[
            ModelAuditEvent(device_id=d, ts=ts, event=event, message=message)
            for d, ts, event, message in reversed(newest)
        ],
    )


# -- The audit log ---------------------------------------------------------------------------


def _audit(
    session: Session, name: str, version: str, rollout_ids: list[int], shadow_names: list[str]
) -> list[AuditEntryOut]:
    details = AuditEntry.details
    of_model = details["model"].as_string() == name
    naming = [
        # model.push
        AuditEntry.target == f"{name}/{version}",
        # alias.move: target <name>/<alias>, details from and to
        and_(
            AuditEntry.action == "alias.move",
            AuditEntry.target.in_([f"{name}/{a.value}" for a in Alias]),
            or_(details["from"].as_string() == version, details["to"].as_string() == version),
        ),
        # rollout.create and shadow.start name model and version; experiment.start a and b
        and_(
            of_model,
            or_(
                details["version"].as_string() == version,
                details["a"].as_string() == version,
                details["b"].as_string() == version,
            ),
        ),
    ]
    # rollout.approve, .pause, .resume, .abort and shadow.stop name only their subject
    targets = [f"rollout:{i}" for i in rollout_ids] + [f"shadow:{n}" for n in shadow_names]
    if targets:
        naming.append(AuditEntry.target.in_(targets))
    entries = session.scalars(select(AuditEntry).where(or_(*naming)).order_by(AuditEntry.id))
    return [AuditEntryOut.of(e) for e in entries]
