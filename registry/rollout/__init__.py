"""Staged rollouts: the plan (``plan``), its gates (``gates``) and the engine (``engine``)."""

from registry.rollout.engine import ACTIVE, Hint, Rollouts, select_devices
from registry.rollout.gates import GateResult, Windows, accuracy_test, js_distance
from registry.rollout.plan import GateRules, Mode, RolloutPlan, Selector, Stage, default_stages

__all__ = [
    "ACTIVE",
    "GateResult",
    "GateRules",
    "Hint",
    "Mode",
    "RolloutPlan",
    "Rollouts",
    "Selector",
    "Stage",
    "Windows",
    "accuracy_test",
    "default_stages",
    "js_distance",
    "select_devices",
]
