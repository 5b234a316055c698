"""Camera sources, the latest-frame slot and camera URIs."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from agent.camera import (
    Camera,
    FileSource,
    FolderSource,
    Frame,
    LatestFrame,
    MemorySource,
    parse_camera,
)
from agent.errors import CameraError

WAIT_S = 20.0
LEVELS = {"bright": 200, "dark": 40}


def make_folder(root: Path, per_label: int = 5) -> Path:
    """An ImageFolder tree whose pixel values tell which folder an image is in."""
    for label, level in LEVELS.items():
        (root / label).mkdir(parents=True)
        for i in range(per_label):
            image = np.full((28, 28), level + i, dtype=np.uint8)
            assert cv2.imwrite(str(root / label / f"{i}.png"), image)
    return root


def make_video(path: Path, frames: int = 10, fps: float = 30.0) -> list[str]:
    """An MJPG video whose frame k is gray level 20*k, and its labels sidecar."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (32, 24))
    assert writer.isOpened()
    for k in range(frames):
        writer.write(np.full((24, 32, 3), 20 * k, dtype=np.uint8))
    writer.release()
    labels = [f"l{k % 3}" for k in range(frames)]
    path.with_name(path.name + ".labels.json").write_text(json.dumps({"labels": labels}))
    return labels


def frame(index: int) -> Frame:
    return Frame("c", index, np.zeros((2, 2), np.uint8), None, 0.0)


def test_latest_frame_keeps_the_newest_and_counts_overwritten_frames() -> None:
    signal = threading.Event()
    slot = LatestFrame(signal)
    for i in range(3):
        slot.put(frame(i))
    assert signal.is_set()
    taken = slot.take()
    assert taken is not None and taken.index == 2
    assert slot.drops == 2
    assert slot.take() is None
    slot.put(frame(3))
    assert slot.drops == 2  # the slot was empty: nothing was overwritten


def test_folder_camera_labels_frames_with_their_folder(tmp_path: Path) -> None:
    source = FolderSource(make_folder(tmp_path / "imgs"), fps=None, loop=False)
    source.open()
    seen = []
    while (item := source.read()) is not None:
        image, label = item
        assert label is not None
        level = int(image[0, 0])
        assert LEVELS[label] <= level < LEVELS[label] + 5
        seen.append((label, level))
    assert len(seen) == 10 and len(set(seen)) == 10


def test_folder_order_is_shuffled_but_fixed_by_seed(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "imgs", per_label=20)

    def order(seed: int) -> list[Path]:
        source = FolderSource(root, seed=seed)
        source.open()
        return [p for p, _ in source.items]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert order(1) != sorted(order(1))


def test_slow_consumer_makes_the_camera_count_drops(tmp_path: Path) -> None:
    camera = Camera(FolderSource(make_folder(tmp_path / "imgs"), fps=200))
    camera.start()
    try:
        assert _wait(lambda: camera.drops >= 10)
        taken = camera.slot.take()
        assert taken is not None
        # The frame waiting was the newest: every earlier one was overwritten or taken.
        assert taken.index >= camera.drops
        assert taken.label in LEVELS
    finally:
        camera.stop()


def test_memory_source_without_fps_waits_for_the_consumer() -> None:
    frames = [np.full((4, 4), i, np.uint8) for i in range(5)]
    camera = Camera(MemorySource(frames, [str(i) for i in range(5)], fps=None, loop=False))
    camera.start()
    got: list[str | None] = []
    try:
        while len(got) < 5:
            assert _wait(camera.slot.pending)
            taken = camera.slot.take()
            assert taken is not None
            got.append(taken.label)
        assert _wait(lambda: camera.ended)
    finally:
        camera.stop()
    assert got == ["0", "1", "2", "3", "4"]
    assert camera.drops == 0


def test_video_plays_at_its_frame_rate_loops_and_reads_its_labels(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    labels = make_video(path, frames=10, fps=30.0)
    source = FileSource(path)
    source.open()
    try:
        assert source.fps == pytest.approx(30.0)
        got = []
        for _ in range(25):
            item = source.read()
            assert item is not None
            got.append(item[1])
            assert item[0].shape == (24, 32, 3)
        assert got == [labels[k % 10] for k in range(25)]
    finally:
        source.close()


@pytest.mark.parametrize(
    ("uri", "kind", "fps", "loop"),
    [
        ("folder:/data/imgs?fps=5&loop=0", FolderSource, 5.0, False),
        ("folder:/data/imgs", FolderSource, 20.0, True),
        ("folder:/data/imgs?fps=max", FolderSource, None, True),
        ("file:/data/v.mp4", FileSource, 25.0, True),
    ],
    ids=["folder-params", "folder-defaults", "folder-max", "file"],
)
def test_parse_camera(uri: str, kind: type, fps: float | None, loop: bool) -> None:
    source = parse_camera(uri)
    assert isinstance(source, kind)
    assert source.fps == fps
    assert getattr(source, "loop") is loop  # noqa: B009


@pytest.mark.parametrize(
    "uri",
    ["ftp://cam/stream", "folder:", "folder:/x?fps=fast", "folder:/x?colour=red"],
    ids=["unknown-scheme", "no-path", "bad-fps", "unknown-param"],
)
def test_parse_camera_refuses_bad_uris(uri: str) -> None:
    with pytest.raises(CameraError):
        parse_camera(uri)


def test_parse_camera_takes_an_id() -> None:
    assert parse_camera("folder:/data/imgs?id=gate").camera_id == "gate"
    assert parse_camera("folder:/data/imgs", camera_id="cam3").camera_id == "cam3"


@pytest.mark.parametrize("uri", ["folder:{tmp}/missing", "file:{tmp}/missing.mp4", "folder:{tmp}"])
def test_opening_a_missing_source_says_what_is_missing(tmp_path: Path, uri: str) -> None:
    camera = Camera(parse_camera(uri.format(tmp=tmp_path)))
    with pytest.raises(CameraError, match=str(tmp_path)):
        camera.start()


def _wait(condition: object, timeout: float = WAIT_S) -> bool:
    import time

    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return bool(condition())
