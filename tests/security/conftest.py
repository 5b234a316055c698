"""Fixtures of the attack suite: the real registry, real agents, an attacker on the wire.

``registry`` (with ``database_url``: SQLite and PostgreSQL) and ``broker`` are
those of tests/registry/conftest.py; ``secured`` (a Mosquitto of the test's own,
configured only by the files ``registry.broker`` writes: password and ACL files,
the devices' listener and the registry's) is tests/registry/test_broker.py's.
``site`` adds what an attack needs around the registry:

- ``site.wire``: a man in the middle (:mod:`tests.security.wire`) between
  every agent of the site and the registry, doing nothing until a test says;
- ``site.agent()``: a device enrolled by the agent's own ``agent.enrol`` against
  the registry, whose updater (``agent.updater.Updater``: python-tuf ngclient,
  the agent's fetcher, ONNX Runtime smoke test, slots) reaches the registry
  through the wire;
- ``site.push(version)``: a real ONNX model and bundle pushed and signed;
  ``site.assign(agent, version)``: a rollout of that version to the device;
- ``device_clock`` (tests/agent/test_signed_time.py): set a device's clock wrong;
- ``registry_state(registry)``: every table row and every blob, to show that
  an attack changed nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from agent.config import AgentConfig
from agent.enrol import enrol
from agent.updater import Updater
from corral.bundle import Bundle
from corral.profiles import FirmwareProfile, HardwareFacts, load_profile
from corral.targets import bundle_target, file_target
from registry.tables import Base
from tests.agent.test_signed_time import device_clock  # noqa: F401
from tests.registry.conftest import RunningRegistry, broker, database_url, registry  # noqa: F401
from tests.registry.test_broker import secured  # noqa: F401
from tests.security.wire import Interceptor, intercept

ROOT = Path(__file__).resolve().parents[2]
MODEL_FILE = "model.onnx"
FACTS = HardwareFacts(arch="x86_64")


def profile() -> FirmwareProfile:
    """The firmware profile of every agent here: x86 without a GPU."""
    return load_profile(ROOT / "firmware-profiles" / "x86-cpu.toml")


#: Columns compared of the tables the registry's background engines move on their own
#: clock (rollout progress, alert evaluation, retention); a table missing here is
#: compared whole, one mapped to () is left out.
_ENGINE_OWNED: dict[str, tuple[str, ...]] = {
    "rollouts": ("id", "model", "version", "created_by", "environment", "plan"),
    "rollout_devices": ("id", "rollout_id", "device_id"),
    "rollout_log": (),
    "alerts": (),
    "policy_actions": (),
    "series_buckets": (),
    "folded_ranges": (),
}


def registry_state(running: RunningRegistry) -> dict[str, Any]:
    """Every row of every table, and every stored blob's digest, for before/after checks.

    Of the tables the registry's own engines change in the background (rollout
    stages and timeouts, alerts, retention) only what a request creates is kept.
    """
    state: dict[str, Any] = {}
    with running.context.sessions() as session:
        for table in Base.metadata.sorted_tables:
            kept = _ENGINE_OWNED.get(table.name)
            columns = list(table.columns) if kept is None else [table.c[c] for c in kept]
            if columns:
                rows = session.execute(select(*columns))
                state[table.name] = sorted(repr(tuple(row)) for row in rows)
    blobs = running.context.settings.data_dir / "blobs"
    state["blobs"] = sorted(
        (str(p.relative_to(blobs)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in blobs.rglob("*")
        if p.is_file()
    )
    return state


@dataclass
class Agent:
    """An enrolled device: its configuration (URLs on the wire), token and updater."""

    config: AgentConfig
    updater: Updater

    @property
    def id(self) -> str:
        return self.config.device_id

    @property
    def token(self) -> str:
        return self.config.device_token

    def snapshot(self) -> tuple[tuple[str, str] | None, bytes | None, list[str]]:
        """What runs, ``state.json`` as bytes and the slot folders: all an attack may not change."""
        state = self.config.data_dir / "state.json"
        models = self.config.data_dir / "models"
        return (
            self.updater.installed(),
            state.read_bytes() if state.exists() else None,
            sorted(p.name for p in models.iterdir()) if models.exists() else [],
        )

    def assert_still_runs(self, version: str) -> None:
        """The current slot is ``version``, intact, and its model still passes its smoke test."""
        assert self.updater.installed() == ("tiny", version)
        current = self.updater.current()
        assert current is not None
        current.verify()
        assert self.updater.load(current).smoke_test() <= 1e-4


@dataclass
class Site:
    """A registry, the agents enrolled with it, and the attacker between them."""

    registry: RunningRegistry
    wire: Interceptor
    root: Path
    models: dict[str, bytes]
    bundles: dict[str, Bundle] = field(default_factory=dict)
    agents: list[Agent] = field(default_factory=list)

    def push(self, version: str) -> Bundle:
        """Push ``tiny`` ``version`` (a real ONNX model with golden samples) and sign it."""
        from tests.agent.tuf_repo import make_bundle

        model = self.models[version]
        bundle = make_bundle("tiny", version, model)
        answer = self.registry.push(bundle.to_bytes(), {MODEL_FILE: model})
        assert answer.status_code == 201, answer.text
        self.bundles[version] = bundle
        return bundle

    def agent(self, name: str = "park", **updater_args: Any) -> Agent:
        """Enrol a new device with the agent's own enrolment; its updates go through the wire."""
        device_id = self.registry.unique_id(name)
        token = self.registry.admin.post("/api/v1/enrolment-tokens", json={}).json()["token"]
        data_dir = self.root / device_id
        config = enrol(self.registry.url, token, device_id, data_dir, FACTS, profile())
        config = dataclasses.replace(
            config,
            **{
                key: getattr(config, key).replace(self.registry.url, self.wire.url)
                for key in ("registry_url", "metadata_url", "targets_url")
            },
        )
        config.save()
        agent = Agent(config, Updater(config, profile(), **updater_args))
        self.agents.append(agent)
        return agent

    def assign(self, agent: Agent, version: str) -> None:
        """Roll ``tiny`` ``version`` out to ``agent`` (its desired version)."""
        body = {"model": "tiny", "version": version, "devices": [agent.id]}
        answer = self.registry.admin.post("/api/v1/rollouts", json=body)
        assert answer.status_code == 201, answer.text

    def target_path(self, version: str, file: str = MODEL_FILE) -> str:
        """The URL path, on the wire, of a pushed target (``.../{sha256}.{file}``)."""
        bundle = self.bundles[version]
        if file == "bundle.json":
            data = bundle.to_bytes()
            digest = hashlib.sha256(data).hexdigest()
            target = bundle_target("tiny", version)
        else:
            digest = bundle.model_file("fp32").sha256
            target = file_target("tiny", version, file)
        directory, _, name = target.rpartition("/")
        return f"/tuf/targets/{directory}/{digest}.{name}"

    def metadata(self, name: str) -> bytes:
        """The registry's signed metadata file ``name`` (``timestamp.json``, ``3.targets.json``)."""
        answer = self.registry.anon.get(f"/tuf/metadata/{name}")
        assert answer.status_code == 200, answer.text
        return answer.content

    def versions(self) -> dict[str, int]:
        """The newest timestamp, snapshot and targets versions the registry serves."""
        timestamp = json.loads(self.metadata("timestamp.json"))["signed"]
        snapshot_version = timestamp["meta"]["snapshot.json"]["version"]
        snapshot = json.loads(self.metadata(f"{snapshot_version}.snapshot.json"))["signed"]
        return {
            "timestamp": timestamp["version"],
            "snapshot": snapshot_version,
            "targets": snapshot["meta"]["targets.json"]["version"],
        }


@pytest.fixture(scope="session")
def models() -> dict[str, bytes]:
    """Real ONNX classifiers, one per version (tests/agent/tuf_repo.py's ``make_model``)."""
    from tests.agent.tuf_repo import make_model

    return {f"1.{i}.0": make_model(i + 1) for i in range(4)}


@pytest.fixture
def site(
    registry: RunningRegistry,  # noqa: F811 (the imported fixture, used as one)
    models: dict[str, bytes],
    tmp_path: Path,
) -> Iterator[Site]:
    """The registry, a man in the middle before it, and a folder for agents' data."""
    with intercept(registry.url) as wire:
        made = Site(registry, wire, tmp_path / "agents", models)
        try:
            yield made
        finally:
            for agent in made.agents:
                agent.updater.close()
