"""NVML on a real NVIDIA GPU, read through the agent's own code and checked against pynvml.

The fast layer (tests/agent/test_telemetry.py, test_hardware.py) runs the
same code on a fake pynvml; here the driver answers. Every reading must be
sane (a name, memory, a temperature, utilisation, power and clocks in range),
agree with what pynvml reads directly, survive the telemetry payload's
validation, and choose the x86-nvidia firmware profile on an x86 GPU box.
Elsewhere every test is skipped with the reason.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.hardware import detect_facts, probe_nvidia_smi, probe_nvml, resolve_profile
from agent.telemetry import THROTTLE_REASONS, Nvml, sample_telemetry
from corral.payloads import encode
from corral.profiles import load_profiles
from tests.gpu.probes import NVML_MISSING, torch_cuda_missing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(NVML_MISSING is not None, reason=str(NVML_MISSING)),
]

PROFILES = Path(__file__).resolve().parents[2] / "firmware-profiles"
#: Temperature and power move between two reads a moment apart; this much is the same reading.
TEMP_SLACK_C = 5
POWER_SLACK_W = 30.0
#: torch's allocation during the load test, which NVML's used memory must show.
LOAD_MB = 256


@pytest.fixture
def nvml() -> Iterator[Any]:
    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    yield pynvml
    pynvml.nvmlShutdown()


@pytest.fixture
def ours() -> Iterator[Nvml]:
    reader = Nvml()
    yield reader
    reader.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_our_gpu_readings_are_real_and_match_pynvml(nvml: Any, ours: Nvml) -> None:
    assert ours.available, "NVML started for pynvml but not for agent.telemetry.Nvml"
    gpus = ours.gpus()
    assert len(gpus) == nvml.nvmlDeviceGetCount()
    for gpu in gpus:
        handle = nvml.nvmlDeviceGetHandleByIndex(gpu["index"])
        direct_memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        direct_temp = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
        direct_power = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        max_sm = nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)
        print(f"GPU {gpu['index']} through agent.telemetry: {gpu}")
        # None is how the agent reports a field the driver does not give: here it must give all.
        missing = [k for k, v in gpu.items() if v is None and k != "throttle_reasons"]
        assert not missing, f"NVML gave no {missing} through agent.telemetry"

        assert gpu["name"] and gpu["name"] == _text(nvml.nvmlDeviceGetName(handle))
        assert gpu["memory_total_mb"] > 0
        assert gpu["memory_total_mb"] == round(direct_memory.total / 2**20, 1)
        assert 0 <= gpu["memory_used_mb"] <= gpu["memory_total_mb"]
        assert 0 <= gpu["temp_c"] <= 120
        assert abs(gpu["temp_c"] - direct_temp) <= TEMP_SLACK_C
        assert 0 <= gpu["util_percent"] <= 100
        assert gpu["power_w"] > 0
        assert abs(gpu["power_w"] - direct_power) <= POWER_SLACK_W
        assert 0 < gpu["sm_clock_mhz"] <= max_sm
        # Throttle reasons may be unsupported (None) in a virtual machine; names when given.
        assert set(gpu["throttle_reasons"] or ()) <= set(THROTTLE_REASONS.values())


def test_a_telemetry_payload_carries_the_real_gpus(tmp_path: Path, ours: Nvml) -> None:
    body = sample_telemetry(tmp_path, ours)
    direct = ours.gpus()
    assert [g["name"] for g in body["gpus"]] == [g["name"] for g in direct]
    assert [g["memory_total_mb"] for g in body["gpus"]] == [g["memory_total_mb"] for g in direct]
    assert 0 <= body["memory_percent"] <= 100 and 0 <= body["disk_percent"] <= 100
    encode("telemetry", "gpu-check", 0, body)  # the contract accepts real readings


def test_hardware_probes_agree_and_pick_the_nvidia_profile(nvml: Any) -> None:
    by_nvml = probe_nvml()
    assert by_nvml is not None and by_nvml.names
    count = nvml.nvmlDeviceGetCount()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
    names = tuple(_text(nvml.nvmlDeviceGetName(handle)) for handle in handles)
    assert by_nvml.names == names
    assert by_nvml.driver_version == _text(nvml.nvmlSystemGetDriverVersion())
    major, minor = (int(p) for p in str(by_nvml.cuda_version).split("."))
    assert major >= 11 and 0 <= minor <= 9
    by_smi = probe_nvidia_smi()
    if by_smi is not None:  # nvidia-smi is optional; NVML is what the agent asks first
        assert by_smi.names == by_nvml.names
        assert by_smi.driver_version == by_nvml.driver_version
    facts = detect_facts()
    assert facts.gpus == by_nvml.names
    if platform.machine() in ("x86_64", "AMD64"):
        assert resolve_profile(load_profiles(PROFILES), None, facts).name == "x86-nvidia"


def test_readings_follow_real_load(ours: Nvml) -> None:
    reason = torch_cuda_missing()
    if reason is not None:
        pytest.skip(reason)
    import torch

    idle = ours.gpus()[0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            # LOAD_MB of operands, then matrix products until told to stop.
            side = int((LOAD_MB * 2**20 / 3 / 2) ** 0.5)
            a = torch.randn(side, side, device="cuda", dtype=torch.bfloat16)
            b = torch.randn(side, side, device="cuda", dtype=torch.bfloat16)
            c = torch.empty_like(a)
            while not stop.is_set():
                for _ in range(20):
                    torch.matmul(a, b, out=c)
                torch.cuda.synchronize()
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    worker = threading.Thread(target=load, name="gpu-load", daemon=True)
    worker.start()
    samples = []
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            time.sleep(0.25)
            samples.append(ours.gpus()[0])
    finally:
        stop.set()
        worker.join(timeout=30)
    assert not errors, errors
    print(f"idle: {idle}")
    print(f"under load (last): {samples[-1]}")
    assert max(s["util_percent"] for s in samples) > 0, "utilisation stayed 0 under load"
    assert max(s["memory_used_mb"] for s in samples) >= idle["memory_used_mb"] + LOAD_MB / 2
    assert max(s["power_w"] for s in samples) > idle["power_w"]
    torch.cuda.empty_cache()
