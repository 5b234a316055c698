"""Rollouts: start, apply, list, status, approve/pause/resume/abort; A/B experiments.

Also the live rollout view: ``--watch`` redraws :func:`_rollout_view` about once a second
until the rollout reaches a final state, and exits with an error unless it
succeeded, so scripts and CI can wait on a rollout.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table

from corral.cli._common import Registry, Token, console, fmt, registry_client
from corral.client import RegistryClient
from corral.errors import CorralError

__all__ = ["rollout_app"]

rollout_app = typer.Typer(no_args_is_help=True, help="Move devices to a model version.")

Watch = Annotated[bool, typer.Option(help="Follow until every device reports the version.")]
WatchTimeout = Annotated[float, typer.Option(help="Seconds to follow with --watch.")]

_FINAL = ("succeeded", "failed", "aborted", "superseded")


def _stages_option(
    text: str, soak_s: float, min_frames: int, min_labelled: int, timeout_s: float
) -> list[dict[str, Any]]:
    stages = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        size: int | str = int(item) if item.isdigit() else item
        stages.append(
            {
                "name": item if not item.isdigit() else f"{item} device(s)",
                "size": size,
                "soak_s": soak_s,
                "min_frames": min_frames,
                "min_labelled": min_labelled,
                "timeout_s": timeout_s,
            }
        )
    if not stages:
        raise CorralError(f"--stages {text!r} names no stage; e.g. --stages 1,10%,50%,100%")
    return stages


@rollout_app.command("start")
def rollout_start(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to roll out.")],
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Device id (repeat); all devices if none.")
    ] = None,
    group: Annotated[str | None, typer.Option(help="Only devices of this group.")] = None,
    site: Annotated[str | None, typer.Option(help="Only devices of this site.")] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Only devices with it.")] = None,
    profile: Annotated[str | None, typer.Option(help="Only this firmware profile.")] = None,
    stages: Annotated[
        str | None,
        typer.Option(help="Cumulative stage sizes, e.g. 1,10%,50%,100%; none: all at once."),
    ] = None,
    soak: Annotated[float, typer.Option(help="Seconds to watch each stage.")] = 60.0,
    min_frames: Annotated[int, typer.Option(help="Frames each stage needs.")] = 300,
    min_labelled: Annotated[int, typer.Option(help="Labelled frames each stage needs.")] = 100,
    stage_timeout: Annotated[float, typer.Option(help="Seconds per stage before it fails.")] = 900,
    mode: Annotated[str, typer.Option(help="continuous or approval.")] = "continuous",
    environment: Annotated[str, typer.Option(help="production or staging.")] = "production",
    require_staging: Annotated[
        bool, typer.Option(help="Refuse unless a staging rollout passed and was approved.")
    ] = False,
    supersede: Annotated[
        bool, typer.Option(help="Take devices over from other active rollouts.")
    ] = False,
    watch: Watch = False,
    timeout: WatchTimeout = 600.0,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Roll a version out: at once, or in stages judged by gates (--stages)."""
    plan: dict[str, Any] = {
        "model": model,
        "version": version,
        "selector": {
            "devices": device or None,
            "group": group,
            "site": site,
            "tags": tag or [],
            "profile": profile,
        },
        "mode": mode,
        "environment": environment,
        "require_staging": require_staging,
        "supersede": supersede,
    }
    with registry_client(registry, token) as client:
        if stages is not None:
            plan["stages"] = _stages_option(stages, soak, min_frames, min_labelled, stage_timeout)
        created = client.apply_rollout(plan)
        _started(created)
        if watch:
            _watch(client, created["id"], timeout)


