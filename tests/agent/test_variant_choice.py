"""The agent picks the TensorRT variant built for its own GPU when the rollout names none.

Installs go through a real TUF repository over real HTTP with real bundles and
real ONNX Runtime (on the CPU). Only the hardware is faked, at its seams: the
provider list onnxruntime reports, the NVML probe ``agent.hardware.detect_facts``
asks, and the TensorRT version (``agent.variants.detect_tensorrt_device``'s
parameters). The "TensorRT variants" are plain ONNX files that the CPU provider
runs, so a wrongly chosen one would install, and the tests would see it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from agent.errors import UpdateError
from agent.hardware import GpuInfo, detect_facts
from agent.updater import InstallResult, Updater
from agent.variants import TensorRTDevice, choose_tensorrt_variant, detect_tensorrt_device
from corral.bundle import Bundle, BundleFile
from corral.payloads import installed_event
from corral.profiles import FirmwareProfile, load_profile
from corral.targets import file_target
from tests.agent.test_updater import PROFILES, TOKEN, enrolled, leftovers
from tests.agent.tuf_repo import MODEL_FILE, TufRepo, make_bundle, make_model, publish_bundle
from tests.agent.tuf_repo import serve_repo as serve

TRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TRT, "CUDAExecutionProvider", "CPUExecutionProvider")
L4 = "NVIDIA L4"
RTX = "NVIDIA GeForce RTX 4090"


def variant_name(precision: str, gpu: str, tensorrt_version: str) -> str:
    """As ``trainer.trt.variant_name`` names them (the trainer is not imported here)."""
    slug = "-".join(gpu.lower().removeprefix("nvidia ").split())
    return f"trt-{precision}-{slug}-trt{'.'.join(tensorrt_version.split('.')[:2])}"


def trt_entry(
    bundle: Bundle,
    data: bytes,
    *,
    gpu: str = L4,
    tensorrt_version: str = "10.3.0",
    batch_size: Any = 16,
    precision: str = "fp16",
    profile: str = "x86-nvidia",
    name: str | None = None,
    wrong_golden: bool = False,
    record: dict[str, Any] | None = None,
) -> BundleFile:
    """An entry shaped like ``trainer.trt.build_trt_variant``'s, with its own golden outputs."""
    inputs = np.asarray([s.input for s in bundle.golden], dtype=np.float32).reshape(-1, 1, 28, 28)
    try:
        outputs = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(
            ["logits"], {"input": inputs}
        )[0]
    except Exception:  # not a model (an engine that will not load): outputs do not matter
        outputs = np.zeros((len(inputs), 2), dtype=np.float32)
    if wrong_golden:
        outputs = outputs + 3.0
    variant = name or variant_name(precision, gpu, tensorrt_version)
    build = {
        "precision": precision,
        "gpu": gpu,
        "tensorrt_version": tensorrt_version,
        "onnxruntime_version": "1.22.0",
        "profile": profile,
        "batch_size": batch_size,
        "calibration": None,
    }
    return BundleFile(
        name=f"model.{variant}.onnx",
        sha256=hashlib.sha256(data).hexdigest(),
        length=len(data),
        variant=variant,
        unrecognized={
            "derived_from": "fp32",
            "format": "onnx-epcontext",
            "golden": {"outputs": outputs.tolist(), "tolerance": 1e-3},
            "tensorrt": build if record is None else record,
        },
    )


def device(
    gpu: str | None = L4,
    tensorrt_version: str = "10.3.1",
    providers: tuple[str, ...] = GPU_PROVIDERS,
    calls: list[str] | None = None,
) -> Callable[[], TensorRTDevice | None]:
    """The real detection, with the provider list, NVML and TensorRT's version faked."""

    def nvml() -> GpuInfo:
        if calls is not None:
            calls.append("nvml")
        return GpuInfo(names=() if gpu is None else (gpu,), driver_version="550.54.15")

    return functools.partial(
        detect_tensorrt_device,
        providers=lambda: providers,
        facts=lambda: detect_facts(
            machine=lambda: "x86_64",
            gpu_probes=[nvml],
            tegra_release=Path("/nonexistent/nv_tegra_release"),
        ),
        tensorrt=lambda: tensorrt_version,
    )


