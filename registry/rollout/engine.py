"""The rollout engine: moves devices stage by stage, judges each stage, and undoes itself.

One :class:`Rollouts` per registry. The API calls :meth:`Rollouts.create`,
:meth:`approve`, :meth:`pause`, :meth:`resume` and :meth:`abort` inside its
request's transaction; a background thread calls :meth:`tick` every
``interval_s`` to move every active rollout along. Each returns the desired
hints to publish, which the caller sends *after* its commit: the database is
the truth, and an agent that misses a hint still finds its desired version
by polling.

A rollout's life::

    running ──stage gates pass──> next stage ... ──last stage──> succeeded
       │  └──gates pass, approval needed──> waiting_approval ──approve──┘
       ├──pause──> paused ──resume──> running
       └──gate fails / abort──> rolling_back ──every moved device back──> failed / aborted

Devices are put in stages by a hash of (rollout id, device id), so the
canary is an arbitrary but stable device and a device that enrols later
(a late joiner matching the selector) falls into a stage the same way; if
that stage has started, it moves at once.

Several registry replicas may tick at once: each rollout is advanced under
a row lock taken with ``SKIP LOCKED`` (PostgreSQL; SQLite has one writer).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from registry._time import as_utc, utcnow
from registry.core.db import SessionFactory
from registry.errors import ConflictError, InvalidInputError, NotFoundError
from registry.periodic import Periodic
from registry.rollout import gates
from registry.rollout.plan import RolloutPlan, Selector
from registry.rollout.windows import WindowBook
from registry.tables import (
    Device,
    Event,
    ModelFile,
    ModelVersion,
    Rollout,
    RolloutDevice,
    RolloutLogEntry,
)

__all__ = ["ACTIVE", "MOVED", "Hint", "Rollouts", "select_devices"]

logger = logging.getLogger(__name__)


ACTIVE = ("running", "waiting_approval", "paused", "rolling_back")
#: The states of a device a rollout has sent to its version.
MOVED = ("moving", "converged", "failed", "timeout")
_BAD = ("failed", "timeout")
_FAILURE_EVENTS = ("install_failed", "rolled_back", "rollback_failed", "load_failed")
ENGINE = "rollout-engine"


@dataclass(frozen=True)
class Hint:
    """A desired hint to publish after the transaction that decided it commits.

    It always carries the device's whole desired state, the shadow candidate
    included: the retained hint replaces the one before.
    """

    device_id: str
    seq: int
    model: str | None
    version: str | None
    shadow: tuple[str, str] | None = None
    variant: str | None = None

    @classmethod
    def of(cls, device: Device) -> Hint:
        """The hint for ``device``'s desired state as the database has it now."""
        shadow = None
        if device.shadow_model is not None and device.shadow_version is not None:
            shadow = (device.shadow_model, device.shadow_version)
        return cls(
            device.id,
            device.desired_seq,
            device.desired_model,
            device.desired_version,
            shadow,
            device.desired_variant,
        )

    def body(self) -> dict[str, Any]:
        """The ``desired`` payload's fields (``corral.payloads``)."""
        shadow = self.shadow
        return {
            "model": self.model,
            "version": self.version,
            "variant": self.variant,
            "shadow": None if shadow is None else {"model": shadow[0], "version": shadow[1]},
        }


Publish = Callable[[Hint], object]


