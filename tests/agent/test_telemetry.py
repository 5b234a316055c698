"""Telemetry bodies, with a fake NVML standing in for a GPU this machine lacks."""

# The fake keeps pynvml's camelCase names: it stands in for that module.
# ruff: noqa: N802

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent.telemetry import Nvml, sample_telemetry
from corral.payloads import encode


class FakeNvml:
    """The few pynvml functions the agent calls, for two GPUs; GPU 1 has no power sensor."""

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.shutdown = False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdown = True

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetName(self, handle: int) -> Any:
        return b"NVIDIA RTX A2000" if handle == 0 else "NVIDIA L4"

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=37 + handle, memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(used=512 * 2**20, total=6144 * 2**20, free=0)

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 61

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if handle == 1:
            raise self.NVMLError("Not Supported")
        return 41_500

    def nvmlDeviceGetClockInfo(self, handle: int, clock: int) -> int:
        assert clock == self.NVML_CLOCK_SM
        return 1560

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: int) -> int:
        return 0x4 | 0x20


def test_fake_nvml_gives_gpu_fields(tmp_path: Path) -> None:
    fake = FakeNvml()
    nvml = Nvml(fake)
    body = sample_telemetry(tmp_path, nvml)
    gpus = body["gpus"]
    assert [g["index"] for g in gpus] == [0, 1]
    assert gpus[0] == {
        "index": 0,
        "name": "NVIDIA RTX A2000",
        "util_percent": 37.0,
        "memory_used_mb": 512.0,
        "memory_total_mb": 6144.0,
        "temp_c": 61,
        "power_w": 41.5,
        "sm_clock_mhz": 1560,
        "throttle_reasons": ["sw_power_cap", "sw_thermal_slowdown"],
    }
    assert gpus[1]["name"] == "NVIDIA L4"
    assert gpus[1]["power_w"] is None, "an unsupported field reads as None"
    encode("telemetry", "dev-1", 0, body)
    nvml.close()
    assert fake.shutdown


def test_nvml_that_cannot_start_reports_no_gpus(tmp_path: Path) -> None:
    nvml = Nvml(FakeNvml(fail_init=True))
    assert not nvml.available
    assert sample_telemetry(tmp_path, nvml)["gpus"] == []


def test_host_fields_are_percentages(tmp_path: Path) -> None:
    body = sample_telemetry(tmp_path, Nvml(FakeNvml(fail_init=True)))
    for key in ("cpu_percent", "memory_percent", "disk_percent"):
        assert 0.0 <= body[key] <= 100.0
    assert isinstance(body["temperatures"], dict)
    assert all(isinstance(v, float) for v in body["temperatures"].values())


def test_a_missing_disk_path_raises(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        sample_telemetry(tmp_path / "missing", Nvml(FakeNvml(fail_init=True)))
