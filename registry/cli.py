"""``corral registry``: run the registry, upgrade its database, write the broker's files.

Also ``corral keys`` (:data:`keys_app`): offline root keys, see :mod:`registry.keys`.

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
    from securesystemslib.signer import CryptoSigner
    from sqlalchemy import Engine

    from registry.core.config import Settings
    from registry.keys import RootChange
    from registry.signing import TufRepository

__all__ = ["app", "keys_app"]

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
    agents = settings.agent_broker()  # checked when the app was made
    if (agents.host, agents.port) != (mqtt_host, mqtt_port):
        console.print(f"MQTT agents: {agents.host}:{agents.port}", highlight=False)
    tuf_root = fastapi_app.state.registry.tuf.status()
    console.print(f"TUF:         {tuf_root.describe()}", highlight=False, soft_wrap=True)
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
        tuf = TufRepository(settings.data_dir / "keys", make_session_factory(engine))
        tuf.initialise()
        tuf_root = tuf.status()
    _say(f"database {engine.url.render_as_string()} is at the newest schema")
    _say(f"TUF repository ready (keys in {settings.data_dir / 'keys'})")
    _say(f"TUF: {tuf_root.describe()}")


@app.command("broker-files")
def broker_files(
    out: Annotated[Path, typer.Option("--out", help="Where to write passwd, acl and corral.conf.")],
    data_dir: DataDir = Path(".corral/registry"),
    group: Annotated[
        str | None,
        typer.Option(help="Group of the files (mode 0640), e.g. mosquitto, so it can read them."),
    ] = None,
    devices_listener: Annotated[
        str | None,
        typer.Option(
            "--devices-listener",
            metavar="[ADDRESS:]PORT",
            help="Declare the agents' listener, where every client id is the device id "
            "(use_username_as_clientid), so no device can knock another off; with "
            "--registry-listener.",
        ),
    ] = None,
    registry_listener: Annotated[
        str | None,
        typer.Option(
            "--registry-listener",
            metavar="[ADDRESS:]PORT",
            help="Declare the registry's own listener (CORRAL_MQTT_HOST/PORT); only the "
            "registry account logs in there.",
        ),
    ] = None,
    tls_certfile: Annotated[
        Path | None,
        typer.Option(help="The broker's certificate (PEM): the agents' listener speaks TLS."),
    ] = None,
    tls_keyfile: Annotated[
        Path | None, typer.Option(help="The key of --tls-certfile (PEM).")
    ] = None,
    tls_cafile: Annotated[
        Path | None,
        typer.Option(help="The CA (PEM) that signs client certificates, for mutual TLS."),
    ] = None,
    require_certificate: Annotated[
        bool,
        typer.Option(help="Mutual TLS: refuse clients without a certificate from --tls-cafile."),
    ] = False,
    registry_tls: Annotated[
        bool,
        typer.Option(help="The registry's listener speaks TLS too, with the same files."),
    ] = False,
) -> None:
    """Write Mosquitto's password and ACL files from the enrolled devices.

    Each device may publish only under corral/v1/devices/<its id>/ and read only
    its own desired version; the registry's account (CORRAL_MQTT_USERNAME,
    CORRAL_MQTT_PASSWORD) reads every device topic and publishes desired versions.
    Revoked devices are left out. With --devices-listener and --registry-listener,
    corral.conf declares both listeners, and no device can take another's client
    id (docs/broker.md, "Client ids"). Run it again after enrolling or revoking,
    then reload Mosquitto (SIGHUP).
    """
    from dataclasses import replace

    from corral.errors import CorralError
    from registry.broker import DEFAULT_REGISTRY_USER, Listener, write_broker_files
    from registry.core.db import make_session_factory

    def with_tls(listener: Listener) -> Listener:
        return replace(
            listener,
            certfile=tls_certfile,
            keyfile=tls_keyfile,
            cafile=tls_cafile,
            require_certificate=require_certificate,
        )

    tls_asked = registry_tls or require_certificate or any((tls_certfile, tls_keyfile, tls_cafile))
    if devices_listener is None and tls_asked:
        raise _fail("the TLS options are for the listeners: give --devices-listener too")
    devices = registry = None
    try:
        if devices_listener is not None:
            devices = with_tls(Listener.parse(devices_listener))
        if registry_listener is not None:
            registry = Listener.parse(registry_listener)
            registry = with_tls(registry) if registry_tls else registry
    except CorralError as e:
        raise _fail(e) from e
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
            written = write_broker_files(
                session, out, user, password, group=group, devices=devices, registry=registry
            )
    if written.registry_password_path is None:
        _say(f"wrote {written.password_path}: {len(written.devices)} device(s) and {user}")
    else:
        _say(f"wrote {written.password_path}: {len(written.devices)} device(s)")
        _say(f"wrote {written.registry_password_path}: {user}")
    _say(f"wrote {written.acl_path} and {written.conf_path}")
    if devices is not None and registry is not None:
        _say(
            f"listeners: agents {devices.describe()} (client id = device id), "
            f"registry {registry.describe()}; Mosquitto needs no other listener"
        )
    if written.revoked:
        _say(f"left out, revoked: {', '.join(written.revoked)}")
    if written.without_credential:
        _say(
            "left out, no broker password yet (enrolled before broker credentials; each "
            f"gets one at its next call to the registry): {', '.join(written.without_credential)}"
        )
    if devices is None:
        _say(
            "note: one listener for all lets a device take another's client id and knock it "
            "off the broker; --devices-listener and --registry-listener close that "
            "(docs/broker.md)"
        )
        _say("reload Mosquitto to apply: systemctl reload mosquitto, or kill -HUP its pid")
    else:
        _say(
            "restart Mosquitto after the listeners change (systemctl restart mosquitto); "
            "after devices change, reload it: systemctl reload mosquitto, or kill -HUP its pid"
        )


def _say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def _fail(error: Exception | str) -> typer.Exit:
    console.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


# --- corral keys -------------------------------------------------------------------

keys_app = typer.Typer(
    no_args_is_help=True,
    help="Offline TUF root keys: make them, sign root, rotate keys (docs/keys.md).",
)

RegistryData = Annotated[
    Path,
    typer.Option(
        "--registry-data",
        envvar="CORRAL_DATA_DIR",
        help="The registry's data directory (its database and online keys).",
    ),
]
KeyFiles = Annotated[
    list[Path] | None,
    typer.Option("--key", help="An offline root key file; repeat for a threshold of them."),
]
ExpiresDays = Annotated[
    int, typer.Option("--expires-days", min=1, max=3650, help="Lifetime of the new root, days.")
]


def _passphrase(what: str, *, confirm: bool = False) -> str:
    """The passphrase from CORRAL_ROOT_KEY_PASSPHRASE, else asked on the terminal."""
    import os
    import sys

    from registry.keys import PASSPHRASE_ENV

    if value := os.environ.get(PASSPHRASE_ENV):
        return value
    if not sys.stdin.isatty():
        console.print(
            f"[red]error:[/red] no passphrase for {what}: set {PASSPHRASE_ENV}, "
            "or run the command in a terminal to be asked"
        )
        raise typer.Exit(2)
    return str(typer.prompt(f"Passphrase for {what}", hide_input=True, confirmation_prompt=confirm))


def _load_keys(paths: list[Path]) -> list[CryptoSigner]:
    from registry.keys import load_key_file

    signers = []
    for path in paths:
        signer = load_key_file(path, _passphrase(str(path)))
        _say(f"key {path}: {signer.public_key.keyid[:12]}")
        signers.append(signer)
    return signers


@contextmanager
def _repository(data_dir: Path) -> Iterator[TufRepository]:
    """The registry's TUF repository on its database; errors exit with code 2."""
    from registry.core.db import make_session_factory
    from registry.signing import TufRepository

    with _database(data_dir) as (settings, engine):
        yield TufRepository(settings.data_dir / "keys", make_session_factory(engine))