@rollout_app.command("apply")
def rollout_apply(
    plan_file: Annotated[Path, typer.Argument(help="A rollout plan (TOML); see docs/rollouts.md.")],
    watch: Watch = False,
    timeout: WatchTimeout = 600.0,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Start a rollout from a plan file."""
    import tomllib

    with registry_client(registry, token) as client:
        try:
            plan = tomllib.loads(plan_file.read_text())
        except OSError as e:
            raise CorralError(f"cannot read {plan_file}: {e.strerror}") from e
        except tomllib.TOMLDecodeError as e:
            raise CorralError(f"{plan_file} is not valid TOML: {e}") from e
        created = client.apply_rollout(plan)
        _started(created)
        if watch:
            _watch(client, created["id"], timeout)


def _started(rollout: dict[str, Any]) -> None:
    sizes = [s["devices"] for s in rollout["stages"]]
    console.print(
        f"rollout {rollout['id']}: {rollout['model']} {rollout['version']} → "
        f"{len(rollout['devices'])} device(s) in {len(sizes)} stage(s) {sizes}"
    )


@rollout_app.command("list")
def rollout_list(registry: Registry = None, token: Token = None) -> None:
    """Every rollout, newest first."""
    with registry_client(registry, token) as client:
        rollouts = client.rollouts()
    table = Table(title="Rollouts")
    for column in ("id", "model", "version", "env", "state", "stage", "devices", "created"):
        table.add_column(column)
    for r in rollouts:
        stage = r["stages"][r["stage"]]["name"] if r["stages"] else ""
        table.add_row(
            str(r["id"]),
            r["model"],
            r["version"],
            r["environment"],
            r["state"],
            stage,
            str(len(r["devices"])),
            r["created_at"][:19],
        )
    console.print(table)


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
    """Show a rollout's stages, gate numbers, devices and decision log."""
    with registry_client(registry, token) as client:
        if rollout_id is None:
            rollouts = client.rollouts()
            if not rollouts:
                console.print("no rollouts yet")
                return
            rollout_id = str(rollouts[0]["id"])
        if watch:
            _watch(client, rollout_id, timeout)
        console.print(_rollout_view(client.rollout(rollout_id)))


def _rollout_action(
    action: str, rollout_id: str, note: str, registry: str | None, token: str | None
) -> None:
    with registry_client(registry, token) as client:
        rollout = client.rollout_action(rollout_id, action, note)
    console.print(
        f"rollout {rollout_id}: {rollout['state']}"
        + (f" ({rollout['reason']})" if rollout["reason"] else "")
    )


Note = Annotated[str, typer.Option(help="Why, for the rollout's decision log.")]
RolloutId = Annotated[str, typer.Argument(help="Rollout id.")]


@rollout_app.command("approve")
def rollout_approve(
    rollout_id: RolloutId, note: Note = "", registry: Registry = None, token: Token = None
) -> None:
    """Approve the stage a rollout waits at (or sign off a finished staging rollout)."""
    _rollout_action("approve", rollout_id, note, registry, token)


@rollout_app.command("pause")
def rollout_pause(
    rollout_id: RolloutId, note: Note = "", registry: Registry = None, token: Token = None
) -> None:
    """Stop advancing; devices already installing finish."""
    _rollout_action("pause", rollout_id, note, registry, token)


@rollout_app.command("resume")
def rollout_resume(
    rollout_id: RolloutId, note: Note = "", registry: Registry = None, token: Token = None
) -> None:
    """Go on with a paused rollout."""
    _rollout_action("resume", rollout_id, note, registry, token)


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: RolloutId, note: Note = "", registry: Registry = None, token: Token = None
) -> None:
    """Stop and send every moved device back to the version it had."""
    _rollout_action("abort", rollout_id, note, registry, token)


