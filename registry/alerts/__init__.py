"""Fleet alerts: quality windows and drift (``quality``, ``stats``), rules and delivery."""

from registry.alerts.engine import Alerts, Finding, alert_out
from registry.alerts.quality import DeviceWindow, Drift, drift
from registry.alerts.rules import AlertRules

__all__ = ["AlertRules", "Alerts", "DeviceWindow", "Drift", "Finding", "alert_out", "drift"]
