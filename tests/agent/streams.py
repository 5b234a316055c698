"""A real network camera for tests and benchmarks: ffmpeg serving MPEG-TS over HTTP.

ffmpeg's HTTP listen mode serves one client and exits when it leaves, so a
"camera that comes back" is a new ffmpeg on the same port.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

__all__ = ["HttpCamera", "ffmpeg_available"]


def ffmpeg_available() -> bool:
    """Whether an ffmpeg binary is on PATH."""
    return shutil.which("ffmpeg") is not None


def _listening(port: int) -> bool:
    # Reading the kernel's table instead of connecting: a probe connection would
    # use up the single client that ffmpeg's listen mode serves.
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        path = Path(table)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                return True
    return False


class HttpCamera:
    """A synthetic 320x240 camera at ``fps`` on ``http://127.0.0.1:{port}/cam.ts``."""

    def __init__(self, port: int, fps: int = 10) -> None:
        self.port = port
        self.fps = fps
        self.url = f"http://127.0.0.1:{port}/cam.ts"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start serving; returns once ffmpeg listens."""
        self._proc = subprocess.Popen(
            [
                "ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
                "-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={self.fps}",
                "-c:v", "mpeg2video", "-q:v", "5", "-f", "mpegts",
                "-listen", "1", self.url,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not _listening(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ffmpeg did not start listening on port {self.port}")
            time.sleep(0.05)

    def freeze(self) -> None:
        """Stop sending without closing the connection (a stalled camera)."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        """Take the camera away at once."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None
