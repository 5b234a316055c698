"""Camera benchmarks: how fast a network camera's stall is noticed and its return picked up.

A real ffmpeg HTTP stream (10 fps) feeds the agent's capture thread. The stall
figure is measured from the last frame the camera delivered to the moment the
camera reports the error, against the contract's limit max(2 s, 3 frame
intervals); the reconnect figure from the source listening again to the first
new frame, against the 5 s the issue allows.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Figure

from tests.agent.streams import HttpCamera, ffmpeg_available


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(condition: Callable[[], bool], timeout: float = 30.0) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("condition not met in 30 s")
        time.sleep(0.01)
    return time.monotonic()


def bench_camera(_workdir: Path) -> list[Figure]:
    """agent.camera_stall_detect_s and agent.camera_reconnect_s on a real HTTP stream."""
    from agent.camera import Camera, parse_camera

    if not ffmpeg_available():
        raise RuntimeError("ffmpeg is not installed; apt-get install ffmpeg")
    server = HttpCamera(_port(), fps=10)
    server.start()
    camera = Camera(parse_camera(server.url))
    camera.start()
    try:
        _until(lambda: camera.captured >= 20)
        limit = camera.source.stall_s
        server.freeze()
        # Frames already in the pipe still arrive after the freeze: time the stall
        # from the last one the camera delivered.
        seen, last = camera.captured, time.monotonic()
        while camera.error is None:
            if camera.captured != seen:
                seen, last = camera.captured, time.monotonic()
            if time.monotonic() - last > 30:
                raise TimeoutError("the stall was not detected in 30 s")
            time.sleep(0.005)
        stall = time.monotonic() - last
        server.kill()
        before = camera.captured
        server.start()
        back_from = time.monotonic()
        back = _until(lambda: camera.error is None and camera.captured > before) - back_from
    finally:
        camera.stop()
        server.kill()
    return [
        Figure(
            "agent.camera_stall_detect_s",
            round(stall, 2),
            "s",
            f"contract limit max(2 s, 3 frame intervals) = {limit:.1f} s",
            round(stall / limit, 2),
            "ratio <= 1.1",
        ),
        Figure(
            "agent.camera_reconnect_s",
            round(back, 2),
            "s",
            "issue limit: back within 5 s of the source returning",
            round(back / 5.0, 2),
            "ratio <= 1",
        ),
    ]


BENCHMARKS: dict[str, Callable[[Path], list[Figure]]] = {
    "agent.camera_stall_detect_s": bench_camera,
}
