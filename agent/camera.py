"""Camera sources and the latest-frame slot they feed.

Every camera runs its own capture thread::

    source.read() ──▶ Frame ──▶ LatestFrame.put() ──▶ (pipeline) LatestFrame.take()
                                  │ a frame overwritten before it was taken
                                  └─▶ counts as a drop

The slot holds one frame: the newest frame wins, so a slow consumer never
works on stale frames and never makes the camera queue up memory. Every
``put`` sets a shared :class:`threading.Event` so that the pipeline can sleep
until any camera has something new instead of spinning.

Sources are given as URIs (:func:`parse_camera`):

- ``folder:/path?fps=20&loop=1&seed=0``: an ImageFolder tree
  ``path/<label>/*.png|jpg`` shown in a fixed shuffled order; each frame
  carries its folder name as ground truth (the demo's simulated camera).
- ``file:/path/video.mp4?loop=1``: a video played at its own frame rate,
  looping; an optional sidecar ``video.mp4.labels.json`` holding
  ``{"labels": [label per frame index]}`` gives ground truth.
- ``rtsp://…``, ``http(s)://…``: a network stream through FFmpeg, read as fast
  as it comes (the stream keeps its own pace). A stream that sends nothing for
  max(2 s, 3 frame intervals) is stalled: the read fails, the camera reports the
  error and reconnects with a backoff capped at 2 s, so it is back within a few
  seconds of the source returning. Options go in the fragment, which is never
  sent to the server: ``rtsp://cam/stream#id=gate&fps=15`` (``fps`` is the
  expected rate, used for the stall time before the stream reports its own).
- ``v4l2:/dev/video0``: a local V4L2 device, read like a stream.

:class:`MemorySource` serves frames from memory for tests and benchmarks.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from agent.errors import CameraError

__all__ = [
    "IMAGE_SUFFIXES",
    "Camera",
    "CameraSource",
    "FileSource",
    "FolderSource",
    "Frame",
    "LatestFrame",
    "MemorySource",
    "StreamSource",
    "parse_camera",
]

logger = logging.getLogger(__name__)

#: The image files folder cameras (and ``corral predict``) read.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_DEFAULT_VIDEO_FPS = 25.0
# Reconnect backoff: quick first tries, then every 2 s, so a returning source is
# picked up within a few seconds without hammering one that stays away.
_REOPEN_DELAYS_S = (0.25, 0.5, 1.0, 2.0)
_MIN_STALL_S = 2.0
_STREAM_OPEN_TIMEOUT_S = 5.0


@dataclass(slots=True)
class Frame:
    """One captured image.

    ``image`` is uint8, H x W (gray) or H x W x 3 (BGR, as OpenCV gives it);
    ``label`` is the ground truth when the source knows it; ``captured`` is the
    :func:`time.monotonic` time of capture, from which latency is measured.
    ``tensor`` is the model input the capture thread already made with
    ``prepared_by`` (see :attr:`Camera.prepare`), or None.
    """

    camera_id: str
    index: int
    image: np.ndarray
    label: str | None
    captured: float
    tensor: np.ndarray | None = None
    prepared_by: object | None = None


class Preparer(Protocol):
    """Makes a frame into model input (``agent.runtime.Preprocessor``)."""

    @property
    def sample_shape(self) -> tuple[int, int, int]: ...

    def __call__(self, frame: np.ndarray, out: np.ndarray) -> None: ...


class LatestFrame:
    """A one-frame slot: the newest frame wins, overwritten frames count as drops.

    Args:
        signal: set on every ``put`` so that a consumer can wait for any of many slots.
    """

    def __init__(self, signal: threading.Event | None = None) -> None:
        self._lock = threading.Lock()
        self._frame: Frame | None = None
        self._taken = threading.Event()
        self._taken.set()
        self.signal = signal if signal is not None else threading.Event()
        self.puts = 0
        self.drops = 0

    def put(self, frame: Frame) -> None:
        """Store ``frame``, replacing (and counting as dropped) one that was not taken."""
        with self._lock:
            if self._frame is not None:
                self.drops += 1
            self._frame = frame
            self.puts += 1
            self._taken.clear()
        self.signal.set()

    def take(self) -> Frame | None:
        """Remove and return the newest frame, or None if none arrived since the last take."""
        with self._lock:
            frame, self._frame = self._frame, None
        if frame is not None:
            self._taken.set()
        return frame

    def pending(self) -> bool:
        """Whether a frame is waiting to be taken."""
        return self._frame is not None

    def wait_taken(self, timeout: float) -> bool:
        """Wait until the slot is empty.

        Returns:
            Whether it is empty.
        """
        return self._taken.wait(timeout)


class CameraSource:
    """Where frames come from; subclasses implement :meth:`open` and :meth:`read`.

    ``fps`` is the pace the capture thread keeps; None means "as fast as the
    consumer takes frames" (no drops: the benchmark mode).
    """

    camera_id: str
    fps: float | None = None
    #: A live source paces itself (a network stream, a device): the capture thread
    #: reads it as fast as frames come, and the newest wins in the slot.
    live: bool = False

    def open(self) -> None:
        """Open the source.

        Raises:
            CameraError: the source cannot be opened.
        """

    def read(self) -> tuple[np.ndarray, str | None] | None:
        """The next image and its label, or None at the end of a non-looping source.

        Raises:
            CameraError: the source failed while reading.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release the source's resources."""


