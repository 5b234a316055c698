"""Fleet alerts: quality windows and drift (``quality``, ``stats``), rules and delivery."""

from registry.alerts.engine import Alerts, Finding, alert_out
from registry.alerts.quality import DeviceWindow, Drift, DriftDecision, decide_drift, drift
from registry.alerts.rules import AlertRules

__all__ = [
    "AlertRules",
    "Alerts",
    "DeviceWindow",
    "Drift",
    "DriftDecision",
    "Finding",
    "alert_out",
    "decide_drift",
    "drift",
]
