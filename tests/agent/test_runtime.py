"""ModelRuntime's smoke test: each variant is checked against the outputs meant for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from agent.errors import SmokeTestError
from agent.runtime import ModelRuntime
from corral import Bundle, BundleFile, GoldenSample, InputSpec, OutputSpec, file_digest


def _model(path: Path, scale: float) -> BundleFile:
    weights = np.zeros((16, 2), np.float32)
    weights[:, 0], weights[:, 1] = scale / 16, -scale / 16
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [16, 2], weights.ravel().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    digest, length = file_digest(path)
    return BundleFile(path.name, digest, length)


def _bundle(tmp_path: Path, int8_golden: dict[str, object] | None) -> Bundle:
    fp32 = _model(tmp_path / "model.onnx", 1.0)
    # A stand-in for a quantized file: close to fp32 but not within its tight tolerance.
    int8 = _model(tmp_path / "model.int8.onnx", 1.02)
    int8.variant = "int8"
    if int8_golden is not None:
        int8.unrecognized["golden"] = int8_golden
    return Bundle(
        name="tiny",
        version="1.0.0",
        input=InputSpec(name="input", shape=[None, 1, 4, 4]),
        output=OutputSpec(name="logits", labels=["a", "b"]),
        files=[fp32, int8],
        golden=[GoldenSample([1.0] * 16, [1.0, -1.0])],
        golden_tolerance=1e-4,
    )


def test_the_reference_variant_passes_against_the_bundle_golden_outputs(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, None)
    assert ModelRuntime.load(bundle, tmp_path).smoke_test() < 1e-6


def test_an_int8_variant_is_checked_against_its_own_outputs_and_tolerance(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, {"tolerance": 0.05, "outputs": [[1.02, -1.02]]})
    assert ModelRuntime.load(bundle, tmp_path, variant="int8").smoke_test() < 1e-5


def test_an_int8_variant_without_its_own_outputs_is_held_to_the_fp32_ones(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, None)
    with pytest.raises(SmokeTestError, match="int8 file differ by 0.02"):
        ModelRuntime.load(bundle, tmp_path, variant="int8").smoke_test()
