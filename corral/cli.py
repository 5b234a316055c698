"""The ``corral`` command line.

Role commands come from the role packages and are mounted only when that role
is installed (``corral train`` from trainer, ``corral registry`` from registry,
``corral agent`` from agent), so a park computer with only the agent extra has a
working CLI. The client commands here (``devices``, ``device``, ``token``,
``api-token``, ``model``, ``alias``, ``rollout``, ``audit``) talk to the
registry's HTTP API and need nothing heavy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from corral.client import RegistryClient
from corral.errors import CorralError

__all__ = ["app", "main"]

app = typer.Typer(no_args_is_help=True, help="Train, sign, roll out and watch image models.")
model_app = typer.Typer(no_args_is_help=True, help="Model versions in the registry.")
rollout_app = typer.Typer(no_args_is_help=True, help="Move devices to a model version.")
token_app = typer.Typer(no_args_is_help=True, help="One-time enrolment tokens for new devices.")
api_token_app = typer.Typer(no_args_is_help=True, help="API tokens with a role, for people and CI.")
alias_app = typer.Typer(no_args_is_help=True, help="Model aliases: production, staging, champion.")
device_app = typer.Typer(no_args_is_help=True, help="Manage one device.")
app.add_typer(model_app, name="model")
app.add_typer(rollout_app, name="rollout")
app.add_typer(token_app, name="token")
app.add_typer(api_token_app, name="api-token")
app.add_typer(alias_app, name="alias")
app.add_typer(device_app, name="device")

console = Console()

Registry = Annotated[
    str | None, typer.Option("--registry", envvar="CORRAL_REGISTRY", help="Registry URL.")
]
Token = Annotated[str | None, typer.Option("--token", envvar="CORRAL_TOKEN", help="API token.")]
Watch = Annotated[bool, typer.Option(help="Follow until every device reports the version.")]
WatchTimeout = Annotated[float, typer.Option(help="Seconds to follow with --watch.")]


def _mount_roles() -> None:
    try:
        from trainer.cli import train
    except ImportError:
        pass
    else:
        app.command("train", help="Train, evaluate and export a model bundle.")(train)
    try:
        from registry.cli import app as registry_app
    except ImportError:
        pass
    else:
        app.add_typer(registry_app, name="registry", help="Run the registry.")
    try:
        from agent.cli import app as agent_app
    except ImportError:
        pass
    else:
        app.add_typer(agent_app, name="agent", help="Enrol and run the agent on a park computer.")
    try:
        from agent.simulate_cli import app as fleet_app
    except ImportError:
        pass
    else:
        app.add_typer(fleet_app, name="fleet", help="Simulate a fleet of agents.")


@contextmanager
def _registry(registry: str | None, token: str | None) -> Iterator[RegistryClient]:
    """A client for one command; a CorralError becomes a one-line error and exit code 2."""
    try:
        with RegistryClient(registry, token) as client:
            yield client
    except CorralError as e:
        raise _fail(e) from e


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {error}")
    return typer.Exit(2)


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def device_table(devices: list[dict[str, Any]]) -> Table:
    """A table of device summaries, as ``corral devices`` and the demo print it."""
    table = Table(title="Devices")
    left = ("device", "state", "model", "version")
    for column in (*left, "frames", "fps", "p95 ms", "accuracy", "labelled"):
        table.add_column(column, justify="left" if column in left else "right", no_wrap=True)
    for d in devices:
        version = _fmt(d.get("version"))
        if d.get("desired_version") and d.get("desired_version") != d.get("version"):
            version += f" → {d['desired_version']}"
        table.add_row(
            d["device_id"],
            _fmt(d.get("state")),
            _fmt(d.get("model")),
            version,
            _fmt(d.get("frames")),
            _fmt(d.get("fps"), ".1f"),
            _fmt(d.get("latency_p95_ms"), ".2f"),
            _fmt(d.get("accuracy"), ".3f"),
            _fmt(d.get("labelled")),
        )
    return table


@app.command()
def devices(registry: Registry = None, token: Token = None) -> None:
    """List enrolled devices with state, model version, fps, latency and accuracy."""
    with _registry(registry, token) as client:
        console.print(device_table(client.devices()))


@token_app.command("create")
def token_create(
    ttl: Annotated[int, typer.Option(help="Seconds the token stays valid.")] = 3600,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Create a one-time enrolment token and print it."""
    with _registry(registry, token) as client:
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
    with _registry(registry, token) as client:
        created = client.create_api_token(name, role)
    console.print(created["token"], soft_wrap=True, highlight=False)


@api_token_app.command("list")
def api_token_list(registry: Registry = None, token: Token = None) -> None:
    """List API tokens (names, roles, who made them, revocation); never the secrets."""
    with _registry(registry, token) as client:
        tokens = client.api_tokens()
    table = Table(title="API tokens")
    for column in ("name", "role", "created", "by", "revoked"):
        table.add_column(column)
    for t in tokens:
        table.add_row(
            t["name"], t["role"], t["created_at"], t["created_by"], _fmt(t.get("revoked_at"))
        )
    console.print(table)


