"""A rollout plan: which devices, which version, in which stages, judged by which gates.

The plan is what an operator writes (``corral rollout apply plan.toml``) or
what ``corral rollout start`` builds from its options; the API takes it as
JSON and stores it with the rollout, so the decision log can always be read
against the rules in force. Every field has a default that gives a sensible
canary rollout; a request that names only model and version (the walking
skeleton's rollout) gets one stage of every selected device, no soak and no
sample minimums, which moves everything at once as before.

Stage sizes are a device count (``1``) or a share of the selected fleet
(``"10%"``); each stage's size is cumulative (the devices of earlier stages
count towards it), and the last stage always takes the whole selection.
"""

from __future__ import annotations

import math
import re
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "GateRules",
    "Mode",
    "RolloutPlan",
    "Selector",
    "Stage",
    "default_stages",
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Mode(StrEnum):
    """Continuous deployment advances on passing gates; delivery waits for an approval."""

    CONTINUOUS = "continuous"
    APPROVAL = "approval"


class Selector(_Strict):
    """Which enrolled, unrevoked devices a rollout targets; every given field must match."""

    devices: list[str] | None = Field(default=None, description="Exactly these device ids.")
    group: str | None = None
    site: str | None = None
    tags: list[str] = Field(default_factory=list, description="The device has all of these.")
    profile: str | None = Field(default=None, description="Firmware profile name.")

    def describe(self) -> str:
        """A short human description, for logs and the CLI."""
        parts = [
            f"{key}={value}"
            for key, value in (
                ("group", self.group),
                ("site", self.site),
                ("profile", self.profile),
            )
            if value
        ]
        parts += [f"tag={t}" for t in self.tags]
        if self.devices is not None:
            parts.append(f"{len(self.devices)} named device(s)")
        return ", ".join(parts) or "every device"


class Stage(_Strict):
    """One step of a rollout."""

    name: str = Field(default="", max_length=40)
    size: int | str = Field(
        default="100%", description="Cumulative device count, or a share such as '10%'."
    )
    soak_s: float = Field(default=0.0, ge=0, description="Watch this long after convergence.")
    min_frames: int = Field(default=0, ge=0, description="Inference frames needed to judge.")
    min_labelled: int = Field(default=0, ge=0, description="Labelled frames needed to judge.")
    timeout_s: float = Field(
        default=900.0, gt=0, description="Install and sample deadline; then it counts as failed."
    )
    approval: bool | None = Field(
        default=None, description="Wait for approval after this stage; null: as the mode says."
    )

    @field_validator("size")
    @classmethod
    def _size(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 1:
                raise ValueError(f"a stage size is at least 1 device, got {value}")
            return value
        match = _SIZE.match(value)
        if match is None or not 0 < float(match.group(1)) <= 100:
            raise ValueError(f"a stage size is a count or a share like '10%', got {value!r}")
        return f"{float(match.group(1)):g}%"

    def cumulative(self, fleet: int) -> int:
        """How many of ``fleet`` selected devices this stage covers (at least one)."""
        if fleet == 0:
            return 0
        if isinstance(self.size, int):
            return min(self.size, fleet)
        share = float(self.size.rstrip("%")) / 100.0
        return max(1, min(fleet, math.ceil(share * fleet - 1e-9)))


class GateRules(_Strict):
    """Thresholds of the gates; a gate with nothing to compare against reports 'no data'.

    Latency, fps and accuracy compare the new version with the version each
    device ran before, on the same devices, over the ``baseline_s`` before it
    moved. Accuracy uses a one-sided two-proportion test on the labelled
    counts: the gate fails when the new version is worse than the old one
    minus ``accuracy_margin`` at significance ``accuracy_alpha``.
    """

    max_install_failure_percent: float = Field(default=10.0, ge=0, le=100)
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p95_latency_ratio: float = Field(default=1.5, gt=0)
    min_fps_ratio: float = Field(default=0.8, ge=0)
    accuracy_margin: float = Field(default=0.02, ge=0, le=1)
    accuracy_alpha: float = Field(default=0.05, gt=0, lt=0.5)
    min_accuracy: float | None = Field(
        default=None, ge=0, le=1, description="Absolute floor, for devices with no baseline."
    )
    max_drift: float = Field(
        default=0.3, gt=0, le=1, description="Jensen-Shannon distance of predicted classes."
    )
    max_gpu_temp_c: float | None = Field(default=None, gt=0)
    baseline_s: float = Field(default=900.0, gt=0)


def default_stages() -> list[Stage]:
    """One device, 10 %, 50 %, all; a minute of soak and some samples each."""
    return [
        Stage(name="canary", size=1, soak_s=60, min_frames=300, min_labelled=100),
        Stage(name="10%", size="10%", soak_s=60, min_frames=1000, min_labelled=300),
        Stage(name="50%", size="50%", soak_s=60, min_frames=1000, min_labelled=300),
        Stage(name="all", size="100%", soak_s=60, min_frames=1000, min_labelled=300),
    ]


class RolloutPlan(_Strict):
    """Everything a rollout needs to run and to judge itself."""

    model: Annotated[str, Field(min_length=1, max_length=63)]
    version: Annotated[str, Field(min_length=1, max_length=64)]
    variant: str | None = Field(
        default=None,
        max_length=64,
        description="The file variant devices install (fp32, int8, a TensorRT plan); none: each "
        "device's firmware profile chooses.",
    )
    selector: Selector = Field(default_factory=Selector)
    stages: list[Stage] = Field(default_factory=lambda: [Stage(name="all")], min_length=1)
    gates: GateRules = Field(default_factory=GateRules)
    mode: Mode = Mode.CONTINUOUS
    environment: str = Field(default="production", pattern=r"^(staging|production)$")
    require_staging: bool = Field(
        default=False,
        description="Refuse unless a staging rollout of this version passed and was approved.",
    )
    experiment: str | None = Field(
        default=None, description="The A/B experiment this rollout is one cohort of."
    )

    @model_validator(mode="after")
    def _last_stage_takes_all(self) -> RolloutPlan:
        names = [s.name for s in self.stages if s.name]
        if len(names) != len(set(names)):
            raise ValueError(f"stage names must differ, got {names}")
        for i, stage in enumerate(self.stages):
            if not stage.name:
                stage.name = f"stage {i + 1}"
        return self

    def needs_approval(self, index: int) -> bool:
        """Whether the rollout waits for an approval after stage ``index``."""
        stage = self.stages[index]
        if stage.approval is not None:
            return stage.approval
        return self.mode is Mode.APPROVAL

    def cutoffs(self, fleet: int) -> list[int]:
        """Cumulative device counts per stage for a fleet of ``fleet``; the last is all."""
        counts = [s.cumulative(fleet) for s in self.stages]
        counts[-1] = fleet
        for i in range(1, len(counts)):
            counts[i] = max(counts[i], counts[i - 1])
        return counts
