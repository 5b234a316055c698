"""Adding a derived variant to a version: ``POST /api/v1/models/{name}/{version}/variants``.

On SQLite and PostgreSQL, against a real registry; the agent's own updater then
fetches the new variant through TUF, verifies it and smoke-tests it in ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from tuf.api.metadata import Metadata
from typer.testing import CliRunner

from agent.config import AgentConfig
from agent.updater import Updater
from corral.bundle import BundleFile
from corral.cli import app
from corral.profiles import load_profile
from tests.agent.tuf_repo import MODEL_FILE, make_bundle, make_model

PROFILES = Path(__file__).resolve().parents[2] / "firmware-profiles"
VARIANT = "trt-fp16-test-gpu-trt10.3"
VARIANT_FILE = f"model.{VARIANT}.onnx"


def _push_tiny(registry: Any, version: str = "1.0.0") -> Any:
    model = make_model(1)
    bundle = make_bundle("tiny", version, model)
    answer = registry.push(bundle.to_bytes(), {MODEL_FILE: model})
    assert answer.status_code == 201, answer.text
    return bundle


def _variant(bundle: Any, data: bytes, **fields: Any) -> dict[str, Any]:
    """A files entry for ``data`` carrying its own golden outputs on the bundle's inputs."""
    inputs = np.asarray([s.input for s in bundle.golden], dtype=np.float32).reshape(-1, 1, 28, 28)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    outputs = session.run(["logits"], {"input": inputs})[0]
    entry = BundleFile(
        name=VARIANT_FILE,
        sha256=hashlib.sha256(data).hexdigest(),
        length=len(data),
        variant=VARIANT,
        unrecognized={
            "golden": {"outputs": outputs.tolist(), "tolerance": 1e-4},
            "derived_from": "fp32",
        },
    ).to_dict()
    entry.update(fields)
    return entry


def _add(
    registry: Any,
    entry: dict[str, Any] | str,
    data: bytes,
    filename: str | None = None,
    client: httpx.Client | None = None,
    version: str = "1.0.0",
) -> httpx.Response:
    text = entry if isinstance(entry, str) else json.dumps(entry)
    name = filename if filename is not None else json.loads(text).get("name", "x")
    return (client or registry.admin).post(
        f"/api/v1/models/tiny/{version}/variants",
        data={"entry": text},
        files=[("file", (name, data, "application/octet-stream"))],
    )


def _targets_version(registry: Any) -> int:
    return int(Metadata.from_bytes(registry.context.tuf.metadata("targets")).signed.version)


def test_a_variant_is_signed_and_the_agent_installs_it_through_tuf(
    registry: Any, tmp_path: Path
) -> None:
    bundle = _push_tiny(registry)
    before = _targets_version(registry)
    data = make_model(2)  # a real, different ONNX file stands in for the engine
    answer = _add(registry, _variant(bundle, data), data)
    assert answer.status_code == 201, answer.text
    added = answer.json()
    assert (added["variant"], added["file"]) == (VARIANT, VARIANT_FILE)
    assert _targets_version(registry) == before + 1

    stored = registry.admin.get("/api/v1/models/tiny/1.0.0").json()
    assert [(f["name"], f["variant"]) for f in stored["files"]] == [
        (MODEL_FILE, "fp32"),
        (VARIANT_FILE, VARIANT),
    ]
    assert stored["files"][1]["derived_from"] == "fp32"
    assert stored["golden"] == bundle.to_dict()["golden"]  # the version's goldens stay
    entries = registry.admin.get("/api/v1/audit", params={"action": "model.variant"}).json()
    assert [e["target"] for e in entries] == ["tiny/1.0.0"]
    assert entries[0]["details"]["variant"] == VARIANT

    # A device assigned the version fetches the variant the way it installs any model.
    device = registry.enrol("cam-1")
    rollout = registry.admin.post(
        "/api/v1/rollouts", json={"model": "tiny", "version": "1.0.0", "devices": ["cam-1"]}
    )
    assert rollout.status_code == 201, rollout.text
    config = AgentConfig(
        data_dir=tmp_path / "agent",
        device_id="cam-1",
        device_token=device["device_token"],
        registry_url=registry.url,
        mqtt_host="localhost",
        mqtt_port=1883,
        metadata_url=device["metadata_url"],
        targets_url=device["targets_url"],
    )
    config.tuf_metadata_dir.mkdir(parents=True)
    (config.tuf_metadata_dir / "root.json").write_text(json.dumps(device["tuf_root"]))
    updater = Updater(config, load_profile(PROFILES / "x86-cpu.toml"))
    try:
        result = updater.install("tiny", "1.0.0", variant=VARIANT)
    finally:
        updater.close()
    assert result.variant == VARIANT
    assert (result.slot / VARIANT_FILE).read_bytes() == data
    assert result.smoke_max_diff <= 1e-4