class MemorySource(CameraSource):
    """Frames from memory, looping; for tests and benchmarks.

    Args:
        frames: images (uint8 H x W or H x W x 3).
        labels: ground truth per frame, or None.
        fps: pace; None = as fast as the consumer takes them.
        camera_id: the camera's name.
        loop: start again after the last frame.
    """

    def __init__(
        self,
        frames: Sequence[np.ndarray],
        labels: Sequence[str | None] | None = None,
        fps: float | None = None,
        camera_id: str = "memory",
        loop: bool = True,
    ) -> None:
        if not frames:
            raise CameraError("MemorySource needs at least one frame")
        if labels is not None and len(labels) != len(frames):
            raise CameraError(f"MemorySource got {len(frames)} frames but {len(labels)} labels")
        self.frames = list(frames)
        self.labels: list[str | None] = list(labels) if labels is not None else [None] * len(frames)
        self.fps = fps
        self.camera_id = camera_id
        self.loop = loop
        self._next = 0

    def read(self) -> tuple[np.ndarray, str | None] | None:
        """The next frame; see :meth:`CameraSource.read`."""
        i = self._next
        if i >= len(self.frames):
            if not self.loop:
                return None
            i = 0
        self._next = i + 1
        return self.frames[i], self.labels[i]


class FolderSource(CameraSource):
    """An ImageFolder tree shown as a camera: ``root/<label>/*.png|jpg``.

    Files are shown in a fixed order shuffled with ``seed``, so a run is
    reproducible; each frame is labelled with its folder's name.
    """

    def __init__(
        self,
        root: Path,
        fps: float | None = 20.0,
        loop: bool = True,
        seed: int = 0,
        camera_id: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.fps = fps
        self.loop = loop
        self.seed = seed
        self.camera_id = camera_id or self.root.name or "folder"
        self.items: list[tuple[Path, str]] = []
        self._next = 0

    def open(self) -> None:
        """List and shuffle the images.

        Raises:
            CameraError: the folder is missing or holds no images in label sub-folders.
        """
        if not self.root.is_dir():
            raise CameraError(
                f"camera folder {self.root} does not exist; expected an ImageFolder tree "
                "root/<label>/*.png"
            )
        items = sorted(
            (path, sub.name)
            for sub in self.root.iterdir()
            if sub.is_dir()
            for path in sub.iterdir()
            if path.suffix.lower() in IMAGE_SUFFIXES
        )
        if not items:
            raise CameraError(
                f"camera folder {self.root} has no images in label sub-folders "
                f"(root/<label>/*{'|'.join(IMAGE_SUFFIXES)})"
            )
        random.Random(self.seed).shuffle(items)
        self.items = items
        self._next = 0

    def read(self) -> tuple[np.ndarray, str | None] | None:
        """Decode the next image; see :meth:`CameraSource.read`.

        Raises:
            CameraError: an image cannot be decoded.
        """
        if self._next >= len(self.items):
            if not self.loop or not self.items:
                return None
            self._next = 0
        path, label = self.items[self._next]
        self._next += 1
        image = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR)
        if image is None:
            raise CameraError(f"camera folder {self.root}: cannot decode image {path}")
        return image, label