@pytest.fixture
def repo() -> TufRepo:
    repo = TufRepo()
    repo.required_token = TOKEN
    return repo


@pytest.fixture
def url(repo: TufRepo) -> Iterator[str]:
    with serve(repo) as base:
        yield base


def nvidia() -> FirmwareProfile:
    return load_profile(PROFILES / "x86-nvidia.toml")  # TensorRT first, fp16, batch 16


def publish(repo: TufRepo, *variants: tuple[BundleFile, bytes]) -> Bundle:
    """Version 1.2.0 of ``tiny``: fp32 plus ``variants``, signed."""
    fp32 = make_model(3)
    bundle = make_bundle("tiny", "1.2.0", fp32)
    bundle.files.extend(entry for entry, _ in variants)
    publish_bundle(repo, bundle, {MODEL_FILE: fp32} | {e.name: data for e, data in variants})
    return bundle


def fetched(repo: TufRepo, entry: BundleFile | str) -> bool:
    """Whether the agent downloaded this file of tiny 1.2.0."""
    name = entry if isinstance(entry, str) else entry.name
    served = repo.served_target_path(file_target("tiny", "1.2.0", name))
    return any(path == served for path, _ in repo.requests)


def install(
    tmp_path: Path,
    repo: TufRepo,
    url: str,
    profile: FirmwareProfile,
    detect: Callable[[], TensorRTDevice | None],
    variant: str | None = None,
) -> tuple[Updater, InstallResult]:
    updater = Updater(enrolled(tmp_path, repo, url), profile, tensorrt_device=detect)
    try:
        return updater, updater.install("tiny", "1.2.0", variant=variant)
    finally:
        updater.close()


def slot_files(result: InstallResult) -> list[str]:
    return sorted(p.name for p in result.slot.iterdir())


# --- installs ---------------------------------------------------------------------------


def test_the_variant_built_for_this_gpu_and_tensorrt_is_chosen(
    tmp_path: Path, repo: TufRepo, url: str
) -> None:
    blank = make_bundle("tiny", "1.2.0", make_model(3))
    mine = trt_entry(blank, make_model(5), tensorrt_version="10.3.0")
    other_gpu = trt_entry(blank, make_model(6), gpu=RTX)
    other_trt = trt_entry(blank, make_model(7), tensorrt_version="8.6.1")
    publish(repo, (other_gpu, make_model(6)), (mine, make_model(5)), (other_trt, make_model(7)))

    _, result = install(tmp_path, repo, url, nvidia(), device(tensorrt_version="10.3.1"))

    assert result.variant == "trt-fp16-l4-trt10.3"
    assert result.fallback is None
    assert slot_files(result) == ["bundle.json", mine.name, "slot.json"]
    # Its own golden outputs (another model's than fp32's) passed the smoke test.
    assert result.smoke_max_diff <= 1e-3
    assert not fetched(repo, MODEL_FILE)
    assert not fetched(repo, other_gpu) and not fetched(repo, other_trt)
    event = installed_event(
        "tiny", "1.2.0", seconds=1.0, smoke_diff=0.0, swap_ms=0.1, variant=result.variant
    )
    assert event["variant"] == "trt-fp16-l4-trt10.3" and "fallback" not in event


