"""What machine is this, and which firmware profile fits it.

``detect_facts`` asks, in order: the CPU architecture (``platform.machine()``),
the NVIDIA GPUs (NVML through ``pynvml`` when the ``gpu`` extra is installed,
else ``nvidia-smi`` when it is on PATH, with a timeout), and whether this is a
Jetson (``/etc/nv_tegra_release``). Every probe is a parameter, so tests can
describe a Jetson or a GPU box on a machine that has neither.

``choose_profile`` turns the facts into a :class:`corral.FirmwareProfile`: the
one named in the agent's configuration, or the best match among the profiles
in ``firmware-profiles/``.
"""

from __future__ import annotations

import logging
import platform
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.config import AgentConfig
from corral.errors import ProfileError
from corral.profiles import FirmwareProfile, HardwareFacts, load_profiles, select_profile

__all__ = [
    "GpuInfo",
    "GpuProbe",
    "choose_profile",
    "detect_facts",
    "probe_nvidia_smi",
    "probe_nvml",
    "resolve_profile",
]

logger = logging.getLogger(__name__)

TEGRA_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
_NVIDIA_SMI_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class GpuInfo:
    """What a GPU probe found: GPU names (maybe none), driver and CUDA versions."""

    names: tuple[str, ...]
    driver_version: str | None = None
    cuda_version: str | None = None


#: A probe returns ``None`` when it cannot tell (library or tool absent, or it
#: failed), so that the next probe gets a chance; an empty ``GpuInfo`` means "no GPU".
GpuProbe = Callable[[], GpuInfo | None]


def probe_nvml() -> GpuInfo | None:
    """Ask NVML (the ``pynvml`` module of nvidia-ml-py) for the GPUs.

    Returns:
        The GPUs, or ``None`` when pynvml is not installed or NVML cannot start
        (no driver).

    Raises:
        Nothing: NVML failures mean "cannot tell".
    """
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        logger.debug("NVML cannot start: %s", e)
        return None
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = int(pynvml.nvmlSystemGetCudaDriverVersion())
        return GpuInfo(
            names=tuple(names),
            driver_version=driver.decode() if isinstance(driver, bytes) else str(driver),
            cuda_version=f"{cuda // 1000}.{cuda % 1000 // 10}",
        )
    except pynvml.NVMLError as e:
        logger.warning("NVML started but could not list GPUs: %s", e)
        return None
    finally:
        pynvml.nvmlShutdown()


def probe_nvidia_smi(
    executable: str = "nvidia-smi", timeout_s: float = _NVIDIA_SMI_TIMEOUT_S
) -> GpuInfo | None:
    """Ask ``nvidia-smi --query-gpu=name,driver_version`` for the GPUs.

    Args:
        executable: the command, looked up on PATH (or a path).
        timeout_s: how long the tool may take; a hung driver must not hang the agent.

    Returns:
        The GPUs, or ``None`` when the tool is absent, fails or times out.

    Raises:
        Nothing: failures mean "cannot tell".
    """
    path = shutil.which(executable)
    if path is None:
        return None
    try:
        done = subprocess.run(
            [path, "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        logger.warning("%s took more than %.0f s; ignoring it", path, timeout_s)
        return None
    except OSError as e:
        logger.warning("cannot run %s: %s", path, e)
        return None
    if done.returncode != 0:
        logger.warning("%s exited with %d: %s", path, done.returncode, done.stderr.strip()[:200])
        return None
    names: list[str] = []
    driver: str | None = None
    for line in done.stdout.splitlines():
        if not line.strip():
            continue
        name, _, version = line.rpartition(",")
        if not name:  # one column only: take it as the name
            name, version = version, ""
        names.append(name.strip())
        driver = driver or version.strip() or None
    return GpuInfo(names=tuple(names), driver_version=driver)


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def detect_facts(
    *,
    machine: Callable[[], str] = platform.machine,
    gpu_probes: Sequence[GpuProbe] = (probe_nvml, probe_nvidia_smi),
    tegra_release: Path = TEGRA_RELEASE,
    device_tree_model: Path = DEVICE_TREE_MODEL,
) -> HardwareFacts:
    """Find out what this machine is.

    Args:
        machine: returns the CPU architecture (``x86_64``, ``aarch64``...).
        gpu_probes: tried in order; the first that can tell wins.
        tegra_release: the file whose presence marks a Jetson (L4T).
        device_tree_model: where a Jetson names its board.

    Returns:
        The facts :func:`corral.select_profile` matches profiles against. On a
        Jetson with no GPU probe answering, the integrated GPU is named from the
        device tree (``NVIDIA Jetson ...``) or ``NVIDIA Tegra``.

    Raises:
        Nothing: a probe that fails counts as "cannot tell".
    """
    arch = machine()
    gpu = next((info for probe in gpu_probes if (info := probe()) is not None), None)
    gpu = gpu or GpuInfo(names=())
    release = _read_text(tegra_release)
    tegra = release is not None
    names = gpu.names
    if tegra and not names:
        model = (_read_text(device_tree_model) or "").strip("\x00\n ")
        names = (model if "nvidia" in model.lower() else "NVIDIA Tegra",)
    facts = HardwareFacts(
        arch=arch,
        gpus=tuple(names),
        tegra=tegra,
        driver_version=gpu.driver_version,
        cuda_version=gpu.cuda_version,
    )
    logger.info("hardware: %s", facts.to_dict())
    return facts


def resolve_profile(
    profiles: Mapping[str, FirmwareProfile], name: str | None, facts: HardwareFacts | None
) -> FirmwareProfile:
    """The profile called ``name``, or the best match for ``facts``.

    Args:
        profiles: the loaded profiles by name.
        name: a profile the operator chose, or ``None`` to detect.
        facts: this machine's facts (detected when ``None`` and needed).

    Returns:
        The profile.

    Raises:
        ProfileError: no profile has that name, or none matches the facts.
    """
    if name is not None:
        if name not in profiles:
            raise ProfileError(f"no firmware profile named {name!r}; have {sorted(profiles)}")
        return profiles[name]
    return select_profile(facts if facts is not None else detect_facts(), profiles.values())


def choose_profile(config: AgentConfig, facts: HardwareFacts | None = None) -> FirmwareProfile:
    """The firmware profile this agent runs with.

    Args:
        config: names the profile (or ``None`` to detect) and where profiles live.
        facts: this machine's facts; detected when ``None`` and no profile is named.

    Returns:
        The profile named in ``config``, or the best match for the hardware.

    Raises:
        ProfileError: the profiles cannot be read, the named one does not exist,
            or none matches the hardware.
    """
    profiles = load_profiles(config.resolved_profiles_dir)
    profile = resolve_profile(profiles, config.profile, facts)
    logger.info("firmware profile: %s", profile.name)
    return profile
