"""The alert engine: rules over what the fleet reports, deduplicated, resolved, delivered.

Every ``interval_s`` a background thread evaluates the rules against the
device table and each device's last ``window_s`` of reports
(:class:`~registry.alerts.quality.DeviceWindow`):

=================  ========  ===============================================================
rule               severity  fires when
=================  ========  ===============================================================
device_offline     critical  the retained status says offline (last will), or nothing for
                             ``offline_after_s``
stale_data         warning   online, but no inference window for ``stale_after_s``
thermal            warning/  GPU temperature over the profile's ``gpu_temp_warn_c`` /
                   critical  ``gpu_temp_max_c``
fps_low            warning   fps under ``fps_fraction`` of the profile's ``target_fps``
accuracy_low       warning   accuracy over the window under ``min_accuracy``, with at
                             least ``min_labels`` labels
bias               warning   per-class recall gap over ``max_recall_gap`` (classes with
                             ``min_class_support`` labels)
drift              warning   predicted classes or confidence moved from the bundle's
                             baseline (see :mod:`registry.alerts.quality`), for
                             ``drift_consecutive`` evaluations in a row; small windows
                             by p-value under Benjamini-Hochberg at ``drift_fdr`` across
                             every device, large ones by effect size
rollout_failed     warning   a rollout stopped on a gate or was aborted, in the last day
=================  ========  ===============================================================

At most one alert per (rule, subject) is open; it is updated while the rule
holds and resolved (``resolved_at``) the first evaluation it does not. An
alert matching an active silence is recorded with ``silenced`` and not
delivered. Delivery (webhook POST, and MQTT ``corral/v1/alerts/<rule>``)
happens after the commit, once for "fired" and once for "resolved"; a failed
webhook is retried on the next evaluation. Each new alert is also handed to
``on_fire`` (governance policies).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from corral.errors import ProfileError
from corral.profiles import FirmwareProfile, default_profiles_dir, load_profiles
from registry._time import as_utc, iso, utcnow
from registry.alerts.quality import DeviceWindow, Drift, decide_drift, drift
from registry.alerts.rules import AlertRules
from registry.core.db import SessionFactory
from registry.periodic import Periodic
from registry.tables import Alert, Device, Message, ModelVersion, Rollout, Silence

__all__ = ["AlertRules", "Alerts", "Finding", "alert_out"]

logger = logging.getLogger(__name__)

# (device_id, kind, received_at, payload) of a messages row.
_Row = tuple[str, str, datetime, dict[str, Any]]

ALERT_TOPIC = "corral/v1/alerts"


@dataclass
class Finding:
    """A rule that holds for a subject in this evaluation."""

    rule: str
    subject: str
    severity: str
    message: str
    value: float | None = None
    threshold: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


def alert_out(alert: Alert) -> dict[str, Any]:
    """The API and delivery form of an alert."""
    return {
        "id": alert.id,
        "rule": alert.rule,
        "subject": alert.subject,
        "severity": alert.severity,
        "message": alert.message,
        "value": alert.value,
        "threshold": alert.threshold,
        "data": alert.data,
        "state": "resolved" if alert.resolved_at is not None else "firing",
        "started_at": iso(alert.started_at),
        "last_seen_at": iso(alert.last_seen_at),
        "resolved_at": iso(alert.resolved_at),
        "acknowledged_at": iso(alert.acknowledged_at),
        "acknowledged_by": alert.acknowledged_by,
        "silenced": alert.silenced,
    }


def _silenced(silences: Iterable[Silence], rule: str, subject: str) -> bool:
    for s in silences:
        if s.rule is not None and s.rule != rule:
            continue
        if s.subject is None:
            return True
        if s.subject.endswith("*") and subject.startswith(s.subject[:-1]):
            return True
        if s.subject == subject:
            return True
    return False


class Alerts:
    """Evaluates the rules, keeps alerts deduplicated, and delivers them.

    Args:
        sessions: the database session factory.
        rules: the thresholds.
        publish: sends an MQTT message (topic, payload bytes); None: no MQTT delivery.
        on_fire: called with each new alert's API form after its commit (governance).
    """

    def __init__(
        self,
        sessions: SessionFactory,
        rules: AlertRules,
        publish: Callable[[str, bytes], object] | None = None,
        on_fire: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.rules = rules
        self.publish = publish
        self.on_fire = on_fire
        self._periodic = Periodic("alerts", rules.interval_s, self.evaluate)
        self._streaks: dict[str, int] = {}
        self._holding: dict[tuple[str, str], int] = {}
        self._profiles: dict[str, FirmwareProfile] | None = None

    # --- background --------------------------------------------------------------------

    def start(self) -> None:
        """Evaluate every ``rules.interval_s`` in a background thread."""
        self._periodic.start()

    def stop(self) -> None:
        """Stop the background thread."""
        self._periodic.stop()

    # --- evaluation ----------------------------------------------------------------------

    def evaluate(self, now: datetime | None = None) -> list[dict[str, Any]]:
        """Run every rule once, store the outcome, deliver what changed.

        Returns:
            The alerts that fired in this evaluation (API form).
        """
        now = now or utcnow()
        with self.sessions() as session:
            findings = self.findings(session, now)
            fired = self._store(session, findings, now)
            session.commit()
            fired_out = [alert_out(a) for a in fired]
        self.deliver()
        if self.on_fire is not None:
            for alert in fired_out:
                if not alert["silenced"]:
                    self.on_fire(alert)
        return fired_out

    def findings(self, session: Session, now: datetime) -> list[Finding]:
        """Every rule that holds now, and for long enough (no writes)."""
        devices = list(session.scalars(select(Device).where(Device.revoked_at.is_(None))))
        windows = self.windows(session, devices, now)
        found: list[Finding] = []
        for device in devices:
            found += self._device_rules(device, windows.get(device.id), now)
        rows = session.execute(
            select(Alert.rule, Alert.subject).where(Alert.resolved_at.is_(None))
        ).all()
        open_keys = {(str(row[0]), str(row[1])) for row in rows}
        found = self._held(found, open_keys)
        found += self._drift_rules(session, devices, windows)
        found += self._rollout_rules(session, now)
        return found

    def _held(self, findings: list[Finding], open_keys: set[tuple[str, str]]) -> list[Finding]:
        """Findings that held ``for_evaluations`` times in a row, or whose alert is open
        already (a restarted registry must not resolve and re-fire it); offline at once."""
        now_holding = {(f.rule, f.subject) for f in findings}
        self._holding = {key: self._holding.get(key, 0) + 1 for key in now_holding}
        return [
            f
            for f in findings
            if f.rule == "device_offline"
            or (f.rule, f.subject) in open_keys
            or self._holding[(f.rule, f.subject)] >= self.rules.for_evaluations
        ]

    def windows(
        self, session: Session, devices: list[Device], now: datetime
    ) -> dict[str, DeviceWindow]:
        """Each device's reports on its current version over the last ``window_s``."""
        by_id = {d.id: d for d in devices}
        out = {d.id: DeviceWindow(d.id, d.model, d.version) for d in devices}
        since = now - timedelta(seconds=self.rules.window_s)
        query = select(Message.device_id, Message.kind, Message.received_at, Message.payload).where(
            Message.kind.in_(("inference", "accuracy")), Message.received_at >= since
        )
        if len(by_id) <= 500:  # one device's page, a small fleet: read only theirs
            query = query.where(Message.device_id.in_(list(by_id)))
        rows = session.execute(query).all()
        for device_id, kind, received, payload in cast("list[_Row]", rows):
            device = by_id.get(device_id)
            if device is None:
                continue
            window = out[device_id]
            at = as_utc(received)
            if kind == "inference" and (
                window.last_any_inference_at is None or at > window.last_any_inference_at
            ):
                window.last_any_inference_at = at
            if payload.get("version") == device.version:
                window.add(kind, payload, at)
        return out

    def _profile(self, name: str | None) -> FirmwareProfile | None:
        if self._profiles is None:
            try:
                self._profiles = load_profiles(default_profiles_dir())
            except (OSError, ProfileError) as e:
                logger.warning("no firmware profiles for thermal and fps rules: %s", e)
                self._profiles = {}
        return self._profiles.get(name or "")

    def _device_rules(
        self, device: Device, window: DeviceWindow | None, now: datetime
    ) -> list[Finding]:
        r, subject, out = self.rules, f"device:{device.id}", []
        seen = as_utc(device.last_seen) if device.last_seen is not None else None
        silent_s = (now - seen).total_seconds() if seen is not None else None
        if device.state == "offline" or (silent_s is not None and silent_s > r.offline_after_s):
            why = (
                "its last will fired (status offline)"
                if device.state == "offline"
                else (f"nothing heard for {silent_s:.0f} s")
            )
            out.append(
                Finding(
                    "device_offline",
                    subject,
                    "critical",
                    f"{device.id} is offline: {why}",
                    silent_s,
                    r.offline_after_s,
                )
            )
            return out  # an offline device's other figures are old news
        if device.state == "online" and device.version is not None and window is not None:
            last = window.last_any_inference_at
            age = (now - last).total_seconds() if last is not None else None
            # No window at all in window_s: stale only once it has been seen that long.
            heard_long = (
                silent_s is not None
                and seen is not None
                and (now - as_utc(device.enrolled_at)).total_seconds() > r.window_s
            )
            if (age is not None and age > r.stale_after_s) or (age is None and heard_long):
                out.append(
                    Finding(
                        "stale_data",
                        subject,
                        "warning",
                        f"{device.id} is online but sent no inference window for "
                        + (f"{age:.0f} s" if age is not None else f"over {r.window_s:.0f} s"),
                        age,
                        r.stale_after_s,
                    )
                )
        profile = self._profile(device.profile)
        if profile is not None and device.gpu_temp_c is not None:
            hot = profile.thermal.get("gpu_temp_max_c")
            warm = profile.thermal.get("gpu_temp_warn_c")
            if hot is not None and device.gpu_temp_c >= hot:
                out.append(
                    Finding(
                        "thermal",
                        subject,
                        "critical",
                        f"{device.id}: GPU at {device.gpu_temp_c:.0f} C, over the "
                        f"{profile.name} limit of {hot:.0f} C",
                        device.gpu_temp_c,
                        hot,
                    )
                )
            elif warm is not None and device.gpu_temp_c >= warm:
                out.append(
                    Finding(
                        "thermal",
                        subject,
                        "warning",
                        f"{device.id}: GPU at {device.gpu_temp_c:.0f} C, over " f"{warm:.0f} C",
                        device.gpu_temp_c,
                        warm,
                    )
                )
        if profile is not None and device.fps is not None and window is not None and window.frames:
            floor = profile.target_fps * r.fps_fraction
            if device.fps < floor:
                out.append(
                    Finding(
                        "fps_low",
                        subject,
                        "warning",
                        f"{device.id}: {device.fps:.1f} fps, under {floor:.1f} "
                        f"({r.fps_fraction:.0%} of {profile.name}'s target)",
                        device.fps,
                        floor,
                    )
                )
        if window is not None and window.labelled >= r.min_labels:
            accuracy = window.accuracy or 0.0
            if accuracy < r.min_accuracy:
                out.append(
                    Finding(
                        "accuracy_low",
                        subject,
                        "warning",
                        f"{device.id}: accuracy {accuracy:.3f} on {window.labelled} labels in the "
                        f"last {r.window_s:.0f} s, under {r.min_accuracy}",
                        accuracy,
                        r.min_accuracy,
                        {"labelled": window.labelled, "version": device.version},
                    )
                )
            gap = window.recall_gap(r.min_class_support)
            if gap is not None and gap[0] > r.max_recall_gap:
                out.append(
                    Finding(
                        "bias",
                        subject,
                        "warning",
                        f"{device.id}: recall of {gap[1]} exceeds {gap[2]}'s by {gap[0]:.2f} "
                        f"(over {r.max_recall_gap})",
                        gap[0],
                        r.max_recall_gap,
                        {"per_class": window.per_class()},
                    )
                )
        return out

    def _baselines(self, session: Session, devices: list[Device]) -> dict[tuple[str, str], Any]:
        wanted = {(d.model, d.version) for d in devices if d.model and d.version}
        out: dict[tuple[str, str], Any] = {}
        for model, version in wanted:
            bundle = session.scalar(
                select(ModelVersion.bundle).where(
                    ModelVersion.name == model, ModelVersion.version == version
                )
            )
            if isinstance(bundle, dict) and bundle.get("drift_baseline"):
                out[(model, version)] = bundle["drift_baseline"]
        return out

    def _drift_rules(
        self, session: Session, devices: list[Device], windows: dict[str, DeviceWindow]
    ) -> list[Finding]:
        r = self.rules
        baselines = self._baselines(session, devices)
        tested: list[tuple[Device, list[Drift]]] = []
        for device in devices:
            window = windows.get(device.id)
            base = baselines.get((device.model or "", device.version or ""))
            if window is None or base is None or device.state == "offline":
                continue
            results = drift(
                window,
                base,
                r.drift_frames_per_sample,
                r.drift_large_n,
                r.drift_max_js,
                r.drift_max_psi,
            )
            if results:
                tested.append((device, results))
        # Bonferroni per device, Benjamini-Hochberg across devices, streaks: decide_drift.
        by_id = {device.id: device for device, _ in tested}
        decisions, self._streaks = decide_drift(
            [(device.id, results) for device, results in tested],
            self._streaks,
            r.drift_fdr,
            r.drift_consecutive,
        )
        out: list[Finding] = []
        for decision in decisions:
            if not decision.fires:
                continue
            device, found, p = by_id[decision.device_id], decision.results, decision.p_value
            large = decision.large
            worst = (
                large[0]
                if large
                else min(
                    (d for d in found if d.p_value is not None), key=lambda d: d.p_value or 1.0
                )
            )
            out.append(
                Finding(
                    "drift",
                    f"device:{device.id}",
                    "warning",
                    f"{device.id}: inputs drifted from {device.model} {device.version}'s baseline "
                    f"({worst.test} {worst.value:.3g}"
                    + (
                        f", p={p:.2g} at FDR {r.drift_fdr}"
                        if decision.rejected
                        else f" over {worst.threshold}"
                    )
                    + f"; {decision.streak} evaluations in a row)",
                    worst.value,
                    worst.threshold if worst.large else r.drift_fdr,
                    {"tests": [d.to_dict() for d in found], "device_p_value": p},
                )
            )
        return out

    @staticmethod
    def _rollout_rules(session: Session, now: datetime) -> list[Finding]:
        since = now - timedelta(days=1)
        out = []
        for rollout in session.scalars(
            select(Rollout).where(Rollout.state.in_(("failed", "aborted")))
        ):
            if rollout.finished_at is None or as_utc(rollout.finished_at) < since:
                continue
            out.append(
                Finding(
                    "rollout_failed",
                    f"rollout:{rollout.id}",
                    "warning",
                    f"rollout {rollout.id} ({rollout.model} {rollout.version}) {rollout.state}: "
                    f"{rollout.reason}",
                    data={"model": rollout.model, "version": rollout.version},
                )
            )
        return out

    # --- storage and delivery --------------------------------------------------------------

    def _store(self, session: Session, findings: list[Finding], now: datetime) -> list[Alert]:
        open_alerts = {
            (a.rule, a.subject): a
            for a in session.scalars(select(Alert).where(Alert.resolved_at.is_(None)))
        }
        silences = list(session.scalars(select(Silence).where(Silence.expires_at > now)))
        fired: list[Alert] = []
        holding = set()
        for f in findings:
            key = (f.rule, f.subject)
            holding.add(key)
            alert = open_alerts.get(key)
            if alert is None:
                alert = Alert(
                    rule=f.rule,
                    subject=f.subject,
                    severity=f.severity,
                    message=f.message,
                    value=f.value,
                    threshold=f.threshold,
                    data=f.data,
                    started_at=now,
                    last_seen_at=now,
                    silenced=_silenced(silences, f.rule, f.subject),
                    notified={},
                )
                session.add(alert)
                fired.append(alert)
                logger.warning("alert %s on %s: %s", f.rule, f.subject, f.message)
            else:
                alert.severity, alert.message = f.severity, f.message
                alert.value, alert.threshold, alert.data = f.value, f.threshold, f.data
                alert.last_seen_at = now
                alert.silenced = _silenced(silences, f.rule, f.subject)
        for key, alert in open_alerts.items():
            if key not in holding:
                alert.resolved_at = now
                logger.info("alert %s on %s resolved", alert.rule, alert.subject)
        session.flush()
        return fired

    def deliver(self) -> None:
        """Send fired and resolved alerts not yet delivered (webhook, MQTT)."""
        if self.rules.webhook_url is None and self.publish is None:
            return
        with self.sessions() as session:
            pending = session.scalars(select(Alert).where(Alert.silenced.is_(False)))
            for alert in pending:
                for event in ("fired", "resolved"):
                    if event == "resolved" and alert.resolved_at is None:
                        continue
                    if (alert.notified or {}).get(event):
                        continue
                    if self._send(event, alert_out(alert)):
                        alert.notified = {**(alert.notified or {}), event: iso(utcnow())}
            session.commit()

    def _send(self, event: str, alert: dict[str, Any]) -> bool:
        body = {"event": event, "alert": alert}
        payload = json.dumps(body, separators=(",", ":")).encode()
        if self.publish is not None:
            self.publish(f"{ALERT_TOPIC}/{alert['rule']}", payload)
        if self.rules.webhook_url is None:
            return True
        try:
            response = httpx.post(
                self.rules.webhook_url,
                content=payload,
                timeout=5.0,
                headers={"Content-Type": "application/json"},
            )
            response.raise_for_status()
        except httpx.HTTPError as e:
            logger.warning(
                "alert webhook %s failed (%s); retrying on the next evaluation",
                self.rules.webhook_url,
                e,
            )
            return False
        return True
