"""Expiry judged by the registry's signed time, whatever the device clock says.

The device clock is set wrong where ngclient reads it (``TrustedMetadataSet``)
and where the agent does (the ``clock`` argument), so a test passes only if the
signed time is what decided. Each case has its control: the same clock without
signed time, to show the failure the signed time prevents.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import Updater as TufUpdater
from tuf.ngclient._internal import trusted_metadata_set

from agent.errors import VerificationError
from agent.updater import Updater, time_url
from corral.profiles import FirmwareProfile, load_profile
from corral.signedtime import SignedTime, SignedTimeError, sign_time
from tests.agent.test_updater import PROFILES
from tests.agent.tuf_repo import (
    MODEL_FILE,
    TOKEN,
    TufRepo,
    enrolled,
    make_bundle,
    make_model,
    publish_bundle,
    serve_repo,
)

YEARS_3 = timedelta(days=3 * 365)
Clock = Callable[[timedelta], Callable[[], datetime]]


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    return {"1.0.0": make_model(1), "1.1.0": make_model(2)}


@pytest.fixture
def repo(models: dict[str, bytes]) -> TufRepo:
    repo = TufRepo()
    repo.required_token = TOKEN
    for version, model in models.items():
        publish_bundle(repo, make_bundle("tiny", version, model), {MODEL_FILE: model})
    return repo


@pytest.fixture
def url(repo: TufRepo) -> Iterator[str]:
    with serve_repo(repo) as base:
        yield base


@pytest.fixture
def profile() -> FirmwareProfile:
    return load_profile(PROFILES / "x86-cpu.toml")


@pytest.fixture
def device_clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """Set this device's clock ``offset`` off, for ngclient and for the agent."""

    def set_offset(offset: timedelta) -> Callable[[], datetime]:
        def now(tz: Any = None) -> datetime:
            return datetime.now(tz) + offset

        module = SimpleNamespace(
            datetime=SimpleNamespace(now=now), timezone=SimpleNamespace(utc=UTC)
        )
        monkeypatch.setattr(trusted_metadata_set, "datetime", module)
        return lambda: now(UTC)

    return set_offset


@pytest.fixture
def make_updater(
    tmp_path: Path, repo: TufRepo, url: str, profile: FirmwareProfile
) -> Iterator[Callable[..., Updater]]:
    made: list[Updater] = []

    def make(**kwargs: Any) -> Updater:
        updater = Updater(enrolled(tmp_path, repo, url), profile, **kwargs)
        made.append(updater)
        return updater

    yield make
    for updater in made:
        updater.close()


def test_a_clock_three_years_fast_still_updates(
    make_updater: Callable[..., Updater], device_clock: Clock
) -> None:
    updater = make_updater(clock=device_clock(YEARS_3))

    result = updater.install("tiny", "1.0.0")

    assert result.version == "1.0.0"
    assert updater.clock_skew is not None
    assert abs(updater.clock_skew - YEARS_3) < timedelta(minutes=1)


def test_control_a_clock_three_years_fast_locks_plain_tuf_out(
    make_updater: Callable[..., Updater], device_clock: Clock
) -> None:
    updater = make_updater(clock=device_clock(YEARS_3), signed_time=False)

    with pytest.raises(VerificationError) as caught:
        updater.install("tiny", "1.0.0")

    assert isinstance(caught.value.__cause__, tuf_errors.ExpiredMetadataError)


def test_a_clock_three_years_slow_refuses_metadata_that_really_expired(
    make_updater: Callable[..., Updater], repo: TufRepo, device_clock: Clock
) -> None:
    updater = make_updater(clock=device_clock(-YEARS_3))
    updater.install("tiny", "1.0.0")
    # A freeze: the timestamp served expired an hour ago (by the registry's clock).
    repo.publish(timestamp_expires=datetime.now(UTC) - timedelta(hours=1))

    with pytest.raises(VerificationError) as caught:
        updater.install("tiny", "1.1.0")

    assert isinstance(caught.value.__cause__, tuf_errors.ExpiredMetadataError)
    assert "freeze" in str(caught.value)
    assert updater.installed() == ("tiny", "1.0.0")


