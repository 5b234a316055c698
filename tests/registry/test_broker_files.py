"""The broker's files as ``registry.broker`` writes them, and the command that writes them.

The real broker reading them is tests/registry/test_broker.py (two listeners);
here: the hash against ``mosquitto_passwd``'s own, who is in the password files
and who is left out, the listeners ``corral.conf`` declares, refusals of an
unsafe registry account or listener, the credential a device enrolled before
broker credentials gets, ``corral registry broker-files``, and the one-listener
fragment of before on a real Mosquitto.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from registry.broker import (
    DEFAULT_REGISTRY_USER,
    Listener,
    check_password,
    conf_file,
    hash_password,
    write_broker_files,
)
from registry.cli import app as registry_cli
from registry.errors import ConfigError
from registry.tables import Device
from tests.registry.mosquitto import Client, Mosquitto, free_port

SERVICE_PASSWORD = secrets.token_urlsafe(24)


@dataclass
class Login:
    """An enrolled device's broker login."""

    id: str
    token: str


def enrol(registry: Any, name: str) -> Login:
    device_id = registry.unique_id(name)
    return Login(device_id, registry.enrol(device_id)["device_token"])


def test_the_password_hash_is_the_one_mosquitto_passwd_writes(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("NO mosquitto_passwd: cross-check SKIPPED; apt-get install mosquitto")
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run([tool, "-b", str(passwd), "cam-1", "s3cret token"], check=True)
    user, _, theirs = passwd.read_text().strip().partition(":")

    assert user == "cam-1"
    assert check_password(theirs, "s3cret token")
    assert not check_password(theirs, "s3cret token!")
    ours = hash_password("s3cret token")
    assert ours.split("$")[:3] == theirs.split("$")[:3]  # '', '7', '101': format and rounds
    assert check_password(ours, "s3cret token")


def test_the_password_file_holds_active_devices_with_credentials_only(registry: Any) -> None:
    active, revoked, old = enrol(registry, "a"), enrol(registry, "r"), enrol(registry, "o")
    assert registry.admin.post(f"/api/v1/devices/{revoked.id}/revoke").status_code == 200
    with registry.context.sessions() as session:
        row = session.get(Device, old.id)
        row.mqtt_password_hash = None  # as if enrolled before broker credentials
        session.commit()
        written = write_broker_files(
            session, registry.context.settings.data_dir / "broker", "svc_account", "x" * 16
        )

    assert written.devices == [active.id]
    assert written.revoked == [revoked.id]
    assert written.without_credential == [old.id]
    lines = dict(line.split(":", 1) for line in written.password_path.read_text().splitlines())
    assert set(lines) == {"svc_account", active.id}
    assert check_password(lines[active.id], active.token)
    assert "user svc_account" in written.acl_path.read_text()
    assert written.password_path.stat().st_mode & 0o777 == 0o640


def test_a_device_enrolled_before_broker_credentials_gets_one_at_its_next_call(
    registry: Any,
) -> None:
    old = enrol(registry, "o")
    with registry.context.sessions() as session:
        session.get(Device, old.id).mqtt_password_hash = None
        session.commit()
    with registry.client(old.token) as device:
        assert device.get(f"/api/v1/devices/{old.id}/desired").status_code == 200
    with registry.context.sessions() as session:
        encoded = session.get(Device, old.id).mqtt_password_hash
    assert encoded is not None
    assert check_password(encoded, old.token)


@pytest.mark.parametrize(
    ("user", "password", "message"),
    [
        pytest.param("cam-1", "x" * 16, "could be a device id", id="user-like-a-device-id"),
        pytest.param("bad user", "x" * 16, "could be a device id", id="user-with-space"),
        pytest.param(DEFAULT_REGISTRY_USER, "short", "shorter than 16", id="short-password"),
    ],
)
def test_an_unsafe_registry_account_is_refused(
    tmp_path: Path, database_url: str, user: str, password: str, message: str
) -> None:
    from registry.core.db import make_engine, make_session_factory, migrate

    engine = make_engine(database_url)
    migrate(engine)
    try:
        with make_session_factory(engine)() as session, pytest.raises(ConfigError, match=message):
            write_broker_files(session, tmp_path / "out", user, password)
    finally:
        engine.dispose()
    assert not (tmp_path / "out" / "passwd").exists()


def _broker_files_command(
    registry: Any, tmp_path: Path
) -> tuple[dict[str, str | None], list[str], Path]:
    """``corral registry broker-files``: environment, arguments and output folder."""
    settings = registry.context.settings
    env: dict[str, str | None] = {
        "CORRAL_DATABASE_URL": settings.sqlalchemy_url,
        "CORRAL_MQTT_PASSWORD": SERVICE_PASSWORD,
        "COLUMNS": "300",
    }
    out = tmp_path / "broker"
    args = ["broker-files", "--out", str(out), "--data-dir", str(settings.data_dir)]
    return env, args, out


def test_broker_files_command_writes_the_files_and_says_who_was_left_out(
    registry: Any, tmp_path: Path
) -> None:
    a, r = enrol(registry, "a"), enrol(registry, "r")
    assert registry.admin.post(f"/api/v1/devices/{r.id}/revoke").status_code == 200
    env, args, out = _broker_files_command(registry, tmp_path)
    result = CliRunner(env=env).invoke(registry_cli, args)

    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'passwd'}: 1 device(s) and {DEFAULT_REGISTRY_USER}" in result.output
    assert f"left out, revoked: {r.id}" in result.output
    assert "kill -HUP" in result.output
    assert a.id in (out / "passwd").read_text()
    conf = (out / "corral.conf").read_text()
    assert f"acl_file {(out / 'acl').resolve()}" in conf
    assert "max_queued_messages 200000" in conf, "Mosquitto's 1,000 would drop acked reports"

    refused = CliRunner(env={**env, "CORRAL_MQTT_PASSWORD": None}).invoke(registry_cli, args)
    assert refused.exit_code == 2
    assert "CORRAL_MQTT_PASSWORD is not set" in refused.output


