"""Attacks on what an agent installs, each refused by the agent's real updater.

The registry is the real one (uvicorn, SQLite: nothing here depends on the
database's dialect), signing with python-tuf's Metadata API. The attacker sits
on the wire between the agent and the registry (:mod:`tests.security.wire`),
sees every answer and may replace any of them; in one case they also hold a
copy of the registry's online targets key. The agent is ``agent.updater.Updater``
as a park computer runs it: the root pinned at enrolment, the registry's signed
time, python-tuf's ngclient, the resumable fetcher, ONNX Runtime's smoke test.

Every case starts from the same place (``running``): ``tiny`` 1.0.0 and 1.1.0
were installed through the honest wire, 1.1.0 runs, 1.2.0 is pushed and
assigned. Each test then asserts three things: the install is refused with the
error that names the attack, the agent still runs 1.1.0 (same ``state.json``,
same slots, the model still passes its smoke test), and the registry's tables
and blobs are exactly as before. Where it costs one more install, the test also
shows the refusal came from the attack: once the wire is honest again, the same
install succeeds.

Cases elsewhere, not repeated here: a blob tampered *in the registry's store*
(tests/registry/test_tuf.py, tests/e2e/test_loop.py), a forged or replayed
signed time (tests/agent/test_signed_time.py), a bundle signed under another
version's name and a bundle that disagrees with its signed file
(tests/agent/test_updater.py), rotated-out keys (tests/registry/test_keys.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile

import registry.signing
from agent.errors import UpdateError, VerificationError
from agent.updater import Updater
from corral.targets import bundle_target
from registry.keyring import KeyRing
from tests.agent.test_signed_time import Clock
from tests.security.conftest import MODEL_FILE, Agent, Site, profile, registry_state
from tests.security.wire import ENDLESS_CAP

ONE_YEAR = timedelta(days=365)
#: What loopback socket buffers may hold once the agent stops reading; the cap is 256 MiB.
SOCKET_SLACK = 16 * 1024 * 1024


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the metadata and blobs an agent sees do not depend on the database."""
    return f"sqlite:///{tmp_path / 'registry.db'}"


