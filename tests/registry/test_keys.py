"""Offline root keys, threshold signing and rotation, checked by python-tuf's own client.

The library-level tests serve the repository to a real ngclient ``Updater``
through a fetcher that reads the registry's stored metadata (the seam TUF's own
repository simulator uses); the last test runs the ``corral keys`` commands
against a running registry and installs a real model with the agent.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, MetaFile, Root, TargetFile, Timestamp
from tuf.ngclient import Updater as TufUpdater
from tuf.ngclient._internal import trusted_metadata_set
from tuf.ngclient.fetcher import FetcherInterface
from typer.testing import CliRunner

from agent.config import AgentConfig
from agent.errors import VerificationError
from agent.updater import Updater
from corral.profiles import load_profile
from corral.signedtime import SignedTime, SignedTimeError, sign_time, verify_signed_time
from registry._time import utcnow
from registry.cli import keys_app
from registry.core.db import make_engine, make_session_factory, migrate
from registry.errors import NotFoundError
from registry.keys import (
    KEY_SET_FILE,
    PASSPHRASE_ENV,
    KeyFileError,
    RootKeySet,
    generate_root_keys,
    load_key_file,
    rotate_online_key,
    rotate_root_key,
    sign_root,
)
from registry.signing import SigningError, TufRepository
from registry.tables import TufMetadata
from tests.agent.tuf_repo import MODEL_FILE, make_bundle, make_model

PASSPHRASE = "correct horse battery staple"
PROFILES = Path(__file__).resolve().parents[2] / "firmware-profiles"
_NAME = re.compile(r"^(?:([0-9]+)\.)?(root|targets|snapshot|timestamp)\.json$")


class RepositoryFetcher(FetcherInterface):
    """Serves a ``TufRepository``'s stored metadata to ngclient, as the routes do."""

    def __init__(self, repository: TufRepository) -> None:
        self.repository = repository

    def _fetch(self, url: str) -> Iterator[bytes]:
        match = _NAME.match(url.rsplit("/", 1)[-1])
        if match is None:
            raise tuf_errors.DownloadHTTPError(f"{url}: 404", 404)
        version = int(match.group(1)) if match.group(1) else None
        try:
            return iter([self.repository.metadata(match.group(2), version)])
        except NotFoundError as e:
            raise tuf_errors.DownloadHTTPError(f"{url}: 404", 404) from e


def walk(repository: TufRepository, bootstrap: bytes, where: Path) -> TufUpdater:
    """A fresh ngclient trusting ``bootstrap``, refreshed against ``repository``."""
    where.mkdir(parents=True)
    updater = TufUpdater(
        metadata_dir=str(where),
        metadata_base_url="http://registry/tuf/metadata/",
        fetcher=RepositoryFetcher(repository),
        bootstrap=bootstrap,
    )
    updater.refresh()
    return updater


