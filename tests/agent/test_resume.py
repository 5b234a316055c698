"""Resumable model downloads: a dropped connection costs only the bytes not yet received.

A real TUF repository over real HTTP that honours ``Range``/``If-Range`` like
the registry, and cuts chosen responses mid-body; TUF still checks the whole
file's length and hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tuf.api import exceptions

from agent.config import AgentConfig
from agent.errors import DownloadError, VerificationError
from agent.fetcher import HttpxFetcher
from agent.updater import Updater
from corral.profiles import FirmwareProfile, load_profile
from corral.targets import file_target
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

CUT = 3000


@pytest.fixture(scope="module")
def model() -> bytes:
    return make_model(11)


@pytest.fixture
def repo(model: bytes) -> TufRepo:
    repo = TufRepo()
    repo.required_token = TOKEN
    publish_bundle(repo, make_bundle("tiny", "1.0.0", model), {MODEL_FILE: model})
    return repo


@pytest.fixture
def url(repo: TufRepo) -> Iterator[str]:
    with serve_repo(repo) as base:
        yield base


@pytest.fixture
def profile() -> FirmwareProfile:
    return load_profile(PROFILES / "x86-cpu.toml")


@pytest.fixture
def config(tmp_path: Path, repo: TufRepo, url: str) -> AgentConfig:
    return enrolled(tmp_path, repo, url)


def model_path(repo: TufRepo) -> str:
    return repo.served_target_path(file_target("tiny", "1.0.0", MODEL_FILE))


def fetcher(config: AgentConfig, **options: float) -> HttpxFetcher:
    return HttpxFetcher(
        TOKEN,
        resume_dir=config.downloads_dir,
        resume_urls=(config.targets_url,),
        resume_delay_s=0.01,
        **options,  # type: ignore[arg-type]
    )


def test_a_dropped_connection_resumes_within_the_install(
    config: AgentConfig, repo: TufRepo, profile: FirmwareProfile, model: bytes
) -> None:
    path = model_path(repo)
    repo.cuts[path] = [CUT]
    updater = Updater(config, profile)
    try:
        result = updater.install("tiny", "1.0.0")
    finally:
        updater.close()
    assert (result.slot / MODEL_FILE).read_bytes() == model
    requests = [(r, i, s) for p, r, i, s in repo.ranges if p == path]
    etag = f'"{hashlib.sha256(model).hexdigest()}"'
    assert requests == [(None, None, 200), (f"bytes={CUT}-", etag, 206)]
    # Every byte crossed the wire once: the resumed response carried only the rest.
    assert repo.sent[path] == len(model)
    assert list(config.downloads_dir.iterdir()) == []


def test_a_partial_download_survives_a_restart(
    config: AgentConfig, repo: TufRepo, profile: FirmwareProfile, model: bytes
) -> None:
    path = model_path(repo)
    repo.cuts[path] = [CUT, 0]  # the first try drops mid-file, its resume gets nothing
    first = Updater(config, profile, fetcher=fetcher(config, max_resumes=0))
    with pytest.raises(DownloadError):
        first.install("tiny", "1.0.0")
    assert first.current() is None
    partials = list(config.downloads_dir.glob("*.part"))
    assert [p.stat().st_size for p in partials] == [CUT]

    sent_before = repo.sent[path]
    second = Updater(config, profile)  # a restarted agent: a new fetcher, the same data dir
    try:
        result = second.install("tiny", "1.0.0")
    finally:
        second.close()
    assert (result.slot / MODEL_FILE).read_bytes() == model
    assert repo.ranges[-1][1:] == (f"bytes={CUT}-", repo.ranges[-1][2], 206)
    second_time = repo.sent[path] - sent_before
    assert second_time == len(model) - CUT < len(model)
    assert list(config.downloads_dir.iterdir()) == []


def test_a_wrong_partial_file_is_refused_by_tuf_and_not_resumed_again(
    config: AgentConfig, repo: TufRepo, profile: FirmwareProfile, model: bytes, url: str
) -> None:
    path = model_path(repo)
    own = fetcher(config)
    part = own.partial_path(f"{config.targets_url}{path.removeprefix('/targets/')}")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * CUT)  # not what the file starts with
    etag = httpx.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"}).headers["ETag"]
    part.with_suffix(".json").write_text(json.dumps({"url": part_url(config, path), "etag": etag}))
    updater = Updater(config, profile, fetcher=own)
    with pytest.raises(VerificationError) as caught:
        updater.install("tiny", "1.0.0")
    assert caught.value.reason == "verification"
    assert own.stats.resumed == 1
    assert not part.exists(), "a refused file must not be resumed again"
    result = updater.install("tiny", "1.0.0")
    assert (result.slot / MODEL_FILE).read_bytes() == model
    own.close()


def part_url(config: AgentConfig, path: str) -> str:
    return f"{config.targets_url}{path.removeprefix('/targets/')}"


def test_a_partial_of_another_file_version_starts_over(
    config: AgentConfig, repo: TufRepo, profile: FirmwareProfile, model: bytes
) -> None:
    path = model_path(repo)
    own = fetcher(config)
    part = own.partial_path(part_url(config, path))
    part.parent.mkdir(parents=True)
    part.write_bytes(model[:CUT])
    part.with_suffix(".json").write_text(
        json.dumps({"url": part_url(config, path), "etag": '"' + "0" * 64 + '"'})
    )
    updater = Updater(config, profile, fetcher=own)
    result = updater.install("tiny", "1.0.0")
    assert (result.slot / MODEL_FILE).read_bytes() == model
    # If-Range did not match: the server sent the whole file, the partial was dropped.
    assert repo.ranges[-1][1:] == (f"bytes={CUT}-", '"' + "0" * 64 + '"', 200)
    assert own.stats.restarted == 1
    own.close()


def test_resume_answers_are_checked(tmp_path: Path) -> None:
    body = bytes(range(256)) * 40
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("Range")
        seen.append(wanted)
        if wanted is None:
            return httpx.Response(200, content=body, headers={"ETag": '"x"'})
        if wanted == "bytes=100-":
            return httpx.Response(206, content=body[50:], headers={"Content-Range": "bytes 50-"})
        return httpx.Response(416, headers={"Content-Range": f"bytes */{len(body)}"})

    with HttpxFetcher(
        resume_dir=tmp_path,
        resume_urls=("http://r/",),
        transport=httpx.MockTransport(answer),
        resume_delay_s=0.0,
    ) as own:
        part = own.partial_path("http://r/a")
        for start in (100, 5000):
            part.write_bytes(body[:start])
            part.with_suffix(".json").write_text(json.dumps({"url": "http://r/a", "etag": '"x"'}))
            assert own.download_bytes("http://r/a", len(body)) == body
        # A wrong Content-Range and a 416 both start over from byte 0.
        assert seen == ["bytes=100-", None, "bytes=5000-", None]
        assert own.stats.restarted == 2
        part.write_bytes(body[:10])
        part.with_suffix(".json").write_text(json.dumps({"url": "http://r/a", "etag": '"x"'}))
        with pytest.raises(exceptions.DownloadLengthMismatchError):
            own.download_bytes("http://r/a", 100)
        assert not part.exists()
