"""Retention: raw reports for days, their per-bucket figures for months.

What is kept, and for how long (``CORRAL_RETENTION__<FIELD>``, :class:`RetentionPolicy`):

===============  ============================================  ==================
what             kept                                          table
===============  ============================================  ==================
raw reports      ``raw_days`` (7) after they arrived           ``messages``
bucket figures   ``aggregate_days`` (400) after bucket start   ``series_buckets``
events           ``aggregate_days`` after their ``ts``         ``events``
folded seq runs  always (a few rows per device)                ``folded_ranges``
===============  ============================================  ==================

The modules, each leaning only on those below it::

    job      Retention: folds, then expires, batch by batch; why a crash is safe
    batches  fold_device, expire_raw: one transaction's share of the job
    buckets  series_buckets: reports folded in, points read out (read_buckets)
    fold     Fold: one bucket's statistics, which merge exactly
    fields   figures, FIELDS, RULES: the numbers a report carries, how each folds
    policy   RetentionPolicy: the settings

and ``registry.folded_runs`` (``folded_ranges``: which seqs are folded, and
MAX_RUNS), which ingest reads too.
"""

from registry.folded_runs import MAX_RUNS
from registry.retention.batches import expire_raw, fold_device
from registry.retention.buckets import BucketPoint, read_buckets
from registry.retention.fields import FIELDS, RULES, figures
from registry.retention.fold import Fold
from registry.retention.job import Retention, RetentionReport
from registry.retention.policy import RetentionPolicy

__all__ = [
    "FIELDS",
    "MAX_RUNS",
    "RULES",
    "BucketPoint",
    "Fold",
    "Retention",
    "RetentionPolicy",
    "RetentionReport",
    "expire_raw",
    "figures",
    "fold_device",
    "read_buckets",
]
