"""Shadow trials (``corral rollout shadow``): a candidate runs beside the current model.

Nothing the devices act on changes; the registry pairs the two models' outputs
frame by frame, and ``status`` shows agreement, the candidate's latency cost and
paired accuracy (McNemar) overall and per device.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from corral.cli._common import Registry, Token, console, fail, fmt, registry_client
from corral.errors import CorralError

__all__ = ["shadow_app"]

shadow_app = typer.Typer(
    no_args_is_help=True, help="Run a candidate beside the current model and only compare."
)

ShadowName = Annotated[str, typer.Argument(help="Shadow trial name.")]


@shadow_app.command("start")
def shadow_start(
    name: Annotated[str, typer.Argument(help="Trial name (lowercase, digits, . _ -).")],
    target: Annotated[str, typer.Argument(help="The candidate, MODEL@VERSION.")],
    group: Annotated[str | None, typer.Option(help="Only devices of this group.")] = None,
    site: Annotated[str | None, typer.Option(help="Only devices of this site.")] = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", help="Only these devices (repeat).")
    ] = None,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Run MODEL@VERSION in shadow on the selected devices; what they run does not change."""
    model, _, version = target.partition("@")
    if not model or not version:
        raise fail(CorralError(f"{target!r} should be MODEL@VERSION, e.g. animals@1.2.0"))
    body = {
        "name": name,
        "model": model,
        "version": version,
        "selector": {"group": group, "site": site, "devices": device or None},
    }
    with registry_client(registry, token) as client:
        started = client.start_shadow(body)
    console.print(
        f"shadow trial {name}: {model} {version} runs beside the current model on "
        f"{started['devices']} device(s); `corral rollout shadow status {name}` compares"
    )


def _p_value(p: float | None) -> str:
    if p is None:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _shadow_table(report: dict[str, Any]) -> Table:
    table = Table(
        title=f"Shadow trial {report['name']}: {report['model']} {report['version']} "
        f"({report['state']})"
    )
    for column in ("device", "frames", "agreement [95 %]", "cost", "acc. shadow/now", "McNemar p"):
        table.add_column(column)
    rows = [("all", report["figures"])] + [(d["device_id"], d) for d in report["per_device"]]
    for device_id, f in rows:
        low, high = f["agreement_low"], f["agreement_high"]
        agreement = fmt(f["agreement"], ".3f") + (
            "" if low is None else f" [{low:.3f}, {high:.3f}]"
        )
        cost = f["latency"]["cost_ratio"]
        accuracy = f["accuracy"]
        table.add_row(
            device_id,
            str(f["frames"]),
            agreement,
            "-" if cost is None else f"x{cost:.2f}",
            f"{fmt(accuracy['shadow'], '.3f')}/{fmt(accuracy['current'], '.3f')}",
            _p_value(accuracy["mcnemar_p"]),
        )
    return table


@shadow_app.command("status")
def shadow_status(
    name: ShadowName,
    watch: Annotated[bool, typer.Option(help="Refresh every 2 s until Ctrl-C.")] = False,
    registry: Registry = None,
    token: Token = None,
) -> None:
    """Agreement, the candidate's latency cost and paired accuracy, overall and per device."""
    with registry_client(registry, token) as client:
        if not watch:
            console.print(_shadow_table(client.shadow(name)))
            return
        with Live(_shadow_table(client.shadow(name)), console=console) as live:
            try:
                while True:
                    time.sleep(2.0)
                    live.update(_shadow_table(client.shadow(name)))
            except KeyboardInterrupt:
                pass


@shadow_app.command("list")
def shadow_list(registry: Registry = None, token: Token = None) -> None:
    """Every shadow trial, newest first."""
    with registry_client(registry, token) as client:
        trials = client.shadows()
    table = Table(title="Shadow trials")
    for column in ("name", "candidate", "state", "devices", "started", "by"):
        table.add_column(column)
    for t in trials:
        table.add_row(
            t["name"],
            f"{t['model']} {t['version']}",
            t["state"],
            str(t["devices"]),
            fmt(t["created_at"])[:19],
            t["created_by"],
        )
    console.print(table)


@shadow_app.command("stop")
def shadow_stop(name: ShadowName, registry: Registry = None, token: Token = None) -> None:
    """Stop the trial: its devices drop the candidate; the figures stay."""
    with registry_client(registry, token) as client:
        report = client.stop_shadow(name)
    console.print(_shadow_table(report))
