"""Network cameras: a real ffmpeg HTTP stream that stalls, dies and comes back.

The capture thread must notice a stall or a dead stream (the camera's ``error``
is set, which the service turns into a ``camera_lost`` event), keep trying with
a backoff, and deliver frames again once the source returns, all without a
thread blocked forever in a read. How fast is measured in ``scripts/bench``
(``agent.camera_stall_detect_s``, ``agent.camera_reconnect_s``), not asserted here.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import cv2
import pytest

from agent.camera import Camera, StreamSource, parse_camera
from agent.errors import CameraError
from tests.agent.streams import HttpCamera, ffmpeg_available

WAIT_S = 30.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(condition: Callable[[], Any], timeout: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def server() -> Iterator[HttpCamera]:
    if not ffmpeg_available():
        pytest.skip("SKIPPED LOUDLY: ffmpeg is not installed; scripts/test installs it")
    camera = HttpCamera(_free_port(), fps=10)
    camera.start()
    yield camera
    camera.kill()


def test_a_stream_that_stalls_or_dies_is_reported_and_picked_up_again(server: HttpCamera) -> None:
    camera = Camera(parse_camera(f"{server.url}#id=gate"))
    camera.start()
    try:
        assert camera.camera_id == "gate"
        assert _wait(lambda: camera.captured >= 10), "frames flow from the live stream"
        assert camera.error is None
        frame = camera.slot.take()
        assert frame is not None and frame.image.shape == (240, 320, 3) and frame.label is None

        server.freeze()
        assert _wait(lambda: camera.error is not None), "a silent stream counts as stalled"
        assert "sent no frame" in str(camera.error)

        server.kill()
        before = camera.captured
        server.start()
        assert _wait(lambda: camera.error is None and camera.captured > before), "back again"

        server.kill()
        assert _wait(lambda: camera.error is not None), "a dead stream is reported"
    finally:
        camera.stop()
    assert camera.source.live


def test_a_stream_that_is_not_there_fails_to_open_with_a_clear_error() -> None:
    source = StreamSource(f"http://127.0.0.1:{_free_port()}/none.ts")
    with pytest.raises(CameraError, match="cannot open camera stream"):
        source.open()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("rtsp://cam.local:8554/live#id=gate&fps=15", ("gate", "rtsp://cam.local:8554/live", 15.0)),
        ("http://10.0.0.9/video.ts", ("10.0.0.9-video", "http://10.0.0.9/video.ts", None)),
        ("v4l2:/dev/video0", ("video0", "/dev/video0", None)),
    ],
    ids=["rtsp-with-options", "http-named-by-host", "v4l2-device"],
)
def test_stream_uris_parse_and_keep_the_url_the_server_sees(
    uri: str, expected: tuple[str, str, float | None]
) -> None:
    source = parse_camera(uri)
    assert isinstance(source, StreamSource)
    assert (source.camera_id, source.url, source.fps) == expected
    assert source.backend == (cv2.CAP_V4L2 if uri.startswith("v4l2") else cv2.CAP_FFMPEG)


@pytest.mark.parametrize(
    ("fps", "stall"),
    [(None, 2.0), (30.0, 2.0), (1.0, 3.0), (0.5, 6.0)],
    ids=["unknown", "fast", "one-per-second", "slow"],
)
def test_the_stall_time_is_two_seconds_or_three_frame_intervals(
    fps: float | None, stall: float
) -> None:
    assert StreamSource("rtsp://cam/x", expected_fps=fps).stall_s == stall


@pytest.mark.parametrize(
    "uri",
    ["rtsp://cam/x#fps=fast", "rtsp://cam/x#fps=0", "rtsp://cam/x#zoom=2", "rtsp:///x", "v4l2:"],
    ids=["bad-fps", "zero-fps", "unknown-option", "no-host", "no-device"],
)
def test_bad_stream_uris_are_refused(uri: str) -> None:
    with pytest.raises(CameraError):
        parse_camera(uri)