class FileSource(CameraSource):
    """A video file played at its own frame rate, looping, through OpenCV."""

    def __init__(self, path: Path, loop: bool = True, camera_id: str | None = None) -> None:
        self.path = Path(path)
        self.loop = loop
        self.camera_id = camera_id or self.path.stem or "file"
        self.fps = _DEFAULT_VIDEO_FPS
        self.labels: list[str | None] = []
        self._capture: Any = None
        self._index = 0

    def open(self) -> None:
        """Open the video and its optional labels sidecar.

        Raises:
            CameraError: the file is missing or OpenCV cannot decode it, or the sidecar is bad.
        """
        if not self.path.is_file():
            raise CameraError(f"camera video {self.path} does not exist")
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise CameraError(
                f"OpenCV cannot open camera video {self.path}; is the codec supported?"
            )
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        # Some containers report 0 or nonsense; play those at a common camera rate.
        self.fps = fps if 0 < fps <= 1000 else _DEFAULT_VIDEO_FPS
        self._capture = capture
        self._index = 0
        sidecar = self.path.with_name(self.path.name + ".labels.json")
        if sidecar.is_file():
            try:
                labels = json.loads(sidecar.read_text())["labels"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise CameraError(
                    f'labels sidecar {sidecar} should hold {{"labels": [label per frame]}}: {e}'
                ) from e
            if not isinstance(labels, list):
                raise CameraError(f"labels sidecar {sidecar}: 'labels' should be a list")
            self.labels = [None if v is None else str(v) for v in labels]

    def read(self) -> tuple[np.ndarray, str | None] | None:
        """Decode the next frame, rewinding at the end; see :meth:`CameraSource.read`.

        Raises:
            CameraError: the video cannot be read even from its start.
        """
        ok, image = self._capture.read()
        if not ok:
            if not self.loop:
                return None
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._index = 0
            ok, image = self._capture.read()
            if not ok:
                raise CameraError(f"camera video {self.path} yields no frames")
        index = self._index
        self._index += 1
        label = self.labels[index] if index < len(self.labels) else None
        return image, label

    def close(self) -> None:
        """Release the OpenCV capture."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class StreamSource(CameraSource):
    """A live stream (RTSP, HTTP, a V4L2 device) read through OpenCV's FFmpeg or V4L2 backend.

    The read timeout is the stall time, max(2 s, 3 frame intervals), so a stream
    that goes silent fails its read instead of blocking the capture thread.
    """

    live = True

    def __init__(
        self,
        url: str,
        camera_id: str | None = None,
        expected_fps: float | None = None,
        backend: int = cv2.CAP_FFMPEG,
    ) -> None:
        self.url = url
        self.camera_id = camera_id or _stream_name(url)
        self.backend = backend
        self.fps = expected_fps
        self._capture: Any = None

    @property
    def stall_s(self) -> float:
        """Seconds without a frame after which the stream counts as stalled."""
        return max(_MIN_STALL_S, 3.0 / self.fps) if self.fps else _MIN_STALL_S

    def _connect(self) -> Any:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            int(max(_STREAM_OPEN_TIMEOUT_S, self.stall_s) * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            int(self.stall_s * 1000),
        ]
        capture = cv2.VideoCapture(self.url, self.backend, params)
        if not capture.isOpened():
            capture.release()
            raise CameraError(f"cannot open camera stream {self.url}; is the source up?")
        return capture

    def open(self) -> None:
        """Connect to the stream.

        Raises:
            CameraError: the stream cannot be opened within the open timeout.
        """
        capture = self._connect()
        reported = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if 0 < reported <= 1000 and (self.fps is None or abs(reported - self.fps) > 0.5):
            before = self.stall_s
            self.fps = reported
            if self.stall_s > before:
                # A slow stream needs a longer read timeout than the one opened with.
                capture.release()
                capture = self._connect()
        self._capture = capture

    def read(self) -> tuple[np.ndarray, str | None] | None:
        """The next frame as it arrives; a live stream has no labels.

        Raises:
            CameraError: the stream ended, stalled past the stall time, or broke.
        """
        if self._capture is None:
            raise CameraError(f"camera stream {self.url} is not open")
        ok, image = self._capture.read()
        if not ok or image is None:
            raise CameraError(
                f"camera stream {self.url} sent no frame for {self.stall_s:.1f} s "
                "or closed; reconnecting"
            )
        return image, None

    def close(self) -> None:
        """Release the capture."""
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def _stream_name(url: str) -> str:
    parts = urlsplit(url)
    tail = Path(parts.path).stem
    return f"{parts.hostname or 'stream'}-{tail}" if tail else (parts.hostname or "stream")


class Camera:
    """A source and the capture thread that feeds its :class:`LatestFrame` slot.

    Args:
        source: where frames come from.
        signal: shared wake-up event set on every new frame (see :class:`LatestFrame`).
    """

    def __init__(self, source: CameraSource, signal: threading.Event | None = None) -> None:
        self.source = source
        self.camera_id = source.camera_id
        self.slot = LatestFrame(signal)
        self.error: str | None = None
        self.ended = False
        #: Set by the pipeline to the running model's preprocessing: the capture
        #: thread then makes each frame's model input itself, in parallel with
        #: the model, and the pipeline only copies it into the batch (a frame
        #: made for another model is preprocessed again by the pipeline).
        self.prepare: Preparer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def captured(self) -> int:
        """Frames captured so far."""
        return self.slot.puts

    @property
    def drops(self) -> int:
        """Frames overwritten before the pipeline took them."""
        return self.slot.drops

    def start(self) -> None:
        """Open the source and start the capture thread.

        Raises:
            CameraError: the source cannot be opened.
        """
        self.source.open()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"camera-{self.camera_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the capture thread and close the source."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.source.close()

    def _run(self) -> None:
        index = 0
        period = 1.0 / self.source.fps if self.source.fps else 0.0
        deadline = time.monotonic()
        while not self._stop.is_set():
            if period:
                delay = deadline - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                # Behind by more than a frame: skip ahead instead of bursting.
                deadline = max(deadline + period, time.monotonic() - period)
            # Benchmark mode: hand over the next frame as soon as the last one is taken.
            # (A live source is read as fast as it delivers, so no frame piles up in it.)
            elif not self.source.live and not self.slot.wait_taken(0.1):
                continue
            try:
                item = self.source.read()
            except CameraError as e:
                self.error = str(e)
                logger.warning("camera %s failed: %s; reopening", self.camera_id, e)
                if self._reopen():
                    continue
                break
            if item is None:
                self.ended = True
                logger.info("camera %s reached the end of its source", self.camera_id)
                break
            image, label = item
            captured = time.monotonic()
            tensor, prepared_by = self._prepared(image)
            self.slot.put(Frame(self.camera_id, index, image, label, captured, tensor, prepared_by))
            index += 1

    def _prepared(self, image: np.ndarray) -> tuple[np.ndarray | None, Preparer | None]:
        prepare = self.prepare
        if prepare is None:
            return None, None
        # A fresh array per frame: the pipeline may still be reading the last one.
        tensor = np.empty(prepare.sample_shape, np.float32)
        try:
            prepare(image, tensor)
        except Exception:  # OpenCV's errors are untyped; the pipeline retries and reports it
            return None, None
        return tensor, prepare

    def _reopen(self) -> bool:
        # Supervision: keep trying to reopen a failed source until stopped, backing off.
        attempt = 0
        while not self._stop.wait(_REOPEN_DELAYS_S[min(attempt, len(_REOPEN_DELAYS_S) - 1)]):
            attempt += 1
            self.source.close()
            try:
                self.source.open()
            except CameraError as e:
                self.error = str(e)
                continue
            self.error = None
            logger.info("camera %s is back after %d attempt(s)", self.camera_id, attempt)
            return True
        return False


def parse_camera(uri: str, camera_id: str | None = None) -> CameraSource:
    """Build a source from a camera URI.

    Args:
        uri: ``folder:/path?fps=20&loop=1&seed=0`` or ``file:/path/video.mp4?loop=1``;
            both accept ``id=NAME`` to name the camera.
        camera_id: the camera's name when the URI has no ``id``; defaults to the path's name.

    Returns:
        The source, not yet opened (opening happens in :meth:`Camera.start`).

    Raises:
        CameraError: an unknown scheme or a bad parameter.
    """
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme in _STREAM_SCHEMES:
        return _parse_stream(uri, camera_id)
    path = Path(parts.netloc + parts.path) if parts.netloc else Path(parts.path)
    if not parts.path and not parts.netloc:
        raise CameraError(f"camera URI {uri!r} has no path; e.g. folder:/data/images?fps=20")
    params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    name = params.pop("id", None) or camera_id
    try:
        loop = params.pop("loop", "1") not in ("0", "false", "no")
        if scheme == "folder":
            fps_text = params.pop("fps", "20")
            fps = float(fps_text) if fps_text not in ("0", "max") else None
            seed = int(params.pop("seed", "0"))
            source: CameraSource = FolderSource(path, fps=fps, loop=loop, seed=seed, camera_id=name)
        elif scheme == "file":
            source = FileSource(path, loop=loop, camera_id=name)
        else:
            raise CameraError(
                f"camera URI {uri!r} has unknown scheme {parts.scheme!r}; use folder:, file:, "
                "rtsp://, http(s):// or v4l2:"
            )
    except ValueError as e:
        raise CameraError(f"camera URI {uri!r} has a bad parameter: {e}") from e
    if params:
        raise CameraError(f"camera URI {uri!r} has unknown parameters {sorted(params)}")
    return source


_STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "v4l2")


def _parse_stream(uri: str, camera_id: str | None) -> StreamSource:
    url, _, fragment = uri.partition("#")
    options = {k: v[-1] for k, v in parse_qs(fragment).items()}
    name = options.pop("id", None) or camera_id
    try:
        fps = float(options.pop("fps")) if "fps" in options else None
    except ValueError as e:
        raise CameraError(f"camera URI {uri!r} has a bad fps: {e}") from e
    if fps is not None and not 0 < fps <= 1000:
        raise CameraError(f"camera URI {uri!r}: fps should be in (0, 1000], got {fps}")
    if options:
        raise CameraError(f"camera URI {uri!r} has unknown options {sorted(options)}")
    if url.lower().startswith("v4l2:"):
        device = urlsplit(url).path
        if not device:
            raise CameraError(f"camera URI {uri!r} names no device; e.g. v4l2:/dev/video0")
        return StreamSource(device, name or Path(device).name, fps, backend=cv2.CAP_V4L2)
    if not urlsplit(url).hostname:
        raise CameraError(f"camera URI {uri!r} names no host; e.g. rtsp://camera.local/stream")
    return StreamSource(url, name, fps)
