"""Staged rollouts end to end: a registry process, the real Mosquitto, simulated agents.

Twelve simulated agents in two cohorts (``ok`` and ``dim``: the dim cameras
see worse with v1.2.0) run v1.0.0 and report windows at 120 fps. Each test
rolls a version out in stages and checks what the gates decided from what
the agents reported, and that every device ends on one version, never
between two:

- a good version passes every stage;
- a version ten points less accurate on the dim cohort stops at the canary,
  and the moved devices return to the version they had;
- a version whose latency doubles stops at its stage;
- an approval-mode rollout waits until a person approves;
- an aborted rollout sends the moved devices back;
- production is refused until a staging rollout passed and was approved;
- an A/B experiment reports B - A with an interval;
- a shadow trial compares a candidate on the same frames and moves nobody.

The tests share one fleet and run in file order; each starts from the
versions the previous one left.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.simulate import Cohort, Fleet
from corral import cli
from corral.errors import ApiError
from corral.local import LocalFleet
from registry.rollout.ab import in_b
from tests.agent.test_simulate import tiny_bundle

pytestmark = pytest.mark.e2e

MOSQUITTO = ("127.0.0.1", 1883)
N = 12
# Fast stages: short soaks, enough labels for the accuracy test to see ten points.
STAGE = {"soak_s": 2, "min_frames": 300, "min_labelled": 400, "timeout_s": 90}
GATES = {"accuracy_alpha": 0.01, "baseline_s": 120}


def _mosquitto_up() -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(MOSQUITTO) == 0


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalFleet, Fleet]]:
    if not _mosquitto_up():
        pytest.skip("SKIPPED LOUDLY: no Mosquitto on 127.0.0.1:1883; scripts/test starts one")
    data = tmp_path_factory.mktemp("rollouts")
    patch = pytest.MonkeyPatch()
    patch.setenv("CORRAL_ROLLOUT_INTERVAL_S", "0.5")
    with LocalFleet(data, python=sys.executable) as local:
        local.start_broker(f"{MOSQUITTO[0]}:{MOSQUITTO[1]}")
        local.start_registry()
        with local.client() as client:
            for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0"):
                client.push_model(tiny_bundle(data / version, version))
        cohorts = [
            Cohort("ok", 0.5, fps=120, accuracy=0.9),
            Cohort(
                "dim",
                0.5,
                fps=120,
                accuracy=0.9,
                accuracy_by_version={"1.2.0": 0.8},
                latency_by_version={"1.3.0": 10.0},
            ),
        ]
        fleet = Fleet(
            local.registry_url,
            local.admin_token,
            data / "agents",
            N,
            cohorts,
            install_concurrency=4,
            report_interval_s=0.5,
        )
        try:
            fleet.enrol()
            fleet.start()
            assert fleet.wait_connected(60)
            with local.client() as client:
                client.start_rollout("tiny", "1.0.0", fleet.device_ids)
            local.wait_converged("1.0.0", fleet.device_ids, timeout=90)
            time.sleep(4)  # baseline windows on 1.0.0
            yield local, fleet
        finally:
            fleet.stop(forget=True)
            patch.undo()


def _plan(version: str, devices: list[str], sizes: list[int | str], **extra: Any) -> dict[str, Any]:
    return {
        "model": "tiny",
        "version": version,
        "selector": {"devices": devices},
        "stages": [{"name": str(size), "size": size, **STAGE} for size in sizes],
        "gates": GATES,
        **extra,
    }


def _wait_state(
    local: LocalFleet, rollout_id: int, states: tuple[str, ...], timeout: float = 180
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal seen
        with local.client() as client:
            seen = client.rollout(rollout_id)
        return seen["state"] in states

    started = time.monotonic()
    local.wait_for(f"rollout {rollout_id} to be {states}", reached, timeout)
    print(f"rollout {rollout_id}: {seen['state']} after {time.monotonic() - started:.1f} s")
    return seen


def _versions(local: LocalFleet, ids: list[str]) -> dict[str, tuple[str | None, str | None]]:
    with local.client() as client:
        return {d: (client.device(d)["version"], client.device(d)["desired_version"]) for d in ids}


def _gate(rollout: dict[str, Any], stage: int, name: str) -> dict[str, Any]:
    results = rollout["stages"][stage]["gates"]["results"]
    return next(r for r in results if r["name"] == name)


def test_a_good_version_passes_every_stage(world: tuple[LocalFleet, Fleet]) -> None:
    local, fleet = world
    ids = fleet.device_ids
    with local.client() as client:
        created = client.apply_rollout(_plan("1.1.0", ids, [1, "50%", "100%"]))
    assert [s["devices"] for s in created["stages"]] == [1, 5, 6]
    done = _wait_state(local, created["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done["reason"]
    assert all(s["status"] == "passed" for s in done["stages"])
    accuracy = _gate(done, 0, "accuracy")
    assert accuracy["status"] == "pass" and accuracy["numbers"]["old"] is not None
    assert _gate(done, 2, "latency")["status"] == "pass"
    local.wait_converged("1.1.0", ids, timeout=30)
    assert [e["action"] for e in done["log"]].count("gates_passed") == 3


def test_ten_points_worse_on_one_cohort_stops_at_the_canary_and_rolls_back(
    world: tuple[LocalFleet, Fleet],
) -> None:
    local, fleet = world
    dim = [a.device_id for a in fleet.cohort_of("dim")]

    def baseline() -> bool:  # the gate needs the old version's labels too
        with local.client() as client:
            return all(
                client._call("GET", f"/api/v1/devices/{d}/quality", params={"window_s": 100})[
                    "labelled"
                ]
                >= 800
                for d in dim
            )

    local.wait_for("a labelled baseline on 1.1.0", baseline, 60)
    with local.client() as client:
        created = client.apply_rollout(_plan("1.2.0", dim, [1, "100%"]))
    done = _wait_state(local, created["id"], ("failed", "succeeded"))
    assert done["state"] == "failed"
    assert done["stage"] == 0, f"stopped at the canary, not after {done['stages'][0]['gates']}"
    accuracy = _gate(done, 0, "accuracy")
    assert accuracy["status"] == "fail"
    assert accuracy["numbers"]["old"] - accuracy["numbers"]["new"] > 0.05
    assert "accuracy" in done["reason"]
    progress = {d["device_id"]: d["progress"] for d in done["devices"]}
    assert sorted(progress.values()) == ["restored"] + ["skipped"] * (len(dim) - 1)
    versions = _versions(local, dim)
    assert all(v == ("1.1.0", "1.1.0") for v in versions.values()), versions


def test_a_version_twice_as_slow_stops_at_its_stage(world: tuple[LocalFleet, Fleet]) -> None:
    local, fleet = world
    dim = [a.device_id for a in fleet.cohort_of("dim")]
    with local.client() as client:
        created = client.apply_rollout(_plan("1.3.0", dim, [2, "100%"]))
    done = _wait_state(local, created["id"], ("failed", "succeeded"))
    assert done["state"] == "failed" and done["stage"] == 0
    latency = _gate(done, 0, "latency")
    assert latency["status"] == "fail" and latency["value"] > 1.5
    versions = _versions(local, dim)
    assert all(v == ("1.1.0", "1.1.0") for v in versions.values()), versions


def test_an_approval_rollout_waits_until_approved(world: tuple[LocalFleet, Fleet]) -> None:
    local, fleet = world
    ok = [a.device_id for a in fleet.cohort_of("ok")]
    with local.client() as client:
        created = client.apply_rollout(_plan("1.4.0", ok, [1, "100%"], mode="approval"))
    waiting = _wait_state(local, created["id"], ("waiting_approval", "failed"))
    assert waiting["state"] == "waiting_approval"
    time.sleep(3)
    with local.client() as client:
        still = client.rollout(created["id"])
    assert still["state"] == "waiting_approval"
    assert sum(1 for d in still["devices"] if d["progress"] == "waiting") == len(ok) - 1
    with local.client() as client:
        client.rollout_action(created["id"], "approve", "QA signed off")
    waiting = _wait_state(local, created["id"], ("waiting_approval", "failed", "succeeded"))
    assert waiting["state"] == "waiting_approval" and waiting["stage"] == 1
    with local.client() as client:
        client.rollout_action(created["id"], "approve", "QA signed off the rest")
    done = _wait_state(local, created["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded"
    approvals = [e for e in done["log"] if e["action"] == "approve"]
    assert [a["data"]["note"] for a in approvals] == ["QA signed off", "QA signed off the rest"]


def test_an_aborted_rollout_leaves_no_device_between_versions(
    world: tuple[LocalFleet, Fleet],
) -> None:
    local, fleet = world
    ok = [a.device_id for a in fleet.cohort_of("ok")]
    plan = _plan("1.5.0", ok, [3, "100%"])
    plan["stages"][0]["soak_s"] = 600
    with local.client() as client:
        created = client.apply_rollout(plan)

    def canary_moved() -> bool:
        with local.client() as client:
            return (
                sum(d["progress"] == "converged" for d in client.rollout(created["id"])["devices"])
                == 3
            )

    local.wait_for("the first stage to converge", canary_moved, 60)
    with local.client() as client:
        client.rollout_action(created["id"], "abort", "operator at 2 a.m.")
    done = _wait_state(local, created["id"], ("aborted",))
    assert sorted(d["progress"] for d in done["devices"]).count("restored") == 3
    versions = _versions(local, ok)
    assert all(v == ("1.4.0", "1.4.0") for v in versions.values()), versions


def test_production_waits_for_an_approved_staging_rollout(
    world: tuple[LocalFleet, Fleet],
) -> None:
    local, fleet = world
    ok = [a.device_id for a in fleet.cohort_of("ok")]
    production = _plan("1.5.0", ok, ["100%"], require_staging=True)
    with local.client() as client, pytest.raises(ApiError) as refused:
        client.apply_rollout(production)
    assert refused.value.status == 409 and "staging" in str(refused.value)
    with local.client() as client:
        staged = client.apply_rollout(_plan("1.5.0", ok[:2], ["100%"], environment="staging"))
    _wait_state(local, staged["id"], ("succeeded",))
    with local.client() as client, pytest.raises(ApiError):
        client.apply_rollout(production)  # passed, but nobody signed it off yet
    with local.client() as client:
        client.rollout_action(staged["id"], "approve", "QA sign-off")
        created = client.apply_rollout(production)
    done = _wait_state(local, created["id"], ("succeeded", "failed"))
    assert done["state"] == "succeeded", done["reason"]


def test_an_ab_experiment_reports_the_accuracy_difference_with_an_interval(
    world: tuple[LocalFleet, Fleet],
) -> None:
    local, fleet = world
    dim = [a.device_id for a in fleet.cohort_of("dim")]
    # A name whose hash splits the dim cohort in halves: the shadow trial after this
    # one needs half of it on 1.2.0 to see the candidate's edge (one in six would not).
    name = next(
        f"dim-{n}"
        for n in range(1000)
        if sum(in_b(f"dim-{n}", d, 0.5) for d in dim) == len(dim) // 2
    )
    body = {"model": "tiny", "a": "1.1.0", "b": "1.2.0", "selector": {"devices": dim}}
    with local.client() as client:
        started = client.start_experiment({**body, "name": name, "split": 0.5})
    assert started["a"]["devices"] == started["b"]["devices"] == len(dim) // 2

    def enough() -> bool:
        with local.client() as client:
            d = client.experiment(name)["differences"][0]
        return min(d["n_a"], d["n_b"]) >= 1500

    local.wait_for("labels from both cohorts", enough, 90)
    with local.client() as client:
        accuracy = client.experiment(name)["differences"][0]
    print(accuracy)
    assert accuracy["figure"] == "accuracy"
    assert accuracy["low"] < accuracy["diff"] < accuracy["high"] < 0, "B is worse, for sure"
    assert -0.15 < accuracy["diff"] < -0.05


def test_a_shadow_trial_compares_a_candidate_and_moves_no_device(
    world: tuple[LocalFleet, Fleet],
) -> None:
    local, fleet = world
    dim = fleet.cohort_of("dim")
    ids = [a.device_id for a in dim]
    before = _versions(local, ids)
    body = {"name": "dim-shadow", "model": "tiny", "version": "1.3.0"}
    with local.client() as client:
        started = client.start_shadow({**body, "selector": {"devices": ids}})
        with pytest.raises(ApiError) as twice:
            client.start_shadow({**body, "name": "again", "selector": {"devices": ids[:1]}})
    assert started["devices"] == len(ids) and started["state"] == "running"
    assert twice.value.status == 409, "a device runs one candidate at a time"
    local.wait_for("every dim agent to run 1.3.0 in shadow", lambda: all(a.shadow for a in dim), 60)

    def enough() -> bool:
        with local.client() as client:
            report = client.shadow("dim-shadow")
        return report["figures"]["accuracy"]["labelled"] >= 3000 and all(
            d["frames"] for d in report["per_device"]
        )

    local.wait_for("shadow windows from every dim device", enough, 90)
    where = ["--registry", local.registry_url, "--token", local.admin_token]
    result = CliRunner().invoke(cli.app, ["rollout", "shadow", "status", "dim-shadow", *where])
    assert result.exit_code == 0, result.output
    print(result.output)
    with local.client() as client:
        report = client.shadow("dim-shadow")
    figures = report["figures"]
    # 1.3.0 takes twice the time of what the dim cameras run (10 ms against 5).
    assert 1.6 < figures["latency"]["cost_ratio"] < 2.5
    # Half the dim devices run 1.2.0 (0.8 on their cameras) after the A/B test, and
    # 1.3.0 scores 0.9: on the same frames it is right more often, and McNemar says so.
    accuracy = figures["accuracy"]
    assert accuracy["diff"] > 0.02 and accuracy["mcnemar_p"] < 0.001
    assert accuracy["only_shadow_correct"] > accuracy["only_current_correct"]
    assert 0.7 < figures["agreement_low"] <= figures["agreement"] <= figures["agreement_high"] < 1
    # The candidate decided nothing: every device runs what it ran.
    assert _versions(local, ids) == before
    with local.client() as client:
        stopped = client.stop_shadow("dim-shadow")
        assert client.desired(ids[0])["shadow"] is None
    assert stopped["state"] == "stopped"
    local.wait_for("the dim agents to drop it", lambda: not any(a.shadow for a in dim), 60)
    assert _versions(local, ids) == before