def test_bad_or_clashing_variants_are_refused_and_change_nothing(registry: Any) -> None:
    bundle = _push_tiny(registry)
    data = make_model(2)
    good = _variant(bundle, data)
    assert _add(registry, good, data).status_code == 201
    stored = registry.admin.get("/api/v1/models/tiny/1.0.0").json()
    version = _targets_version(registry)
    other = make_model(3)
    cases: list[tuple[str, dict[str, Any] | str, bytes, str | None, int, str]] = [
        ("same variant", {**_variant(bundle, other), "name": "b.onnx"}, other, None, 409, "has a"),
        ("same file name", {**_variant(bundle, other), "variant": "x"}, other, None, 409, "named"),
        (
            "capital variant",
            {**good, "name": "c.onnx", "variant": "TRT"},
            data,
            None,
            422,
            "variant",
        ),
        ("path variant", {**good, "name": "c.onnx", "variant": "a/b"}, data, None, 422, "variant"),
        ("climbing name", {**good, "name": "../c.onnx"}, data, None, 422, "plain file name"),
        (
            "renamed upload",
            {**good, "name": "c.onnx", "variant": "c"},
            data,
            "d.onnx",
            422,
            "named",
        ),
        ("wrong digest", {**good, "name": "c.onnx", "variant": "c"}, other, None, 422, "SHA-256"),
        ("not json", "{nope", data, "c.onnx", 422, "JSON"),
        ("not an object", "[1]", data, "c.onnx", 422, "object"),
    ]
    for case, entry, body, filename, code, words in cases:
        answer = _add(registry, entry, body, filename)
        assert answer.status_code == code, (case, answer.text)
        assert words.lower() in answer.json()["detail"].lower(), (case, answer.text)
    missing = _add(registry, {**good, "variant": "y", "name": "y.onnx"}, data, version="9.9.9")
    assert missing.status_code == 404
    with registry.client(registry.api_token("viewer")) as viewer:
        refused = _add(registry, {**good, "variant": "z", "name": "z.onnx"}, data, client=viewer)
    assert refused.status_code == 403
    assert registry.admin.get("/api/v1/models/tiny/1.0.0").json() == stored
    assert _targets_version(registry) == version


def test_two_variants_in_turn_both_stay_listed(registry: Any) -> None:
    bundle = _push_tiny(registry)
    for i in range(2):
        data = make_model(10 + i)
        entry = {**_variant(bundle, data), "name": f"v{i}.onnx", "variant": f"trt-v{i}"}
        assert _add(registry, entry, data).status_code == 201
    files = registry.admin.get("/api/v1/models/tiny/1.0.0").json()["files"]
    assert [f["variant"] for f in files] == ["fp32", "trt-v0", "trt-v1"]


HAS_TRT = "TensorrtExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(HAS_TRT, reason="this onnxruntime has the TensorRT provider")
def test_build_trt_without_tensorrt_says_what_it_needs_and_changes_nothing(
    registry: Any,
) -> None:
    _push_tiny(registry)
    stored = registry.admin.get("/api/v1/models/tiny/1.0.0").json()
    version = _targets_version(registry)
    runner = CliRunner(env={"COLUMNS": "240"})
    auth = ["--registry", registry.url, "--token", registry.context.admin_token]
    result = runner.invoke(
        app, ["model", "build-trt", "tiny@1.0.0", "--profile", "x86-nvidia", *auth]
    )
    assert result.exit_code == 2, result.output
    assert "TensorrtExecutionProvider" in result.output and "onnxruntime-gpu" in result.output
    for args, words in [
        (["tiny", "--profile", "x86-nvidia"], "NAME@VERSION"),
        (["tiny@1.0.0", "--profile", "no-such"], "no firmware profile"),
    ]:
        refused = runner.invoke(app, ["model", "build-trt", *args, *auth])
        assert refused.exit_code == 2 and words in refused.output, refused.output
    assert registry.admin.get("/api/v1/models/tiny/1.0.0").json() == stored
    assert _targets_version(registry) == version
    assert registry.admin.get("/api/v1/audit", params={"action": "model.variant"}).json() == []


@pytest.mark.skipif(
    not HAS_TRT,
    reason="LOUD SKIP: no TensorrtExecutionProvider in this onnxruntime "
    f"({ort.get_available_providers()}); run on a GPU machine with onnxruntime-gpu and TensorRT",
)
def test_build_trt_publishes_a_signed_variant_on_a_gpu(registry: Any) -> None:
    _push_tiny(registry)
    runner = CliRunner(env={"COLUMNS": "240"})
    auth = ["--registry", registry.url, "--token", registry.context.admin_token]
    for precision in ("fp16", "int8"):
        result = runner.invoke(
            app,
            [
                "model",
                "build-trt",
                "tiny@1.0.0",
                "--profile",
                "x86-nvidia",
                "--precision",
                precision,
                *auth,
            ],
        )
        assert result.exit_code == 0, result.output
    files = registry.admin.get("/api/v1/models/tiny/1.0.0").json()["files"]
    variants = [f["variant"] for f in files]
    assert variants[0] == "fp32"
    assert [v.split("-")[1] for v in variants[1:]] == ["fp16", "int8"]
    assert all(f["parity"]["passed"] for f in files[1:])
    again = runner.invoke(
        app, ["model", "build-trt", "tiny@1.0.0", "--profile", "x86-nvidia", *auth]
    )
    assert again.exit_code == 2 and "already has" in again.output
