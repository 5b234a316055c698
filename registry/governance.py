"""Governance: policies that turn an alert into an action, at once or after an approval.

A :class:`Policy` matches alerts by rule (and optionally a subject prefix)
and names an action:

- ``notify``: nothing beyond the alert's own delivery; the action is recorded
  so the audit log shows the alert was seen by policy;
- ``pin_previous``: move the alerting device back to the version it ran
  before its current one (an immediate rollout of that device);
- ``retrain``: run the trainer's retrain entry point (``corral train
  --retrain-from MODEL@VERSION --data DIR``) in a child process, push the
  new version, and start a staged rollout of it over the policy's selector
  with the policy's stages, so the candidate passes the same gates as any.

With ``approval = true`` the action waits (``pending``) until an operator
approves it (``corral actions approve ID``). Each action is one row of
``policy_actions`` with the alert that caused it, and every step goes into
the audit log. Policies come from ``CORRAL_POLICIES`` (JSON) or the file
``CORRAL_POLICIES_FILE`` (TOML, a list of ``[[policy]]`` tables).

Actions run one at a time in a worker thread, so a burst of alerts cannot
start ten trainings at once; a policy does not fire twice for the same
(rule, subject) while its earlier action is pending or running.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.version import Version
from registry import audit
from registry._time import iso, utcnow
from registry.core.db import SessionFactory
from registry.errors import ConflictError, NotFoundError
from registry.rollout import Mode, RolloutPlan, Rollouts, Selector, Stage
from registry.tables import Device, ModelVersion, PolicyAction, RolloutDevice

__all__ = ["Governance", "Policy", "action_out"]

logger = logging.getLogger(__name__)

ACTOR = "governance"


class Policy(BaseModel):
    """When an alert of ``rule`` fires (on a subject starting with ``subject``), do ``action``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    rule: str
    subject: str | None = Field(default=None, description="A subject prefix, e.g. 'device:gate-'.")
    action: str = Field(pattern=r"^(notify|pin_previous|retrain)$")
    approval: bool = False
    # retrain only:
    data: str | None = Field(default=None, description="Labelled images (label/image) to add.")
    epochs: int | None = Field(default=None, ge=1)
    init_weights: bool = False
    selector: Selector = Field(default_factory=Selector)
    stages: list[Stage] = Field(default_factory=lambda: [Stage(name="all")])
    rollout_mode: str = Field(default="continuous", pattern=r"^(continuous|approval)$")

    def matches(self, alert: dict[str, Any]) -> bool:
        """Whether ``alert`` (API form) falls under this policy."""
        if alert["rule"] != self.rule:
            return False
        return self.subject is None or str(alert["subject"]).startswith(self.subject)


def action_out(action: PolicyAction) -> dict[str, Any]:
    """The API form of an action."""
    return {
        "id": action.id,
        "policy": action.policy,
        "action": action.action,
        "alert_id": action.alert_id,
        "rule": action.rule,
        "subject": action.subject,
        "state": action.state,
        "created_at": iso(action.created_at),
        "decided_by": action.decided_by,
        "finished_at": iso(action.finished_at),
        "result": action.result,
        "log": action.log,
    }


