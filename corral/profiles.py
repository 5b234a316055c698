"""Firmware profiles: one TOML file per kind of park computer.

A profile says how to recognise the hardware (``[match]``), which execution
providers to try in order and at which precision (``[runtime]``), how cameras
decode (``[camera]``), how often telemetry goes out (``[telemetry]``), the
thermal limits and latency budget, and the minimum driver versions. The agent
detects its :class:`HardwareFacts` and calls :func:`select_profile`; the
registry uses the profile's ``variant`` to pick a bundle variant.

Unknown keys are refused, so a typo in a profile fails loudly at load time.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import ProfileError

__all__ = [
    "FirmwareProfile",
    "HardwareFacts",
    "default_profiles_dir",
    "load_profile",
    "load_profiles",
    "select_profile",
]

_SECTIONS: dict[str, set[str]] = {
    "match": {"arch", "gpu", "tegra", "priority"},
    "runtime": {"execution_providers", "precision", "variant", "batch_size", "intra_op_threads"},
    "camera": {"decode"},
    "telemetry": {"interval_s"},
    "thermal": {"cpu_temp_max_c", "gpu_temp_warn_c", "gpu_temp_max_c"},
    "budget": {"latency_p95_ms", "target_fps"},
    "requirements": {"min_driver", "min_cuda", "min_tensorrt"},
}
_TOP = {"name", "description", *_SECTIONS}
_PROVIDERS = {
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
    "OpenVINOExecutionProvider",
}


@dataclass(frozen=True)
class HardwareFacts:
    """What the agent found out about its machine."""

    arch: str
    gpus: tuple[str, ...] = ()
    tegra: bool = False
    driver_version: str | None = None
    cuda_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "gpus": list(self.gpus),
            "tegra": self.tegra,
            "driver_version": self.driver_version,
            "cuda_version": self.cuda_version,
        }


@dataclass(frozen=True)
class FirmwareProfile:
    """A parsed, validated firmware profile."""

    name: str
    description: str
    arch: tuple[str, ...]
    gpu: str
    tegra: bool
    priority: int
    execution_providers: tuple[str, ...]
    precision: str
    variant: str
    batch_size: int
    intra_op_threads: int
    camera_decode: str
    telemetry_interval_s: float
    thermal: Mapping[str, float] = field(default_factory=dict)
    latency_p95_ms: float = 100.0
    target_fps: float = 10.0
    requirements: Mapping[str, str] = field(default_factory=dict)

    def matches(self, facts: HardwareFacts) -> bool:
        """Whether this profile describes the machine ``facts`` come from."""
        if self.arch and facts.arch not in self.arch:
            return False
        if self.tegra != facts.tegra:
            return False
        has_nvidia = any("nvidia" in g.lower() or facts.tegra for g in facts.gpus)
        if self.gpu == "none":
            return not has_nvidia
        if self.gpu == "nvidia":
            return has_nvidia
        return True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "profile") -> FirmwareProfile:
        """Validate a parsed TOML document.

        Raises:
            ProfileError: unknown keys, missing keys, or bad values.
        """
        unknown = set(data) - _TOP
        if unknown:
            raise ProfileError(f"{source}: unknown keys {sorted(unknown)}; allowed: {sorted(_TOP)}")
        for section, keys in _SECTIONS.items():
            body = data.get(section, {})
            if not isinstance(body, Mapping):
                raise ProfileError(f"{source}: [{section}] must be a table")
            extra = set(body) - keys
            if extra:
                raise ProfileError(f"{source}: unknown keys in [{section}]: {sorted(extra)}")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ProfileError(f"{source}: 'name' is required")
        match = data.get("match", {})
        runtime = data.get("runtime", {})
        providers = tuple(runtime.get("execution_providers", ["CPUExecutionProvider"]))
        bad = [p for p in providers if p not in _PROVIDERS]
        if bad or not providers:
            raise ProfileError(
                f"{source}: unknown execution providers {bad}; known: {sorted(_PROVIDERS)}"
            )
        gpu = match.get("gpu", "any")
        if gpu not in ("none", "nvidia", "any"):
            raise ProfileError(f"{source}: [match] gpu should be none, nvidia or any, got {gpu!r}")
        batch = runtime.get("batch_size", 1)
        if not isinstance(batch, int) or not 1 <= batch <= 256:
            raise ProfileError(f"{source}: [runtime] batch_size should be 1..256, got {batch!r}")
        precision = runtime.get("precision", "fp32")
        if precision not in ("fp32", "fp16", "int8"):
            raise ProfileError(f"{source}: [runtime] precision should be fp32, fp16 or int8")
        interval = float(data.get("telemetry", {}).get("interval_s", 10))
        if interval <= 0:
            raise ProfileError(f"{source}: [telemetry] interval_s must be positive")
        budget = data.get("budget", {})
        return cls(
            name=name,
            description=str(data.get("description", "")),
            arch=tuple(match.get("arch", [])),
            gpu=gpu,
            tegra=bool(match.get("tegra", False)),
            priority=int(match.get("priority", 0)),
            execution_providers=providers,
            precision=precision,
            variant=str(runtime.get("variant", "fp32")),
            batch_size=batch,
            intra_op_threads=int(runtime.get("intra_op_threads", 0)),
            camera_decode=str(data.get("camera", {}).get("decode", "opencv")),
            telemetry_interval_s=interval,
            thermal={k: float(v) for k, v in data.get("thermal", {}).items()},
            latency_p95_ms=float(budget.get("latency_p95_ms", 100.0)),
            target_fps=float(budget.get("target_fps", 10.0)),
            requirements={k: str(v) for k, v in data.get("requirements", {}).items()},
        )


def default_profiles_dir() -> Path:
    """Where firmware profiles live when nothing says otherwise.

    Returns:
        ``$CORRAL_PROFILES`` if set, else the checkout's ``firmware-profiles/`` (an
        editable install), else the copy a wheel installs into
        ``{sys.prefix}/share/corral/firmware-profiles``.
    """
    env = os.environ.get("CORRAL_PROFILES")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parents[1] / "firmware-profiles"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "corral" / "firmware-profiles"


def load_profile(path: Path) -> FirmwareProfile:
    """Read and validate one profile file.

    Raises:
        ProfileError: unreadable, not TOML, or invalid.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ProfileError(f"cannot read firmware profile {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"firmware profile {path} is not valid TOML: {e}") from e
    profile = FirmwareProfile.from_dict(data, source=str(path))
    if profile.name != Path(path).stem:
        raise ProfileError(
            f"{path}: name {profile.name!r} should match the file name {Path(path).stem!r}"
        )
    return profile


def load_profiles(directory: Path) -> dict[str, FirmwareProfile]:
    """Read every ``*.toml`` in ``directory``, by name.

    Raises:
        ProfileError: the folder has no profiles, or one is invalid.
    """
    paths = sorted(Path(directory).glob("*.toml"))
    if not paths:
        raise ProfileError(f"no firmware profiles (*.toml) in {directory}")
    return {p.stem: load_profile(p) for p in paths}


def select_profile(facts: HardwareFacts, profiles: Iterable[FirmwareProfile]) -> FirmwareProfile:
    """The matching profile with the highest priority (name breaks ties).

    Raises:
        ProfileError: no profile matches ``facts``.
    """
    matching = sorted(
        (p for p in profiles if p.matches(facts)), key=lambda p: (-p.priority, p.name)
    )
    if not matching:
        raise ProfileError(
            f"no firmware profile matches this machine ({facts.to_dict()}); "
            "add one to firmware-profiles/ or pass --profile NAME"
        )
    return matching[0]
