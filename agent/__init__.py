"""The Corral agent: install signed models, run them on live cameras, report over MQTT.

Install path: :mod:`agent.config`, :mod:`agent.enrol`, :mod:`agent.hardware`,
:mod:`agent.fetcher`, :mod:`agent.slots`, :mod:`agent.variants`, :mod:`agent.updater`. Run path:
:mod:`agent.camera`, :mod:`agent.pipeline`, :mod:`agent.latency`,
:mod:`agent.runtime`, :mod:`agent.health`, :mod:`agent.telemetry`, :mod:`agent.outbox`,
:mod:`agent.mqtt`, :mod:`agent.desired`, :mod:`agent.lock`, :mod:`agent.service`; :mod:`agent.cli`
is ``corral agent``.

Names are exported lazily (PEP 562): ``import agent`` (and so ``corral
--help``, which mounts :mod:`agent.cli`) does not load OpenCV, ONNX Runtime,
paho or TUF until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import Any as _Any

_EXPORTS: dict[str, str] = {
    # errors
    "AgentError": "agent.errors",
    "CameraError": "agent.errors",
    "ConfigError": "agent.errors",
    "DataDirLockedError": "agent.errors",
    "DownloadError": "agent.errors",
    "RegistryBusyError": "agent.errors",
    "EnrolmentError": "agent.errors",
    "RuntimeLoadError": "agent.errors",
    "SmokeTestError": "agent.errors",
    "UpdateError": "agent.errors",
    "VerificationError": "agent.errors",
    # install path
    "AgentConfig": "agent.config",
    "enrol": "agent.enrol",
    "choose_profile": "agent.hardware",
    "detect_facts": "agent.hardware",
    "HttpxFetcher": "agent.fetcher",
    "BusyHTTPError": "agent.fetcher",
    "FetchStats": "agent.fetcher",
    "DataDirLock": "agent.lock",
    "HealthBudget": "agent.health",
    "Slot": "agent.slots",
    "Slots": "agent.slots",
    "InstallResult": "agent.updater",
    "Updater": "agent.updater",
    # run path
    "Camera": "agent.camera",
    "CameraSource": "agent.camera",
    "FileSource": "agent.camera",
    "FolderSource": "agent.camera",
    "Frame": "agent.camera",
    "LatestFrame": "agent.camera",
    "MemorySource": "agent.camera",
    "StreamSource": "agent.camera",
    "parse_camera": "agent.camera",
    "ModelRuntime": "agent.runtime",
    "Pipeline": "agent.pipeline",
    "SwapRecord": "agent.pipeline",
    "Nvml": "agent.telemetry",
    "sample_telemetry": "agent.telemetry",
    "Outbox": "agent.outbox",
    "OutboxRow": "agent.outbox",
    "AgentLink": "agent.mqtt",
    "AgentService": "agent.service",
}

__all__ = [
    "AgentConfig",
    "AgentError",
    "AgentLink",
    "AgentService",
    "BusyHTTPError",
    "Camera",
    "CameraError",
    "CameraSource",
    "ConfigError",
    "DataDirLock",
    "DataDirLockedError",
    "DownloadError",
    "EnrolmentError",
    "FetchStats",
    "FileSource",
    "FolderSource",
    "Frame",
    "HealthBudget",
    "HttpxFetcher",
    "InstallResult",
    "LatestFrame",
    "MemorySource",
    "ModelRuntime",
    "Nvml",
    "Outbox",
    "OutboxRow",
    "Pipeline",
    "RegistryBusyError",
    "RuntimeLoadError",
    "Slot",
    "Slots",
    "SmokeTestError",
    "StreamSource",
    "SwapRecord",
    "UpdateError",
    "Updater",
    "VerificationError",
    "choose_profile",
    "detect_facts",
    "enrol",
    "parse_camera",
    "sample_telemetry",
]


def __getattr__(name: str) -> _Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