def _blocks(conf: str) -> list[list[str]]:
    """``corral.conf``'s settings, cut at each ``listener`` line; comments left out."""
    blocks: list[list[str]] = [[]]
    for line in conf.splitlines():
        if line.startswith("listener "):
            blocks.append([])
        if line and not line.startswith("#"):
            blocks[-1].append(line)
    return blocks


def test_with_two_listeners_each_has_its_own_accounts_and_only_devices_get_fixed_ids(
    registry: Any, tmp_path: Path
) -> None:
    a = enrol(registry, "a")
    out = tmp_path / "broker"
    with registry.context.sessions() as session:
        written = write_broker_files(
            session,
            out,
            "svc_account",
            "x" * 16,
            devices=Listener(8883, certfile=Path("b.pem"), keyfile=Path("b.key")),
            registry=Listener(1884, "10.0.0.5"),
        )

    assert written.registry_password_path == out / "registry-passwd"
    assert [line.split(":")[0] for line in written.password_path.read_text().splitlines()] == [a.id]
    assert [
        line.split(":")[0] for line in written.registry_password_path.read_text().splitlines()
    ] == ["svc_account"]
    assert written.registry_password_path.stat().st_mode & 0o777 == 0o640
    out = out.resolve()
    common, devices, registry_listener = _blocks(written.conf_path.read_text())
    assert common == [
        "per_listener_settings true",
        "max_queued_messages 200000",
        "max_queued_bytes 268435456",
    ]
    assert devices == [
        "listener 8883",
        f"certfile {Path('b.pem').resolve()}",
        f"keyfile {Path('b.key').resolve()}",
        "tls_version tlsv1.2",
        "allow_anonymous false",
        f"password_file {out / 'passwd'}",
        f"acl_file {out / 'acl'}",
        "use_username_as_clientid true",
    ]
    assert registry_listener == [
        "listener 1884 10.0.0.5",
        "allow_anonymous false",
        f"password_file {out / 'registry-passwd'}",
        f"acl_file {out / 'acl'}",
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda: Listener(0), "1..65535", id="port-0"),
        pytest.param(lambda: Listener.parse("example:http"), "PORT or ADDRESS:PORT", id="no-port"),
        pytest.param(lambda: Listener.parse("::1:1884"), r"\[ADDRESS\]:PORT", id="bare-ipv6"),
        pytest.param(lambda: Listener(1883, "a b"), "host name or an IP", id="address-space"),
        pytest.param(
            lambda: Listener(8883, certfile=Path("b.pem")), "certificate and its key", id="no-key"
        ),
        pytest.param(
            lambda: Listener(1883, cafile=Path("ca.pem")), "without the broker's", id="ca-plain"
        ),
        pytest.param(
            lambda: Listener(
                8883, certfile=Path("b.pem"), keyfile=Path("b.key"), require_certificate=True
            ),
            "needs the CA",
            id="mutual-without-ca",
        ),
        pytest.param(
            lambda: conf_file(Path("out"), Listener(8883)), "give both listeners", id="one-only"
        ),
        pytest.param(
            lambda: conf_file(Path("out"), Listener(1883), Listener(1883, "127.0.0.1")),
            "both on port 1883",
            id="same-port",
        ),
    ],
)
def test_listeners_that_cannot_work_are_refused(make: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param("8883", Listener(8883), id="port"),
        pytest.param("10.0.0.5:1884", Listener(1884, "10.0.0.5"), id="ipv4"),
        pytest.param("[::1]:1884", Listener(1884, "::1"), id="ipv6"),
        pytest.param("broker.internal:1884", Listener(1884, "broker.internal"), id="name"),
    ],
)
def test_a_listener_is_port_or_address_and_port(spec: str, expected: Listener) -> None:
    assert Listener.parse(spec) == expected


