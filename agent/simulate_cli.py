"""``corral fleet simulate``: N simulated agents against a real registry and broker.

Only typer and rich at module level; ``agent.simulate`` (the updater, TUF,
paho) is imported when the command runs, so ``corral --help`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

if TYPE_CHECKING:
    from agent.simulate import Fleet

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Simulated fleets for tests and rollouts at scale.")
console = Console()


def _table(fleet: Fleet, started: float) -> Table:
    summary = fleet.summary()
    table = Table(
        title=f"{summary.agents} simulated agents, {summary.connected} connected, "
        f"{time.monotonic() - started:.0f} s"
    )
    for column in ("cohort", "versions", "installs", "failures"):
        table.add_column(column)
    for cohort in fleet.cohorts:
        agents = fleet.cohort_of(cohort.name)
        versions = summary.versions.get(cohort.name, {})
        table.add_row(
            cohort.name,
            ", ".join(f"{v}: {n}" for v, n in sorted(versions.items())),
            str(sum(a.installs for a in agents)),
            str(sum(a.failures for a in agents)),
        )
    table.caption = (
        f"published {summary.published}, acknowledged {summary.acked}, pending {summary.pending}"
    )
    return table


@app.command()
def simulate(
    registry: Annotated[str, typer.Option(envvar="CORRAL_REGISTRY", help="Registry URL.")],
    token: Annotated[str, typer.Option(envvar="CORRAL_TOKEN", help="Admin token (enrols).")],
    data_dir: Annotated[Path, typer.Option(help="Each agent's data folder goes under here.")],
    agents: Annotated[int, typer.Option(help="How many simulated agents.")] = 10,
    cohort: Annotated[
        list[str] | None,
        typer.Option(
            help="name=fraction[:accuracy=0.9,delta=-0.05,latency_ms=5,fps=15,crash=0.1,"
            "crash_from=1.1.0,accuracy@1.1.0=0.8]; repeat for several cohorts."
        ),
    ] = None,
    duration: Annotated[
        float | None, typer.Option(help="Seconds to run; default until Ctrl-C.")
    ] = None,
    install_concurrency: Annotated[int, typer.Option(help="Installs at once.")] = 8,
    report_interval: Annotated[float, typer.Option(help="Seconds between windows.")] = 5.0,
) -> None:
    """Enrol N simulated agents and run them until --duration or Ctrl-C."""
    from agent.errors import AgentError
    from agent.simulate import Fleet, cohorts_from
    from corral.errors import CorralError

    try:
        fleet = Fleet(
            registry,
            token,
            data_dir,
            agents,
            cohorts_from(cohort or []),
            install_concurrency=install_concurrency,
            report_interval_s=report_interval,
        )
        with console.status("enrolling") as status:
            fleet.enrol(lambda n: status.update(f"enrolled {n}/{agents}"))
    except (AgentError, CorralError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    started = time.monotonic()
    fleet.start()
    try:
        with Live(_table(fleet, started), console=console, refresh_per_second=2) as live:
            while duration is None or time.monotonic() - started < duration:
                time.sleep(0.5)
                live.update(_table(fleet, started))
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping: offline statuses out"):
            fleet.stop()
    console.print(_table(fleet, started))
