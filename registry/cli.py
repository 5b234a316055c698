"""``corral registry``: run the registry.

Only typer, rich and the standard library load at import time, so that
``corral --help`` stays quick; FastAPI and uvicorn load inside ``serve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, help="Run the Corral registry.")
console = Console()


@app.callback()
def main() -> None:
    """Run the Corral registry."""


@app.command()
def serve(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", envvar="CORRAL_DATA_DIR", help="Database, blobs, keys.")
    ] = Path(".corral/registry"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    mqtt_host: Annotated[
        str, typer.Option("--mqtt-host", envvar="CORRAL_MQTT_HOST", help="MQTT broker host.")
    ] = "127.0.0.1",
    mqtt_port: Annotated[
        int, typer.Option("--mqtt-port", envvar="CORRAL_MQTT_PORT", help="MQTT broker port.")
    ] = 1883,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            envvar="CORRAL_PUBLIC_URL",
            help="URL agents use to reach this registry (default http://HOST:PORT).",
        ),
    ] = None,
) -> None:
    """Serve the API, the TUF repository and the console; ingest MQTT."""
    import uvicorn

    from corral.errors import CorralError
    from registry.app import create_app
    from registry.core.config import Settings

    settings = Settings(
        data_dir=data_dir,
        mqtt_host=mqtt_host,
        mqtt_port=mqtt_port,
        public_url=public_url or f"http://{host}:{port}",
    )
    try:
        fastapi_app = create_app(settings)
    except CorralError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    token = fastapi_app.state.registry.admin_token
    base = settings.public_url.rstrip("/")
    # In the fragment: browsers do not send it, so it never reaches an access log.
    console.print(f"console:     {base}/#token={token}", soft_wrap=True, highlight=False)
    if settings.admin_token is None:
        console.print(f"admin token: {settings.admin_token_path}", highlight=False)
    console.print(f"MQTT:        {mqtt_host}:{mqtt_port}", highlight=False)
    uvicorn.run(fastapi_app, host=host, port=port, log_level="info")
