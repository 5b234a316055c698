"""The install path end to end: a real TUF repository over real HTTP, real ONNX Runtime."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_errors

from agent.errors import (
    DownloadError,
    RegistryBusyError,
    SmokeTestError,
    UpdateError,
    VerificationError,
)
from agent.fetcher import BusyHTTPError
from agent.updater import InstallResult, Updater, _map_error
from corral.bundle import BundleError, BundleFile
from corral.profiles import FirmwareProfile, load_profile
from corral.signedtime import SignedTimeError
from corral.targets import bundle_target, file_target
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

PROFILES = Path(__file__).resolve().parents[2] / "firmware-profiles"


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    return {"1.0.0": make_model(1), "1.1.0": make_model(2), "1.2.0": make_model(3)}


@pytest.fixture
def repo(models: dict[str, bytes]) -> TufRepo:
    repo = TufRepo()
    repo.required_token = TOKEN
    for version in ("1.0.0", "1.1.0"):
        publish_bundle(
            repo, make_bundle("tiny", version, models[version]), {MODEL_FILE: models[version]}
        )
    return repo


@pytest.fixture
def url(repo: TufRepo) -> Iterator[str]:
    with serve_repo(repo) as base:
        yield base


@pytest.fixture
def profile() -> FirmwareProfile:
    return load_profile(PROFILES / "x86-cpu.toml")


@pytest.fixture
def updater(tmp_path: Path, repo: TufRepo, url: str, profile: FirmwareProfile) -> Iterator[Updater]:
    up = Updater(enrolled(tmp_path, repo, url), profile)
    yield up
    up.close()


def state(data_dir: Path) -> dict[str, str | None]:
    return json.loads((data_dir / "state.json").read_text())


def leftovers(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "models").iterdir() if p.name.startswith("."))


def test_good_version_installs_and_becomes_current(updater: Updater, repo: TufRepo) -> None:
    result = updater.install("tiny", "1.0.0")

    assert isinstance(result, InstallResult)
    assert (result.model, result.version, result.variant) == ("tiny", "1.0.0", "fp32")
    assert 0.0 <= result.smoke_max_diff <= 1e-4
    assert result.seconds > 0
    assert result.slot.name.startswith("tiny-1.0.0-")
    assert sorted(p.name for p in result.slot.iterdir()) == ["bundle.json", MODEL_FILE, "slot.json"]
    assert updater.installed() == ("tiny", "1.0.0")
    assert state(updater.config.data_dir) == {"current": result.slot.name, "previous": None}
    assert leftovers(updater.config.data_dir) == []
    # The runtime comes back loaded and runs the golden samples again.
    assert result.runtime.smoke_test() == pytest.approx(result.smoke_max_diff)
    # Every request carried the device token.
    assert repo.requests and all(auth == f"Bearer {TOKEN}" for _, auth in repo.requests)


def test_tampered_model_file_is_refused_and_the_current_model_stays(
    updater: Updater, repo: TufRepo, models: dict[str, bytes]
) -> None:
    first = updater.install("tiny", "1.0.0")
    before = (updater.config.data_dir / "state.json").read_bytes()
    repo.tamper(file_target("tiny", "1.1.0", MODEL_FILE))

    with pytest.raises(VerificationError) as caught:
        updater.install("tiny", "1.1.0")

    assert caught.value.reason == "verification"
    assert "tiny 1.1.0" in str(caught.value)
    assert "current model keeps running" in str(caught.value)
    assert isinstance(caught.value.__cause__, tuf_errors.LengthOrHashMismatchError)
    assert (updater.config.data_dir / "state.json").read_bytes() == before
    assert leftovers(updater.config.data_dir) == []
    current = updater.current()
    assert current is not None and current.path == first.slot
    current.verify()
    assert updater.load(current).smoke_test() <= 1e-4


def test_a_served_file_longer_than_signed_is_refused(updater: Updater, repo: TufRepo) -> None:
    path = repo.served_target_path(file_target("tiny", "1.0.0", MODEL_FILE))
    repo.files[path] += b"\0" * 1000

    with pytest.raises(VerificationError) as caught:
        updater.install("tiny", "1.0.0")

    assert isinstance(caught.value.__cause__, tuf_errors.DownloadLengthMismatchError)
    assert updater.installed() is None


@pytest.mark.parametrize(
    ("model", "version"),
    [("tiny", "9.9.9"), ("other", "1.0.0"), ("tiny", "not-semver"), ("../etc", "1.0.0")],
    ids=["unknown-version", "unknown-model", "bad-version", "bad-model-name"],
)
def test_a_version_not_in_signed_metadata_is_refused(
    updater: Updater, model: str, version: str
) -> None:
    with pytest.raises(VerificationError) as caught:
        updater.install(model, version)

    assert caught.value.reason == "not_found"
    assert updater.installed() is None
    assert not (updater.config.data_dir / "state.json").exists()


def test_wrong_golden_outputs_fail_the_smoke_test_and_nothing_is_installed(
    updater: Updater, repo: TufRepo, models: dict[str, bytes]
) -> None:
    bad = make_bundle("tiny", "1.2.0", models["1.2.0"], wrong_golden=True)
    publish_bundle(repo, bad, {MODEL_FILE: models["1.2.0"]})
    updater.install("tiny", "1.0.0")

    with pytest.raises(SmokeTestError) as caught:
        updater.install("tiny", "1.2.0")

    assert caught.value.reason == "smoke_test"
    assert updater.installed() == ("tiny", "1.0.0")
    assert leftovers(updater.config.data_dir) == []
    assert not any("1.2.0" in p.name for p in (updater.config.data_dir / "models").iterdir())


def test_expired_timestamp_is_refused(updater: Updater, repo: TufRepo) -> None:
    updater.install("tiny", "1.0.0")
    repo.publish(timestamp_expires=datetime.now(UTC) - timedelta(hours=1))

    with pytest.raises(VerificationError) as caught:
        updater.install("tiny", "1.1.0")

    assert isinstance(caught.value.__cause__, tuf_errors.ExpiredMetadataError)
    assert "expired" in str(caught.value)
    assert updater.installed() == ("tiny", "1.0.0")


def test_an_older_timestamp_is_refused_as_rollback(updater: Updater, repo: TufRepo) -> None:
    old = repo.files["/metadata/timestamp.json"]
    repo.publish()
    updater.install("tiny", "1.0.0")
    repo.files["/metadata/timestamp.json"] = old

    with pytest.raises(VerificationError) as caught:
        updater.install("tiny", "1.1.0")

    assert isinstance(caught.value.__cause__, tuf_errors.BadVersionNumberError)
    assert updater.installed() == ("tiny", "1.0.0")


def test_a_bundle_signed_under_another_version_is_refused(
    updater: Updater, repo: TufRepo, models: dict[str, bytes]
) -> None:
    # bundle.json of 1.0.0 signed as the target of 1.2.0: mix-and-match by the signer.
    repo.add_target(
        bundle_target("tiny", "1.2.0"), make_bundle("tiny", "1.0.0", models["1.0.0"]).to_bytes()
    )
    repo.publish()

    with pytest.raises(VerificationError, match="holds a bundle of tiny 1.0.0"):
        updater.install("tiny", "1.2.0")


def test_a_bundle_for_other_profiles_is_incompatible(
    updater: Updater, repo: TufRepo, models: dict[str, bytes]
) -> None:
    bundle = make_bundle(
        "tiny", "1.2.0", models["1.2.0"], compatibility={"profiles": ["jetson-orin"]}
    )
    publish_bundle(repo, bundle, {MODEL_FILE: models["1.2.0"]})

    with pytest.raises(UpdateError) as caught:
        updater.install("tiny", "1.2.0")

    assert caught.value.reason == "incompatible"
    assert updater.installed() is None


def test_second_version_keeps_the_first_as_previous_and_rollback_switches(
    updater: Updater,
) -> None:
    first = updater.install("tiny", "1.0.0")
    second = updater.install("tiny", "1.1.0")

    assert state(updater.config.data_dir) == {
        "current": second.slot.name,
        "previous": first.slot.name,
    }
    slot = updater.rollback()
    assert slot.path == first.slot
    assert updater.installed() == ("tiny", "1.0.0")
    assert updater.load(slot).smoke_test() <= 1e-4
    assert updater.rollback().path == second.slot
    assert updater.installed() == ("tiny", "1.1.0")


def test_a_third_version_prunes_the_oldest(
    updater: Updater, repo: TufRepo, models: dict[str, bytes]
) -> None:
    publish_bundle(
        repo, make_bundle("tiny", "1.2.0", models["1.2.0"]), {MODEL_FILE: models["1.2.0"]}
    )
    first = updater.install("tiny", "1.0.0")
    second = updater.install("tiny", "1.1.0")
    third = updater.install("tiny", "1.2.0")

    names = sorted(p.name for p in (updater.config.data_dir / "models").iterdir())
    assert names == sorted([second.slot.name, third.slot.name])
    assert not first.slot.exists()


def test_reinstalling_the_current_version_changes_nothing(updater: Updater) -> None:
    first = updater.install("tiny", "1.0.0")
    before = (updater.config.data_dir / "state.json").read_bytes()

    again = updater.install("tiny", "1.0.0")

    assert again.slot == first.slot
    assert (updater.config.data_dir / "state.json").read_bytes() == before
    assert leftovers(updater.config.data_dir) == []


def test_rollback_without_previous_is_refused(updater: Updater) -> None:
    updater.install("tiny", "1.0.0")
    with pytest.raises(UpdateError, match="no previous model"):
        updater.rollback()


def test_a_wrong_token_is_a_download_error(updater: Updater, repo: TufRepo) -> None:
    repo.required_token = "another-token"

    with pytest.raises(DownloadError) as caught:
        updater.install("tiny", "1.0.0")

    assert caught.value.reason == "download"
    assert isinstance(caught.value.__cause__, tuf_errors.DownloadHTTPError)


def test_an_unreachable_registry_is_a_download_error(
    tmp_path: Path, repo: TufRepo, profile: FirmwareProfile
) -> None:
    with serve_repo(repo) as url:
        pass  # the port is closed again
    updater = Updater(enrolled(tmp_path, repo, url), profile)
    try:
        with pytest.raises(DownloadError) as caught:
            updater.install("tiny", "1.0.0")
    finally:
        updater.close()
    assert caught.value.reason == "download"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("where", "answer", "expected", "reason", "retry_after_s"),
    [
        ("model", (503, "2"), RegistryBusyError, "registry_busy", 2.0),
        ("time", (503, "1"), RegistryBusyError, "registry_busy", 1.0),
        ("timestamp", (429, None), RegistryBusyError, "registry_busy", 0.0),
        ("model", (503, None), DownloadError, "download", None),
        ("timestamp", (503, "in a while"), DownloadError, "download", None),
    ],
    ids=["model-503", "time-503", "timestamp-429", "503-bare", "503-malformed"],
)
def test_a_busy_registry_fails_the_install_with_its_retry_after(
    updater: Updater,
    repo: TufRepo,
    where: str,
    answer: tuple[int, str | None],
    expected: type[DownloadError],
    reason: str,
    retry_after_s: float | None,
) -> None:
    path = {
        "model": repo.served_target_path(file_target("tiny", "1.0.0", MODEL_FILE)),
        "time": "/time",
        "timestamp": "/metadata/timestamp.json",
    }[where]
    repo.busy[path] = [answer]

    with pytest.raises(DownloadError) as caught:
        updater.install("tiny", "1.0.0")

    assert type(caught.value) is expected
    assert caught.value.reason == reason
    assert isinstance(caught.value.__cause__, tuf_errors.DownloadHTTPError)
    assert caught.value.__cause__.status_code == answer[0]
    if retry_after_s is not None:
        assert isinstance(caught.value, RegistryBusyError)
        assert caught.value.retry_after_s == retry_after_s
        assert "busy" in str(caught.value) and "will be retried" in str(caught.value)
    assert updater.installed() is None
    assert leftovers(updater.config.data_dir) == []
    # The registry answers again: the same install goes through.
    assert updater.install("tiny", "1.0.0").version == "1.0.0"


@pytest.mark.parametrize(
    ("error", "expected", "reason"),
    [
        (tuf_errors.DownloadLengthMismatchError("x"), VerificationError, "verification"),
        (tuf_errors.SlowRetrievalError("x"), DownloadError, "timeout"),
        (tuf_errors.DownloadHTTPError("x", 500), DownloadError, "download"),
        (BusyHTTPError("x", 503, 2.0), RegistryBusyError, "registry_busy"),
        (tuf_errors.DownloadError("x"), DownloadError, "download"),
        (tuf_errors.ExpiredMetadataError("x"), VerificationError, "verification"),
        (tuf_errors.BadVersionNumberError("x"), VerificationError, "verification"),
        (tuf_errors.EqualVersionNumberError("x"), VerificationError, "verification"),
        (tuf_errors.UnsignedMetadataError("x"), VerificationError, "verification"),
        (tuf_errors.LengthOrHashMismatchError("x"), VerificationError, "verification"),
        (tuf_errors.RepositoryError("x"), VerificationError, "verification"),
        (BundleError("x"), VerificationError, "verification"),
        (SignedTimeError("x"), VerificationError, "verification"),
        (OSError(28, "No space left on device"), UpdateError, "install"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else None,
)
def test_every_third_party_error_maps_to_an_update_error(
    error: Exception, expected: type[UpdateError], reason: str
) -> None:
    mapped = _map_error(error, "tiny", "1.0.0")
    assert type(mapped) is expected
    assert mapped.reason == reason
    assert "current model keeps running" in str(mapped)


def test_every_tuf_exception_class_is_mapped() -> None:
    classes = [
        v
        for v in vars(tuf_errors).values()
        if isinstance(v, type) and issubclass(v, Exception) and v.__module__ == tuf_errors.__name__
    ]
    assert len(classes) >= 10
    for cls in classes:
        args = ("x", 500) if cls is tuf_errors.DownloadHTTPError else ("x",)
        assert isinstance(_map_error(cls(*args), "m", "1.0.0"), UpdateError), cls


def test_programming_errors_are_not_mapped() -> None:
    assert _map_error(TypeError("bug"), "tiny", "1.0.0") is None


def test_a_bundle_that_disagrees_with_the_signed_file_is_refused(
    updater: Updater, repo: TufRepo, models: dict[str, bytes]
) -> None:
    # The bundle describes one file, the repository signed another under its name.
    bundle = make_bundle("tiny", "1.2.0", models["1.2.0"])
    publish_bundle(repo, bundle, {MODEL_FILE: models["1.0.0"]})

    with pytest.raises(VerificationError, match="the bundle says"):
        updater.install("tiny", "1.2.0")
    assert updater.installed() is None


def test_only_the_profiles_variant_is_fetched_from_a_multi_variant_bundle(
    updater: Updater, repo: TufRepo, models: dict[str, bytes]
) -> None:
    int8 = make_model(4)
    bundle = make_bundle("tiny", "1.2.0", models["1.2.0"])
    digest = hashlib.sha256(int8).hexdigest()
    bundle.files.append(BundleFile("model-int8.onnx", digest, len(int8), variant="int8"))
    publish_bundle(repo, bundle, {MODEL_FILE: models["1.2.0"], "model-int8.onnx": int8})

    result = updater.install("tiny", "1.2.0")

    assert result.variant == "fp32"
    assert sorted(p.name for p in result.slot.iterdir()) == ["bundle.json", MODEL_FILE, "slot.json"]
    assert not any("int8" in path for path, _ in repo.requests)


def test_the_variant_a_rollout_asks_for_is_the_one_installed(
    updater: Updater, repo: TufRepo, models: dict[str, bytes]
) -> None:
    same = models["1.2.0"]  # the same weights under another variant: its smoke test passes
    bundle = make_bundle("tiny", "1.2.0", same)
    digest = hashlib.sha256(same).hexdigest()
    bundle.files.append(BundleFile("model-int8.onnx", digest, len(same), variant="int8"))
    publish_bundle(repo, bundle, {MODEL_FILE: same, "model-int8.onnx": same})

    with pytest.raises(UpdateError, match="asks for variant 'trt-a100'") as refused:
        updater.install("tiny", "1.2.0", variant="trt-a100")
    assert refused.value.reason == "incompatible" and updater.installed() is None

    result = updater.install("tiny", "1.2.0", variant="int8")

    assert result.variant == "int8"
    assert sorted(p.name for p in result.slot.iterdir()) == [
        "bundle.json",
        "model-int8.onnx",
        "slot.json",
    ]


def test_a_new_updater_recovers_from_a_crash_mid_install(
    updater: Updater, profile: FirmwareProfile
) -> None:
    first = updater.install("tiny", "1.0.0")
    data_dir = updater.config.data_dir
    staging = data_dir / "models" / ".staging-crashed"
    staging.mkdir()
    (staging / MODEL_FILE).write_bytes(b"half")

    again = Updater(updater.config, profile)
    try:
        assert leftovers(data_dir) == []
        assert again.installed() == ("tiny", "1.0.0")
        current = again.current()
        assert current is not None and current.path == first.slot
        assert again.load(current).smoke_test() <= 1e-4
    finally:
        again.close()
