"""``corral agent``: enrol this park computer, run the agent, show what it runs.

The main CLI mounts :data:`app` as ``corral agent``. Only typer, rich and the
standard library are imported here; each command imports the agent's heavy
modules (OpenCV, ONNX Runtime, paho) when it runs, so ``corral --help`` stays fast
on every role's machine.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Enrol and run the agent on a park computer.")
_err = Console(stderr=True)

DataDir = Annotated[Path, typer.Option("--data-dir", help="The agent's data folder.")]


def _fail(message: str) -> typer.Exit:
    _err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=1)


@app.command()
def enrol(
    registry: Annotated[str, typer.Option(help="Registry URL, e.g. http://registry:8000.")],
    token: Annotated[str, typer.Option(help="One-time enrolment token from an admin.")],
    device_id: Annotated[str, typer.Option("--device-id", help="This device's id.")],
    data_dir: DataDir,
    profile: Annotated[
        str | None,
        typer.Option(help="Firmware profile name; detected from the hardware if omitted."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace an existing enrolment.")] = False,
) -> None:
    """Trade an enrolment token for this device's credentials and trust root."""
    from agent.config import default_profiles_dir
    from agent.enrol import enrol as do_enrol
    from agent.hardware import detect_facts, resolve_profile
    from corral.errors import CorralError
    from corral.profiles import load_profiles

    try:
        facts = detect_facts()
        chosen = resolve_profile(load_profiles(default_profiles_dir()), profile, facts)
        config = do_enrol(
            registry,
            token,
            device_id,
            data_dir,
            facts,
            chosen,
            pin_profile=profile is not None,
            force=force,
        )
    except CorralError as e:
        raise _fail(str(e)) from e
    typer.echo(f"enrolled {config.device_id} with {config.registry_url} (profile {chosen.name})")


@app.command()
def run(
    data_dir: DataDir,
    camera: Annotated[
        list[str],
        typer.Option(help="Camera URI: folder:/path?fps=20 or file:/path/video.mp4; repeatable."),
    ],
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    api_port: Annotated[
        int | None,
        typer.Option(help="Serve the local API (healthz, status, predict, feedback) here."),
    ] = None,
) -> None:
    """Run the agent until SIGTERM or Ctrl-C: infer on the cameras, report, install updates."""
    logging.basicConfig(
        stream=sys.stderr,
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from agent.service import AgentService
    from corral.errors import CorralError

    try:
        AgentService(data_dir, camera, api_port=api_port).run_forever()
    except CorralError as e:
        raise _fail(str(e)) from e


@app.command()
def status(data_dir: DataDir) -> None:
    """Show the installed model and version and the firmware profile."""
    from agent.config import AgentConfig
    from agent.hardware import choose_profile
    from agent.slots import Slots
    from corral.errors import CorralError

    try:
        config = AgentConfig.load(data_dir)
        profile = choose_profile(config)
        current = Slots(data_dir).current()
    except CorralError as e:
        raise _fail(str(e)) from e
    typer.echo(f"device:  {config.device_id}")
    typer.echo(f"profile: {profile.name}")
    if current is None:
        typer.echo("model:   (none installed)")
    else:
        typer.echo(f"model:   {current.bundle.name} {current.bundle.version} ({current.variant})")
        typer.echo(f"slot:    {current.path}")


def _install_script() -> Path:
    checkout = Path(__file__).resolve().parents[1] / "scripts" / "install-agent.sh"
    if checkout.is_file():
        return checkout
    return Path(sys.prefix) / "share" / "corral" / "install-agent.sh"


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def install(ctx: typer.Context) -> None:
    """Install this computer as an agent (venv, enrolment, systemd unit); see --help.

    The same as scripts/install-agent.sh, with the same options: --registry URL
    --token TOKEN [--device-id ID] [--camera URI ...] [--prefix DIR]; --uninstall [--purge].
    """
    import subprocess

    script = _install_script()
    if not script.is_file():
        raise _fail(f"install script not found at {script}; reinstall corral")
    code = subprocess.call(["bash", str(script), *ctx.args])
    raise typer.Exit(code)