@pytest.mark.parametrize(
    ("entry", "here"),
    [
        ({"gpu": RTX}, {}),
        ({"gpu": "NVIDIA L40S"}, {}),
        ({"tensorrt_version": "10.2.0"}, {}),
        ({"tensorrt_version": "8.6.1"}, {}),
        ({"batch_size": 8}, {}),
        ({"batch_size": "16"}, {}),
        ({"precision": "fp8"}, {}),
        ({"record": {"gpu": L4, "precision": "fp16", "batch_size": 16}}, {}),
        ({}, {"providers": ("CUDAExecutionProvider", "CPUExecutionProvider")}),
        ({}, {"tensorrt_version": "unknown"}),
        ({}, {"gpu": None}),
    ],
    ids=[
        "other-gpu",
        "similar-gpu-name",
        "other-tensorrt-minor",
        "other-tensorrt-major",
        "batch-too-small",
        "batch-not-a-number",
        "unknown-precision",
        "no-tensorrt-version-recorded",
        "no-tensorrt-provider-here",
        "tensorrt-version-unknown-here",
        "no-gpu-here",
    ],
)
def test_an_engine_not_built_for_this_device_is_never_chosen(
    tmp_path: Path, repo: TufRepo, url: str, entry: dict[str, Any], here: dict[str, Any]
) -> None:
    blank = make_bundle("tiny", "1.2.0", make_model(3))
    # A file the CPU provider runs and whose smoke test passes: chosen, it would install.
    wrong = trt_entry(blank, make_model(5), **entry)
    publish(repo, (wrong, make_model(5)))

    _, result = install(tmp_path, repo, url, nvidia(), device(**here))

    assert result.variant == "fp32" and result.fallback is None
    assert slot_files(result) == ["bundle.json", MODEL_FILE, "slot.json"]
    assert not fetched(repo, wrong)


def test_a_cpu_profile_ignores_tensorrt_variants_and_never_probes_the_gpu(
    tmp_path: Path, repo: TufRepo, url: str
) -> None:
    blank = make_bundle("tiny", "1.2.0", make_model(3))
    mine = trt_entry(blank, make_model(5))
    publish(repo, (mine, make_model(5)))
    calls: list[str] = []

    _, result = install(
        tmp_path, repo, url, load_profile(PROFILES / "x86-cpu.toml"), device(calls=calls)
    )

    assert result.variant == "fp32"
    assert not fetched(repo, mine)
    assert calls == []


@pytest.mark.parametrize(
    ("broken", "reason"),
    [("not-a-model", "incompatible"), ("wrong-golden", "smoke_test")],
    ids=["fails-to-load", "fails-its-smoke-test"],
)
def test_a_chosen_variant_that_fails_falls_back_to_fp32_in_the_same_install(
    tmp_path: Path, repo: TufRepo, url: str, broken: str, reason: str
) -> None:
    blank = make_bundle("tiny", "1.2.0", make_model(3))
    data = b"\x00an engine built wrongly\x00" * 64 if broken == "not-a-model" else make_model(5)
    bad = trt_entry(blank, data, wrong_golden=broken == "wrong-golden")
    publish(repo, (bad, data))

    updater, result = install(tmp_path, repo, url, nvidia(), device())

    assert result.variant == "fp32"
    assert result.fallback is not None
    assert (result.fallback.variant, result.fallback.reason) == (bad.variant, reason)
    assert result.fallback.detail
    # Both files came through TUF in this one install; only fp32's is kept.
    assert fetched(repo, bad) and fetched(repo, MODEL_FILE)
    assert slot_files(result) == ["bundle.json", MODEL_FILE, "slot.json"]
    assert updater.installed() == ("tiny", "1.2.0")
    assert leftovers(updater.config.data_dir) == []
    assert result.runtime.smoke_test() <= 1e-4
    event = installed_event(
        "tiny",
        "1.2.0",
        seconds=result.seconds,
        smoke_diff=result.smoke_max_diff,
        swap_ms=0.1,
        variant=result.variant,
        fallback=result.fallback,
    )
    assert event["variant"] == "fp32"
    assert event["fallback"]["variant"] == bad.variant
    assert event["fallback"]["reason"] == reason
    assert bad.variant in event["message"]


