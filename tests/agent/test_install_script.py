"""scripts/install-agent.sh, run as a technician would, into a root-directory prefix.

A real wheel is built from this checkout, a real registry process hands out the
enrolment token, and the script installs, enrols and writes the systemd unit
under the prefix (systemd itself is not running here, so nothing is started);
then --uninstall takes it all away but the data, and --purge the data too.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.local import LocalFleet

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-agent.sh"
UNIT = ROOT / "deploy" / "systemd" / "corral-agent.service"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
        timeout=900,
        check=False,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return next(out.glob("corral-*.whl"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    with LocalFleet(tmp_path_factory.mktemp("registry")) as fleet:
        with socket.socket() as s:
            up = s.connect_ex(("127.0.0.1", 1883)) == 0
        fleet.start_broker("127.0.0.1:1883" if up else None)
        fleet.start_registry()
        yield fleet


def test_install_enrol_unit_then_uninstall_keeps_data_and_purge_removes_it(
    tmp_path: Path, wheel: Path, registry: LocalFleet
) -> None:
    prefix = tmp_path / "root"
    with registry.client() as client:
        token = client.create_enrolment_token(600)["token"]
    # The operator puts the release's wheel where the registry serves it.
    downloads = registry.data_dir / "registry" / "downloads"
    downloads.mkdir(exist_ok=True)
    shutil.copy(wheel, downloads / wheel.name)
    result = _run(
        "--registry", registry.registry_url,
        "--token", token,
        "--device-id", "gate-7",
        "--camera", "rtsp://cam.local/live#id=gate",
        "--prefix", str(prefix),
        "--python", sys.executable,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "enrolled gate-7" in result.stdout + result.stderr
    assert "downloading the agent wheel from" in result.stderr

    unit = (prefix / "etc/systemd/system/corral-agent.service").read_text()
    venv, data = prefix / "opt/corral/venv", prefix / "var/lib/corral"
    assert f"ExecStart={venv}/bin/corral agent run --data-dir {data}" in unit
    assert re.search(r"^Restart=on-failure$", unit, re.M) and re.search(
        r"^WatchdogSec=\d+$", unit, re.M
    )
    assert "@PREFIX@" not in unit
    env = prefix / "etc/corral/agent.env"
    assert "--camera rtsp://cam.local/live#id=gate" in env.read_text()
    assert env.stat().st_mode & 0o077 == 0, "the camera URLs may hold credentials"
    status = subprocess.run(
        [
            str(prefix / "opt/corral/venv/bin/corral"),
            "agent",
            "status",
            "--data-dir",
            str(prefix / "var/lib/corral"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert "gate-7" in status.stdout
    with registry.client() as client:
        assert "gate-7" in [d["device_id"] for d in client.devices()]

    removed = _run("--uninstall", "--prefix", str(prefix))
    assert removed.returncode == 0, removed.stderr
    assert not (prefix / "etc/systemd/system/corral-agent.service").exists()
    assert not (prefix / "opt/corral").exists() and not (prefix / "etc/corral").exists()
    assert (prefix / "var/lib/corral/agent.json").exists(), "uninstall keeps models and unsent data"
    purged = _run("--uninstall", "--purge", "--prefix", str(prefix))
    assert purged.returncode == 0 and not (prefix / "var/lib/corral").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token", "t"], "--registry URL is required"),
        (["--registry", "http://r"], "--token TOKEN is required"),
        (["--registry", "http://r", "--token", "t", "--bogus"], "unknown option --bogus"),
    ],
    ids=["no-registry", "no-token", "unknown-option"],
)
def test_bad_arguments_are_refused_and_nothing_is_written(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = _run(*args, "--prefix", str(tmp_path / "root"))
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "root").exists()


def test_the_unit_in_deploy_is_the_one_the_script_installs() -> None:
    script = SCRIPT.read_text()
    embedded = script.split("<<'UNIT' >\"$UNIT\"\n", 1)[1].split("\nUNIT\n", 1)[0]
    assert embedded == UNIT.read_text().rstrip("\n")


def test_corral_agent_install_is_the_same_script(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "corral.cli", "agent", "install", "--token", "t"],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 2
    assert "--registry URL is required" in result.stderr


def test_without_a_wheel_on_the_registry_the_install_stops_before_enrolling(
    tmp_path: Path, registry: LocalFleet
) -> None:
    result = _run(
        "--registry", registry.registry_url + "/nowhere",
        "--token", "unused",
        "--prefix", str(tmp_path / "root"),
        "--python", sys.executable,
    )  # fmt: skip
    assert result.returncode == 2
    assert "cannot download the agent wheel" in result.stderr
    assert "enrolling" not in result.stderr
    assert not (tmp_path / "root" / "var/lib/corral/agent.json").exists()
