"""``corral registry``: run the registry, upgrade its database, write the broker's files.

Only typer, rich and the standard library load at import time, so that
``corral --help`` stays quick; FastAPI and uvicorn load inside ``serve``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from registry.core.config import Settings

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


DataDir = Annotated[
    Path, typer.Option("--data-dir", envvar="CORRAL_DATA_DIR", help="Database, blobs, keys.")
]


@contextmanager
def _database(data_dir: Path) -> Iterator[tuple[Settings, Engine]]:
    """Settings and an engine on a database at the newest schema; errors exit with code 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from corral.errors import CorralError
    from registry.core.config import Settings
    from registry.core.db import make_engine, migrate

    settings = Settings(data_dir=data_dir)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        migrate(engine)
        yield settings, engine
    except CorralError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    except SQLAlchemyError as e:
        where = engine.url.render_as_string()  # hides the password
        console.print(
            f"[red]error:[/red] cannot use the database {where}: {type(e).__name__}: "
            f"{str(getattr(e, 'orig', None) or e).strip()[:300]}; "
            "check CORRAL_DATABASE_URL (or --data-dir) and that the server is up"
        )
        raise typer.Exit(2) from e
    finally:
        engine.dispose()


@app.command()
def migrate(data_dir: DataDir = Path(".corral/registry")) -> None:
    """Upgrade the database schema and create the TUF repository if there is none.

    What `serve` does at start, as a step of its own: run it once (a Kubernetes
    Job) before several replicas start, so they do not race to do it.
    """
    from registry.core.db import make_session_factory
    from registry.signing import TufRepository

    with _database(data_dir) as (settings, engine):
        TufRepository(settings.data_dir / "keys", make_session_factory(engine)).initialise()
    _say(f"database {engine.url.render_as_string()} is at the newest schema")
    _say(f"TUF repository ready (keys in {settings.data_dir / 'keys'})")


@app.command("broker-files")
def broker_files(
    out: Annotated[Path, typer.Option("--out", help="Where to write passwd, acl and corral.conf.")],
    data_dir: DataDir = Path(".corral/registry"),
    group: Annotated[
        str | None,
        typer.Option(help="Group of the files (mode 0640), e.g. mosquitto, so it can read them."),
    ] = None,
) -> None:
    """Write Mosquitto's password and ACL files from the enrolled devices.

    Each device may publish only under corral/v1/devices/<its id>/ and read only
    its own desired version; the registry's account (CORRAL_MQTT_USERNAME,
    CORRAL_MQTT_PASSWORD) reads every device topic and publishes desired versions.
    Revoked devices are left out. Run it again after enrolling or revoking, then
    reload Mosquitto (SIGHUP).
    """
    from registry.broker import DEFAULT_REGISTRY_USER, write_broker_files
    from registry.core.db import make_session_factory

    with _database(data_dir) as (settings, engine):
        if settings.mqtt_password is None:
            console.print(
                "[red]error:[/red] CORRAL_MQTT_PASSWORD is not set; set it to the password the "
                "registry logs in to the broker with (the same value `serve` gets)"
            )
            raise typer.Exit(2)
        user = settings.mqtt_username or DEFAULT_REGISTRY_USER
        password = settings.mqtt_password.get_secret_value()
        with make_session_factory(engine)() as session:
            written = write_broker_files(session, out, user, password, group=group)
    _say(f"wrote {written.password_path}: {len(written.devices)} device(s) and {user}")
    _say(f"wrote {written.acl_path} and {written.conf_path}")
    if written.revoked:
        _say(f"left out, revoked: {', '.join(written.revoked)}")
    if written.without_credential:
        _say(
            "left out, no broker password yet (enrolled before broker credentials; each "
            f"gets one at its next call to the registry): {', '.join(written.without_credential)}"
        )
    _say("reload Mosquitto to apply: systemctl reload mosquitto, or kill -HUP its pid")


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)