def test_a_variant_the_rollout_names_is_not_replaced(
    tmp_path: Path, repo: TufRepo, url: str
) -> None:
    blank = make_bundle("tiny", "1.2.0", make_model(3))
    data = b"\x00an engine built wrongly\x00" * 64
    bad = trt_entry(blank, data)
    good = trt_entry(blank, make_model(5), name="trt-fp16-l4-trt10.3-b32", batch_size=32)
    publish(repo, (bad, data), (good, make_model(5)))

    # Named and broken: refused as today, no silent fp32 (the operator asked for it).
    with pytest.raises(UpdateError) as refused:
        install(tmp_path / "a", repo, url, nvidia(), device(), variant=bad.variant)
    assert refused.value.reason == "incompatible"
    assert fetched(repo, bad) and not fetched(repo, MODEL_FILE)

    # Named fp32 while a working variant for this GPU exists: fp32 it is.
    repo.requests.clear()
    _, result = install(tmp_path / "b", repo, url, nvidia(), device(), variant="fp32")
    assert result.variant == "fp32" and result.fallback is None
    assert not fetched(repo, good) and not fetched(repo, bad)


# --- the rule -------------------------------------------------------------------------------


def _bundle_with(*records: dict[str, Any]) -> Bundle:
    bundle = make_bundle("tiny", "1.2.0", make_model(3))
    data = make_model(3)
    for i, record in enumerate(records):
        bundle.files.append(trt_entry(bundle, data, name=f"v{i}", **record))
    return bundle


HERE = TensorRTDevice(gpu=L4, tensorrt_version="10.3.1")


@pytest.mark.parametrize(
    ("precision", "records", "chosen"),
    [
        ("fp16", [{"precision": "int8"}, {"precision": "fp16"}], "v1"),
        ("int8", [{"precision": "fp16"}, {"precision": "int8"}], "v1"),
        ("fp32", [{"precision": "int8"}, {"precision": "fp16"}], None),
        ("fp16", [{"precision": "int8"}], "v0"),
        ("fp16", [{"tensorrt_version": "10.3.0"}, {"tensorrt_version": "10.3.1"}], "v1"),
        ("fp16", [{"profile": "jetson-orin"}, {"profile": "x86-nvidia"}], "v1"),
        ("fp16", [{"batch_size": 64}, {"batch_size": 16}, {"batch_size": 32}], "v1"),
        ("fp16", [{}, {}], "v0"),
        ("fp16", [{"gpu": "nvidia  l4 "}], "v0"),
        ("fp16", [{"gpu": RTX}, {"tensorrt_version": "10.4.0"}], None),
    ],
    ids=[
        "fp16-profile-prefers-fp16",
        "int8-profile-prefers-int8",
        "fp32-profile-takes-no-prebuilt-engine",
        "int8-when-it-is-all-there-is",
        "exact-tensorrt-patch-first",
        "built-for-this-profile-first",
        "smallest-batch-that-fits",
        "name-breaks-ties",
        "gpu-name-case-and-spacing-aside",
        "none-fits",
    ],
)
def test_the_rule_ranks_matching_variants_deterministically(
    precision: str, records: list[dict[str, Any]], chosen: str | None
) -> None:
    profile = dataclasses.replace(nvidia(), precision=precision)
    bundle = _bundle_with(*records)

    assert choose_tensorrt_variant(bundle, profile, HERE) == chosen
    # The order the bundle lists its files in does not matter.
    shuffled = dataclasses.replace(bundle, files=list(reversed(bundle.files)))
    assert choose_tensorrt_variant(shuffled, profile, HERE) == chosen
    # Without TensorRT here, or on a profile that does not run it: nothing.
    assert choose_tensorrt_variant(bundle, profile, None) is None
    cpu = dataclasses.replace(profile, execution_providers=("CPUExecutionProvider",))
    assert choose_tensorrt_variant(bundle, cpu, HERE) is None