@rollout_app.command("ab")
def rollout_ab(
    name: Annotated[str, typer.Argument(help="Experiment name (lowercase, digits, . _ -).")],
    model: Annotated[str, typer.Argument(help="Model name.")],
    a: Annotated[str, typer.Argument(help="Control version (cohort A).")],
    b: Annotated[str, typer.Argument(help="Candidate version (cohort B).")],
    group: Annotated[str | None, typer.Option(help="Only devices of this group.")] = None,
    site: Annotated[str | None, typer.Option(help="Only devices of this site.")] = None,
    split: Annotated[float, typer.Option(help="Cohort B's share of the devices.")] = 0.5,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Split devices in two cohorts on two versions; compare with `corral rollout compare`."""
    body = {
        "name": name,
        "model": model,
        "a": a,
        "b": b,
        "split": split,
        "selector": {"group": group, "site": site},
    }
    with registry_client(registry, token) as client:
        started = client.start_experiment(body)
    console.print(
        f"experiment {name}: {started['a']['devices']} device(s) on {a} (A, rollout "
        f"{started['a']['rollout']}), {started['b']['devices']} on {b} (B, rollout "
        f"{started['b']['rollout']})"
    )


@rollout_app.command("compare")
def rollout_compare(
    name: Annotated[str, typer.Argument(help="Experiment name.")],
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Show B - A for accuracy and p95 latency with 95 % confidence intervals."""
    with registry_client(registry, token) as client:
        result = client.experiment(name)
    table = Table(
        title=f"Experiment {name}: {result['a']['version']} (A) vs " f"{result['b']['version']} (B)"
    )
    for column in ("figure", "A", "B", "B - A", "95 % interval", "n A", "n B", "significant"):
        table.add_column(column)
    for d in result["differences"]:
        interval = "" if d["low"] is None else f"[{d['low']:+.4f}, {d['high']:+.4f}]"
        table.add_row(
            d["figure"],
            fmt(d["a"]),
            fmt(d["b"]),
            "" if d["diff"] is None else f"{d['diff']:+.4f}",
            interval,
            str(d["n_a"]),
            str(d["n_b"]),
            "yes" if d["significant"] else "no",
        )
    console.print(table)


def _converged(rollout: dict[str, Any]) -> tuple[int, int]:
    rows = rollout.get("devices", [])
    done = sum(1 for d in rows if d.get("reported_version") == rollout["version"])
    return done, len(rows)


def _rollout_view(rollout: dict[str, Any]) -> Group:
    head = (
        f"[bold]Rollout {rollout['id']}[/]: {rollout['model']} {rollout['version']} "
        f"({rollout['environment']}) [bold]{rollout['state']}[/]"
        + (f": {rollout['reason']}" if rollout.get("reason") else "")
    )
    stages = Table(title="Stages")
    for column in ("stage", "size", "devices", "converged", "failed", "status", "gates"):
        stages.add_column(column)
    for s in rollout["stages"]:
        record = s.get("gates") or {}
        verdicts = ", ".join(
            f"{g['name']} {g['status']}" + (f" {g['value']}" if g.get("value") is not None else "")
            for g in record.get("results", [])
        )
        if record.get("waiting_for"):
            verdicts = "waiting for " + ", ".join(record["waiting_for"]) + "; " + verdicts
        stages.add_row(
            s["name"],
            str(s["size"]),
            str(s["devices"]),
            str(s["converged"]),
            str(s["failed"]),
            s["status"],
            verdicts,
        )
    devices = Table(title="Devices")
    for column in ("device", "stage", "progress", "previous", "desired", "reported", "state"):
        devices.add_column(column)
    for d in rollout.get("devices", []):
        devices.add_row(
            d["device_id"],
            str(d["stage"]),
            d["progress"],
            fmt(d.get("previous_version")),
            fmt(d.get("desired_version")),
            fmt(d.get("reported_version")),
            fmt(d.get("state")),
        )
    log = Table(title="Decision log (newest last)")
    for column in ("at", "who", "action", "message"):
        log.add_column(column)
    for e in rollout.get("log", [])[-8:]:
        log.add_row(e["at"][11:19], e["actor"], e["action"], e["message"])
    done, total = _converged(rollout)
    bar = Table.grid(padding=(0, 1))
    bar.add_row(
        ProgressBar(total=max(total, 1), completed=done, width=40),
        f"{done}/{total} device(s) on {rollout['version']}",
    )
    return Group(head, bar, stages, devices, log)


def _watch(client: RegistryClient, rollout_id: int | str, timeout: float) -> None:
    """Follow a rollout live until it ends (or, all at once, until every device has it)."""
    deadline = time.monotonic() + timeout
    with Live(console=console, refresh_per_second=2) as live:
        while True:
            rollout = client.rollout(rollout_id)
            done, total = _converged(rollout)
            live.update(_rollout_view(rollout))
            if rollout["state"] in _FINAL:
                break
            if time.monotonic() > deadline:
                raise CorralError(
                    f"rollout {rollout_id} is still {rollout['state']} after {timeout:.0f} s "
                    f"({done}/{total} devices on {rollout['version']})"
                )
            time.sleep(1.0)
    if rollout["state"] != "succeeded":
        raise CorralError(f"rollout {rollout_id} ended {rollout['state']}: {rollout['reason']}")
