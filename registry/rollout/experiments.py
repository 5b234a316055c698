"""A/B experiments: two rollouts that move two cohorts of one selection at once.

An experiment is a pair of one-stage rollouts whose plans carry its name:
cohort B (a stable hash of the experiment name and device id, ``ab.in_b``)
goes to version ``b`` and the rest, cohort A, to version ``a``, each at
once and without gates that stop it. Its figures are the two rollouts'
new-version windows (``registry.rollout.windows``), compared by ``ab.compare``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import ConflictError, InvalidInputError, NotFoundError
from registry.rollout import ab
from registry.rollout.engine import MOVED, Hint, Rollouts, select_devices
from registry.rollout.plan import GateRules, RolloutPlan, Selector, Stage
from registry.rollout.windows import read_windows
from registry.tables import Rollout

__all__ = ["EXPERIMENT_GATES", "describe", "start"]


#: An experiment measures B against A: accuracy, latency, frame rate, predicted
#: classes. Its rollouts are not gated on those, or the very difference it is
#: there to measure would end it (and, racing the labels, only sometimes: a gate
#: judged before enough labels passed, one judged after failed). They still stop
#: on what breaks a model whatever it is compared with: runtime errors and NaN
#: outputs. Install failures do not stop it either: a cohort is what it is.
EXPERIMENT_GATES = GateRules(
    max_install_failure_percent=100.0,
    max_p95_latency_ratio=1e6,
    min_fps_ratio=0.0,
    accuracy_margin=1.0,
    max_drift=1.0,
)


def start(
    rollouts: Rollouts,
    session: Session,
    name: str,
    model: str,
    versions: tuple[str, str],
    selector: Selector,
    split: float,
    actor: str,
) -> tuple[Rollout, Rollout, list[Hint]]:
    """Split the selection in cohorts A and B and move each to its version at once.

    Args:
        rollouts: the rollout engine (it creates the two rollouts).
        session: the request's session; the caller commits, then sends the hints.
        name: the experiment's name.
        model: the model.
        versions: versions (a, b).
        selector: the devices to split.
        split: the share of them in cohort B.
        actor: who starts it.

    Returns:
        Rollouts A and B and the hints to send after the commit.

    Raises:
        ConflictError: an experiment of that name exists, or a named device is revoked.
        NotFoundError: a version or a named device does not exist.
        InvalidInputError: the selection has fewer than two devices, or a cohort
            would be empty.
    """
    if _rollouts_of(session, name):
        raise ConflictError(f"experiment {name!r} exists; pick another name")
    devices = select_devices(session, selector)
    b_ids = [d.id for d in devices if ab.in_b(name, d.id, split)]
    a_ids = [d.id for d in devices if d.id not in set(b_ids)]
    if not a_ids or not b_ids:
        raise InvalidInputError(
            f"experiment {name!r}: {len(devices)} device(s) split {len(a_ids)}/{len(b_ids)}; "
            "each cohort needs at least one (select more devices or change --split)"
        )
    made: list[Rollout] = []
    hints: list[Hint] = []
    for version, ids in zip(versions, (a_ids, b_ids), strict=True):
        plan = RolloutPlan(
            model=model,
            version=version,
            selector=Selector(devices=ids),
            stages=[Stage(name="all")],
            gates=EXPERIMENT_GATES,
            experiment=name,
        )
        rollout, moved = rollouts.create(session, plan, actor, supersede=True)
        made.append(rollout)
        hints += moved
    return made[0], made[1], hints


def describe(session: Session, name: str) -> dict[str, Any]:
    """Both cohorts of an experiment and the difference B - A, with intervals.

    Raises:
        NotFoundError: no such experiment.
    """
    pair = _rollouts_of(session, name)
    if len(pair) != 2:
        raise NotFoundError(f"no experiment {name!r}; `corral rollout ab` starts one")
    windows = []
    for rollout in pair:
        moved = [rd for rd in rollout.devices if rd.state in MOVED]
        new, _, _ = read_windows(session, rollout, moved)
        windows.append(new)
    a, b = pair
    return {
        "name": name,
        "model": a.model,
        "a": {
            "version": a.version,
            "rollout": a.id,
            "devices": len(a.devices),
            "figures": windows[0].summary(),
        },
        "b": {
            "version": b.version,
            "rollout": b.id,
            "devices": len(b.devices),
            "figures": windows[1].summary(),
        },
        "differences": [d.to_dict() for d in ab.compare(windows[0], windows[1])],
    }


def _rollouts_of(session: Session, name: str) -> list[Rollout]:
    rows = session.scalars(select(Rollout).order_by(Rollout.id))
    return [r for r in rows if (r.plan or {}).get("experiment") == name]
