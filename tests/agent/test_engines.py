"""Execution providers and TensorRT's engine cache: a stale engine is never loaded.

TensorRT is not on this machine: the provider list is faked where it must name
TensorRT (``onnxruntime.get_available_providers``), and the engine cache's
folders are checked as files. IO binding runs for real on the CPU.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from agent.engines import (
    KEEP,
    EngineKey,
    engine_folder,
    provider_options,
)
from agent.runtime import ModelRuntime
from tests.agent.test_runtime import _bundle

KEY = EngineKey(
    model_sha256="ab" * 32,
    precision="fp16",
    gpu="NVIDIA RTX A2000",
    driver="550.54.15",
    onnxruntime="1.22.0",
    tensorrt="10.3.0",
)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(EngineKey)])
def test_a_change_in_anything_an_engine_depends_on_gives_another_folder(field: str) -> None:
    changed = dataclasses.replace(KEY, **{field: getattr(KEY, field) + "x"})
    assert changed.folder() != KEY.folder()
    assert dataclasses.replace(KEY).folder() == KEY.folder()  # and nothing else does
    assert KEY.folder().startswith("abababababab-fp16-")


def test_only_the_most_recently_used_engine_folders_are_kept(tmp_path: Path) -> None:
    keys = [dataclasses.replace(KEY, driver=f"55{i}.0") for i in range(KEEP + 2)]
    for age, key in enumerate(keys):
        folder = engine_folder(tmp_path, key)
        (folder / "engine.trt").write_bytes(b"engine")
        os.utime(folder, (1_000_000 + age, 1_000_000 + age))
    engine_folder(tmp_path, keys[0])  # a rollback: the oldest is used again
    kept = {p.name for p in tmp_path.iterdir()}
    assert kept == {k.folder() for k in (keys[0], *keys[-(KEEP - 1) :])}


def test_tensorrt_gets_fp16_and_an_engine_cache_in_its_keys_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    chosen = provider_options(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
        "fp16",
        tmp_path,
        lambda: KEY,
    )
    (trt, trt_options), (cuda, cuda_options), cpu = chosen
    assert (trt, cuda, cpu) == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert trt_options["trt_fp16_enable"] is True
    assert trt_options["trt_engine_cache_enable"] is True
    assert trt_options["trt_engine_cache_path"] == str(tmp_path / KEY.folder())
    assert (tmp_path / KEY.folder()).is_dir()
    assert cuda_options == {"device_id": 0}
    fp32 = provider_options(["TensorrtExecutionProvider"], "fp32", None, lambda: KEY)
    assert fp32 == [("TensorrtExecutionProvider", {"device_id": 0, "trt_fp16_enable": False})]


def test_without_tensorrt_the_key_is_never_asked_and_cpu_is_the_last_resort() -> None:
    def no_key() -> EngineKey:
        raise AssertionError("the engine key is only for TensorRT")

    only_cpu = provider_options(
        ["TensorrtExecutionProvider", "CUDAExecutionProvider"], "fp16", Path("/nowhere"), no_key
    )
    assert only_cpu == ["CPUExecutionProvider"]


def test_io_binding_gives_what_a_plain_run_gives_and_reuses_its_buffers(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, None)
    plain = ModelRuntime.load(bundle, tmp_path)
    bound = ModelRuntime(bundle, plain.session, io_binding=True)
    rng = np.random.default_rng(3)
    batches = [rng.random((n, 1, 4, 4), dtype=np.float32) for n in (1, 3, 1, 3)]
    answers = [bound.run(b) for b in batches]
    for batch, answer in zip(batches, answers, strict=True):
        np.testing.assert_array_equal(answer, plain.run(batch))
    # Earlier answers are copies, not views of a buffer the next batch overwrote.
    assert not np.array_equal(answers[0], answers[2])
    np.testing.assert_array_equal(answers[0], plain.run(batches[0]))
    assert len(bound._binding._buffers) == 2  # type: ignore[union-attr]  # one per batch size
    assert bound.smoke_test() < 1e-4