def trusted_root_version(metadata_dir: Path) -> int:
    return int(json.loads((metadata_dir / "root.json").read_bytes())["signed"]["version"])


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[TufRepository]:
    """A repository on a SQLite file, created with an online root (local mode)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    migrate(engine)
    # No caching of the newest metadata: some cases store rows behind its back.
    repository = TufRepository(
        tmp_path / "data" / "keys", make_session_factory(engine), newest_ttl_s=0
    )
    yield repository
    engine.dispose()


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> tuple[RootKeySet, list[CryptoSigner]]:
    """Three encrypted root keys, threshold 2, read back from their files."""
    usb = tmp_path_factory.mktemp("usb")
    key_set = generate_root_keys(usb, 3, 2, PASSPHRASE)
    return key_set, [load_key_file(usb / f"root-{i}.pem", PASSPHRASE) for i in (1, 2, 3)]


def test_init_writes_encrypted_keys_and_their_public_set(tmp_path: Path) -> None:
    runner = CliRunner(env={PASSPHRASE_ENV: PASSPHRASE, "COLUMNS": "200"})
    usb = tmp_path / "usb"

    result = runner.invoke(
        keys_app, ["init", "--out", str(usb), "--count", "3", "--threshold", "2"]
    )

    assert result.exit_code == 0, result.output
    assert "threshold 2 of 3" in result.output
    key_set = RootKeySet.load(usb / KEY_SET_FILE)
    assert key_set.threshold == 2
    assert sorted(key_set.files.values()) == ["root-1.pem", "root-2.pem", "root-3.pem"]
    for name in key_set.files.values():
        path = usb / name
        assert path.stat().st_mode & 0o777 == 0o600
        with pytest.raises(TypeError, match="encrypted"):
            load_pem_private_key(path.read_bytes(), None)
        assert load_key_file(path, PASSPHRASE).public_key.keyid in key_set.keys
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_key_file(usb / "root-1.pem", "not the passphrase")
    again = runner.invoke(keys_app, ["init", "--out", str(usb)])
    assert again.exit_code == 2
    assert "exists" in again.output


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--registry-data", "{tmp}/data"], {}, "inside the registry's data directory"),
        (["--count", "2", "--threshold", "3"], {}, "between 1 and the number of keys"),
        ([], {PASSPHRASE_ENV: "short"}, "at least 8 characters"),
        ([], {PASSPHRASE_ENV: ""}, f"set {PASSPHRASE_ENV}"),
    ],
    ids=["inside-data-dir", "threshold-over-count", "short-passphrase", "no-passphrase"],
)
def test_init_refuses(tmp_path: Path, args: list[str], env: dict[str, str], message: str) -> None:
    runner = CliRunner(env={PASSPHRASE_ENV: PASSPHRASE, "COLUMNS": "200", **env})
    out = tmp_path / "data" / "usb"
    argv = ["init", "--out", str(out), *(a.replace("{tmp}", str(tmp_path)) for a in args)]

    result = runner.invoke(keys_app, argv)

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (out / "root-1.pem").exists()


def test_one_root_key_is_not_enough_for_a_threshold_of_two(
    repository: TufRepository, offline: tuple[RootKeySet, list[CryptoSigner]], tmp_path: Path
) -> None:
    key_set, (k1, _, _) = offline
    repository.initialise()
    root_v1 = repository.metadata("root", 1)

    with pytest.raises(SigningError, match=r"1 valid signature\(s\) by its own keys, 2 needed"):
        sign_root(repository, [k1], key_set)

    assert repository.status().version == 1  # nothing stored
    assert (repository.keys_dir / "root.pem").exists()
    # The same root, stored behind the registry's back: TUF's client refuses it.
    md = Metadata[Root].from_bytes(root_v1)
    root = md.signed
    root.version = 2
    for keyid in list(root.roles["root"].keyids):
        root.revoke_key(keyid, "root")
    for key in key_set.keys.values():
        root.add_key(key, "root")
    root.roles["root"].threshold = 2
    md.signatures.clear()
    md.sign(k1)
    for signer in repository.root_signers(Metadata[Root].from_bytes(root_v1).signed):
        md.sign(signer, append=True)
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        root.verify_delegate("root", md.signed_bytes, md.signatures)
    with repository._sessions() as session:
        session.add(TufMetadata(role="root", version=2, expires=root.expires, data=md.to_bytes()))
        session.commit()
    with pytest.raises(tuf_errors.UnsignedMetadataError, match="root was signed by 1/2 keys"):
        walk(repository, root_v1, tmp_path / "agent")


def test_sign_root_takes_root_offline_and_the_registry_signs_without_it(
    repository: TufRepository,
    offline: tuple[RootKeySet, list[CryptoSigner]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key_set, (k1, k2, _) = offline
    repository.initialise()
    assert repository.status().online
    root_v1 = repository.metadata("root", 1)

    change = sign_root(repository, [k1, k2], key_set)

    assert (change.version, change.threshold, change.online) == (2, 2, False)
    assert change.removed == (repository.keys_dir / "root.pem",)
    assert not (repository.keys_dir / "root.pem").exists()
    assert set(change.root_keyids) == set(key_set.keys)
    assert {k1.public_key.keyid, k2.public_key.keyid} < set(change.signed_by)
    # The registry signs on without any root key: a push, a refresh, the signed time.
    with repository._sessions() as session:
        repository.add_targets(session, [TargetFile.from_data("models/a/1.0.0/x", b"x")])
    assert repository.refresh(now=utcnow() + timedelta(days=5)) is True
    root_v2 = Metadata[Root].from_bytes(repository.metadata("root")).signed
    nonce = "n" * 32
    assert verify_signed_time(repository.signed_time(nonce), root_v2, nonce) <= utcnow()
    # An agent that trusts root 1 walks to root 2 and sees the new target.
    agent = walk(repository, root_v1, tmp_path / "agent")
    assert trusted_root_version(tmp_path / "agent") == 2
    assert agent.get_targetinfo("models/a/1.0.0/x") is not None
    # A restart finds the root offline, and says so.
    caplog.set_level("INFO", logger="registry.signing")
    TufRepository(repository.keys_dir, repository._sessions).initialise()
    assert "OFFLINE root: root v2 is signed by 2 of 3 keys" in caplog.text


def test_a_new_repository_can_start_with_an_offline_root(
    repository: TufRepository, offline: tuple[RootKeySet, list[CryptoSigner]], tmp_path: Path
) -> None:
    key_set, (_, k2, k3) = offline

    with pytest.raises(SigningError, match="needs its root key set"):
        sign_root(repository, [k2, k3])
    change = sign_root(repository, [k2, k3], key_set)

    assert (change.version, change.online) == (1, False)
    assert not (repository.keys_dir / "root.pem").exists()
    repository.initialise()  # finds the repository and checks its online keys
    walk(repository, repository.metadata("root", 1), tmp_path / "agent")
    assert trusted_root_version(tmp_path / "agent") == 1


def test_a_lost_root_key_is_rotated_out_by_the_others(
    repository: TufRepository, offline: tuple[RootKeySet, list[CryptoSigner]], tmp_path: Path
) -> None:
    key_set, (k1, k2, k3) = offline
    repository.initialise()
    root_v1 = repository.metadata("root", 1)
    sign_root(repository, [k1, k2], key_set)
    k4 = CryptoSigner.generate_ed25519()

    # k1 is lost. One old key is not enough to replace it ...
    with pytest.raises(SigningError, match=r"by root v2's keys, 2 needed"):
        rotate_root_key(repository, [k3, k4], k1.public_key.keyid[:10], k4.public_key)
    # ... two are: the old root's threshold (k2, k3) and the new one's (k2, k3, k4).
    change = rotate_root_key(repository, [k2, k3, k4], k1.public_key.keyid[:10], k4.public_key)

    assert change.version == 3
    assert k1.public_key.keyid not in change.root_keyids
    assert k4.public_key.keyid in change.root_keyids
    walk(repository, root_v1, tmp_path / "agent")
    assert trusted_root_version(tmp_path / "agent") == 3
    # Whoever finds k1 can no longer sign root, not even with one good key.
    with pytest.raises(SigningError, match="is not a root key"):
        sign_root(repository, [k1, k2])
    v3 = Metadata[Root].from_bytes(repository.metadata("root")).signed
    forged = Metadata(Root.from_dict(v3.to_dict()))
    forged.signed.version = 4
    forged.sign(k1)
    forged.sign(k2, append=True)
    with pytest.raises(SigningError, match=r"1 valid signature\(s\) by root v3's keys"):
        repository.store_root(forged)


def test_rotating_an_online_key_revokes_the_old_ones_signatures(
    repository: TufRepository, offline: tuple[RootKeySet, list[CryptoSigner]], tmp_path: Path
) -> None:
    key_set, (k1, k2, k3) = offline
    repository.initialise()
    root_v1 = repository.metadata("root", 1)
    old = load_pem_private_key((repository.keys_dir / "timestamp.pem").read_bytes(), None)
    old_timestamp = CryptoSigner(old)
    sign_root(repository, [k1, k2], key_set)

    change = rotate_online_key(repository, [k2, k3], "timestamp")

    assert change.version == 3
    assert change.removed == (repository.keys_dir / "timestamp.pem",)
    new_files = list(repository.keys_dir.glob("timestamp-*.pem"))
    assert len(new_files) == 1
    walk(repository, root_v1, tmp_path / "fresh")  # the new timestamp verifies
    root_v3 = Metadata[Root].from_bytes(repository.metadata("root")).signed
    # The old key's signatures are refused: a timestamp ...
    current = Metadata[Timestamp].from_bytes(repository.metadata("timestamp")).signed
    forged = Metadata(Timestamp(version=current.version + 1, expires=current.expires))
    forged.signed.snapshot_meta = MetaFile(version=current.snapshot_meta.version)
    forged.sign(old_timestamp)
    with repository._sessions() as session:
        session.add(
            TufMetadata(
                role="timestamp",
                version=forged.signed.version,
                expires=forged.signed.expires,
                data=forged.to_bytes(),
            )
        )
        session.commit()
    with pytest.raises(tuf_errors.UnsignedMetadataError, match="timestamp was signed by 0/1"):
        walk(repository, root_v1, tmp_path / "agent")
    # ... and a signed time.
    with pytest.raises(SignedTimeError, match="forged"):
        verify_signed_time(
            sign_time(SignedTime(utcnow(), "t" * 32), [old_timestamp]), root_v3, "t" * 32
        )


def test_in_local_mode_the_online_root_signs_a_rotation_alone(
    repository: TufRepository,
) -> None:
    repository.initialise()

    change = rotate_online_key(repository, [], "snapshot")

    assert (change.version, change.online) == (2, True)
    assert change.removed == (repository.keys_dir / "snapshot.pem",)


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (lambda r, ks: rotate_online_key(r, ks, "root"), "online roles are"),
        (lambda r, ks: rotate_root_key(r, ks, "abc", None), "unique prefix"),
        (lambda r, ks: rotate_root_key(r, ks[:2], ks[0].public_key.keyid, None), "add a new key"),
        (lambda r, ks: sign_root(r, [CryptoSigner.generate_ed25519()]), "is not a root key"),
    ],
    ids=["root-as-online", "bad-prefix", "set-below-threshold", "stranger-key"],
)
def test_root_changes_that_cannot_be_made_are_refused_and_nothing_is_stored(
    repository: TufRepository,
    offline: tuple[RootKeySet, list[CryptoSigner]],
    action: Any,
    message: str,
) -> None:
    key_set, keys = offline
    repository.initialise()
    sign_root(repository, keys[:2], key_set)
    # A two-of-two set, so that revoking one key leaves fewer keys than the threshold.
    two = RootKeySet(2, {k: v for k, v in list(key_set.keys.items())[:2]}, {})
    sign_root(repository, keys[:2], two)
    before = sorted(p.name for p in repository.keys_dir.iterdir())

    with pytest.raises(SigningError, match=message):
        action(repository, keys)

    assert repository.status().version == 3
    assert sorted(p.name for p in repository.keys_dir.iterdir()) == before


def test_the_cli_takes_a_running_registry_offline_and_an_enrolled_agent_follows(
    registry: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = registry.enrol(registry.unique_id("cam"))  # pinned to root 1
    settings = registry.context.settings
    data = str(settings.data_dir)
    runner = CliRunner(
        env={
            PASSPHRASE_ENV: PASSPHRASE,
            "CORRAL_DATABASE_URL": settings.sqlalchemy_url,
            "COLUMNS": "200",
        }
    )

    def keys(*args: str) -> str:
        result = runner.invoke(keys_app, list(args))
        assert result.exit_code == 0, result.output
        return " ".join(result.output.split())

    usb = tmp_path / "usb"
    keys("init", "--out", str(usb))
    old_timestamp = CryptoSigner(
        load_pem_private_key((settings.data_dir / "keys" / "timestamp.pem").read_bytes(), None)
    )
    said = keys(
        "sign-root",
        "--registry-data",
        data,
        "--key",
        f"{usb}/root-1.pem",
        "--key",
        f"{usb}/root-2.pem",
    )
    assert "stored root v2: 2 of 3 root key(s) must sign" in said
    assert "root.pem: root v2 no longer lists its key" in said
    assert "OFFLINE root" in said
    said = keys(
        "rotate", "--role", "timestamp", "--registry-data", data,
        "--key", f"{usb}/root-2.pem", "--key", f"{usb}/root-3.pem",
    )  # fmt: skip
    assert "stored root v3" in said
    shown = keys("show", "--registry-data", data)
    assert "root v3" in shown and "offline" in shown and "timestamp-" in shown
    assert registry.anon.get("/tuf/metadata/3.root.json").status_code == 200

    # The running registry signs a push with the rotated key, without a restart.
    model = make_model(5)
    bundle = make_bundle("tiny", "1.0.0", model)
    assert registry.push(bundle.to_bytes(), {MODEL_FILE: model}).status_code == 201
    assigned = registry.admin.post(
        "/api/v1/rollouts",
        json={"model": "tiny", "version": "1.0.0", "devices": [answer["device_id"]]},
    )
    assert assigned.status_code == 201, assigned.text

    # The agent enrolled under root 1, its clock three years fast, installs it.
    years = timedelta(days=3 * 365)
    fast = SimpleNamespace(now=lambda tz=None: utcnow() + years)
    monkeypatch.setattr(
        trusted_metadata_set, "datetime", SimpleNamespace(datetime=fast, timezone=timezone)
    )
    config = AgentConfig(
        data_dir=tmp_path / "agent",
        device_id=answer["device_id"],
        device_token=answer["device_token"],
        registry_url=registry.url,
        mqtt_host=answer["mqtt"]["host"],
        mqtt_port=answer["mqtt"]["port"],
        metadata_url=answer["metadata_url"],
        targets_url=answer["targets_url"],
    )
    config.tuf_metadata_dir.mkdir(parents=True)
    (config.tuf_metadata_dir / "root.json").write_text(json.dumps(answer["tuf_root"]))
    updater = Updater(
        config, load_profile(PROFILES / "x86-cpu.toml"), clock=lambda: utcnow() + years
    )
    try:
        assert updater.install("tiny", "1.0.0").version == "1.0.0"
        assert trusted_root_version(config.tuf_metadata_dir) == 3

        # A timestamp signed by the revoked key is refused; the model stays.
        current = json.loads(registry.anon.get("/tuf/metadata/timestamp.json").content)
        forged = Metadata(
            Timestamp(
                version=current["signed"]["version"] + 1,
                expires=utcnow() + timedelta(days=1),
                snapshot_meta=MetaFile(
                    version=current["signed"]["meta"]["snapshot.json"]["version"]
                ),
            )
        )
        forged.sign(old_timestamp)
        with registry.context.sessions() as session:
            session.add(
                TufMetadata(
                    role="timestamp",
                    version=forged.signed.version,
                    expires=forged.signed.expires,
                    data=forged.to_bytes(),
                )
            )
            session.commit()
        # Written behind the registry's back: served once its newest-metadata cache
        # is read again (registry.metadata_cache, at most a second).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            served = json.loads(registry.anon.get("/tuf/metadata/timestamp.json").content)
            if served["signed"]["version"] == forged.signed.version:
                break
            time.sleep(0.1)
        with pytest.raises(VerificationError, match="not signed by the keys") as caught:
            updater.install("tiny", "1.0.0")
        assert isinstance(caught.value.__cause__, tuf_errors.UnsignedMetadataError)
        assert updater.installed() == ("tiny", "1.0.0")
    finally:
        updater.close()
