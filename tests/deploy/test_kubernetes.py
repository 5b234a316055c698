"""deploy/kubernetes/: valid Kubernetes (checked offline) and consistent with the registry.

Every manifest is checked with ``kubernetes-validate`` (it bundles the
Kubernetes JSON schemas: no cluster, no network) in strict mode, which also
refuses fields Kubernetes does not know. Then what a schema cannot see: two
or more replicas, probes on the registry's health endpoint, a non-root
security context, selectors that match the pods, references to ConfigMaps and
Secrets that exist, and setting names the registry reads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml  # type: ignore[import-untyped]  # no types-PyYAML in dev

from registry import Settings

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
#: An older release still common in clusters, and the newest the package bundles.
VERSIONS = ["1.30", kubernetes_validate.utils.latest_version()]


def _documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(ROOT.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return found


DOCUMENTS = _documents()


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        d for _, d in DOCUMENTS if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return copy.deepcopy(matches[0])


def validate(doc: dict[str, Any], version: str) -> None:
    """Validate strictly; a kind the schemas do not know is a failure, not a warning."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError as e:
        raise AssertionError(e.message) from e


def test_the_manifests_are_there() -> None:
    kinds = sorted({d["kind"] for _, d in DOCUMENTS})
    assert kinds == ["ConfigMap", "Deployment", "Job", "PodDisruptionBudget", "Secret", "Service"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "doc",
    [pytest.param(d, id=f"{f}:{d['kind']}/{d['metadata']['name']}") for f, d in DOCUMENTS],
)
def test_every_manifest_is_valid_kubernetes(doc: dict[str, Any], version: str) -> None:
    validate(doc, version)


def _typo(d: dict[str, Any]) -> None:
    container = d["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")


def _replicas_text(d: dict[str, Any]) -> None:
    d["spec"]["replicas"] = "two"


def _nameless_container(d: dict[str, Any]) -> None:
    del d["spec"]["template"]["spec"]["containers"][0]["name"]


def _port_as_text(d: dict[str, Any]) -> None:
    d["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8080"


def _no_selector(d: dict[str, Any]) -> None:
    del d["spec"]["selector"]


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(_typo, id="misspelt-field"),
        pytest.param(_replicas_text, id="replicas-as-text"),
        pytest.param(_nameless_container, id="container-without-name"),
        pytest.param(_port_as_text, id="port-as-text"),
        pytest.param(_no_selector, id="no-selector"),
    ],
)
def test_a_broken_deployment_is_caught(breakage: Callable[[dict[str, Any]], None]) -> None:
    broken = _one("Deployment")
    breakage(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken, VERSIONS[-1])


def test_an_unknown_kind_is_caught() -> None:
    with pytest.raises(AssertionError, match="Couldn't find schema"):
        validate({"apiVersion": "v1", "kind": "Deploymnet", "metadata": {"name": "x"}}, "1.30")


# --- what a schema cannot see -----------------------------------------------------------


def test_the_registry_runs_as_two_or_more_replicas_that_roll_without_a_gap() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = _one("PodDisruptionBudget")
    assert 1 <= pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def test_probes_ask_the_registrys_health_endpoint_on_the_port_it_serves(tmp_path: Path) -> None:
    from registry import create_app

    app = create_app(Settings(data_dir=tmp_path, mqtt_port=1))
    served = {getattr(route, "path", None) for route in app.routes}
    container = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    port = container["command"][container["command"].index("--port") + 1]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in served, f"{probe} asks {get['path']}, which the registry lacks"
        assert str(named[get["port"]]) == port


def test_pods_run_as_non_root_with_resources() -> None:
    for kind in ("Deployment", "Job"):
        pod = _one(kind)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= set(container["resources"]["requests"])
            assert "memory" in container["resources"]["limits"]


def test_selectors_match_the_pods() -> None:
    labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": _one("Deployment")["spec"]["selector"]["matchLabels"],
        "Service": _one("Service")["spec"]["selector"],
        "PodDisruptionBudget": _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector.items() <= labels.items(), f"the {kind} selects no registry pod"
    ports = {
        p["name"] for p in _one("Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert {p["targetPort"] for p in _one("Service")["spec"]["ports"]} <= ports


def test_references_name_config_maps_and_secrets_that_exist() -> None:
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in DOCUMENTS}
    for kind in ("Deployment", "Job"):
        pod = _one(kind)["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for source in container["envFrom"]:
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in defined
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in defined
        for volume in pod["volumes"]:
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in defined


def test_every_setting_named_is_one_the_registry_reads() -> None:
    fields = {f"CORRAL_{name.upper()}" for name in Settings.model_fields}
    fields.add("CORRAL_DATA_DIR")  # the CLI's --data-dir
    boto3 = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    names = set(_one("ConfigMap")["data"]) | set(
        _one("Secret", "corral-registry-secrets")["stringData"]
    )
    names |= {
        e["name"] for e in _one("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert names - fields - boto3 == set()
    config = _one("ConfigMap")["data"]
    assert config["CORRAL_LOCAL"] == "false"
    assert config["CORRAL_BLOB_STORE"] == "s3"
    assert "CORRAL_DATABASE_URL" in _one("Secret", "corral-registry-secrets")["stringData"]


def test_agents_are_told_the_brokers_public_address_not_the_clusters() -> None:
    """Park computers cannot resolve a cluster's Service names; enrolment hands out this."""
    config = _one("ConfigMap")["data"]
    settings = Settings(**{
        key.removeprefix("CORRAL_").lower(): value
        for key, value in config.items()
        if key.startswith("CORRAL_") and key != "CORRAL_DATA_DIR"
    })  # fmt: skip
    agents = settings.agent_broker()
    assert not agents.host.endswith((".svc", ".svc.cluster.local", ".cluster.local")), agents
    assert agents.tls, "agents reach the broker over the internet: TLS"


def test_the_job_migrates_and_the_deployment_serves_with_commands_that_exist() -> None:
    from registry.cli import app

    commands = {c.name or c.callback.__name__ for c in app.registered_commands if c.callback}
    job = _one("Job")["spec"]["template"]["spec"]["containers"][0]["command"]
    serve = _one("Deployment")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert job[:3] == ["corral", "registry", "migrate"]
    assert serve[:3] == ["corral", "registry", "serve"]
    assert {"migrate", "serve"} <= commands


def test_kustomization_applies_every_manifest_but_the_example_secrets() -> None:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    manifests = {p.name for p in ROOT.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == {m for m in manifests if ".example." not in m}
