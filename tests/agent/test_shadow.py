"""Shadow mode in the pipeline: a candidate runs on the same frames, compared, deciding nothing."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from agent.camera import Camera, Frame, MemorySource
from agent.pipeline import Pipeline
from agent.runtime import ModelRuntime
from tests.agent.fixtures import tiny_bundle, wait_for
from tests.agent.test_pipeline import (
    SlowRuntime,
    expected_prediction,
    hand_metrics,
    labelled_images,
    tiny_runtime,
)

N = 400


def run(current: ModelRuntime, candidate: ModelRuntime, n: int = N) -> tuple[dict[str, Any], ...]:
    """``n`` labelled frames in batches of 4 through ``current``, ``candidate`` in shadow.

    Drives :meth:`Pipeline.process` directly and lets the candidate finish each
    batch before the next, so that every frame is compared.
    """
    images, labels = labelled_images(n)
    pipeline = Pipeline([], current, batch_size=4)
    pipeline.set_shadow(candidate)
    assert pipeline.shadow == (candidate.bundle.name, candidate.bundle.version)
    shadow = pipeline._shadow
    assert shadow is not None
    try:
        for start in range(0, n, 4):
            frames = [
                Frame("c0", i, images[i], labels[i], time.monotonic())
                for i in range(start, min(start + 4, n))
            ]
            pipeline.process(current, frames)
            assert wait_for(lambda: shadow._slot is None)
        inference, accuracy = pipeline.take_window()
    finally:
        pipeline.stop()
    assert pipeline.shadow is None, "stopping the pipeline stops the candidate"
    return inference, accuracy, {"images": images, "labels": labels}


def test_the_same_model_in_shadow_agrees_on_every_compared_frame(tmp_path: Path) -> None:
    current, candidate = tiny_runtime(tmp_path / "a"), tiny_runtime(tmp_path / "b", "2.0.0")
    inference, _, _ = run(current, candidate)
    shadow = inference["shadow"]
    assert (shadow["model"], shadow["version"]) == ("tiny", "2.0.0")
    assert (shadow["frames"], shadow["skipped"], shadow["errors"]) == (N, 0, 0)
    assert shadow["agree"] == shadow["frames"] and shadow["agreement"] == 1.0
    assert shadow["only_shadow_correct"] == shadow["only_current_correct"] == 0
    assert shadow["correct"] == shadow["current_correct"]
    assert shadow["batches"] == N // 4
    assert sum(shadow["class_counts"].values()) == shadow["frames"]


def test_a_candidate_that_answers_otherwise_is_counted_and_changes_nothing(tmp_path: Path) -> None:
    current = tiny_runtime(tmp_path / "a")
    opposite = tiny_runtime(tmp_path / "b", "2.0.0", sign=-1.0)
    inference, accuracy, data = run(current, opposite)
    shadow = inference["shadow"]
    assert shadow["frames"] == N and shadow["agree"] == 0
    # On every labelled frame exactly one of two opposite models is right.
    assert shadow["correct"] + shadow["current_correct"] == shadow["labelled"] == shadow["frames"]
    assert shadow["only_shadow_correct"] == shadow["correct"]
    assert shadow["only_current_correct"] == shadow["current_correct"]
    # What the device reports and counts is the current model's, on all N frames.
    expected = hand_metrics(data["images"], data["labels"])
    assert (inference["version"], inference["frames"]) == ("1.0.0", N)
    assert (accuracy["labelled"], accuracy["correct"]) == (N, expected["correct"])


def test_a_candidate_with_other_preprocessing_gets_its_own_input(tmp_path: Path) -> None:
    current = tiny_runtime(tmp_path / "a")
    # Unnormalised pixels (0..1) make the tiny model's mean always positive: "bright".
    bundle = tiny_bundle(tmp_path / "b", "3.0.0")
    bundle = dataclasses.replace(
        bundle, input=dataclasses.replace(bundle.input, mean=[0.0], std=[1.0])
    )
    candidate = ModelRuntime.load(bundle, tmp_path / "b")
    inference, _, data = run(current, candidate)
    shadow = inference["shadow"]
    assert shadow["class_counts"] == {"bright": N}
    bright = sum(expected_prediction(img) == "bright" for img in data["images"])
    assert 0 < bright < N
    assert shadow["agree"] == bright


def test_a_slow_candidate_never_holds_up_the_current_model(tmp_path: Path) -> None:
    fast = tiny_runtime(tmp_path / "a")
    slow_bundle = tiny_bundle(tmp_path / "b", "2.0.0")
    slow_model = ModelRuntime.load(slow_bundle, tmp_path / "b")
    slow = SlowRuntime(slow_model.bundle, slow_model.session)  # 50 ms a batch
    images, labels = labelled_images(40)
    camera = Camera(MemorySource(images, labels, fps=400))
    pipeline = Pipeline([camera], fast, batch_size=1)
    pipeline.set_shadow(slow)
    pipeline.start()
    camera.start()
    try:
        assert wait_for(lambda: pipeline.frames_total >= 200)
        inference, _ = pipeline.take_window()
    finally:
        pipeline.stop()
        camera.stop()
    shadow = inference["shadow"]
    assert shadow["skipped"] > 0, "batches the candidate was too busy for are skipped, not waited"
    assert shadow["frames"] < inference["frames"]
    assert shadow["frames"] + shadow["skipped"] + shadow["errors"] <= inference["frames"]
    assert shadow["run_ms"]["mean"] > shadow["current_run_ms"]["mean"]
    assert np.isfinite(shadow["run_ms"]["p95"])
