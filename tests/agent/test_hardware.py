"""Hardware facts and profile choice, with fake Jetsons and GPU boxes.

The GPU box is faked at the real seam: an ``nvidia-smi`` executable on a temporary
path that prints what the real one prints for ``--query-gpu=name,driver_version``.
"""

from __future__ import annotations

import importlib.util
import stat
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.hardware import (
    GpuInfo,
    choose_profile,
    detect_facts,
    probe_nvidia_smi,
    probe_nvml,
    resolve_profile,
)
from corral.errors import ProfileError
from corral.profiles import HardwareFacts, load_profiles

ROOT = Path(__file__).resolve().parents[2]
PROFILES = load_profiles(ROOT / "firmware-profiles")


def fake_tool(tmp_path: Path, body: str) -> str:
    path = tmp_path / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_nvidia_smi_output_is_parsed(tmp_path: Path) -> None:
    tool = fake_tool(
        tmp_path,
        'echo "NVIDIA GeForce RTX 4090, 550.54.14"; echo "NVIDIA RTX A2000, 550.54.14"',
    )
    assert probe_nvidia_smi(tool) == GpuInfo(
        names=("NVIDIA GeForce RTX 4090", "NVIDIA RTX A2000"), driver_version="550.54.14"
    )


@pytest.mark.parametrize(
    "body",
    ['echo "NVIDIA-SMI has failed" >&2; exit 9', "sleep 5"],
    ids=["tool-fails", "tool-hangs"],
)
def test_a_failing_or_hanging_nvidia_smi_cannot_tell(tmp_path: Path, body: str) -> None:
    assert probe_nvidia_smi(fake_tool(tmp_path, body), timeout_s=0.5) is None


def test_an_absent_nvidia_smi_cannot_tell(tmp_path: Path) -> None:
    assert probe_nvidia_smi(str(tmp_path / "no-such-tool")) is None


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is not None, reason="pynvml installed")
def test_nvml_without_pynvml_cannot_tell() -> None:
    assert probe_nvml() is None


def test_the_first_probe_that_can_tell_wins(tmp_path: Path) -> None:
    facts = detect_facts(
        machine=lambda: "x86_64",
        gpu_probes=[lambda: None, lambda: GpuInfo(("NVIDIA L4",), "550.1", "12.4")],
        tegra_release=tmp_path / "absent",
    )
    assert facts == HardwareFacts(
        arch="x86_64", gpus=("NVIDIA L4",), driver_version="550.1", cuda_version="12.4"
    )


def jetson(tmp_path: Path) -> HardwareFacts:
    release = tmp_path / "nv_tegra_release"
    release.write_text("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic\n")
    model = tmp_path / "model"
    model.write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    return detect_facts(
        machine=lambda: "aarch64",
        gpu_probes=[lambda: None],
        tegra_release=release,
        device_tree_model=model,
    )


def gpu_box(tmp_path: Path) -> HardwareFacts:
    tool = fake_tool(tmp_path, 'echo "NVIDIA GeForce RTX 4090, 550.54.14"')
    return detect_facts(
        machine=lambda: "x86_64",
        gpu_probes=[lambda: probe_nvidia_smi(tool)],
        tegra_release=tmp_path / "absent",
    )


def cpu_box(tmp_path: Path) -> HardwareFacts:
    return detect_facts(
        machine=lambda: "x86_64",
        gpu_probes=[lambda: None, lambda: probe_nvidia_smi(str(tmp_path / "absent"))],
        tegra_release=tmp_path / "absent",
    )


def test_a_jetson_names_its_integrated_gpu(tmp_path: Path) -> None:
    facts = jetson(tmp_path)
    assert facts.tegra and facts.arch == "aarch64"
    assert facts.gpus == ("NVIDIA Jetson AGX Orin Developer Kit",)


@pytest.mark.parametrize(
    ("machine", "expected"),
    [(jetson, "jetson-orin"), (gpu_box, "x86-nvidia"), (cpu_box, "x86-cpu")],
    ids=["jetson", "gpu-box", "cpu-box"],
)
def test_detected_hardware_picks_its_profile(
    tmp_path: Path, machine: object, expected: str
) -> None:
    facts = machine(tmp_path)  # type: ignore[operator]
    config = AgentConfig(
        data_dir=tmp_path,
        device_id="park-1",
        device_token="t",
        registry_url="http://r",
        mqtt_host="b",
        mqtt_port=1883,
        metadata_url="http://r/m/",
        targets_url="http://r/t/",
        profiles_dir=ROOT / "firmware-profiles",
    )
    assert choose_profile(config, facts).name == expected


def test_a_named_profile_wins_over_detection(tmp_path: Path) -> None:
    assert resolve_profile(PROFILES, "x86-nvidia", cpu_box(tmp_path)).name == "x86-nvidia"


def test_an_unknown_profile_name_is_refused() -> None:
    with pytest.raises(ProfileError, match="no firmware profile named 'pi-zero'"):
        resolve_profile(PROFILES, "pi-zero", None)


def test_hardware_no_profile_matches_is_refused() -> None:
    with pytest.raises(ProfileError, match="no firmware profile matches"):
        resolve_profile(PROFILES, None, HardwareFacts(arch="riscv64"))
