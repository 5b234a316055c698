"""agent.json: round trip, permissions, atomic writes, and refusals that say what to do."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from agent.config import AgentConfig, default_profiles_dir, write_file_atomic
from agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def sample(data_dir: Path, **changes: object) -> AgentConfig:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "device_id": "park-1",
        "device_token": "secret",
        "registry_url": "http://registry:8000",
        "mqtt_host": "broker",
        "mqtt_port": 1883,
        "metadata_url": "http://registry:8000/tuf/metadata/",
        "targets_url": "http://registry:8000/tuf/targets/",
    }
    values.update(changes)
    return AgentConfig(**values)  # type: ignore[arg-type]


def test_save_and_load_round_trip_with_mode_0600(tmp_path: Path) -> None:
    config = sample(tmp_path, profile="x86-cpu", report_interval_s=2.5)
    config.save()

    assert stat.S_IMODE((tmp_path / "agent.json").stat().st_mode) == 0o600
    loaded = AgentConfig.load(tmp_path)
    assert loaded == config
    assert loaded.poll_interval_s == 30.0
    assert loaded.tuf_metadata_dir == tmp_path / "tuf" / "metadata"
    assert [p.name for p in tmp_path.iterdir()] == ["agent.json"]  # no temp file left


def test_profiles_dir_defaults_to_the_repository_and_env_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CORRAL_PROFILES", raising=False)
    assert default_profiles_dir() == ROOT / "firmware-profiles"
    assert sample(tmp_path).resolved_profiles_dir == ROOT / "firmware-profiles"
    monkeypatch.setenv("CORRAL_PROFILES", str(tmp_path / "p"))
    assert sample(tmp_path).resolved_profiles_dir == tmp_path / "p"
    assert sample(tmp_path, profiles_dir=tmp_path / "q").resolved_profiles_dir == tmp_path / "q"


def test_a_missing_file_tells_to_enrol(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="corral agent enrol"):
        AgentConfig.load(tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "blue"}, "unknown keys"),
        ({"device_token": None}, "wrong type"),
        ({"mqtt_port": "1883"}, "wrong type"),
        ({"mqtt_port": True}, "wrong type"),
        ({"mqtt_port": 70000}, "mqtt_port"),
        ({"poll_interval_s": 0}, "poll_interval_s"),
        ({"metadata_url": "ftp://x/"}, "metadata_url"),
    ],
    ids=["unknown-key", "null-token", "port-string", "port-bool", "port-range", "zero-poll", "ftp"],
)
def test_bad_files_are_refused(tmp_path: Path, change: dict[str, object], message: str) -> None:
    data = sample(tmp_path).to_dict() | change
    (tmp_path / "agent.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message):
        AgentConfig.load(tmp_path)


def test_missing_keys_are_refused_with_the_enrol_hint(tmp_path: Path) -> None:
    data = sample(tmp_path).to_dict()
    del data["device_token"]
    (tmp_path / "agent.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"lacks \['device_token'\].*corral agent enrol"):
        AgentConfig.load(tmp_path)


def test_not_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "agent.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        AgentConfig.load(tmp_path)


def test_write_file_atomic_replaces_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    write_file_atomic(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
