"""Camera benchmarks: stall and reconnect of a network camera, and decode speed.

``agent.camera_stall_detect_s`` and ``agent.camera_reconnect_s``: a real ffmpeg
HTTP stream (10 fps) feeds the agent's capture thread. The stall figure is
measured from the last frame the camera delivered to the moment the camera
reports the error, against the contract's limit max(2 s, 3 frame intervals);
the reconnect figure from the source listening again to the first new frame,
against the 5 s the issue allows.

``agent.decode_fps_640x480``: frames per second the camera path (``FileSource``
through OpenCV's FFmpeg backend, the capture thread, the latest-frame slot, a
consumer taking every frame) gets out of a 640x480 H.264 file made with ffmpeg's
``testsrc``, unpaced, against ``ffmpeg -benchmark -i FILE -f null -`` on the
same file (ffmpeg's own decoder, but no conversion to BGR). The two alternate
in rounds; the figure is the median round. A bare OpenCV read loop (decode and
BGR conversion, no capture thread) is reported beside them, to tell the codec's
cost from the capture thread's.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import Figure, median

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
    from agent.camera import Camera, StreamSource, parse_camera

    if not ffmpeg_available():
        raise RuntimeError("ffmpeg is not installed; apt-get install ffmpeg")
    server = HttpCamera(_port(), fps=10)
    server.start()
    source = parse_camera(server.url)
    assert isinstance(source, StreamSource)
    camera = Camera(source)
    camera.start()
    try:
        _until(lambda: camera.captured >= 20)
        limit = source.stall_s
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


DECODE_FRAMES = 600
DECODE_ROUNDS = 3


def _h264_file(path: Path, frames: int) -> None:
    """A 640x480, 30 fps H.264 file of ffmpeg's test pattern, camera-like (no B-frames)."""
    subprocess.run(
        [
            "ffmpeg",
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=640x480:rate=30,format=yuv420p",
            "-frames:v",
            str(frames),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "main",
            "-bf",
            "0",
            "-g",
            "60",
            str(path),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def _ffmpeg_decode_s(path: Path) -> float:
    """Wall seconds ffmpeg itself takes to decode the whole file (its ``rtime``)."""
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostats", "-benchmark", "-i", str(path), "-f", "null", "-"],
        check=True,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    match = re.search(r"rtime=([0-9.]+)s", done.stderr)
    if match is None:
        raise RuntimeError(f"ffmpeg -benchmark printed no rtime: {done.stderr[-300:]}")
    return float(match.group(1))


def _opencv_decode_s(path: Path) -> float:
    """Wall seconds a bare OpenCV read loop takes over the file (no thread, no slot)."""
    import cv2

    start = time.perf_counter()
    capture = cv2.VideoCapture(str(path))
    try:
        while capture.read()[0]:
            pass
    finally:
        capture.release()
    return time.perf_counter() - start


def _camera_decode(path: Path) -> tuple[int, float]:
    """Frames and wall seconds the camera path takes to hand over every frame of the file."""
    from agent.camera import Camera, FileSource

    class Unpaced(FileSource):
        # The file's own frame rate paces a real camera; here the consumer does.
        def open(self) -> None:
            super().open()
            self.fps = None

    start = time.perf_counter()
    camera = Camera(Unpaced(path, loop=False))
    camera.start()
    slot, taken = camera.slot, 0
    try:
        while True:
            slot.signal.clear()
            if slot.take() is not None:
                taken += 1
            elif camera.ended and not slot.pending():
                break
            elif camera.error is not None:
                raise RuntimeError(f"the camera failed: {camera.error}")
            else:
                slot.signal.wait(0.5)
        return taken, time.perf_counter() - start
    finally:
        camera.stop()


def bench_decode(workdir: Path) -> list[Figure]:
    """agent.decode_fps_640x480: camera-path decode fps / ffmpeg's own decode fps."""
    if not ffmpeg_available():
        raise RuntimeError(
            "agent.decode_fps_640x480 needs ffmpeg (to make the H.264 file and as the baseline); "
            "apt-get install ffmpeg"
        )
    path = workdir / "testsrc-640x480.mp4"
    _h264_file(path, DECODE_FRAMES)
    rounds = []
    for _ in range(DECODE_ROUNDS):
        baseline_s = _ffmpeg_decode_s(path)
        frames, camera_s = _camera_decode(path)
        if frames != DECODE_FRAMES:
            raise RuntimeError(
                f"the camera path gave {frames} frames, the file has {DECODE_FRAMES}"
            )
        opencv_s = _opencv_decode_s(path)
        rounds.append((frames / camera_s, DECODE_FRAMES / baseline_s, DECODE_FRAMES / opencv_s))
    fps = median([r[0] for r in rounds])
    ratio = median([r[0] / r[1] for r in rounds])
    per_round = ", ".join(f"{c:.0f}/{b:.0f}" for c, b, _ in rounds)
    return [
        Figure(
            "agent.decode_fps_640x480",
            round(fps, 1),
            "fps",
            f"ffmpeg -benchmark -f null on the same {DECODE_FRAMES}-frame H.264 file: "
            f"{median([r[1] for r in rounds]):.0f} fps; ratio is camera/ffmpeg, median of "
            f"{len(rounds)} rounds (camera/ffmpeg fps: {per_round}); a bare OpenCV read loop "
            f"(decode and BGR conversion, no capture thread): {median([r[2] for r in rounds]):.0f} "
            "fps",
            round(ratio, 3),
            None,
        )
    ]


BENCHMARKS: dict[str, Callable[[Path], list[Figure]]] = {
    "agent.camera_stall_detect_s": bench_camera,
    "agent.decode_fps_640x480": bench_decode,
}