class Running:
    """The starting point of every case: 1.1.0 runs, 1.2.0 is assigned."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self.agent = site.agent()
        for version in ("1.0.0", "1.1.0"):
            site.push(version)
            site.assign(self.agent, version)
            self.agent.updater.install("tiny", version)
            if version == "1.0.0":
                #: The timestamp the agent saw at its first install, recorded off the wire.
                self.first_timestamp = site.wire.recorded["/tuf/metadata/timestamp.json"]
        site.push("1.2.0")
        site.assign(self.agent, "1.2.0")
        self.before_agent = self.agent.snapshot()
        self.before_registry = registry_state(site.registry)

    def refused(self, agent: Agent | None = None) -> VerificationError:
        """Install 1.2.0, expecting a refusal; check nothing changed on either side."""
        agent = agent or self.agent
        with pytest.raises(UpdateError) as caught:
            agent.updater.install("tiny", "1.2.0")
        self.assert_unharmed(agent)
        assert isinstance(caught.value, VerificationError), caught.value
        assert "current model keeps running" in str(caught.value)
        return caught.value

    def assert_unharmed(self, agent: Agent | None = None) -> None:
        agent = agent or self.agent
        assert agent.snapshot() == self.before_agent
        agent.assert_still_runs("1.1.0")
        assert registry_state(self.site.registry) == self.before_registry

    def honest_install(self) -> None:
        """With the wire honest again, 1.2.0 installs: the attack was the only obstacle."""
        self.site.wire.clear()
        assert self.agent.updater.install("tiny", "1.2.0").version == "1.2.0"


@pytest.fixture
def running(site: Site) -> Running:
    return Running(site)


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def swap_labels(data: bytes) -> bytes:
    """bundle.json telling the agent that cats are dogs: same length, other bytes."""
    swapped = (
        data.replace(b'"cat"', b'"tmp"').replace(b'"dog"', b'"cat"').replace(b'"tmp"', b'"dog"')
    )
    assert swapped != data and len(swapped) == len(data)
    return swapped


def resign(document: bytes, signer: Signer, edit: Callable[[Any], None] | None = None) -> bytes:
    """``document`` with ``edit`` applied to its signed part, signed by ``signer`` alone."""
    md = Metadata.from_bytes(document)
    if edit is not None:
        edit(md.signed)
    md.signatures.clear()
    md.sign(signer)
    return md.to_bytes()


# --- tampering -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "tamper"),
    [
        pytest.param(MODEL_FILE, flip_last_byte, id="model-file-one-byte"),
        pytest.param("bundle.json", swap_labels, id="bundle-json-labels-swapped"),
    ],
)
def test_a_tampered_file_is_refused(
    running: Running, file: str, tamper: Callable[[bytes], bytes]
) -> None:
    running.site.wire.rewrite[running.site.target_path("1.2.0", file)] = tamper

    error = running.refused()

    assert isinstance(error.__cause__, tuf_errors.LengthOrHashMismatchError)
    assert "tampered" in str(error)
    running.honest_install()


# --- keys the device's root does not trust ---------------------------------------------


def test_a_bundle_signed_by_an_unknown_key_is_refused(running: Running) -> None:
    site = running.site
    attacker = CryptoSigner.generate_ed25519()
    evil_model = site.models["1.3.0"]
    from tests.agent.tuf_repo import make_bundle

    evil = make_bundle("tiny", "1.2.0", evil_model).to_bytes()
    evil_bundle = TargetFile.from_data(bundle_target("tiny", "1.2.0"), evil, ["sha256"])
    targets_name = f"{site.versions()['targets']}.targets.json"

    def list_evil_bundle(signed: Any) -> None:
        signed.targets[evil_bundle.path] = evil_bundle

    site.wire.replace[f"/tuf/metadata/{targets_name}"] = resign(
        site.metadata(targets_name), attacker, list_evil_bundle
    )
    digest = evil_bundle.hashes["sha256"]
    site.wire.replace[f"/tuf/targets/models/tiny/1.2.0/{digest}.bundle.json"] = evil

    error = running.refused()

    assert isinstance(error.__cause__, tuf_errors.UnsignedMetadataError)
    assert "not signed by the keys this device trusts" in str(error)
    assert not any(digest in path for path in site.wire.paths)
    running.honest_install()


@pytest.mark.parametrize("role", ["timestamp", "snapshot"])
def test_metadata_signed_by_another_repositorys_key_is_refused(running: Running, role: str) -> None:
    site = running.site
    versions = site.versions()
    name = "timestamp.json" if role == "timestamp" else f"{versions[role]}.{role}.json"
    # Another repository's key (not one this device's root names) over the same content.
    site.wire.replace[f"/tuf/metadata/{name}"] = resign(
        site.metadata(name), CryptoSigner.generate_ed25519()
    )

    error = running.refused()

    assert isinstance(error.__cause__, tuf_errors.UnsignedMetadataError)
    running.honest_install()


def test_a_holder_of_the_online_targets_key_cannot_make_an_agent_write_outside_its_folder(
    running: Running, tmp_path: Path
) -> None:
    # The worst case for a file name: the attacker copied the registry's keys directory,
    # so the targets metadata they serve is validly signed, and lists a bundle.json
    # whose file name climbs out of the slot.
    site = running.site
    targets_key = KeyRing(site.registry.context.tuf.keys_dir).named("targets")
    assert targets_key is not None
    document = json.loads(running.site.bundles["1.2.0"].to_bytes())
    document["files"][0]["name"] = "../../../../evil.onnx"
    evil = json.dumps(document).encode()
    evil_bundle = TargetFile.from_data(bundle_target("tiny", "1.2.0"), evil, ["sha256"])
    targets_name = f"{site.versions()['targets']}.targets.json"

    def list_evil_bundle(signed: Any) -> None:
        signed.targets[evil_bundle.path] = evil_bundle

    site.wire.replace[f"/tuf/metadata/{targets_name}"] = resign(
        site.metadata(targets_name), targets_key, list_evil_bundle
    )
    digest = evil_bundle.hashes["sha256"]
    site.wire.replace[f"/tuf/targets/models/tiny/1.2.0/{digest}.bundle.json"] = evil

    error = running.refused()

    assert "is not a plain file name" in str(error)
    assert [p for p in tmp_path.rglob("evil.onnx")] == []


def test_a_bundle_whose_file_name_climbs_out_is_refused_at_push(running: Running) -> None:
    site = running.site
    document = json.loads(site.bundles["1.2.0"].to_bytes())
    document["version"] = "1.3.0"
    document["files"][0]["name"] = "../evil.onnx"
    answer = site.registry.push(json.dumps(document).encode(), {"../evil.onnx": b"x"})

    assert answer.status_code == 422
    assert "is not a plain file name" in answer.json()["detail"]
    running.assert_unharmed()


# --- rollback, mix-and-match, freeze ----------------------------------------------------


def test_an_old_timestamp_replayed_is_refused_as_rollback(running: Running) -> None:
    site = running.site
    # Genuine and unexpired, but older than the one the agent saw when it installed 1.1.0.
    old = running.first_timestamp
    cached = running.agent.config.tuf_metadata_dir / "timestamp.json"
    assert (
        Metadata.from_bytes(old).signed.version
        < Metadata.from_bytes(cached.read_bytes()).signed.version
    )
    site.wire.replace["/tuf/metadata/timestamp.json"] = old

    error = running.refused()

    assert isinstance(error.__cause__, tuf_errors.BadVersionNumberError)
    assert "rollback" in str(error)
    running.honest_install()


@pytest.mark.parametrize("role", ["snapshot", "targets"])
def test_old_metadata_mixed_with_new_is_refused(running: Running, role: str) -> None:
    site = running.site
    newest = site.versions()[role]
    # Genuine, unexpired, one version older, served under the name of the newest: the
    # agent would see 1.2.0 missing (targets) or an older targets version (snapshot).
    older = site.metadata(f"{newest - 1}.{role}.json")
    site.wire.replace[f"/tuf/metadata/{newest}.{role}.json"] = older

    error = running.refused()

    assert isinstance(error.__cause__, tuf_errors.BadVersionNumberError)
    assert re.search(rf"Expected {role} v(ersion )?{newest}, got v?{newest - 1}", str(error))
    running.honest_install()


def later(monkeypatch: pytest.MonkeyPatch, by: timedelta) -> None:
    """The registry's clock ``by`` ahead from now on: what it signs and the time it serves."""
    real = registry.signing.utcnow
    monkeypatch.setattr(registry.signing, "utcnow", lambda: real() + by)


