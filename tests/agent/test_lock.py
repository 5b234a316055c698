"""One agent per data folder: the flock on agent.lock, in-process and across processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.errors import ConfigError, DataDirLockedError
from agent.lock import DataDirLock

ROOT = Path(__file__).resolve().parents[2]

_HOLD = textwrap.dedent(
    """
    import sys, time
    from agent.lock import DataDirLock
    DataDirLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


def test_a_second_lock_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(DataDirLockedError, match=f"pid {os.getpid()}") as caught:
        DataDirLock(tmp_path).acquire()
    assert isinstance(caught.value, ConfigError)
    first.release()
    with DataDirLock(tmp_path) as again:
        assert again.held


def test_corral_agent_run_refuses_a_folder_another_process_owns(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(tmp_path)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        result = CliRunner().invoke(
            app, ["run", "--data-dir", str(tmp_path), "--camera", f"folder:{tmp_path}"]
        )
        assert result.exit_code == 1
        assert f"another agent (pid {holder.pid}) is running on" in " ".join(result.output.split())
    finally:
        # A SIGKILLed owner leaves the file but not the lock.
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    with DataDirLock(tmp_path) as lock:
        assert lock.held and (tmp_path / "agent.lock").exists()
