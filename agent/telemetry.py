"""Hardware telemetry: CPU, memory, disk, temperatures (psutil) and GPUs (NVML).

:func:`sample_telemetry` builds the body of a ``telemetry`` payload. NVML sits
behind :class:`Nvml`, which takes the ``pynvml`` module (package
``nvidia-ml-py``) as an injectable object: a machine without it, or without an
NVIDIA driver, reports an empty ``gpus`` list, and tests pass a fake module
that implements the few functions used here.

Sampling never blocks: ``psutil.cpu_percent(interval=None)`` compares with
the previous call, so the first sample after start reads 0.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psutil

__all__ = ["THROTTLE_REASONS", "Nvml", "sample_telemetry"]

logger = logging.getLogger(__name__)

#: NVML clock throttle (clocks event) reason bits and the names we report.
THROTTLE_REASONS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


class Nvml:
    """GPU readings through NVML.

    Args:
        nvml: a module with pynvml's API; None imports ``pynvml`` if installed.
    """

    def __init__(self, nvml: Any = None) -> None:
        if nvml is None:
            try:
                import pynvml

                nvml = pynvml
            except ImportError:
                nvml = None
        self._nvml = nvml
        self.available = False
        if nvml is not None:
            try:
                nvml.nvmlInit()
                self.available = True
            except nvml.NVMLError as e:
                logger.info("NVML is not available (%s); GPU telemetry is off", e)

    def close(self) -> None:
        """Shut NVML down."""
        if self.available:
            self.available = False
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as e:
                logger.debug("nvmlShutdown failed: %s", e)

    def _read(self, name: str, *args: Any) -> Any:
        # A field a driver or GPU does not support reads as None, not as a failed sample.
        function = getattr(self._nvml, name, None)
        if function is None:
            return None
        try:
            return function(*args)
        except self._nvml.NVMLError:
            return None

    def gpus(self) -> list[dict[str, Any]]:
        """One dict per GPU: index, name, util_percent, memory_used_mb, memory_total_mb,
        temp_c, power_w, sm_clock_mhz, throttle_reasons (names).

        Returns:
            The GPUs, or an empty list without NVML.
        """
        if not self.available:
            return []
        nv = self._nvml
        count = self._read("nvmlDeviceGetCount") or 0
        out = []
        for index in range(count):
            handle = self._read("nvmlDeviceGetHandleByIndex", index)
            if handle is None:
                continue
            name = self._read("nvmlDeviceGetName", handle)
            if isinstance(name, bytes):
                name = name.decode(errors="replace")
            util = self._read("nvmlDeviceGetUtilizationRates", handle)
            memory = self._read("nvmlDeviceGetMemoryInfo", handle)
            power = self._read("nvmlDeviceGetPowerUsage", handle)
            mask = self._read("nvmlDeviceGetCurrentClocksEventReasons", handle)
            if mask is None:
                mask = self._read("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
            out.append(
                {
                    "index": index,
                    "name": name,
                    "util_percent": None if util is None else float(util.gpu),
                    "memory_used_mb": None if memory is None else round(memory.used / 2**20, 1),
                    "memory_total_mb": None if memory is None else round(memory.total / 2**20, 1),
                    "temp_c": self._read(
                        "nvmlDeviceGetTemperature", handle, nv.NVML_TEMPERATURE_GPU
                    ),
                    # NVML reports milliwatts.
                    "power_w": None if power is None else round(power / 1000.0, 1),
                    "sm_clock_mhz": self._read("nvmlDeviceGetClockInfo", handle, nv.NVML_CLOCK_SM),
                    "throttle_reasons": None
                    if mask is None
                    else [reason for bit, reason in THROTTLE_REASONS.items() if mask & bit],
                }
            )
        return out


def _temperatures() -> dict[str, float]:
    read = getattr(psutil, "sensors_temperatures", None)
    if read is None:
        return {}
    try:
        sensors = read()
    except OSError:
        return {}
    # The hottest reading per chip is what thermal limits compare against.
    return {
        chip: max(entry.current for entry in entries)
        for chip, entries in sensors.items()
        if entries
    }


_shared: list[Nvml] = []


def _default_nvml() -> Nvml:
    if not _shared:
        _shared.append(Nvml())
    return _shared[0]


def sample_telemetry(disk_path: Path, nvml: Nvml | None = None) -> dict[str, Any]:
    """The body of a ``telemetry`` payload.

    Args:
        disk_path: a path on the disk whose use to report (the agent's data dir).
        nvml: the GPU reader; None uses one shared :class:`Nvml` over ``pynvml`` if installed.

    Returns:
        cpu_percent, memory_percent, disk_percent, temperatures ({chip: °C}), gpus.

    Raises:
        OSError: ``disk_path`` does not exist.
    """
    gpus = (nvml or _default_nvml()).gpus()
    return {
        "cpu_percent": float(psutil.cpu_percent(interval=None)),
        "memory_percent": float(psutil.virtual_memory().percent),
        "disk_percent": float(psutil.disk_usage(str(disk_path)).percent),
        "temperatures": _temperatures(),
        "gpus": gpus,
    }
