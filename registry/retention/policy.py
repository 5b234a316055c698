"""The retention settings: how long raw reports, buckets and events are kept.

One pydantic model, nested in the registry's settings as ``retention`` (so
``CORRAL_RETENTION__<FIELD>`` overrides a field), and the two horizons it
draws at a given time. The model refuses settings that would lose data: a
bucket width that does not divide a day, or buckets that die before the raw
reports they fold.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Self

from pydantic import BaseModel, Field, model_validator

__all__ = ["RetentionPolicy"]


class RetentionPolicy(BaseModel):
    """How long reports are kept (``CORRAL_RETENTION__<FIELD>`` to override one)."""

    #: Raw reports are deleted this many days after they arrived. At least a day:
    #: alert rules, rollout gates and the console's short charts read raw reports.
    raw_days: float = Field(default=7.0, ge=1.0)
    #: Bucket figures (and events) are deleted this many days after their time.
    aggregate_days: float = Field(default=400.0, ge=1.0)
    #: Bucket width in seconds; a whole number of buckets fills a day.
    bucket_s: int = Field(default=3600, ge=60, le=86400)
    #: Seconds between runs of the job.
    interval_s: float = Field(default=300.0, gt=0)
    #: Most reports (or buckets, or events) per transaction.
    batch_size: int = Field(default=2000, ge=1)
    #: Off: nothing is folded or deleted (the history route still reads buckets).
    enabled: bool = True

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if 86400 % self.bucket_s:
            raise ValueError(f"bucket_s must divide a day (86400 s) evenly, got {self.bucket_s}")
        if self.aggregate_days < self.raw_days:
            raise ValueError(
                f"aggregate_days ({self.aggregate_days}) must be at least raw_days "
                f"({self.raw_days}): buckets outlive the reports they fold"
            )
        return self

    def raw_horizon(self, now: datetime) -> datetime:
        """The arrival time before which a raw report is deleted.

        Measured by arrival (the registry's clock), so a device with a wrong
        clock cannot have its raw reports deleted early.
        """
        return now - timedelta(days=self.raw_days)

    def aggregate_horizon(self, now: datetime) -> datetime:
        """The start before which a bucket (or the time before which an event) is deleted."""
        return now - timedelta(days=self.aggregate_days)
