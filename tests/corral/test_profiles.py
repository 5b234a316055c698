"""Firmware profiles: the shipped ones load, detection picks the right one, typos fail loudly."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral import HardwareFacts, ProfileError, load_profile, load_profiles, select_profile

PROFILES = Path(__file__).resolve().parents[2] / "firmware-profiles"


def test_the_shipped_profiles_load() -> None:
    profiles = load_profiles(PROFILES)
    assert {"x86-cpu", "x86-nvidia", "jetson-orin"} <= set(profiles)
    assert profiles["x86-nvidia"].execution_providers[0] == "TensorrtExecutionProvider"
    assert profiles["x86-cpu"].execution_providers == ("CPUExecutionProvider",)


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        (HardwareFacts("x86_64"), "x86-cpu"),
        (
            HardwareFacts("x86_64", ("NVIDIA GeForce RTX 4060",), driver_version="550.1"),
            "x86-nvidia",
        ),
        (HardwareFacts("aarch64", ("Orin",), tegra=True), "jetson-orin"),
    ],
    ids=["cpu-box", "rtx-box", "jetson"],
)
def test_detection_picks_the_profile_for_the_hardware(facts: HardwareFacts, expected: str) -> None:
    assert select_profile(facts, load_profiles(PROFILES).values()).name == expected


def test_no_matching_profile_says_what_to_do() -> None:
    with pytest.raises(ProfileError, match="add one to firmware-profiles"):
        select_profile(HardwareFacts("riscv64"), load_profiles(PROFILES).values())


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "p"\nbogus = 1\n', "unknown keys"),
        ('name = "p"\n[runtime]\nbatchsize = 4\n', r"unknown keys in \[runtime\]"),
        (
            'name = "p"\n[runtime]\nexecution_providers = ["MagicEP"]\n',
            "unknown execution providers",
        ),
        ('name = "p"\n[runtime]\nbatch_size = 0\n', "batch_size"),
        ('name = "other"\n', "should match the file name"),
        ("name = \n", "not valid TOML"),
    ],
    ids=["top-typo", "section-typo", "bad-provider", "bad-batch", "name-mismatch", "bad-toml"],
)
def test_malformed_profiles_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message):
        load_profile(path)
