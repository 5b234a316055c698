"""SIGKILL at random moments of download and install: the agent always restarts on a
verified model and converges to the desired version.

A real TUF repository over HTTP serves two versions, throttled so that a model
file takes a noticeable time to arrive; a child process (the agent's install
path: ``Updater`` on the data folder) installs them in turn, forever, and is
killed with SIGKILL after a random delay. Each restart must find the current
slot complete, matching its signed hash, loading in ONNX Runtime and passing
its golden samples, before it installs again (resuming a partial download when
the kill left one).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.slots import Slots
from tests.agent.tuf_repo import (
    MODEL_FILE,
    TufRepo,
    enrolled,
    make_bundle,
    make_model,
    publish_bundle,
    serve_repo,
)

ROOT = Path(__file__).resolve().parents[2]
RUNS = int(os.environ.get("CORRAL_KILL_RUNS", "20"))
VERSIONS = ("1.0.0", "1.1.0")

_AGENT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.config import AgentConfig
    from agent.updater import Updater
    from corral.profiles import load_profile

    data_dir, profile_path, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    versions = sys.argv[4:]
    updater = Updater(AgentConfig.load(data_dir), load_profile(profile_path))
    current = updater.current()
    if current is None:
        print("start none", flush=True)
    else:
        current.verify()                      # length and SHA-256 of the signed file
        updater.load(current).smoke_test()    # loads and gives its golden outputs
        print("start", current.version, flush=True)
    # Start with the version that is not current, so that every run installs.
    i = 1 if current is not None and current.version == versions[0] else 0
    while True:
        version = versions[i % len(versions)]
        updater.install("tiny", version)
        print("installed", version, flush=True)
        if mode == "once":
            break
        i += 1
    """
)


@pytest.fixture
def url() -> Iterator[tuple[TufRepo, str]]:
    repo = TufRepo()
    for seed, version in enumerate(VERSIONS, start=1):
        model = make_model(seed)
        publish_bundle(repo, make_bundle("tiny", version, model), {MODEL_FILE: model})
    repo.throttle = (512, 0.01)  # about 130 ms per model file
    with serve_repo(repo) as base:
        yield repo, base


def _run(data_dir: Path, mode: str, *versions: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", _AGENT, str(data_dir), str(PROFILE), mode, *versions],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


PROFILE = ROOT / "firmware-profiles" / "x86-cpu.toml"


def test_sigkill_during_download_and_install_never_loses_a_verified_model(
    tmp_path: Path, url: tuple[TufRepo, str]
) -> None:
    repo, base = url
    data_dir = tmp_path / "agent"
    enrolled(data_dir, repo, base)
    rng = random.Random(4)
    ever_installed = False
    starts: list[str] = []
    mid_install = 0
    for run in range(RUNS):
        proc = _run(data_dir, "loop", *VERSIONS)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        assert line[:1] == ["start"], f"run {run}: the agent did not start: {line}"
        starts.append(line[1])
        if ever_installed:
            assert line[1] in VERSIONS, f"run {run}: no verified model after a kill"
        # Kill somewhere in the next download, install or the one after.
        proc_delay = rng.uniform(0.0, 0.8)
        try:
            proc.wait(timeout=proc_delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"run {run}: the agent died on its own"
        ever_installed = ever_installed or any(
            out.startswith(b"installed") for out in proc.stdout.read().splitlines()
        )
        proc.stdout.close()
        ever_installed = ever_installed or Slots(data_dir).current() is not None
        mid_install += any(p.name.startswith(".") for p in (data_dir / "models").iterdir())

    # The last start: install the desired version to the end.
    proc = _run(data_dir, "once", "1.1.0")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert out.decode().split()[-2:] == ["installed", "1.1.0"]
    current = Slots(data_dir).current()
    assert current is not None and current.version == "1.1.0"
    current.verify()
    assert not [p for p in (data_dir / "models").iterdir() if p.name.startswith(".")]
    assert not list((data_dir / "downloads").glob("*.part"))
    assert any(s in VERSIONS for s in starts), "no kill landed after an install"
    resumed = sum(1 for _, wanted, _, _ in repo.ranges if wanted is not None)
    print(
        f"{RUNS} kills; started on: {starts}; kills that left a staging folder: {mid_install}; "
        f"downloads resumed after a kill: {resumed}"
    )