@api_token_app.command("revoke")
def api_token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Revoke an API token at once."""
    with _registry(registry, token) as client:
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
    with _registry(registry, token) as client:
        client.revoke_device(device_id, reason)
    console.print(f"revoked device {device_id}")


@app.command()
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
    with _registry(registry, token) as client:
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


@alias_app.command("set")
def alias_set(
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="production, staging or champion.")],
    version: Annotated[str, typer.Argument(help="The version it points to from now.")],
    reason: Annotated[str, typer.Option(help="Why; kept in the alias history.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Point a model's alias at a version."""
    with _registry(registry, token) as client:
        client.move_alias(model, alias, version, reason)
    console.print(f"{model} {alias} → {version}")


@alias_app.command("history")
def alias_history(
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: Annotated[str, typer.Argument(help="production, staging or champion.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Every move of a model's alias, newest first: who, when, from, to, why."""
    with _registry(registry, token) as client:
        moves = client.alias_history(model, alias)
    table = Table(title=f"{model} {alias}")
    for column in ("when", "who", "from", "to", "why"):
        table.add_column(column)
    for m in moves:
        table.add_row(
            m["moved_at"], m["moved_by"], _fmt(m["from_version"]), m["to_version"], m["reason"]
        )
    console.print(table)


@model_app.command("push")
def model_push(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle directory (bundle.json and files).")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Upload a bundle; the registry signs it and it becomes an immutable version."""
    with _registry(registry, token) as client:
        created = client.push_model(bundle_dir)
    console.print(
        f"pushed {created['name']} {created['version']} ({len(created['files'])} files, signed)"
    )


@model_app.command("list")
def model_list(registry: Registry = None, token: Token = None) -> None:
    """List model versions with their test accuracy."""
    with _registry(registry, token) as client:
        models = client.models()
    table = Table(title="Models")
    for column in ("name", "version", "created", "accuracy", "dataset"):
        table.add_column(column)
    for m in models:
        metrics = m.get("metrics") or {}
        lineage = m.get("lineage") or {}
        table.add_row(
            m["name"],
            m["version"],
            _fmt(m.get("created")),
            _fmt(metrics.get("accuracy"), ".4f"),
            _fmt(lineage.get("dataset_version"))[:12],
        )
    console.print(table)


@rollout_app.command("start")
def rollout_start(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to roll out.")],
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Device id (repeat); all devices if none.")
    ] = None,
    watch: Watch = False,
    timeout: WatchTimeout = 600.0,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Set the desired version of some or all devices; agents install it through TUF."""
    with _registry(registry, token) as client:
        created = client.start_rollout(model, version, device or None)
        console.print(
            f"rollout {created['id']}: {model} {version} → {len(created['devices'])} device(s)"
        )
        if watch:
            _watch(client, created["id"], timeout)


@rollout_app.command("status")
def rollout_status(
    rollout_id: Annotated[
        str | None, typer.Argument(help="Rollout id; the newest if omitted.")
    ] = None,
    watch: Watch = False,
    timeout: WatchTimeout = 600.0,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Show each device's desired and reported version for a rollout."""
    with _registry(registry, token) as client:
        if rollout_id is None:
            rollouts = client.rollouts()
            if not rollouts:
                console.print("no rollouts yet")
                return
            rollout_id = str(rollouts[0]["id"])
        if watch:
            _watch(client, rollout_id, timeout)
        console.print(_rollout_table(client.rollout(rollout_id)))


def _converged(rollout: dict[str, Any]) -> tuple[int, int]:
    rows = rollout.get("devices", [])
    done = sum(1 for d in rows if d.get("reported_version") == rollout["version"])
    return done, len(rows)


def _rollout_table(rollout: dict[str, Any]) -> Table:
    table = Table(title=f"Rollout {rollout['id']}: {rollout['model']} {rollout['version']}")
    for column in ("device", "desired", "reported", "state"):
        table.add_column(column)
    for d in rollout.get("devices", []):
        table.add_row(
            d["device_id"],
            _fmt(d.get("desired_version")),
            _fmt(d.get("reported_version")),
            _fmt(d.get("state")),
        )
    return table


def _watch(client: RegistryClient, rollout_id: int | str, timeout: float) -> None:
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}")
    )
    task = progress.add_task(f"rollout {rollout_id}", total=None)
    deadline = time.monotonic() + timeout
    with Live(progress, console=console, refresh_per_second=4):
        while True:
            done, total = _converged(client.rollout(rollout_id))
            progress.update(task, completed=done, total=total)
            if total and done == total:
                return
            if time.monotonic() > deadline:
                raise CorralError(
                    f"rollout {rollout_id}: {done}/{total} devices on the version "
                    f"after {timeout:.0f} s"
                )
            time.sleep(1.0)


def main() -> None:
    """Entry point of the ``corral`` console script."""
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _mount_roles()
    app()


if __name__ == "__main__":
    main()
