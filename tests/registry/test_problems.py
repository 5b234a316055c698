"""Every error answer is an RFC 9457 problem saying what to do; one versioned API document."""

from __future__ import annotations

from typing import Any


def _is_problem(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = dict(answer.json())
    assert body["status"] == status
    assert body["type"].startswith("https://corral.dev/problems/")
    assert body["title"] and body["detail"] and body["instance"]
    return body


def test_domain_validation_and_routing_errors_are_problems(registry: Any) -> None:
    missing = _is_problem(registry.admin.get("/api/v1/rollouts/999999"), 404)
    assert "corral rollout list" in missing["detail"]
    assert missing["instance"] == "/api/v1/rollouts/999999"
    invalid = _is_problem(registry.admin.post("/api/v1/rollouts", json={"model": 3}), 422)
    assert "version" in invalid["detail"] and invalid["type"].endswith("invalid-input")
    nowhere = _is_problem(registry.admin.get("/api/v2/devices"), 404)
    assert "/api/v1" in nowhere["detail"]
    _is_problem(registry.admin.delete("/api/v1/devices"), 405)
    refused = _is_problem(registry.anon.get("/api/v1/devices"), 403)
    assert refused["type"].endswith("forbidden")


def test_the_openapi_document_lists_only_versioned_api_paths(registry: Any) -> None:
    document = registry.anon.get("/openapi.json").json()
    api = [p for p in document["paths"] if p.startswith("/api/")]
    assert api and all(p.startswith("/api/v1/") for p in api)
    unversioned = {p for p in document["paths"] if not p.startswith("/api/v1/")}
    assert all(
        p.startswith(("/tuf/", "/healthz", "/metrics", "/console", "/downloads"))
        for p in unversioned
    ), unversioned