def test_control_a_clock_three_years_slow_lets_plain_tuf_accept_a_freeze(
    make_updater: Callable[..., Updater], repo: TufRepo, device_clock: Clock
) -> None:
    updater = make_updater(clock=device_clock(-YEARS_3), signed_time=False)
    repo.publish(timestamp_expires=datetime.now(UTC) - timedelta(hours=1))

    assert updater.install("tiny", "1.1.0").version == "1.1.0"


def test_a_forged_time_is_refused_with_a_clear_error(
    make_updater: Callable[..., Updater], repo: TufRepo
) -> None:
    updater = make_updater()
    updater.install("tiny", "1.0.0")
    before = (updater.config.data_dir / "state.json").read_bytes()
    repo.time_signers = [CryptoSigner.generate_ed25519()]

    with pytest.raises(VerificationError) as caught:
        updater.install("tiny", "1.1.0")

    message = str(caught.value)
    assert "signed time cannot be trusted" in message
    assert "forged" in message
    assert "current model keeps running" in message
    assert isinstance(caught.value.__cause__, SignedTimeError)
    assert (updater.config.data_dir / "state.json").read_bytes() == before


def test_an_old_signed_time_replayed_is_refused(
    make_updater: Callable[..., Updater], repo: TufRepo
) -> None:
    # Recorded when this metadata was fresh; replayed later with the old metadata.
    recorded = sign_time(
        SignedTime(datetime.now(UTC) - timedelta(days=30), "r" * 32), [repo.signers["timestamp"]]
    )
    repo.time_reply = recorded

    with pytest.raises(VerificationError, match="replayed") as caught:
        make_updater().install("tiny", "1.0.0")

    assert isinstance(caught.value.__cause__, SignedTimeError)


def test_a_registry_without_signed_time_is_refused(
    make_updater: Callable[..., Updater], repo: TufRepo
) -> None:
    repo.serves_time = False

    with pytest.raises(VerificationError, match="serves no signed time"):
        make_updater().install("tiny", "1.0.0")


def test_the_time_request_carries_a_fresh_nonce_and_the_device_token(
    make_updater: Callable[..., Updater], repo: TufRepo
) -> None:
    updater = make_updater()
    updater.install("tiny", "1.0.0")
    updater.install("tiny", "1.1.0")

    asked = [(path, auth) for path, auth in repo.requests if path.startswith("/time?")]
    assert len(asked) == 2
    assert len({path for path, _ in asked}) == 2
    assert all(auth == f"Bearer {TOKEN}" for _, auth in asked)


@pytest.mark.parametrize(
    ("metadata_url", "expected"),
    [
        ("http://r:8080/tuf/metadata/", "http://r:8080/tuf/time"),
        ("http://r:8080/tuf/metadata", "http://r:8080/tuf/time"),
        ("http://r/metadata/", "http://r/time"),
    ],
)
def test_the_time_lives_beside_the_metadata_folder(metadata_url: str, expected: str) -> None:
    assert time_url(metadata_url) == expected


def test_the_ngclient_seam_is_still_there() -> None:
    """The override sets ``reference_time`` between ngclient's own refresh steps.

    If a python-tuf release renames these, this fails before an agent ships with
    expiry judged by the device clock again.
    """
    source = inspect.getsource(TufUpdater.refresh)
    steps = ["_load_root()", "_load_timestamp()", "_load_snapshot()", "_load_targets("]
    positions = [source.find(step) for step in steps]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), source
    init = inspect.getsource(trusted_metadata_set.TrustedMetadataSet.__init__)
    assert "self.reference_time = datetime.datetime.now(" in init
    # Every expiry check uses that attribute, and nothing else reads the clock.
    module = inspect.getsource(trusted_metadata_set)
    assert module.count("is_expired(") == module.count("is_expired(self.reference_time)") >= 3
    assert module.count(".now(") == 1
