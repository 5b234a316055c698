"""The client commands for people, aliases and revocation, against a running registry."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from typer.testing import CliRunner

from corral.cli import app, device_table


def test_api_token_alias_audit_and_revoke_commands(registry: Any) -> None:
    runner = CliRunner(env={"COLUMNS": "240"})
    admin = ["--registry", registry.url, "--token", registry.context.admin_token]

    def run(*args: str, auth: list[str] = admin) -> str:
        result = runner.invoke(app, [*args, *auth])
        assert result.exit_code == 0, result.output
        return result.output

    secret = run("api-token", "create", "--role", "operator", "--name", "ci").strip()
    assert len(secret) >= 40
    assert "operator" in run("api-token", "list")
    bundle, files = registry.make_bundle()
    assert registry.push(bundle, files).status_code == 201
    ci = ["--registry", registry.url, "--token", secret]
    run("alias", "set", "animals", "production", "1.0.0", "--reason", "first", auth=ci)
    assert "first" in run("alias", "history", "animals", "production", auth=ci)
    registry.enrol("cam-1")
    run("device", "revoke", "cam-1", "--reason", "lost")
    run("api-token", "revoke", "ci")
    shown = run("audit", "--limit", "20")
    for action in ("api_token.create", "alias.move", "device.revoke", "api_token.revoke"):
        assert action in shown
    refused = runner.invoke(app, ["alias", "history", "animals", "production", *ci])
    assert refused.exit_code == 2
    assert "revoked" in refused.output


def test_a_bad_rollout_plan_is_refused_with_its_reason_and_starts_nothing(
    registry: Any, tmp_path: Any
) -> None:
    runner = CliRunner(env={"COLUMNS": "240"})
    admin = ["--registry", registry.url, "--token", registry.context.admin_token]
    bundle, files = registry.make_bundle()
    assert registry.push(bundle, files).status_code == 201
    registry.enrol(registry.unique_id("cam"))
    broken = tmp_path / "broken.toml"
    broken.write_text('model = "animals"\nversion = \n')
    result = runner.invoke(app, ["rollout", "apply", str(broken), *admin])
    assert result.exit_code == 2 and "not valid TOML" in result.output
    typo = tmp_path / "typo.toml"
    typo.write_text('model = "animals"\nversion = "1.0.0"\n[[stages]]\nsize = "150%"\n')
    result = runner.invoke(app, ["rollout", "apply", str(typo), *admin])
    assert result.exit_code == 2 and "size" in result.output, result.output
    result = runner.invoke(app, ["rollout", "start", "animals", "1.0.0", "--stages", ",", *admin])
    assert result.exit_code == 2 and "names no stage" in result.output
    result = runner.invoke(app, ["rollout", "shadow", "start", "trial", "animals", *admin])
    assert result.exit_code == 2 and "should be MODEL@VERSION" in result.output, result.output
    assert registry.admin.get("/api/v1/rollouts").json() == []
    assert registry.admin.get("/api/v1/shadows").json() == []


def test_the_devices_table_shows_the_variant_each_device_runs() -> None:
    summary = {"state": "online", "model": "animals", "version": "1.2.0", "frames": 10}
    devices = [
        {**summary, "device_id": "cam-l4", "variant": "trt-fp16-l4-trt10.3"},
        {**summary, "device_id": "cam-cpu", "variant": "fp32"},
        {**summary, "device_id": "cam-old"},  # an agent that does not report it
    ]
    out = Console(width=200, record=True)
    out.print(device_table(devices))
    lines = [
        line for line in out.export_text().splitlines() if "┃ device" in line or "cam-" in line
    ]
    cells = [[c.strip() for c in re.split("[│┃]", line)[1:-1]] for line in lines]
    column = cells[0].index("variant")
    assert cells[0][column - 1] == "version"
    assert [row[column] for row in cells[1:]] == ["trt-fp16-l4-trt10.3", "fp32", "-"]