def test_an_expired_timestamp_replayed_is_refused_as_a_freeze(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = running.site
    # Recorded when it was fresh (it lists 1.2.0); two days later it has expired, the
    # registry has signed newer ones, and the attacker hides those.
    recorded = site.metadata("timestamp.json")
    later(monkeypatch, timedelta(days=2))
    assert site.registry.context.tuf.refresh() is True
    running.before_registry = registry_state(site.registry)
    site.wire.replace["/tuf/metadata/timestamp.json"] = recorded

    error = running.refused()

    assert isinstance(error.__cause__, tuf_errors.ExpiredMetadataError)
    assert "freeze" in str(error)
    running.honest_install()


def test_the_same_freeze_is_refused_by_a_device_whose_clock_is_a_year_behind(
    running: Running, monkeypatch: pytest.MonkeyPatch, device_clock: Clock
) -> None:
    site = running.site
    recorded = site.metadata("timestamp.json")
    later(monkeypatch, timedelta(days=2))
    assert site.registry.context.tuf.refresh() is True
    running.before_registry = registry_state(site.registry)
    site.wire.replace["/tuf/metadata/timestamp.json"] = recorded
    behind = Agent(
        running.agent.config,
        Updater(running.agent.config, profile(), clock=device_clock(-ONE_YEAR)),
    )
    try:
        error = running.refused(behind)
    finally:
        behind.updater.close()

    assert isinstance(error.__cause__, tuf_errors.ExpiredMetadataError)
    assert behind.updater.clock_skew is not None
    assert abs(behind.updater.clock_skew + ONE_YEAR + timedelta(days=2)) < timedelta(minutes=5)


def test_control_without_signed_time_a_clock_a_year_behind_accepts_the_freeze(
    running: Running, monkeypatch: pytest.MonkeyPatch, device_clock: Clock
) -> None:
    """What the previous test guards against: plain TUF judges expiry by the device clock."""
    site = running.site
    recorded = site.metadata("timestamp.json")
    later(monkeypatch, timedelta(days=2))
    assert site.registry.context.tuf.refresh() is True
    site.wire.replace["/tuf/metadata/timestamp.json"] = recorded
    plain = Updater(
        running.agent.config, profile(), clock=device_clock(-ONE_YEAR), signed_time=False
    )
    try:
        assert plain.install("tiny", "1.2.0").version == "1.2.0"
    finally:
        plain.close()


# --- endless data -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "which",
    [
        pytest.param("model", id="model-file"),
        pytest.param("bundle", id="bundle-json"),
        pytest.param("timestamp", id="timestamp-json"),
    ],
)
def test_endless_data_is_cut_off_at_the_signed_length(running: Running, which: str) -> None:
    site = running.site
    path = {
        "model": site.target_path("1.2.0"),
        "bundle": site.target_path("1.2.0", "bundle.json"),
        "timestamp": "/tuf/metadata/timestamp.json",
    }[which]
    site.wire.endless.add(path)

    error = running.refused()

    assert isinstance(error.__cause__, tuf_errors.DownloadLengthMismatchError)
    assert 0 < site.wire.sent[path] < SOCKET_SLACK < ENDLESS_CAP
    assert not list((running.agent.config.downloads_dir).glob("*.part"))
    running.honest_install()


def test_a_device_running_nothing_yet_is_refused_just_the_same(site: Site) -> None:
    """A first install has no previous model to fall back on: nothing may be installed."""
    for version in ("1.0.0", "1.1.0"):
        site.push(version)
    agent = site.agent("fresh")
    site.assign(agent, "1.1.0")
    site.wire.rewrite[site.target_path("1.1.0")] = flip_last_byte
    before = registry_state(site.registry)

    with pytest.raises(VerificationError):
        agent.updater.install("tiny", "1.1.0")

    assert agent.snapshot() == (None, None, [])
    assert registry_state(site.registry) == before
