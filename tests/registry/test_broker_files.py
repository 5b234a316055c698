"""The broker's files as ``registry.broker`` writes them, and the command that writes them.

The real broker reading them is tests/registry/test_broker.py; here: the hash
against ``mosquitto_passwd``'s own, who is in the password file and who is
left out, refusals of an unsafe registry account, the credential a device
enrolled before broker credentials gets, and ``corral registry broker-files``.
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
    check_password,
    hash_password,
    write_broker_files,
)
from registry.cli import app as registry_cli
from registry.errors import ConfigError
from registry.tables import Device

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


def test_broker_files_command_writes_the_files_and_says_who_was_left_out(
    registry: Any, tmp_path: Path
) -> None:
    a, r = enrol(registry, "a"), enrol(registry, "r")
    assert registry.admin.post(f"/api/v1/devices/{r.id}/revoke").status_code == 200
    settings = registry.context.settings
    env = {
        "CORRAL_DATABASE_URL": settings.sqlalchemy_url,
        "CORRAL_MQTT_PASSWORD": SERVICE_PASSWORD,
        "COLUMNS": "300",
    }
    out = tmp_path / "broker"
    args = ["broker-files", "--out", str(out), "--data-dir", str(settings.data_dir)]
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
