"""The agent's local HTTP API, on 127.0.0.1 by default.

``GET /healthz`` (is the agent alive), ``GET /status`` (model, profile,
cameras, counters), ``POST /predict`` (an image in, labels and scores out, from
the model running now), ``GET /recent`` (frames still open for ground truth)
and ``POST /feedback`` (the ground-truth label of a recent frame, counted into
the accuracy the agent reports). It is a side door for people and local
systems; the hot path never waits on it.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from agent.service import AgentService

__all__ = ["LocalApi", "create_api"]

_MAX_IMAGE_BYTES = 16 * 1024 * 1024


class Feedback(BaseModel):
    """Ground truth for one recent frame."""

    frame_id: str = Field(min_length=3, max_length=200, description="camera:index from /recent")
    label: str = Field(min_length=1, max_length=100)


def create_api(service: AgentService) -> FastAPI:
    """The FastAPI app over a running ``service``."""
    app = FastAPI(title="Corral agent", version="1")

    def running() -> Any:
        pipeline = service.pipeline
        runtime = pipeline.runtime if pipeline is not None else None
        if runtime is None:
            raise HTTPException(503, "no model is installed yet; roll one out to this device")
        return runtime

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        healthy = service.healthy()
        if not healthy:
            raise HTTPException(503, "the agent's pipeline or a worker thread has stopped")
        return {"ok": True}

    @app.get("/status")
    def status() -> dict[str, Any]:
        pipeline = service.pipeline
        return {
            **service.status_body(),
            "device_id": service.device_id,
            "frames": pipeline.frames_total if pipeline is not None else 0,
            "errors": pipeline.errors_total if pipeline is not None else 0,
            "camera_errors": {c.camera_id: c.error for c in service.cameras},
        }

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        body = await request.body()
        if not body or len(body) > _MAX_IMAGE_BYTES:
            raise HTTPException(
                422, f"send one image (PNG or JPEG) as the body, up to {_MAX_IMAGE_BYTES} bytes"
            )
        image = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_ANYCOLOR)
        if image is None:
            raise HTTPException(422, "the body is not an image OpenCV can decode (PNG or JPEG)")
        runtime = running()
        batch = np.empty((1, *runtime.bundle.input.sample_shape), dtype=np.float32)
        runtime.preprocess(image, batch[0])
        scores = runtime.run(batch)[0]
        if runtime.bundle.output.kind == "logits":
            exp = np.exp(scores - scores.max())
            scores = exp / exp.sum()
        labels = runtime.bundle.output.labels
        best = int(np.argmax(scores))
        return {
            "model": runtime.bundle.name,
            "version": runtime.bundle.version,
            "label": labels[best],
            "scores": {label: round(float(v), 6) for label, v in zip(labels, scores, strict=True)},
        }

    @app.get("/recent")
    def recent(limit: int = 50) -> list[dict[str, Any]]:
        pipeline = service.pipeline
        if pipeline is None:
            return []
        runtime = running()
        labels = runtime.bundle.output.labels
        return [
            {"frame_id": frame_id, "version": version, "predicted": labels[prediction]}
            for frame_id, version, prediction in pipeline.recent(max(1, min(limit, 1000)))
        ]

    @app.post("/feedback", status_code=202)
    def feedback(body: Feedback) -> dict[str, Any]:
        runtime = running()
        if body.label not in runtime.bundle.output.labels:
            raise HTTPException(
                422, f"label {body.label!r} is not one of {runtime.bundle.output.labels}"
            )
        assert service.pipeline is not None
        if not service.pipeline.feedback(body.frame_id, body.label):
            raise HTTPException(
                404,
                f"frame {body.frame_id} is not open for feedback (unknown, too old, already "
                "labelled, or seen by an earlier model); pick one from GET /recent",
            )
        return {"counted": True}

    return app


class LocalApi:
    """Serves :func:`create_api` with uvicorn on a thread."""

    def __init__(self, service: AgentService, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        config = uvicorn.Config(
            create_api(service), host=host, port=port, log_level="warning", ws="none"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="local-api", daemon=True)

    @property
    def port(self) -> int:
        """The port it listens on (useful with port 0)."""
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; return once listening.

        Raises:
            RuntimeError: it did not start in ``timeout`` seconds (port taken?).
        """
        self._thread.start()
        done = threading.Event()
        while not self._server.started and self._thread.is_alive():
            if done.wait(0.02) or timeout <= 0:
                break
            timeout -= 0.02
        if not self._server.started:
            raise RuntimeError("the agent's local API did not start; is the port taken?")

    def stop(self) -> None:
        """Stop serving."""
        self._server.should_exit = True
        self._thread.join(5)
