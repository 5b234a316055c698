"""Local rollback: a new model that breaks its health budget or its smoke test is undone.

The real install path (a TUF repository over HTTP, ``Updater``, slots, ONNX
Runtime), the real service and the real broker. Model 1.1.0 passes its golden
samples (zeros) but gives NaN for bright frames; 1.2.0's golden outputs are
wrong, so its smoke test fails.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.health import HealthBudget, Rejections, RunStats, judge
from agent.service import AgentService
from corral.bundle import GoldenSample
from corral.payloads import encode
from corral.profiles import FirmwareProfile
from corral.topics import topic
from tests.agent.fixtures import wait_for
from tests.agent.test_service import (
    HOST,
    PORT,
    Watcher,
    make_images,
    publish_retained,
    pytestmark,  # noqa: F401 (skips without a broker)
)
from tests.agent.tuf_repo import (
    MODEL_FILE,
    TufRepo,
    enrolled,
    make_bundle,
    make_model,
    publish_bundle,
    serve_repo,
)


def nan_model() -> bytes:
    """logits = sqrt(0.5 - mean(x)) twice: finite for dark frames, NaN for bright ones."""
    weights = np.full((784, 2), 1 / 784, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["mean"]),
            helper.make_node("Sub", ["half", "mean"], ["room"]),
            helper.make_node("Sqrt", ["room"], ["logits"]),
        ],
        "nan-when-bright",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[
            numpy_helper.from_array(weights, "w"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture
def repo() -> TufRepo:
    repo = TufRepo()
    good = make_model(1)
    publish_bundle(repo, make_bundle("tiny", "1.0.0", good), {MODEL_FILE: good})
    bad = nan_model()
    bundle = make_bundle("tiny", "1.1.0", bad)
    zeros = np.zeros((1, 1, 28, 28), np.float32)
    out = ort.InferenceSession(bad, providers=["CPUExecutionProvider"]).run(None, {"input": zeros})
    golden = [GoldenSample([0.0] * 784, [float(v) for v in out[0][0]])]
    publish_bundle(repo, dataclasses.replace(bundle, golden=golden), {MODEL_FILE: bad})
    wrong = make_model(3)
    publish_bundle(
        repo, make_bundle("tiny", "1.2.0", wrong, wrong_golden=True), {MODEL_FILE: wrong}
    )
    return repo


class Desired:
    """What the registry wants, answered to the service's poll; counts the polls."""

    def __init__(self) -> None:
        self.value: tuple[str | None, str | None] = (None, None)
        self.polls = 0

    def __call__(self) -> tuple[str | None, str | None]:
        self.polls += 1
        return self.value

    def polled_again(self, times: int) -> bool:
        start = self.polls
        return wait_for(lambda: self.polls >= start + times)


@pytest.fixture
def running(tmp_path: Path, repo: TufRepo) -> Iterator[tuple[AgentService, Desired, Watcher]]:
    device_id = f"rb-{uuid.uuid4().hex[:12]}"
    with serve_repo(repo) as url:
        config = enrolled(
            tmp_path / "agent",
            repo,
            url,
            device_id=device_id,
            device_token="t",
            mqtt_host=HOST,
            mqtt_port=PORT,
            report_interval_s=0.5,
            poll_interval_s=0.1,
        )
        profile = FirmwareProfile.from_dict({"name": "test", "runtime": {"batch_size": 2}})
        images = make_images(tmp_path / "imgs")
        desired = Desired()
        service = AgentService(
            config.data_dir,
            [f"folder:{images}?fps=60"],
            config=config,
            profile=profile,
            poll_desired=desired,
            health=HealthBudget(window_s=30.0, min_frames=5),
            health_check_s=0.05,
        )
        watcher = Watcher(device_id)
        service.start()
        try:
            desired.value = ("tiny", "1.0.0")
            assert wait_for(lambda: watcher.of("events", event="installed", version="1.0.0"))
            yield service, desired, watcher
        finally:
            service.stop()
            watcher.close()
            for kind in ("status", "desired"):
                publish_retained(topic(device_id, kind), b"")


def current_version(service: AgentService) -> str:
    state = json.loads((service.data_dir / "state.json").read_text())
    return str(state["current"]).split("-")[1]


def test_nan_outputs_after_the_swap_roll_back_until_a_new_hint(
    running: tuple[AgentService, Desired, Watcher],
) -> None:
    service, desired, watcher = running
    desired.value = ("tiny", "1.1.0")
    assert wait_for(lambda: watcher.of("events", event="rolled_back"))
    event = watcher.of("events", event="rolled_back")[0].body
    assert (event["version"], event["reason"], event["stage"]) == (
        "1.1.0",
        "nan_outputs",
        "probation",
    )
    assert (event["to_version"], event["nonfinite"] > 0) == ("1.0.0", True)
    assert service.installed == ("tiny", "1.0.0")
    assert current_version(service) == "1.0.0"
    assert wait_for(lambda: watcher.of("status", state="online", version="1.0.0"))
    # The registry still wants 1.1.0: the agent does not install it again...
    assert desired.polled_again(5)
    assert len(watcher.of("events", event="installed", version="1.1.0")) == 1
    # ...until the registry issues the hint anew (a new rollout).
    publish_retained(
        topic(service.device_id, "desired"),
        encode("desired", "registry", 1000, {"model": "tiny", "version": "1.1.0"}),
    )
    assert wait_for(lambda: len(watcher.of("events", event="rolled_back")) == 2)
    assert len(watcher.of("events", event="installed", version="1.1.0")) == 2
    assert service.installed == ("tiny", "1.0.0")


