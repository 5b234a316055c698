"""TensorRT variants: naming, profile checks, int8 calibration and parity on real models.

Everything but the engine build runs here on ONNX Runtime's CPU provider with
real ONNX files, so the numbers are real. The build itself runs only where this
onnxruntime has the TensorRT provider (a GPU machine); elsewhere it is skipped
with the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from corral.bundle import Bundle
from corral.profiles import load_profile
from tests.agent.tuf_repo import MODEL_FILE, make_bundle, make_model
from trainer.errors import (
    ExportError,
    TensorRTUnavailableError,
    TrainConfigError,
    VariantParityError,
)
from trainer.parity import (
    TOLERANCES,
    check_variant_parity,
    compare_outputs,
    golden_inputs,
    run_onnx,
)
from trainer.trt import (
    CALIBRATION_TABLE,
    TensorRTInfo,
    build_trt_variant,
    check_profile,
    probe,
    variant_name,
    write_calibration_table,
)

PROFILES = Path(__file__).resolve().parents[2] / "firmware-profiles"
HAS_TRT = "TensorrtExecutionProvider" in ort.get_available_providers()
INFO = TensorRTInfo(
    gpu="NVIDIA GeForce RTX 4090", tensorrt_version="10.3.0", onnxruntime_version="1.20"
)


def _perturbed(model: bytes, how: str) -> bytes:
    """The same model with its weights rounded to fp16, or with noise added."""
    proto = onnx.load_from_string(model)
    weights = numpy_helper.to_array(proto.graph.initializer[0])
    if how == "fp16":
        weights = weights.astype(np.float16).astype(np.float32)
    else:
        weights = weights + np.random.default_rng(0).normal(0, 0.2, weights.shape).astype(
            np.float32
        )
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(weights, "w"))
    return proto.SerializeToString()


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Bundle, Path]:
    model = make_model(1)
    (tmp_path / MODEL_FILE).write_bytes(model)
    return make_bundle("tiny", "1.0.0", model), tmp_path


@pytest.mark.parametrize(
    ("precision", "gpu", "version", "expected"),
    [
        ("fp16", "NVIDIA GeForce RTX 4090", "10.3.0", "trt-fp16-geforce-rtx-4090-trt10.3"),
        ("int8", "NVIDIA H200", "8.6.1", "trt-int8-h200-trt8.6"),
        ("fp16", "Orin (nvgpu)", "10.3", "trt-fp16-orin-nvgpu-trt10.3"),
        ("fp16", "NVIDIA " + "X" * 90, "10.3.0", "trt-fp16-" + "x" * 47 + "-trt10.3"),
        ("fp16", "???", "10.0.1", "trt-fp16-gpu-trt10.0"),
    ],
    ids=["geforce", "datacentre", "jetson", "long-name", "no-name"],
)
def test_variant_names_say_precision_gpu_and_tensorrt(
    precision: str, gpu: str, version: str, expected: str
) -> None:
    name = variant_name(precision, gpu, version)
    assert name == expected and len(name) <= 64


def test_profile_checks() -> None:
    nvidia = load_profile(PROFILES / "x86-nvidia.toml")
    assert check_profile(nvidia, INFO, None) == "fp16"
    assert check_profile(nvidia, INFO, "int8") == "int8"
    with pytest.raises(TrainConfigError, match="does not use TensorRT"):
        check_profile(load_profile(PROFILES / "x86-cpu.toml"), INFO, None)
    with pytest.raises(TrainConfigError, match="fp32"):
        check_profile(nvidia, INFO, "fp32")
    old = TensorRTInfo(gpu="T4", tensorrt_version="8.5.3", onnxruntime_version="1.18")
    with pytest.raises(TrainConfigError, match="needs TensorRT 8.6"):
        check_profile(nvidia, old, None)


@pytest.mark.skipif(HAS_TRT, reason="this onnxruntime has the TensorRT provider")
def test_probe_says_what_is_missing_without_tensorrt() -> None:
    with pytest.raises(TensorRTUnavailableError) as refused:
        probe()
    message = str(refused.value)
    assert "TensorrtExecutionProvider" in message and "onnxruntime-gpu" in message


def test_parity_passes_fp16_rounding_and_refuses_a_different_model(
    tiny: tuple[Bundle, Path], tmp_path: Path
) -> None:
    bundle, folder = tiny
    inputs = golden_inputs(bundle)
    reference = run_onnx(folder / MODEL_FILE, inputs)
    for how in ("fp16", "noisy"):
        (tmp_path / f"{how}.onnx").write_bytes(_perturbed(make_model(1), how))
    rounded = compare_outputs(reference, run_onnx(tmp_path / "fp16.onnx", inputs), "fp16")
    assert rounded.passed and rounded.top1_agreement == 1.0
    assert 0 < rounded.max_abs_diff < rounded.limit
    check_variant_parity(rounded)

    noisy = compare_outputs(reference, run_onnx(tmp_path / "noisy.onnx", inputs), "fp16")
    assert not noisy.passed and noisy.max_abs_diff > noisy.limit
    with pytest.raises(VariantParityError, match="--force") as refused:
        check_variant_parity(noisy)
    assert refused.value.report["passed"] is False
    check_variant_parity(noisy, force=True)  # forced: no error


def test_parity_limits_scale_with_the_outputs_and_differ_by_precision() -> None:
    reference = np.array([[10.0, -10.0], [1.0, 2.0]])
    off = reference + np.array([[0.15, 0.0], [0.0, 0.0]])
    assert not compare_outputs(reference, off, "fp16").passed  # limit 0.01 + 0.01 * 10
    assert compare_outputs(reference, off, "int8").passed  # limit 0.05 + 0.1 * 10
    flipped = np.array([[10.0, -10.0], [2.1, 2.0]])
    report = compare_outputs(reference, flipped, "int8")
    assert report.top1_agreement == 0.5 and not report.passed
    nan = np.array([[np.nan, 0.0], [1.0, 2.0]])
    assert not compare_outputs(reference, nan, "int8").passed
    assert TOLERANCES["int8"].rtol > TOLERANCES["fp16"].rtol
    with pytest.raises(ExportError, match="shape"):
        compare_outputs(reference, reference[:1], "fp16")
    with pytest.raises(ExportError, match="precision"):
        compare_outputs(reference, reference, "fp8")


def test_int8_calibration_table_is_written_on_the_cpu(
    tiny: tuple[Bundle, Path], tmp_path: Path
) -> None:
    bundle, folder = tiny
    table = write_calibration_table(folder / MODEL_FILE, golden_inputs(bundle), tmp_path / "cal")
    assert table.name == CALIBRATION_TABLE and table.stat().st_size > 0
    text = (tmp_path / "cal" / "calibration.cache").read_text()
    ranges = dict(line.split() for line in text.splitlines())
    assert {"input", "logits"} <= set(ranges)
    assert float(ranges["input"]) > 0


@pytest.mark.skipif(
    not HAS_TRT,
    reason="LOUD SKIP: no TensorrtExecutionProvider in this onnxruntime "
    f"({ort.get_available_providers()}); run on a GPU machine with onnxruntime-gpu and TensorRT",
)
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_a_tensorrt_variant_is_built_as_an_ep_context_model(
    tiny: tuple[Bundle, Path], tmp_path: Path, precision: str
) -> None:
    bundle, folder = tiny
    info = probe()
    profile = load_profile(PROFILES / "x86-nvidia.toml")
    built = build_trt_variant(bundle, folder, profile, precision, info, tmp_path / "build")
    model = onnx.load(str(built.path))
    assert any(node.op_type == "EPContext" for node in model.graph.node)
    assert built.entry.variant == variant_name(precision, info.gpu, info.tensorrt_version)
    assert built.parity.passed, built.parity.to_dict()
    # The agent loads it with plain provider names, as its runtime does.
    session = ort.InferenceSession(
        str(built.path), providers=["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    )
    out = session.run(None, {"input": golden_inputs(bundle)})[0]
    expected = np.asarray(built.entry.unrecognized["golden"]["outputs"])
    assert np.max(np.abs(out - expected)) <= built.entry.unrecognized["golden"]["tolerance"]