def _rank(rollout_id: int, device_id: str) -> float:
    digest = hashlib.sha256(f"{rollout_id}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def select_devices(session: Session, selector: Selector) -> list[Device]:
    """Enrolled, unrevoked devices matching ``selector``, by id.

    Raises:
        NotFoundError: the selector names device ids that are not enrolled.
        ConflictError: it names revoked devices.
    """
    query = select(Device).order_by(Device.id)
    if selector.devices is not None:
        wanted = sorted(set(selector.devices))
        devices = list(session.scalars(query.where(Device.id.in_(wanted))))
        if missing := sorted(set(wanted) - {d.id for d in devices}):
            raise NotFoundError(f"no enrolled device(s) {missing}; check the ids")
        if revoked := sorted(d.id for d in devices if d.revoked_at is not None):
            raise ConflictError(f"device(s) {revoked} are revoked; leave them out")
    else:
        devices = list(session.scalars(query.where(Device.revoked_at.is_(None))))
    return [
        d
        for d in devices
        if (selector.group is None or d.group == selector.group)
        and (selector.site is None or d.site == selector.site)
        and (selector.profile is None or d.profile == selector.profile)
        and set(selector.tags) <= set(d.tags or [])
    ]


def _log(
    session: Session, rollout: Rollout, actor: str, action: str, message: str, **data: Any
) -> None:
    entry = RolloutLogEntry(at=utcnow(), actor=actor, action=action, message=message, data=data)
    rollout.log.append(entry)
    session.flush()
    logger.info("rollout %s: %s: %s", rollout.id, action, message)


class Rollouts:
    """Creates, advances, pauses, approves and undoes rollouts.

    Args:
        sessions: the database session factory.
        publish: sends one desired hint (retained, QoS 1).
        interval_s: how often the background thread advances active rollouts.
        require_staging: refuse every production rollout whose version has no
            passed and approved staging rollout (a plan may also ask for it).
    """

    def __init__(
        self,
        sessions: SessionFactory,
        publish: Publish,
        interval_s: float = 2.0,
        require_staging: bool = False,
    ) -> None:
        self.sessions = sessions
        self.publish = publish
        self.interval_s = interval_s
        self.require_staging = require_staging
        self._periodic = Periodic("rollouts", interval_s, self.tick)
        self._windows = WindowBook()

    # --- background -----------------------------------------------------------

    def start(self) -> None:
        """Advance active rollouts every ``interval_s`` in a background thread."""
        self._periodic.start()

    def stop(self) -> None:
        """Stop the background thread (a rollout in progress resumes at the next start)."""
        self._periodic.stop()

    def tick(self, now: datetime | None = None) -> None:
        """Advance every active rollout once, each in its own transaction."""
        with self.sessions() as session:
            ids = list(
                session.scalars(
                    select(Rollout.id).where(Rollout.state.in_(ACTIVE)).order_by(Rollout.id)
                )
            )
        self._windows.keep(ids)
        for rollout_id in ids:
            with self.sessions() as session:
                rollout = session.scalar(
                    select(Rollout)
                    .where(Rollout.id == rollout_id, Rollout.state.in_(ACTIVE))
                    .with_for_update(skip_locked=True)
                )
                if rollout is None:
                    continue
                hints = self._advance(session, rollout, now or utcnow())
                session.commit()
            self.send(hints)

    def send(self, hints: Iterable[Hint]) -> None:
        """Publish hints (after their transaction committed)."""
        for hint in hints:
            self.publish(hint)

    # --- API operations (in the caller's transaction) --------------------------------

    def create(
        self, session: Session, plan: RolloutPlan, actor: str, supersede: bool = False
    ) -> tuple[Rollout, list[Hint]]:
        """Start a rollout: store it, put its devices in stages, move the first stage.

        Raises:
            NotFoundError: no such version, or a named device does not exist.
            ConflictError: a named device is revoked; devices are in another active
                rollout (and ``supersede`` is off); staging is required and missing.
            InvalidInputError: the selector matches no device.
        """
        exists = session.scalar(
            select(ModelVersion.id).where(
                ModelVersion.name == plan.model, ModelVersion.version == plan.version
            )
        )
        if exists is None:
            raise NotFoundError(
                f"no model {plan.model} {plan.version}; push it first (`corral model push`)"
            )
        if plan.variant is not None:
            variants = set(
                session.scalars(
                    select(ModelFile.variant).where(ModelFile.model_version_id == exists)
                )
            )
            if plan.variant not in variants:
                raise InvalidInputError(
                    f"{plan.model} {plan.version} has no {plan.variant!r} variant (it has "
                    f"{sorted(variants)}); push one, or leave the variant to the devices"
                )
        if plan.environment == "production" and (plan.require_staging or self.require_staging):
            self._check_staged(session, plan)
        devices = select_devices(session, plan.selector)
        if not devices:
            raise InvalidInputError(
                f"no enrolled device matches the selector ({plan.selector.describe()})"
            )
        busy = self._busy(session, [d.id for d in devices])
        if busy and not supersede:
            listed = ", ".join(f"{d} (rollout {r})" for d, r in sorted(busy.items())[:10])
            raise ConflictError(
                f"{len(busy)} device(s) are in an active rollout: {listed}; abort it "
                "(`corral rollout abort ID`) or pass --supersede"
            )
        now = utcnow()
        rollout = Rollout(
            model=plan.model,
            version=plan.version,
            created_at=now,
            created_by=actor,
            plan=plan.model_dump(mode="json"),
            environment=plan.environment,
            state="running",
            stage=0,
            stage_started_at=now,
            updated_at=now,
        )
        session.add(rollout)
        session.flush()
        if busy:
            self._supersede(session, busy, rollout.id, actor)
        ordered = sorted(devices, key=lambda d: _rank(rollout.id, d.id))
        cutoffs = plan.cutoffs(len(ordered))
        stage_of = 0
        for rank, device in enumerate(ordered):
            while rank >= cutoffs[stage_of]:
                stage_of += 1
            rollout.devices.append(
                RolloutDevice(
                    device=device, desired_seq=device.desired_seq, stage=stage_of, state="waiting"
                )
            )
        session.flush()
        sizes = [sum(1 for rd in rollout.devices if rd.stage == i) for i in range(len(cutoffs))]
        _log(
            session,
            rollout,
            actor,
            "create",
            f"{plan.model} {plan.version} to {len(ordered)} device(s) "
            f"({plan.selector.describe()}) in {len(plan.stages)} stage(s) of "
            f"{sizes}, {plan.mode.value}",
            stages=sizes,
        )
        hints = self._move_stage(session, rollout, plan, now)
        return rollout, hints

    def approve(
        self, session: Session, rollout_id: int, actor: str, note: str = ""
    ) -> tuple[Rollout, list[Hint]]:
        """Record an approval: a stage waiting for one goes on; a finished staging
        rollout is signed off (what a production rollout's ``require_staging`` needs).

        Raises:
            NotFoundError: no such rollout.
            ConflictError: nothing to approve in its state.
        """
        rollout = self._get(session, rollout_id)
        plan = RolloutPlan.model_validate(rollout.plan)
        if rollout.state == "waiting_approval":
            _log(
                session,
                rollout,
                actor,
                "approve",
                f"stage {plan.stages[rollout.stage].name} approved" + (f": {note}" if note else ""),
                stage=rollout.stage,
                note=note,
            )
            return rollout, self._next_stage(session, rollout, plan, utcnow())
        if rollout.state == "succeeded" and rollout.environment == "staging":
            _log(
                session,
                rollout,
                actor,
                "approve",
                "staging rollout signed off" + (f": {note}" if note else ""),
                note=note,
            )
            return rollout, []
        raise ConflictError(
            f"rollout {rollout_id} is {rollout.state}: only a rollout waiting for approval, "
            "or a finished staging rollout, can be approved"
        )

    def pause(
        self, session: Session, rollout_id: int, actor: str, note: str = ""
    ) -> tuple[Rollout, list[Hint]]:
        """Stop advancing (devices already moving finish their install).

        Raises:
            NotFoundError: no such rollout.
            ConflictError: it is not running or waiting.
        """
        rollout = self._get(session, rollout_id)
        if rollout.state not in ("running", "waiting_approval"):
            raise ConflictError(
                f"rollout {rollout_id} is {rollout.state}; only a running one pauses"
            )
        rollout.state, rollout.updated_at = "paused", utcnow()
        _log(session, rollout, actor, "pause", note or "paused")
        return rollout, []

    def resume(
        self, session: Session, rollout_id: int, actor: str, note: str = ""
    ) -> tuple[Rollout, list[Hint]]:
        """Go on from where it was paused.

        Raises:
            NotFoundError: no such rollout.
            ConflictError: it is not paused.
        """
        rollout = self._get(session, rollout_id)
        if rollout.state != "paused":
            raise ConflictError(f"rollout {rollout_id} is {rollout.state}, not paused")
        rollout.state, rollout.updated_at = "running", utcnow()
        _log(session, rollout, actor, "resume", note or "resumed")
        return rollout, []

    def abort(
        self, session: Session, rollout_id: int, actor: str, note: str = ""
    ) -> tuple[Rollout, list[Hint]]:
        """Stop and send every moved device back to the version it had.

        Raises:
            NotFoundError: no such rollout.
            ConflictError: it already ended.
        """
        rollout = self._get(session, rollout_id)
        if rollout.state not in ACTIVE or rollout.state == "rolling_back":
            raise ConflictError(f"rollout {rollout_id} is {rollout.state}; nothing to abort")
        return rollout, self._roll_back(
            session,
            rollout,
            "aborted",
            f"aborted by {actor}" + (f": {note}" if note else ""),
            actor,
        )

    # --- internals -------------------------------------------------------------------

    @staticmethod
    def _get(session: Session, rollout_id: int) -> Rollout:
        rollout = session.scalar(select(Rollout).where(Rollout.id == rollout_id).with_for_update())
        if rollout is None:
            raise NotFoundError(f"no rollout {rollout_id}; `corral rollout list` shows them")
        return rollout

    @staticmethod
    def _busy(session: Session, device_ids: Sequence[str]) -> dict[str, int]:
        rows = session.execute(
            select(RolloutDevice.device_id, RolloutDevice.rollout_id)
            .join(Rollout)
            .where(
                Rollout.state.in_(ACTIVE),
                RolloutDevice.device_id.in_(device_ids),
                RolloutDevice.state.notin_(("skipped", "superseded", "restored", "stuck")),
            )
        )
        return {device_id: rollout_id for device_id, rollout_id in rows}

    @staticmethod
    def _supersede(session: Session, busy: dict[str, int], by: int, actor: str) -> None:
        for rollout_id in sorted(set(busy.values())):
            old = session.get(Rollout, rollout_id)
            if old is None:
                continue
            taken = [rd for rd in old.devices if rd.device_id in busy]
            for rd in taken:
                rd.state, rd.reason = "superseded", f"taken over by rollout {by}"
            left = [rd for rd in old.devices if rd.state in ("waiting", *MOVED)]
            _log(
                session,
                old,
                actor,
                "supersede",
                f"{len(taken)} device(s) taken over by rollout {by}",
                by=by,
            )
            if not left:
                old.state, old.finished_at = "superseded", utcnow()

    @staticmethod
    def _check_staged(session: Session, plan: RolloutPlan) -> None:
        staged = session.scalars(
            select(Rollout).where(
                Rollout.model == plan.model,
                Rollout.version == plan.version,
                Rollout.environment == "staging",
                Rollout.state == "succeeded",
            )
        )
        for rollout in staged:
            if any(e.action == "approve" for e in rollout.log):
                return
        raise ConflictError(
            f"{plan.model} {plan.version} has no passed and approved staging rollout; run one "
            'with environment = "staging" and approve it (`corral rollout approve ID`) first'
        )

    def _move(self, session: Session, rollout: Rollout, rd: RolloutDevice, now: datetime) -> Hint:
        device = rd.device
        if device.version is not None:
            rd.previous_model, rd.previous_version = device.model, device.version
        else:
            rd.previous_model, rd.previous_version = device.desired_model, device.desired_version
        rd.event_mark = (
            session.scalar(
                select(func.coalesce(func.max(Event.id), 0)).where(Event.device_id == device.id)
            )
            or 0
        )
        rd.moved_at = now
        variant = (rollout.plan or {}).get("variant")
        return self._set_desired(
            session, rd, rollout.model, rollout.version, "moving", variant=variant
        )

    @staticmethod
    def _set_desired(
        session: Session,
        rd: RolloutDevice,
        model: str | None,
        version: str | None,
        state: str,
        variant: str | None = None,
    ) -> Hint:
        # A rollback leaves the variant to the device: the one it ran is not recorded.
        session.execute(
            update(Device)
            .where(Device.id == rd.device_id)
            .values(
                desired_model=model,
                desired_version=version,
                desired_variant=variant,
                desired_seq=Device.desired_seq + 1,
            )
            .execution_options(synchronize_session="fetch")
        )
        session.refresh(rd.device)
        rd.desired_seq = rd.device.desired_seq
        rd.state, rd.settled_at = state, None
        return Hint.of(rd.device)

    def _move_stage(
        self, session: Session, rollout: Rollout, plan: RolloutPlan, now: datetime
    ) -> list[Hint]:
        waiting = [
            rd for rd in rollout.devices if rd.stage <= rollout.stage and rd.state == "waiting"
        ]
        hints = [self._move(session, rollout, rd, now) for rd in waiting]
        rollout.stage_started_at, rollout.stage_settled_at = now, None
        if waiting:
            _log(
                session,
                rollout,
                ENGINE,
                "stage",
                f"stage {plan.stages[rollout.stage].name}: moving {len(waiting)} device(s)",
                stage=rollout.stage,
                devices=[rd.device_id for rd in waiting],
            )
        return hints

    def _join_late(
        self, session: Session, rollout: Rollout, plan: RolloutPlan, now: datetime
    ) -> list[Hint]:
        if plan.selector.devices is not None:
            return []  # a rollout to named devices has no late joiners
        known = {rd.device_id for rd in rollout.devices}
        fresh = [d for d in select_devices(session, plan.selector) if d.id not in known]
        if not fresh:
            return []
        busy = self._busy(session, [d.id for d in fresh])
        total = len(known) + len(fresh)
        cutoffs = plan.cutoffs(total)
        hints: list[Hint] = []
        for device in fresh:
            if device.id in busy:
                continue
            share = _rank(rollout.id, device.id)
            stage = next(
                i for i, c in enumerate(cutoffs) if share < c / total or i == len(cutoffs) - 1
            )
            rd = RolloutDevice(
                device=device, desired_seq=device.desired_seq, stage=stage, state="waiting"
            )
            rollout.devices.append(rd)
            session.flush()
            if stage <= rollout.stage:
                hints.append(self._move(session, rollout, rd, now))
            _log(
                session,
                rollout,
                ENGINE,
                "join",
                f"{device.id} joined (stage {plan.stages[stage].name})"
                + (", moving now" if stage <= rollout.stage else ""),
                device=device.id,
                stage=stage,
            )
        return hints

    @staticmethod
    def _failure_event(session: Session, rd: RolloutDevice, version: str) -> Event | None:
        rows = session.scalars(
            select(Event)
            .where(
                Event.device_id == rd.device_id,
                Event.id > rd.event_mark,
                Event.event.in_(_FAILURE_EVENTS),
            )
            .order_by(Event.id)
        )
        for event in rows:
            seen = event.data.get("version") if isinstance(event.data, dict) else None
            if seen in (None, version):
                return event
        return None

    def _track(self, session: Session, rollout: Rollout, plan: RolloutPlan, now: datetime) -> None:
        """Settle moving devices: converged, failed (an event) or timed out."""
        for rd in rollout.devices:
            if rd.state != "moving":
                continue
            device = rd.device
            if (device.model, device.version) == (rollout.model, rollout.version):
                rd.state, rd.settled_at = "converged", now
                continue
            event = self._failure_event(session, rd, rollout.version)
            if event is not None:
                rd.state, rd.settled_at = "failed", now
                rd.reason = f"{event.event}: {event.message}"[:500]
                _log(
                    session,
                    rollout,
                    ENGINE,
                    "device_failed",
                    f"{rd.device_id}: {rd.reason}",
                    device=rd.device_id,
                )
                continue
            timeout = plan.stages[rd.stage].timeout_s
            if rd.moved_at is not None and now - as_utc(rd.moved_at) > timedelta(seconds=timeout):
                rd.state, rd.settled_at = "timeout", now
                rd.reason = (
                    f"did not report {rollout.version} within {timeout:.0f} s "
                    f"(reports {device.version or 'nothing'}, {device.state or 'never seen'})"
                )
                _log(
                    session,
                    rollout,
                    ENGINE,
                    "device_timeout",
                    f"{rd.device_id}: {rd.reason}",
                    device=rd.device_id,
                )

    def _advance(  # noqa: PLR0911 - one return per way a stage can end, read top to bottom
        self, session: Session, rollout: Rollout, now: datetime
    ) -> list[Hint]:
        plan = RolloutPlan.model_validate(rollout.plan)
        rollout.updated_at = now
        if rollout.state == "rolling_back":
            self._track_rollback(session, rollout, plan, now)
            return []
        hints: list[Hint] = []
        if rollout.state in ("running", "waiting_approval"):
            hints += self._join_late(session, rollout, plan, now)
        self._track(session, rollout, plan, now)
        if rollout.state != "running":
            return hints
        stage = plan.stages[rollout.stage]
        moved = [rd for rd in rollout.devices if rd.stage <= rollout.stage and rd.state in MOVED]
        bad = [rd for rd in moved if rd.state in _BAD]
        stage_total = sum(
            1
            for rd in rollout.devices
            if rd.stage <= rollout.stage and rd.state not in ("superseded",)
        )
        install = gates.evaluate(
            plan.gates, max(stage_total, 1), len(bad), gates.Windows(), gates.Windows()
        )[0]
        if install.failed:
            self._store_gates(rollout, [install], "fail", now)
            return hints + self._roll_back(
                session,
                rollout,
                "failed",
                f"stage {stage.name}: install gate failed: {install.detail}",
                ENGINE,
                gates=[install.to_dict()],
            )
        if any(rd.state == "moving" for rd in moved):
            return hints
        if rollout.stage_settled_at is None:
            rollout.stage_settled_at = now
            _log(
                session,
                rollout,
                ENGINE,
                "settled",
                f"stage {stage.name}: {len(moved) - len(bad)} converged, {len(bad)} failed",
                stage=rollout.stage,
            )
        soaked = now - as_utc(rollout.stage_settled_at) >= timedelta(seconds=stage.soak_s)
        new, old, prior = self._windows.read(session, rollout, moved)
        results = gates.evaluate(
            plan.gates, max(stage_total, 1), len(bad), new, old, prior, stage.min_labelled
        )
        short = []
        if new.frames < stage.min_frames:
            short.append(f"frames {new.frames}/{stage.min_frames}")
        if new.labelled < stage.min_labelled:
            short.append(f"labelled {new.labelled}/{stage.min_labelled}")
        if not soaked or short:
            self._store_gates(rollout, results, "wait", now, waiting=short)
            deadline = as_utc(rollout.stage_started_at or now) + timedelta(seconds=stage.timeout_s)
            if short and now > deadline:
                return hints + self._roll_back(
                    session,
                    rollout,
                    "failed",
                    f"stage {stage.name}: not enough samples within {stage.timeout_s:.0f} s "
                    f"({', '.join(short)})",
                    ENGINE,
                )
            return hints
        failed = gates.failures(results)
        if failed:
            self._store_gates(rollout, results, "fail", now)
            why = "; ".join(f"{r.name}: {r.detail}" for r in failed)
            return hints + self._roll_back(
                session,
                rollout,
                "failed",
                f"stage {stage.name}: gate failed: {why}",
                ENGINE,
                gates=[r.to_dict() for r in results],
            )
        self._store_gates(rollout, results, "pass", now)
        _log(
            session,
            rollout,
            ENGINE,
            "gates_passed",
            f"stage {stage.name}: every gate passed ("
            + ", ".join(f"{r.name} {r.status}" for r in results)
            + ")",
            stage=rollout.stage,
            gates=[r.to_dict() for r in results],
        )
        if plan.needs_approval(rollout.stage):
            rollout.state = "waiting_approval"
            _log(
                session,
                rollout,
                ENGINE,
                "waiting",
                f"stage {stage.name} passed; waiting for approval (`corral rollout approve "
                f"{rollout.id}`)",
                stage=rollout.stage,
            )
            return hints
        return hints + self._next_stage(session, rollout, plan, now)

    def _next_stage(
        self, session: Session, rollout: Rollout, plan: RolloutPlan, now: datetime
    ) -> list[Hint]:
        if rollout.stage + 1 >= len(plan.stages):
            rollout.state, rollout.finished_at = "succeeded", now
            _log(
                session,
                rollout,
                ENGINE,
                "succeeded",
                f"every stage passed; {rollout.model} {rollout.version} is on "
                f"{sum(1 for rd in rollout.devices if rd.state == 'converged')} device(s)",
            )
            return []
        rollout.state = "running"
        rollout.stage += 1
        return self._move_stage(session, rollout, plan, now)

    @staticmethod
    def _store_gates(
        rollout: Rollout,
        results: list[gates.GateResult],
        decision: str,
        now: datetime,
        waiting: list[str] | None = None,
    ) -> None:
        record = dict(rollout.gates or {})
        record[str(rollout.stage)] = {
            "at": now.isoformat(),
            "decision": decision,
            "waiting_for": waiting or [],
            "results": [r.to_dict() for r in results],
        }
        rollout.gates = record

    def _roll_back(
        self,
        session: Session,
        rollout: Rollout,
        verdict: str,
        reason: str,
        actor: str,
        **data: Any,
    ) -> list[Hint]:
        now = utcnow()
        hints: list[Hint] = []
        for rd in rollout.devices:
            if rd.state == "waiting":
                rd.state = "skipped"
            elif rd.state in MOVED:
                target = (rd.previous_model, rd.previous_version)
                if target == (rollout.model, rollout.version) or rd.previous_version is None:
                    # Nothing to go back to (it already ran this version, or nothing).
                    rd.state, rd.settled_at = "restored", now
                    rd.reason = "nothing to roll back to" if rd.previous_version is None else ""
                    continue
                hints.append(self._set_desired(session, rd, *target, "rolling_back"))
                rd.moved_at = now
        rollout.state, rollout.verdict, rollout.reason = "rolling_back", verdict, reason
        rollout.updated_at = now
        _log(
            session,
            rollout,
            actor,
            "rollback",
            f"{reason}; sending {len(hints)} device(s) back to their previous version",
            devices=[h.device_id for h in hints],
            **data,
        )
        self._track_rollback(session, rollout, RolloutPlan.model_validate(rollout.plan), now)
        return hints

    def _track_rollback(
        self, session: Session, rollout: Rollout, plan: RolloutPlan, now: datetime
    ) -> None:
        timeout = max(s.timeout_s for s in plan.stages)
        for rd in rollout.devices:
            if rd.state != "rolling_back":
                continue
            device = rd.device
            if (device.model, device.version) == (rd.previous_model, rd.previous_version):
                rd.state, rd.settled_at = "restored", now
            elif rd.moved_at is not None and now - as_utc(rd.moved_at) > timedelta(seconds=timeout):
                rd.state, rd.settled_at = "stuck", now
                rd.reason = (
                    f"did not return to {rd.previous_version} within {timeout:.0f} s "
                    f"(reports {device.version or 'nothing'})"
                )
                _log(
                    session,
                    rollout,
                    ENGINE,
                    "device_stuck",
                    f"{rd.device_id}: {rd.reason}",
                    device=rd.device_id,
                )
        if not any(rd.state == "rolling_back" for rd in rollout.devices):
            restored = sum(1 for rd in rollout.devices if rd.state == "restored")
            rollout.state, rollout.finished_at = rollout.verdict or "failed", now
            _log(
                session,
                rollout,
                ENGINE,
                "rolled_back",
                f"rollback complete: {restored} device(s) on their previous version; "
                f"{rollout.reason}",
            )
