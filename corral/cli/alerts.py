"""Fleet alerts (list, ack, silence) and the governance actions policies took on them.

Both groups list when called bare (``corral alerts``, ``corral actions``): their
list is the group callback, which steps aside when a subcommand is given.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from corral.cli._common import Registry, Token, console, fmt, registry_client
from corral.errors import CorralError

__all__ = ["actions_app", "alerts_app"]

alerts_app = typer.Typer(
    invoke_without_command=True, help="Fleet alerts: list, acknowledge, silence."
)
actions_app = typer.Typer(
    invoke_without_command=True, help="What governance policies did about alerts."
)


@alerts_app.callback()
def alerts_list(
    ctx: typer.Context,
    state: Annotated[str, typer.Option(help="firing, resolved or all.")] = "firing",
    rule: Annotated[str | None, typer.Option(help="Only this rule, e.g. drift.")] = None,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """List alerts (firing ones by default)."""
    if ctx.invoked_subcommand is not None:
        return
    with registry_client(registry, token) as client:
        alerts = client.alerts(state=state, rule=rule)
    if not alerts:
        console.print(f"no {state if state != 'all' else ''} alerts".replace("  ", " "))
        return
    table = Table(title=f"Alerts ({state})")
    for column in ("id", "severity", "rule", "subject", "since", "ack", "message"):
        table.add_column(column)
    for a in alerts:
        severity = {"critical": "[red]critical[/]", "warning": "[yellow]warning[/]"}.get(
            a["severity"], a["severity"]
        )
        table.add_row(
            str(a["id"]),
            severity + (" (silenced)" if a["silenced"] else ""),
            a["rule"],
            a["subject"],
            (a["started_at"] or "")[:19],
            fmt(a["acknowledged_by"]),
            a["message"],
        )
    console.print(table)


@alerts_app.command("ack")
def alerts_ack(
    alert_id: Annotated[int, typer.Argument(help="Alert id.")],
    note: Annotated[str, typer.Option(help="What you are doing about it.")] = "",
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Acknowledge an alert (it resolves by itself when its rule stops holding)."""
    with registry_client(registry, token) as client:
        alert = client.ack_alert(alert_id, note)
    console.print(f"alert {alert_id} ({alert['rule']} on {alert['subject']}) acknowledged")


@alerts_app.command("silence")
def alerts_silence(
    reason: Annotated[str, typer.Option(help="Why (kept with the silence).")],
    rule: Annotated[str | None, typer.Option(help="Only this rule.")] = None,
    subject: Annotated[
        str | None, typer.Option(help="device:ID, rollout:ID, or a prefix ending in *.")
    ] = None,
    hours: Annotated[float, typer.Option(help="How long.")] = 2.0,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Stop delivering matching alerts for a while (they are still recorded)."""
    with registry_client(registry, token) as client:
        if rule is None and subject is None:
            raise CorralError("give --rule, --subject or both; a silence of everything is refused")
        made = client.silence(rule, subject, hours * 3600, reason)
    console.print(f"silence {made['id']} until {made['expires_at']}")


@actions_app.callback()
def actions_list(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option(help="pending, queued, running, done, failed.")
    ] = None,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """List governance actions, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    with registry_client(registry, token) as client:
        actions = client.actions(state)
    table = Table(title="Governance actions")
    for column in ("id", "policy", "action", "alert", "subject", "state", "result"):
        table.add_column(column)
    for a in actions:
        result = ", ".join(f"{k}={v}" for k, v in (a["result"] or {}).items())
        table.add_row(
            str(a["id"]),
            a["policy"],
            a["action"],
            fmt(a["alert_id"]),
            a["subject"],
            a["state"],
            result,
        )
    console.print(table)


@actions_app.command("approve")
def actions_approve(
    action_id: Annotated[int, typer.Argument(help="Action id.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Let a pending action (a retraining, a pin) run."""
    with registry_client(registry, token) as client:
        action = client.approve_action(action_id)
    console.print(f"action {action_id} ({action['action']} on {action['subject']}) queued")
