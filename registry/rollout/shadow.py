"""Shadow trials: a candidate runs beside the current model on each selected device, only compared.

Starting a trial names the candidate as each selected device's ``shadow``
and sends its desired hint again, its desired version unchanged. The agent
installs the candidate through TUF into slots of its own, runs it on the
same frames as the current model and adds a ``shadow`` block to every
inference window (``agent.shadow``); its predictions never leave the
device as anything but counts. Stopping the trial clears the shadow.

The report sums those blocks over the windows each device sent since the
trial started, for the trial's candidate only:

- **agreement**: the share of compared frames on which both models predicted
  the same label, with a Wilson 95 % interval;
- **latency cost**: the candidate's model run time over the current model's
  on the same batches (a ratio of sums), and the mean per-batch difference;
- **accuracy** on frames with ground truth, both models on the very same
  frames: the difference, and McNemar's test on the discordant pairs (only
  the candidate right vs only the current right), which is the paired test
  that same-frame comparisons call for; exact below 1,000 discordant pairs,
  the continuity-corrected normal approximation above.

Consecutive camera frames are not independent, so the intervals and p-values
are optimistic: read them as a lower bound on the uncertainty, as for A/B.
Per device the same figures, so that the one camera where the candidate
disagrees stands out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from registry._time import as_utc, utcnow
from registry.errors import ConflictError, InvalidInputError, NotFoundError
from registry.rollout.engine import Hint, select_devices
from registry.rollout.plan import Selector
from registry.tables import Device, Message, ModelVersion, ShadowTrial

__all__ = ["ShadowFigures", "mcnemar_p", "report", "start", "stop", "trials"]

Z95 = 1.959964


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's test for the discordant pair counts.

    Exact (binomial, p = 1/2) up to 1,000 discordant pairs, else the normal
    approximation with continuity correction.
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    if n <= 1000:
        log_half_n = -n * math.log(2.0)
        tail = sum(
            math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + log_half_n)
            for i in range(k + 1)
        )
        return min(1.0, 2.0 * tail)
    z = (abs(only_a - only_b) - 1.0) / math.sqrt(n)
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2.0)))


def _wilson(successes: int, n: int) -> tuple[float | None, float | None]:
    if n == 0:
        return None, None
    p = successes / n
    denominator = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denominator
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _r(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(value, digits)


def _count(block: dict[str, Any], key: str) -> int:
    value = block.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _ms(block: dict[str, Any], key: str, figure: str) -> float | None:
    value = (block.get(key) or {}).get(figure) if isinstance(block.get(key), dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


@dataclass
class ShadowFigures:
    """The summed ``shadow`` blocks of some windows (one device, or a whole trial)."""

    windows: int = 0
    frames: int = 0
    skipped: int = 0
    errors: int = 0
    agree: int = 0
    run_ms_total: float = 0.0
    current_run_ms_total: float = 0.0
    batches: int = 0
    run_p95: list[float] = field(default_factory=list)
    current_run_p95: list[float] = field(default_factory=list)
    labelled: int = 0
    correct: int = 0
    current_correct: int = 0
    only_shadow_correct: int = 0
    only_current_correct: int = 0

    def add(self, block: dict[str, Any]) -> None:
        """Add one window's ``shadow`` block (fields a bad agent left out count as 0)."""
        self.windows += 1
        for name in (
            "frames",
            "skipped",
            "errors",
            "agree",
            "batches",
            "labelled",
            "correct",
            "current_correct",
            "only_shadow_correct",
            "only_current_correct",
        ):
            setattr(self, name, getattr(self, name) + _count(block, name))
        run, current = _ms(block, "run_ms", "total"), _ms(block, "current_run_ms", "total")
        if run is not None and current is not None:
            self.run_ms_total += run
            self.current_run_ms_total += current
        for key, into in (("run_ms", self.run_p95), ("current_run_ms", self.current_run_p95)):
            p95 = _ms(block, key, "p95")
            if p95 is not None:
                into.append(p95)

    def summary(self) -> dict[str, Any]:
        """The figures, JSON-ready, each with the counts behind it."""
        low, high = _wilson(self.agree, self.frames)
        accuracy: dict[str, Any] = {
            "labelled": self.labelled,
            "shadow": _r(self.correct / self.labelled) if self.labelled else None,
            "current": _r(self.current_correct / self.labelled) if self.labelled else None,
            "diff": (
                _r((self.correct - self.current_correct) / self.labelled) if self.labelled else None
            ),
            "only_shadow_correct": self.only_shadow_correct,
            "only_current_correct": self.only_current_correct,
            "mcnemar_p": _r(mcnemar_p(self.only_shadow_correct, self.only_current_correct), 6),
        }
        ratio = (
            self.run_ms_total / self.current_run_ms_total if self.current_run_ms_total > 0 else None
        )
        return {
            "windows": self.windows,
            "frames": self.frames,
            "skipped": self.skipped,
            "errors": self.errors,
            "agreement": _r(self.agree / self.frames) if self.frames else None,
            "agreement_low": _r(low),
            "agreement_high": _r(high),
            "accuracy": accuracy,
            "latency": {
                "batches": self.batches,
                "cost_ratio": _r(ratio, 4),
                "shadow_ms_per_batch": (
                    _r(self.run_ms_total / self.batches, 4) if self.batches else None
                ),
                "current_ms_per_batch": (
                    _r(self.current_run_ms_total / self.batches, 4) if self.batches else None
                ),
                "shadow_p95_ms": (
                    _r(sum(self.run_p95) / len(self.run_p95), 4) if self.run_p95 else None
                ),
                "current_p95_ms": (
                    _r(sum(self.current_run_p95) / len(self.current_run_p95), 4)
                    if self.current_run_p95
                    else None
                ),
            },
        }