def _report(change: RootChange, repository: TufRepository) -> None:
    signed = ", ".join(k[:12] for k in change.signed_by)
    _say(
        f"stored root v{change.version}: {change.threshold} of {len(change.root_keyids)} "
        f"root key(s) must sign; signed by {signed}"
    )
    for path in change.removed:
        _say(f"removed {path}: root v{change.version} no longer lists its key")
    _say(f"TUF: {repository.status().describe()}")
    _say(
        f"agents walk to root v{change.version} at their next update "
        f"(/tuf/metadata/{change.version}.root.json); new devices enrol with it"
    )


@keys_app.command("init")
def keys_init(
    out: Annotated[Path, typer.Option("--out", help="An empty directory on offline media.")],
    count: Annotated[int, typer.Option(min=1, max=16, help="How many root keys.")] = 3,
    threshold: Annotated[int, typer.Option(min=1, help="How many must sign a root.")] = 2,
    registry_data: Annotated[
        Path | None,
        typer.Option(
            "--registry-data",
            envvar="CORRAL_DATA_DIR",
            help="The registry's data directory: refused as a place for root keys.",
        ),
    ] = None,
) -> None:
    """Make encrypted root keys root-1.pem... and root-keys.json (public) in --out."""
    from corral.errors import CorralError
    from registry.keys import KEY_SET_FILE, generate_root_keys

    if registry_data is not None and out.resolve().is_relative_to(registry_data.resolve()):
        console.print(
            f"[red]error:[/red] {out} is inside the registry's data directory {registry_data}; "
            "root keys live offline (a USB key, a hardware token's backup), never beside the "
            "registry"
        )
        raise typer.Exit(2)
    try:
        passphrase = _passphrase("the new keys", confirm=True)
        key_set = generate_root_keys(out, count, threshold, passphrase)
    except CorralError as e:
        raise _fail(e) from e
    for keyid, name in key_set.files.items():
        _say(f"wrote {out / name}: root key {keyid[:12]}")
    _say(f"wrote {out / KEY_SET_FILE}: the public keys, threshold {threshold} of {count}")
    if threshold in (1, count):
        _say(
            "warning: with a threshold of 1 any one key signs root alone; with a threshold of "
            "all keys, losing one locks root (docs/keys.md)"
        )
    _say(
        "next: give each key to its holder and sign root with a threshold of them: "
        f"corral keys sign-root --registry-data DIR --root-keys {out / KEY_SET_FILE} "
        f"--key {out / 'root-1.pem'} ..."
    )