def test_broker_files_command_declares_the_two_listeners(registry: Any, tmp_path: Path) -> None:
    enrol(registry, "a")
    env, args, out = _broker_files_command(registry, tmp_path)
    listeners = ["--devices-listener", "8883", "--registry-listener", "127.0.0.1:1884"]
    tls = ["--tls-certfile", "b.pem", "--tls-keyfile", "b.key"]
    result = CliRunner(env=env).invoke(registry_cli, args + listeners + tls)

    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'passwd'}: 1 device(s)\n" in result.output
    assert f"wrote {out / 'registry-passwd'}: {DEFAULT_REGISTRY_USER}" in result.output
    assert "agents *:8883 TLS (client id = device id), registry 127.0.0.1:1884" in result.output
    conf = (out / "corral.conf").read_text()
    assert "use_username_as_clientid true" in conf
    assert "listener 1884 127.0.0.1" in conf

    refused = {
        "tls-without-listeners": args + tls,
        "one-listener": [*args, "--devices-listener", "8883"],
        "bad-port": [*args, "--devices-listener", "88830", "--registry-listener", "1884"],
    }
    for name, bad in refused.items():
        answer = CliRunner(env=env).invoke(registry_cli, bad)
        assert answer.exit_code == 2, (name, answer.output)
        assert "error:" in answer.output, name


def test_one_listener_for_all_still_lets_devices_and_the_registry_in(
    registry: Any, tmp_path: Path
) -> None:
    a = enrol(registry, "a")
    out = tmp_path / "broker"
    with registry.context.sessions() as session:
        write_broker_files(session, out, DEFAULT_REGISTRY_USER, SERVICE_PASSWORD)
    broker = Mosquitto.start(out, free_port())  # and a listener of the operator's
    clients = [
        Client(broker.port, a.id, a.token),
        Client(broker.port, DEFAULT_REGISTRY_USER, SERVICE_PASSWORD),
        Client(broker.port, a.id, "not the token"),
    ]
    try:
        assert [c.connect() for c in clients] == ["Success", "Success", "Not authorized"]
    finally:
        for client in clients:
            client.close()
        broker.stop()
