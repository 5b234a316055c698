"""Suite-wide settings.

Hypothesis runs without deadlines or the too-slow health check: CI machines have
two cores shared with a broker, a database and training runs, so wall time per
example says nothing about the code.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "corral", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=60
)
settings.load_profile("corral")