@keys_app.command("show")
def keys_show(registry_data: RegistryData = Path(".corral/registry")) -> None:
    """Show the root in force: version, expiry, mode, and every role's key ids."""
    with _repository(registry_data) as repository:
        status = repository.status()
        md = repository.current_root()
        assert md is not None  # status() found it
        root = md.signed
        _say(f"root v{status.version}, expires {status.expires:%Y-%m-%d %H:%M} UTC")
        _say(f"TUF: {status.describe()}")
        for role_name, role in root.roles.items():
            for keyid in role.keyids:
                path = repository.key_path(keyid)
                where = f"registry: {path}" if path else "offline"
                _say(f"  {role_name:<9} {keyid}  ({where})")
            _say(f"  {role_name:<9} threshold {role.threshold} of {len(role.keyids)}")


@keys_app.command("sign-root")
def keys_sign_root(
    registry_data: RegistryData = Path(".corral/registry"),
    key: KeyFiles = None,
    root_keys: Annotated[
        Path | None,
        typer.Option(
            "--root-keys",
            help="root-keys.json from `keys init`: the root key set to install "
            "(default: the one beside the first --key when root is online or new).",
        ),
    ] = None,
    expires_days: ExpiresDays = 365,
) -> None:
    """Sign the next root with a threshold of offline keys (takes an online root offline)."""
    from datetime import timedelta

    from registry.keys import KEY_SET_FILE, RootKeySet, sign_root

    keys = key or []
    with _repository(registry_data) as repository:
        current = repository.current_root()
        if root_keys is None and keys:
            beside = keys[0].parent / KEY_SET_FILE
            online = current is None or bool(repository.root_signers(current.signed))
            if online and beside.exists():
                root_keys = beside
        key_set = RootKeySet.load(root_keys) if root_keys is not None else None
        if root_keys is not None:
            _say(f"root key set {root_keys}: threshold {key_set.threshold if key_set else '?'}")
        change = sign_root(
            repository, _load_keys(keys), key_set, expires=timedelta(days=expires_days)
        )
        _report(change, repository)


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[str, typer.Option("--role", help="root, targets, snapshot or timestamp.")],
    registry_data: RegistryData = Path(".corral/registry"),
    key: KeyFiles = None,
    revoke: Annotated[
        str | None, typer.Option("--revoke", help="--role root: the key id (or prefix) to revoke.")
    ] = None,
    new_key: Annotated[
        Path | None,
        typer.Option(
            "--new-key", help="--role root: the replacement key file (made if it does not exist)."
        ),
    ] = None,
    expires_days: ExpiresDays = 365,
) -> None:
    """Replace a root key or an online key; the new root is signed by old and new root keys."""
    from datetime import timedelta

    from registry.keys import generate_key_file, load_key_file, rotate_online_key, rotate_root_key

    expires = timedelta(days=expires_days)
    with _repository(registry_data) as repository:
        signers = _load_keys(key or [])
        if role != "root":
            if revoke is not None or new_key is not None:
                raise _fail("--revoke and --new-key are for --role root only")
            change = rotate_online_key(repository, signers, role, expires=expires)
        else:
            if revoke is None:
                raise _fail("--role root needs --revoke KEYID (see `corral keys show`)")
            replacement = None
            if new_key is not None:
                if new_key.exists():
                    replacement = load_key_file(new_key, _passphrase(str(new_key)))
                    _say(f"key {new_key}: {replacement.public_key.keyid[:12]} (the new key)")
                else:
                    replacement = generate_key_file(
                        new_key, _passphrase(f"the new key {new_key}", confirm=True)
                    )
                    _say(f"wrote {new_key}: root key {replacement.public_key.keyid[:12]}")
                signers.append(replacement)
            change = rotate_root_key(
                repository,
                signers,
                revoke,
                None if replacement is None else replacement.public_key,
                expires=expires,
            )
        _report(change, repository)
