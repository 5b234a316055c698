"""The alert rules' thresholds: a settings section of their own (``CORRAL_ALERTS__<FIELD>``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["AlertRules"]


class AlertRules(BaseModel):
    """Thresholds of the alert rules (``CORRAL_ALERTS__<FIELD>`` to override one)."""

    interval_s: float = Field(default=10.0, gt=0)
    #: Evaluations in a row a device rule must hold before it fires (no flapping);
    #: offline, drift (its own count) and failed rollouts fire at once.
    for_evaluations: int = Field(default=2, ge=1)
    window_s: float = Field(default=300.0, gt=0)
    offline_after_s: float = Field(default=120.0, gt=0)
    stale_after_s: float = Field(default=120.0, gt=0)
    fps_fraction: float = Field(default=0.8, ge=0, le=1)
    min_accuracy: float = Field(default=0.85, ge=0, le=1)
    min_labels: int = Field(default=100, ge=1)
    max_recall_gap: float = Field(default=0.3, ge=0, le=1)
    min_class_support: int = Field(default=30, ge=1)
    drift_fdr: float = Field(default=0.01, gt=0, lt=1)
    drift_frames_per_sample: float = Field(default=20.0, ge=1)
    drift_large_n: float = Field(default=1000.0, gt=0)
    drift_max_js: float = Field(default=0.1, gt=0, le=1)
    drift_max_psi: float = Field(default=0.2, gt=0)
    drift_consecutive: int = Field(default=2, ge=1)
    webhook_url: str | None = None