class Governance:
    """Matches fired alerts to policies and carries out their actions.

    Args:
        sessions: the database session factory.
        rollouts: the rollout engine (pin and retrain start rollouts through it).
        policies: the policies in force.
        registry_url: this registry's URL, for the trainer child process.
        admin_token: a token the child process pushes and fetches with.
    """

    def __init__(
        self,
        sessions: SessionFactory,
        rollouts: Rollouts,
        policies: list[Policy],
        registry_url: str,
        admin_token: str,
    ) -> None:
        self.sessions = sessions
        self.rollouts = rollouts
        self.policies = policies
        self.registry_url = registry_url
        self.admin_token = admin_token
        self._queue: queue.Queue[int | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the worker that carries out approved actions."""
        self._thread = threading.Thread(target=self._run, name="governance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker after the action in hand (a training is not interrupted)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(5)
            self._thread = None

    # --- alert in ----------------------------------------------------------------------

    def on_alert(self, alert: dict[str, Any]) -> None:
        """Record an action for each policy ``alert`` matches; queue those needing no approval."""
        for policy in self.policies:
            if not policy.matches(alert):
                continue
            with self.sessions() as session:
                busy = session.scalar(
                    select(PolicyAction.id).where(
                        PolicyAction.policy == policy.name,
                        PolicyAction.subject == alert["subject"],
                        PolicyAction.state.in_(("pending", "queued", "running")),
                    )
                )
                if busy is not None:
                    continue
                action = PolicyAction(
                    policy=policy.name,
                    action=policy.action,
                    alert_id=alert["id"],
                    rule=alert["rule"],
                    subject=alert["subject"],
                    state="pending" if policy.approval else "queued",
                    created_at=utcnow(),
                    result={},
                    log="",
                )
                session.add(action)
                session.flush()
                audit.record(
                    session,
                    ACTOR,
                    "policy.trigger",
                    f"action:{action.id}",
                    policy=policy.name,
                    alert=alert["id"],
                    rule=alert["rule"],
                    subject=alert["subject"],
                    approval=policy.approval,
                )
                session.commit()
                if not policy.approval:
                    self._queue.put(action.id)

    def approve(self, session: Session, action_id: int, actor: str) -> PolicyAction:
        """Let a pending action run.

        Raises:
            NotFoundError: no such action.
            ConflictError: it is not pending.
        """
        action = session.get(PolicyAction, action_id)
        if action is None:
            raise NotFoundError(f"no action {action_id}; `corral actions` lists them")
        if action.state != "pending":
            raise ConflictError(f"action {action_id} is {action.state}, not pending")
        action.state, action.decided_by = "queued", actor
        audit.record(
            session,
            actor,
            "policy.approve",
            f"action:{action_id}",
            policy=action.policy,
            alert=action.alert_id,
        )
        session.commit()
        self._queue.put(action.id)
        return action

    # --- worker -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            action_id = self._queue.get()
            if action_id is None:
                return
            try:
                self.run_action(action_id)
            except Exception:  # one failed action must not stop the worker
                logger.exception("governance action %s failed", action_id)

    def run_action(self, action_id: int) -> None:
        """Carry out one queued action and record how it went."""
        with self.sessions() as session:
            action = session.get(PolicyAction, action_id)
            if action is None or action.state != "queued":
                return
            action.state = "running"
            session.commit()
            policy = next((p for p in self.policies if p.name == action.policy), None)
            subject = action.subject
        result: dict[str, Any]
        log = ""
        try:
            if policy is None:
                raise ConflictError(f"policy {action.policy} is no longer configured")
            if policy.action == "notify":
                result, state = {"notified": True}, "done"
            elif policy.action == "pin_previous":
                result, state = self._pin_previous(subject), "done"
            else:
                result, log = self._retrain(policy, subject)
                state = "done"
        except Exception as e:  # recorded on the action, for the operator to read
            result, state = {"error": str(e)}, "failed"
            log = getattr(e, "log", log)
        with self.sessions() as session:
            action = session.get(PolicyAction, action_id)
            if action is None:
                return
            action.state, action.result, action.log = state, result, log[-20000:]
            action.finished_at = utcnow()
            audit.record(
                session,
                ACTOR,
                f"policy.{state}",
                f"action:{action_id}",
                policy=action.policy,
                alert=action.alert_id,
                result=result,
            )
            session.commit()

    def _device(self, session: Session, subject: str) -> Device:
        if not subject.startswith("device:"):
            raise ConflictError(f"this action needs a device alert, not {subject}")
        device = session.get(Device, subject.removeprefix("device:"))
        if device is None:
            raise NotFoundError(f"no device for {subject}")
        return device

    def _pin_previous(self, subject: str) -> dict[str, Any]:
        with self.sessions() as session:
            device = self._device(session, subject)
            previous = session.scalars(
                select(RolloutDevice)
                .where(
                    RolloutDevice.device_id == device.id,
                    RolloutDevice.previous_version.is_not(None),
                    RolloutDevice.previous_version != device.version,
                )
                .order_by(RolloutDevice.id.desc())
            ).first()
            if previous is None or previous.previous_model is None:
                raise ConflictError(f"{device.id} has no earlier version on record to pin")
            plan = RolloutPlan(
                model=previous.previous_model,
                version=str(previous.previous_version),
                selector=Selector(devices=[device.id]),
                stages=[Stage(name="pin")],
            )
            rollout, hints = self.rollouts.create(session, plan, ACTOR, supersede=True)
            session.commit()
            out = {"rollout": rollout.id, "device": device.id, "version": previous.previous_version}
        self.rollouts.send(hints)
        return out

    def _retrain(self, policy: Policy, subject: str) -> tuple[dict[str, Any], str]:
        if importlib.util.find_spec("trainer") is None or importlib.util.find_spec("torch") is None:
            raise ConflictError(
                "the trainer is not installed next to this registry; install corral[trainer] "
                "or run the retraining elsewhere"
            )
        if policy.data is None or not Path(policy.data).is_dir():
            raise ConflictError(f"policy {policy.name}: its data folder {policy.data} is missing")
        with self.sessions() as session:
            device = self._device(session, subject)
            model, parent = device.model, device.version
            if model is None or parent is None:
                raise ConflictError(f"{device.id} reports no model to retrain from")
            taken = {
                v
                for v in session.scalars(
                    select(ModelVersion.version).where(ModelVersion.name == model)
                )
            }
        version = Version.parse(parent)
        new = f"{version.major}.{version.minor + 1}.0"
        while new in taken:
            version = Version.parse(new)
            new = f"{version.major}.{version.minor + 1}.0"
        with tempfile.TemporaryDirectory(prefix="corral-retrain-") as tmp:
            out = Path(tmp) / "bundle"
            train = [
                sys.executable,
                "-m",
                "corral.cli",
                "train",
                "--out",
                str(out),
                "--version",
                new,
                "--retrain-from",
                f"{model}@{parent}",
                "--data",
                policy.data,
                "--registry",
                self.registry_url,
                "--token",
                self.admin_token,
            ]
            if policy.epochs is not None:
                train += ["--epochs", str(policy.epochs)]
            if policy.init_weights:
                train.append("--init-weights")
            log = self._child(train, "training")
            push = [
                sys.executable,
                "-m",
                "corral.cli",
                "model",
                "push",
                str(out),
                "--registry",
                self.registry_url,
                "--token",
                self.admin_token,
            ]
            log += self._child(push, "push")
        plan = RolloutPlan(
            model=model,
            version=new,
            selector=policy.selector,
            stages=policy.stages,
            mode=Mode(policy.rollout_mode),
        )
        with self.sessions() as session:
            rollout, hints = self.rollouts.create(session, plan, ACTOR, supersede=True)
            session.commit()
            rollout_id = rollout.id
        self.rollouts.send(hints)
        return {"model": model, "parent": parent, "version": new, "rollout": rollout_id}, log

    def _child(self, command: list[str], what: str) -> str:
        shown = " ".join(shlex.quote(c) if c != self.admin_token else "***" for c in command)
        logger.info("governance: %s: %s", what, shown)
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=3600,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        log = f"$ {shown}\n{done.stdout}{done.stderr}"
        if done.returncode != 0:
            error = ConflictError(
                f"{what} failed (exit {done.returncode}): "
                f"{(done.stderr or done.stdout).strip()[-500:]}"
            )
            error.log = log  # type: ignore[attr-defined]
            raise error
        return log
