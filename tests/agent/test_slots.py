"""Model slots on disk: staging, atomic switch, previous, pruning, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.errors import UpdateError
from agent.slots import Slot, Slots, slot_name
from corral.bundle import Bundle, BundleError
from tests.agent.tuf_repo import MODEL_FILE, make_bundle, make_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundles() -> list[tuple[Bundle, bytes]]:
    out = []
    for i, version in enumerate(("1.0.0", "1.1.0", "1.2.0")):
        model = make_model(10 + i)
        out.append((make_bundle("tiny", version, model), model))
    return out


def install(slots: Slots, bundle: Bundle, model: bytes) -> Slot:
    with slots.staging() as staging:
        (staging / "bundle.json").write_bytes(bundle.to_bytes())
        (staging / MODEL_FILE).write_bytes(model)
        return slots.commit(staging, bundle, "fp32")


def test_commit_renames_staging_into_a_named_slot(
    tmp_path: Path, bundles: list[tuple[Bundle, bytes]]
) -> None:
    slots = Slots(tmp_path)
    slots.recover()
    bundle, model = bundles[0]

    slot = install(slots, bundle, model)

    assert slot.name == slot_name(bundle, "fp32")
    assert slot.name == f"tiny-1.0.0-{bundle.files[0].sha256[:12]}"
    assert slot.path == tmp_path / "models" / slot.name
    assert [p.name for p in (tmp_path / "models").iterdir()] == [slot.name]
    current = slots.current()
    assert current is not None and current.name == slot.name and current.version == "1.0.0"
    current.verify()
    assert json.loads((tmp_path / "state.json").read_text()) == {
        "current": slot.name,
        "previous": None,
    }


def test_a_failed_install_leaves_no_staging_and_no_state(
    tmp_path: Path, bundles: list[tuple[Bundle, bytes]]
) -> None:
    slots = Slots(tmp_path)
    bundle, model = bundles[0]

    with pytest.raises(BundleError, match=r"model\.onnx is missing"), slots.staging() as staging:
        (staging / "bundle.json").write_bytes(bundle.to_bytes())
        slots.commit(staging, bundle, "fp32")

    assert list((tmp_path / "models").iterdir()) == []
    assert not (tmp_path / "state.json").exists()
    assert slots.current() is None


def test_current_previous_rollback_and_pruning(
    tmp_path: Path, bundles: list[tuple[Bundle, bytes]]
) -> None:
    slots = Slots(tmp_path)
    first, second, third = (install(slots, b, m) for b, m in bundles)

    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == sorted(
        [second.name, third.name]
    )
    previous = slots.previous()
    assert previous is not None and previous.name == second.name
    assert slots.rollback().name == second.name
    current = slots.current()
    assert current is not None and current.name == second.name
    assert not first.path.exists()


def test_rollback_without_previous_is_refused(
    tmp_path: Path, bundles: list[tuple[Bundle, bytes]]
) -> None:
    slots = Slots(tmp_path)
    install(slots, *bundles[0])
    with pytest.raises(UpdateError, match="no previous model"):
        slots.rollback()


def test_recover_removes_what_a_crash_left_and_keeps_the_current_slot(
    tmp_path: Path, bundles: list[tuple[Bundle, bytes]]
) -> None:
    slots = Slots(tmp_path)
    good = install(slots, *bundles[0])
    models = tmp_path / "models"
    # A crash during download, and one between rename and the state switch.
    staging = models / ".staging-abc123"
    staging.mkdir()
    (staging / MODEL_FILE).write_bytes(b"half a model")
    orphan = models / slot_name(bundles[1][0], "fp32")
    orphan.mkdir()
    (models / ".trash-1234").mkdir()
    (tmp_path / ".state.json.xyz.tmp").write_bytes(b"{")

    Slots(tmp_path).recover()

    assert [p.name for p in models.iterdir()] == [good.name]
    current = Slots(tmp_path).current()
    assert current is not None and current.name == good.name
    current.verify()


def test_recover_falls_back_to_previous_when_current_is_broken(
    tmp_path: Path, bundles: list[tuple[Bundle, bytes]]
) -> None:
    slots = Slots(tmp_path)
    first = install(slots, *bundles[0])
    second = install(slots, *bundles[1])
    (second.path / MODEL_FILE).unlink()  # outside damage

    slots.recover()

    current = slots.current()
    assert current is not None and current.name == first.name
    assert slots.previous() is None
    assert not second.path.exists()


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"current": "../../etc"}'],
    ids=["not-json", "not-object", "climbing-name"],
)
def test_a_damaged_state_file_means_no_current_model(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "state.json").write_bytes(content)
    slots = Slots(tmp_path)
    slots.recover()
    assert slots.current() is None


def test_verify_finds_a_changed_byte(tmp_path: Path, bundles: list[tuple[Bundle, bytes]]) -> None:
    slot = install(Slots(tmp_path), *bundles[0])
    data = bytearray((slot.path / MODEL_FILE).read_bytes())
    data[100] ^= 1
    (slot.path / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="does not match"):
        slot.verify()


_CRASH_LOOP = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.slots import Slots
    from corral.bundle import Bundle

    data_dir, source = Path(sys.argv[1]), Path(sys.argv[2])
    items = []
    for d in sorted(source.iterdir()):
        items.append((Bundle.from_bytes((d / "bundle.json").read_bytes()),
                      (d / "bundle.json").read_bytes(), (d / "model.onnx").read_bytes()))
    slots = Slots(data_dir)
    slots.recover()
    i = 0
    while True:
        bundle, raw, model = items[i % len(items)]
        with slots.staging() as staging:
            (staging / "bundle.json").write_bytes(raw)
            (staging / "model.onnx").write_bytes(model)
            slots.commit(staging, bundle, "fp32")
        if i % 3 == 2:
            slots.rollback()
        if i == 0:
            print("ready", flush=True)  # from here on a current slot must always exist
        i += 1
    """
)


def test_kill_9_at_any_moment_leaves_state_on_a_complete_slot(
    tmp_path: Path, bundles: list[tuple[Bundle, bytes]]
) -> None:
    source = tmp_path / "source"
    for bundle, model in bundles:
        d = source / bundle.version
        d.mkdir(parents=True)
        (d / "bundle.json").write_bytes(bundle.to_bytes())
        (d / MODEL_FILE).write_bytes(model)
    data_dir = tmp_path / "agent"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for delay in (0.02, 0.05, 0.08, 0.11, 0.17, 0.23, 0.31, 0.37):
        proc = subprocess.Popen(
            [sys.executable, "-c", _CRASH_LOOP, str(data_dir), str(source)],
            stdout=subprocess.PIPE,
            env=env,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()

        slots = Slots(data_dir)
        # Before any repair: state.json itself must name a complete slot.
        current = slots.current()
        assert current is not None, f"state.json names no complete slot after a kill at {delay} s"
        current.verify()
        slots.recover()
        after = slots.current()
        assert after is not None and after.name == current.name
        assert not any(p.name.startswith(".") for p in (data_dir / "models").iterdir())
