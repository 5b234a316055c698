"""Who is in the fleet and who did what: devices, enrolment and API tokens, the audit log.

``devices`` and ``audit`` are top-level commands (``corral devices``), so they are
plain functions here that :mod:`corral.cli` registers on the root app; ``token``,
``api-token`` and ``device`` are groups of their own.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from corral.cli._common import Registry, Token, console, fmt, registry_client

__all__ = ["api_token_app", "audit", "device_app", "device_table", "devices", "token_app"]

token_app = typer.Typer(no_args_is_help=True, help="One-time enrolment tokens for new devices.")
api_token_app = typer.Typer(no_args_is_help=True, help="API tokens with a role, for people and CI.")
device_app = typer.Typer(no_args_is_help=True, help="Manage one device.")


def device_table(devices: list[dict[str, Any]]) -> Table:
    """A table of device summaries, as ``corral devices`` and the demo print it.

    ``variant`` is the bundle variant the device reports running (fp32, int8, a
    TensorRT variant); ``-`` when it has no model or its agent does not say.
    """
    table = Table(title="Devices")
    left = ("device", "state", "model", "version", "variant")
    for column in (*left, "frames", "fps", "p95 ms", "accuracy", "labelled"):
        table.add_column(column, justify="left" if column in left else "right", no_wrap=True)
    for d in devices:
        version = fmt(d.get("version"))
        if d.get("desired_version") and d.get("desired_version") != d.get("version"):
            version += f" → {d['desired_version']}"
        table.add_row(
            d["device_id"],
            fmt(d.get("state")),
            fmt(d.get("model")),
            version,
            fmt(d.get("variant")),
            fmt(d.get("frames")),
            fmt(d.get("fps"), ".1f"),
            fmt(d.get("latency_p95_ms"), ".2f"),
            fmt(d.get("accuracy"), ".3f"),
            fmt(d.get("labelled")),
        )
    return table


def devices(registry: Registry = None, token: Token = None) -> None:
    """List enrolled devices with state, model version, fps, latency and accuracy."""
    with registry_client(registry, token) as client:
        console.print(device_table(client.devices()))


@token_app.command("create")
def token_create(
    ttl: Annotated[int, typer.Option(help="Seconds the token stays valid.")] = 3600,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Create a one-time enrolment token and print it."""
    with registry_client(registry, token) as client:
        created = client.create_enrolment_token(ttl)
    console.print(created["token"], soft_wrap=True, highlight=False)


@api_token_app.command("create")
def api_token_create(
    role: Annotated[str, typer.Option(help="viewer, operator or admin.")],
    name: Annotated[str, typer.Option(help="Who uses it; the audit log shows this name.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Create a named API token with a role and print it (it is shown only this once)."""
    with registry_client(registry, token) as client:
        created = client.create_api_token(name, role)
    console.print(created["token"], soft_wrap=True, highlight=False)


@api_token_app.command("list")
def api_token_list(registry: Registry = None, token: Token = None) -> None:
    """List API tokens (names, roles, who made them, revocation); never the secrets."""
    with registry_client(registry, token) as client:
        tokens = client.api_tokens()
    table = Table(title="API tokens")
    for column in ("name", "role", "created", "by", "revoked"):
        table.add_column(column)
    for t in tokens:
        table.add_row(
            t["name"], t["role"], t["created_at"], t["created_by"], fmt(t.get("revoked_at"))
        )
    console.print(table)


@api_token_app.command("revoke")
def api_token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Revoke an API token at once."""
    with registry_client(registry, token) as client:
        client.revoke_api_token(name)
    console.print(f"revoked API token {name}")


@device_app.command("revoke")
def device_revoke(
    device_id: Annotated[str, typer.Argument(help="The device id.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the audit log.")] = "",
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Revoke a device: its token stops working and its MQTT messages are dropped."""
    with registry_client(registry, token) as client:
        client.revoke_device(device_id, reason)
    console.print(f"revoked device {device_id}")


def audit(
    limit: Annotated[int, typer.Option(help="How many entries, newest first.")] = 50,
    actor: Annotated[str | None, typer.Option(help="Only this actor.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, e.g. rollout.create.")
    ] = None,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Show the audit log: who changed what, when."""
    filters = {k: v for k, v in (("actor", actor), ("action", action)) if v is not None}
    with registry_client(registry, token) as client:
        entries = client.audit(limit, **filters)
    table = Table(title="Audit log")
    for column in ("at", "actor", "action", "target"):
        table.add_column(column, no_wrap=True)
    table.add_column("details")
    for entry in entries:
        shown = entry["details"].items()
        details = ", ".join(f"{k}={v}" for k, v in shown if v not in (None, []))
        table.add_row(entry["at"], entry["actor"], entry["action"], entry["target"], details)
    console.print(table)
