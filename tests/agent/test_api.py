"""The agent's local API on a running agent: health, status, predict, and late ground truth."""

from __future__ import annotations

from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from tests.agent.fixtures import broker_up, wait_for
from tests.agent.test_service import (
    FakeUpdater,
    Registry,
    Watcher,
    device_id,  # noqa: F401 (a fixture)
    make_service,
    registry,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.skipif(
    not broker_up(), reason="SKIPPED LOUDLY: no MQTT broker on 127.0.0.1:1883"
)


def _unlabelled_video(path: Path, level: int = 200, frames: int = 30) -> str:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 30.0, (28, 28))
    for _ in range(frames):
        writer.write(np.full((28, 28, 3), level, np.uint8))
    writer.release()
    return f"file:{path}"


def _png(level: int) -> bytes:
    ok, encoded = cv2.imencode(".png", np.full((28, 28), level, np.uint8))
    assert ok
    return encoded.tobytes()


def test_local_api_serves_health_status_predictions_and_counts_feedback(
    tmp_path: Path,
    device_id: str,  # noqa: F811
    registry: Registry,  # noqa: F811
) -> None:
    updater = FakeUpdater(tmp_path / "models", bad=set(), current="1.0.0")
    camera = _unlabelled_video(tmp_path / "gate.avi")
    service = make_service(tmp_path, device_id, registry, updater, cameras=[camera], api_port=0)
    watcher = Watcher(device_id)
    service.start()
    assert service.api is not None
    api = httpx.Client(base_url=f"http://127.0.0.1:{service.api.port}", timeout=10)
    try:
        assert api.get("/healthz").json() == {"ok": True}
        status = api.get("/status").json()
        assert (status["model"], status["version"], status["device_id"]) == (
            "tiny",
            "1.0.0",
            device_id,
        )

        bright = api.post("/predict", content=_png(230)).json()
        assert (bright["label"], bright["version"]) == ("bright", "1.0.0")
        assert bright["scores"]["bright"] > bright["scores"]["dark"]
        assert api.post("/predict", content=_png(10)).json()["label"] == "dark"
        assert api.post("/predict", content=b"not an image").status_code == 422

        assert wait_for(lambda: api.get("/recent").json())
        frame = api.get("/recent").json()[-1]
        assert frame["predicted"] == "bright"
        assert (
            api.post("/feedback", json={"frame_id": frame["frame_id"], "label": "cow"}).status_code
            == 422
        )
        answer = api.post("/feedback", json={"frame_id": frame["frame_id"], "label": "dark"})
        assert answer.status_code == 202
        again = api.post("/feedback", json={"frame_id": frame["frame_id"], "label": "dark"})
        assert again.status_code == 404, "a frame is labelled once"

        def counted() -> bool:
            return any(
                m.body["labelled"] == 1 and m.body["correct"] == 0 for m in watcher.of("accuracy")
            )

        assert wait_for(counted), "the wrong prediction counts against accuracy"
    finally:
        api.close()
        service.stop()
        watcher.close()
