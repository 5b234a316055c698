"""What the agent tests share: a tiny real ONNX classifier, the broker probe, condition waits."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from corral import Bundle, BundleFile, InputSpec, OutputSpec, file_digest

__all__ = ["LABELS", "broker_up", "tiny_bundle", "wait_for"]

LABELS = ["bright", "dark"]


def tiny_bundle(directory: Path, version: str = "1.0.0", sign: float = 1.0) -> Bundle:
    """Write a real ONNX classifier and return its bundle (files not verified here).

    input [N,1,28,28] → Flatten → MatMul → logits [N,2]: (mean, -mean) of the
    normalised pixels, so "bright" iff the mean pixel is above 127.5. With
    ``sign=-1`` the model answers the opposite class (a "bad" version).
    """
    directory.mkdir(parents=True, exist_ok=True)
    weights = np.zeros((784, 2), np.float32)
    weights[:, 0] = sign / 784
    weights[:, 1] = -sign / 784
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [784, 2], weights.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(directory / "model.onnx"))
    digest, length = file_digest(directory / "model.onnx")
    return Bundle(
        name="tiny",
        version=version,
        input=InputSpec(name="input", shape=[None, 1, 28, 28], mean=[0.5], std=[0.5]),
        output=OutputSpec(name="logits", labels=list(LABELS)),
        files=[BundleFile("model.onnx", digest, length)],
    )


def broker_up(host: str = "127.0.0.1", port: int = 1883) -> bool:
    """Whether an MQTT broker accepts connections at ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def wait_for(condition: Callable[[], object], timeout: float = 60.0) -> bool:
    """Poll ``condition`` until it is true or ``timeout`` passes; return its last value's truth."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())
