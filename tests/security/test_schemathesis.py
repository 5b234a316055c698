"""Property tests of every operation in the registry's OpenAPI document (schemathesis).

The registry is the real one, served by uvicorn (``registry`` fixture: SQLite
and PostgreSQL, where a string longer than its column is an error SQLite never
raises). schemathesis reads ``/openapi.json`` from it, generates requests for
every operation from their schemas (valid ones and, as schemathesis does by
default, some that break them), sends them with the admin token, and checks
each answer:

- ``not_a_server_error``: no 5xx, whatever the input;
- ``status_code_conformance``: the status is one the document lists;
- ``content_type_conformance`` and ``response_schema_conformance``: the body
  has the media type and the shape the document gives for that status.

A few operations are seeded first (a device, a pushed model, a rollout) so that
generated reads sometimes hit something. ``/api/v1/console/stream`` is left out:
it streams until the client leaves. Examples per operation are bounded
(``EXAMPLES``), so the whole run takes about a minute on two cores.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.registry.conftest import RunningRegistry

EXAMPLES = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_schema(registry: RunningRegistry) -> Any:
    """The registry's OpenAPI document, as schemathesis loads it, with some data behind it."""
    registry.enrol("cam-1")
    bundle, files = registry.make_bundle()
    assert registry.push(bundle, files).status_code == 201
    body = {"model": "animals", "version": "1.0.0", "devices": ["cam-1"]}
    assert registry.admin.post("/api/v1/rollouts", json=body).status_code == 201
    loaded = schemathesis.openapi.from_url(f"{registry.url}/openapi.json")
    return loaded.exclude(path="/api/v1/console/stream")


def test_every_operation_answers_within_its_schema(
    api_schema: Any, registry: RunningRegistry
) -> None:
    headers = {"Authorization": f"Bearer {registry.context.admin_token}"}
    failures: dict[str, str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 30

    for operation in operations:
        cases = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @given(case=cases)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def answers_within_schema(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)

        try:
            answers_within_schema()
        except (Exception, BaseExceptionGroup) as e:  # every failing operation is reported
            failures[operation.label] = str(e)[:1500]
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


NUL_CASES = [
    ("GET", "/api/v1/audit?actor=a%00b", None),
    ("GET", "/api/v1/devices/a%00b", None),
    ("GET", "/api/v1/alerts?subject=a%00b", None),
    ("POST", "/api/v1/enrolment-tokens", {"site": "a\x00b"}),
]


@pytest.mark.parametrize(("method", "url", "body"), NUL_CASES, ids=[c[1] for c in NUL_CASES])
def test_a_nul_character_in_text_is_invalid_input_not_a_server_error(
    registry: RunningRegistry, method: str, url: str, body: dict[str, str] | None
) -> None:
    """Found while fuzzing: PostgreSQL text cannot hold NUL, and psycopg refuses it."""
    answer = registry.admin.request(method, url, json=body)
    assert answer.status_code in (404, 422) or answer.is_success, answer.text[:200]
    if answer.status_code == 422:
        assert "NUL" in answer.json()["detail"] or "invalid" in answer.json()["detail"]