def test_a_failed_smoke_test_rolls_back_and_is_not_retried(
    running: tuple[AgentService, Desired, Watcher],
) -> None:
    service, desired, watcher = running
    desired.value = ("tiny", "1.2.0")
    assert wait_for(lambda: watcher.of("events", event="rolled_back"))
    event = watcher.of("events", event="rolled_back")[0].body
    assert (event["version"], event["reason"], event["stage"]) == ("1.2.0", "smoke_test", "install")
    assert event["to_version"] == "1.0.0"
    assert watcher.of("events", event="install_failed", reason="smoke_test")
    assert desired.polled_again(5)
    assert len(watcher.of("events", event="install_failed")) == 1
    assert service.installed == ("tiny", "1.0.0") and current_version(service) == "1.0.0"
    assert service.rejections.reason(("tiny", "1.2.0")) == "smoke_test"


def test_an_installed_model_that_fails_its_smoke_test_at_start_rolls_back(
    running: tuple[AgentService, Desired, Watcher], repo: TufRepo
) -> None:
    service, desired, watcher = running
    good = make_model(4)
    publish_bundle(repo, make_bundle("tiny", "1.3.0", good), {MODEL_FILE: good})
    desired.value = ("tiny", "1.3.0")
    assert wait_for(lambda: watcher.of("events", event="installed", version="1.3.0"))
    service.stop()
    # The disk changed under the installed model (a bad sector, a bad copy): it still
    # loads, but no longer gives its golden outputs.
    assert service.updater is not None
    slot = service.updater.current()
    assert slot is not None and slot.version == "1.3.0"
    (slot.path / MODEL_FILE).write_bytes(make_model(5))

    again = AgentService(
        service.data_dir,
        [f"folder:{make_images(service.data_dir.parent / 'imgs2')}?fps=60"],
        config=service.config,
        profile=service.profile,
        poll_desired=desired,
        health=HealthBudget(window_s=30.0, min_frames=5),
        health_check_s=0.05,
    )
    again.start()
    try:
        assert wait_for(lambda: watcher.of("events", event="rolled_back", stage="start"))
        event = watcher.of("events", event="rolled_back", stage="start")[0].body
        assert (event["version"], event["reason"]) == ("1.3.0", "smoke_test")
        assert (event["to_model"], event["to_version"]) == ("tiny", "1.0.0")
        assert "at start" in event["message"]
        assert again.installed == ("tiny", "1.0.0")
        # Still desired, but rejected here: only a new hint brings it back.
        assert desired.polled_again(5)
        assert again.installed == ("tiny", "1.0.0")
    finally:
        again.stop()


def test_a_rejection_survives_a_restart_and_yields_to_a_newer_hint(tmp_path: Path) -> None:
    path = tmp_path / "rejected.json"
    Rejections(path).add(("tiny", "1.1.0"), "nan_outputs", hint_seq=7)
    again = Rejections(path)
    assert ("tiny", "1.1.0") in again and again.reason(("tiny", "1.1.0")) == "nan_outputs"
    assert not again.clear_if_newer(("tiny", "1.1.0"), 7)  # the retained replay of that hint
    assert again.clear_if_newer(("tiny", "1.1.0"), 8)
    assert ("tiny", "1.1.0") not in Rejections(path)


def _stats(**fields: Any) -> RunStats:
    return RunStats("m", "1", **fields)


@pytest.mark.parametrize(
    ("stats", "baseline", "reason"),
    [
        (_stats(frames=3, nonfinite=1), 10.0, "nan_outputs"),
        (_stats(frames=100), 10.0, None),
        (_stats(frames=18, errors=2), 10.0, "error_rate"),
        (_stats(frames=3, errors=2), 10.0, None),  # too few frames to judge a rate
        (_stats(frames=200, latencies=[300.0] * 200), 10.0, "latency_budget"),
        (_stats(frames=200, latencies=[300.0] * 200), 250.0, None),  # the box was slow already
        (_stats(frames=200, latencies=[300.0] * 200), None, None),  # nothing to go back to
        (_stats(frames=50, latencies=[300.0] * 50), 10.0, None),  # too few frames yet
    ],
    ids=[
        "nan",
        "healthy",
        "errors",
        "errors-too-early",
        "slow",
        "slow-like-before",
        "slow-no-baseline",
        "slow-too-early",
    ],
)
def test_judge(stats: RunStats, baseline: float | None, reason: str | None) -> None:
    budget = HealthBudget(min_frames=20, latency_p95_ms=100.0)
    verdict = judge(stats, budget, baseline)
    assert (verdict.reason if verdict else None) == reason