def _get(session: Session, name: str) -> ShadowTrial:
    trial = session.scalar(select(ShadowTrial).where(ShadowTrial.name == name))
    if trial is None:
        raise NotFoundError(f"no shadow trial {name!r}; `corral rollout shadow start` starts one")
    return trial


def _set_shadow(session: Session, device: Device, shadow: tuple[str, str] | None) -> Hint:
    session.execute(
        update(Device)
        .where(Device.id == device.id)
        .values(
            shadow_model=None if shadow is None else shadow[0],
            shadow_version=None if shadow is None else shadow[1],
            desired_seq=Device.desired_seq + 1,
        )
        .execution_options(synchronize_session="fetch")
    )
    session.refresh(device)
    return Hint.of(device)


def start(
    session: Session, name: str, model: str, version: str, selector: Selector, actor: str
) -> tuple[ShadowTrial, list[Hint]]:
    """Run ``model`` ``version`` in shadow on the selected devices.

    Returns:
        The trial and the desired hints to publish after the commit.

    Raises:
        ConflictError: the name is taken, or a selected device already runs a
            candidate in shadow (stop that trial first).
        NotFoundError: no such version, or a named device is not enrolled.
        InvalidInputError: the selection is empty.
    """
    if session.scalar(select(ShadowTrial.id).where(ShadowTrial.name == name)) is not None:
        raise ConflictError(f"shadow trial {name!r} exists; pick another name")
    known = session.scalar(
        select(ModelVersion.id).where(ModelVersion.name == model, ModelVersion.version == version)
    )
    if known is None:
        raise NotFoundError(f"no model version {model} {version}; push it first")
    devices = select_devices(session, selector)
    if not devices:
        raise InvalidInputError(
            f"shadow trial {name!r}: the selection matches no enrolled device; check the selector"
        )
    busy = sorted(d.id for d in devices if d.shadow_model is not None)
    if busy:
        raise ConflictError(
            f"device(s) {busy[:5]}{' ...' if len(busy) > 5 else ''} already run a candidate in "
            "shadow; stop that trial first (`corral rollout shadow stop NAME`)"
        )
    trial = ShadowTrial(
        name=name,
        model=model,
        version=version,
        selector=selector.model_dump(mode="json"),
        devices=[d.id for d in devices],
        state="running",
        created_at=utcnow(),
        created_by=actor,
    )
    session.add(trial)
    hints = [_set_shadow(session, d, (model, version)) for d in devices]
    session.flush()
    return trial, hints


def stop(session: Session, name: str, actor: str) -> tuple[ShadowTrial, list[Hint]]:
    """Stop a trial: its devices drop the candidate.

    Raises:
        NotFoundError: no such trial.
        ConflictError: it is already stopped.
    """
    trial = _get(session, name)
    if trial.state != "running":
        raise ConflictError(f"shadow trial {name!r} is already {trial.state}")
    devices = session.scalars(select(Device).where(Device.id.in_(trial.devices))).all()
    hints = [
        _set_shadow(session, d, None)
        for d in devices
        if (d.shadow_model, d.shadow_version) == (trial.model, trial.version)
    ]
    trial.state, trial.stopped_at, trial.stopped_by = "stopped", utcnow(), actor
    session.flush()
    return trial, hints


def trials(session: Session) -> list[dict[str, Any]]:
    """Every trial, newest first, without figures."""
    rows = session.scalars(select(ShadowTrial).order_by(ShadowTrial.id.desc())).all()
    return [_describe(t) for t in rows]


def _describe(trial: ShadowTrial) -> dict[str, Any]:
    def at(value: datetime | None) -> str | None:
        return None if value is None else as_utc(value).isoformat()

    return {
        "name": trial.name,
        "model": trial.model,
        "version": trial.version,
        "state": trial.state,
        "selector": trial.selector,
        "devices": len(trial.devices),
        "created_at": at(trial.created_at),
        "created_by": trial.created_by,
        "stopped_at": at(trial.stopped_at),
        "stopped_by": trial.stopped_by,
    }


def report(session: Session, name: str) -> dict[str, Any]:
    """The trial with its figures over all devices and per device.

    Raises:
        NotFoundError: no such trial.
    """
    trial = _get(session, name)
    per_device = {device_id: ShadowFigures() for device_id in trial.devices}
    current_versions: dict[str, set[str]] = {device_id: set() for device_id in trial.devices}
    query = select(Message.device_id, Message.payload).where(
        Message.device_id.in_(trial.devices),
        Message.kind == "inference",
        Message.received_at >= trial.created_at,
    )
    if trial.stopped_at is not None:
        query = query.where(Message.received_at <= trial.stopped_at)
    total = ShadowFigures()
    rows = cast("list[tuple[str, dict[str, Any]]]", session.execute(query).all())
    for device_id, payload in rows:
        block = payload.get("shadow") if isinstance(payload, dict) else None
        if not isinstance(block, dict):
            continue
        if (block.get("model"), block.get("version")) != (trial.model, trial.version):
            continue
        per_device[device_id].add(block)
        total.add(block)
        if isinstance(payload.get("version"), str):
            current_versions[device_id].add(payload["version"])
    running = dict(
        session.execute(
            select(Device.id, Device.shadow_version).where(Device.id.in_(trial.devices))
        ).all()
    )
    return {
        **_describe(trial),
        "figures": total.summary(),
        "per_device": [
            {
                "device_id": device_id,
                "assigned": running.get(device_id) == trial.version,
                "current_versions": sorted(current_versions[device_id]),
                **figures.summary(),
            }
            for device_id, figures in sorted(per_device.items())
        ],
    }
