"""TensorRT on a real GPU: the agent's engine cache, and ``corral model build-trt`` fp16.

Engine cache (:mod:`agent.engines`): the first load of the trainer's CNN with
the x86-nvidia profile's providers and an engine root builds an engine into
the folder named after the real GPU, driver, ONNX Runtime and TensorRT
(:class:`agent.engines.EngineKey`); a second load finds it there and builds
nothing (the engine files are neither added nor rewritten), and both give the
CPU's outputs within the fp16 parity limit.

``build-trt``: the real command, with the registry replaced by a fake client
that serves the bundle from a folder and keeps what is published (the
registry's side is tests/registry/test_variants.py's, which needs a whole
registry); the published variant is an EPContext model that the agent's
runtime loads and smoke-tests on TensorRT.

Skipped with the reason where this onnxruntime has no TensorRT provider or no
GPU answers (the GPU machine's image has neither onnxruntime-gpu nor TensorRT:
docs/gpu.md).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pytest

from agent.engines import EngineKey, tensorrt_version
from agent.hardware import detect_facts
from agent.runtime import ModelRuntime
from corral.bundle import BUNDLE_FILE, Bundle, BundleFile, file_digest
from tests.gpu.models import cnn_bundle, random_batch
from tests.gpu.probes import CUDA, TRT, provider_missing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(provider_missing(TRT) is not None, reason=str(provider_missing(TRT))),
]

PROVIDERS = [TRT, CUDA, "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    folder = tmp_path_factory.mktemp("cnn")
    return cnn_bundle(folder), folder


def _engines(folder: Path) -> dict[str, int]:
    """The engine files in ``folder`` and when each was last written."""
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix == ".engine"}


def test_engine_cache_is_written_on_first_load_and_hit_on_the_second(
    cnn: tuple[Bundle, Path], tmp_path: Path
) -> None:
    import onnxruntime as ort

    from trainer.parity import compare_outputs

    bundle, folder = cnn
    root = tmp_path / "engines"
    batch = random_batch(28, 1, 16)
    expected = ModelRuntime.load(bundle, folder).run(batch)

    first = ModelRuntime.load(bundle, folder, PROVIDERS, precision="fp16", engine_root=root)
    assert first.providers[0] == TRT, first.providers
    out_first = first.run(batch)  # the batch axis is dynamic: the engine is built on first run
    facts = detect_facts()
    key = EngineKey(
        model_sha256=bundle.model_file().sha256,
        precision="fp16",
        gpu=facts.gpus[0],
        driver=str(facts.driver_version),
        onnxruntime=ort.__version__,
        tensorrt=tensorrt_version(),
    )
    assert [p.name for p in root.iterdir()] == [key.folder()]
    built = _engines(root / key.folder())
    assert built, f"no engine written in {sorted(p.name for p in (root / key.folder()).iterdir())}"
    del first

    second = ModelRuntime.load(bundle, folder, PROVIDERS, precision="fp16", engine_root=root)
    out_second = second.run(batch)
    assert [p.name for p in root.iterdir()] == [key.folder()]
    assert _engines(root / key.folder()) == built, "the second load rebuilt its engine"
    for out in (out_first, out_second):
        report = compare_outputs(expected, out, "fp16")
        assert report.passed, report.to_dict()


class FakeRegistry:
    """The calls ``build-trt`` makes of :class:`corral.client.RegistryClient`.

    ``fetch_bundle`` copies bundle.json and the fp32 file from ``source``, as the
    real client writes them; ``add_variant`` checks the file against its entry, as
    the real client does before it uploads, and keeps a copy and the entry.
    """

    def __init__(self, source: Path) -> None:
        self.source = source
        self.published: list[tuple[str, str, BundleFile, Path]] = []

    def __enter__(self) -> FakeRegistry:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def fetch_bundle(
        self, name: str, version: str, directory: Path, variant: str = "fp32"
    ) -> Bundle:
        bundle = Bundle.load(self.source)
        assert (name, version) == (bundle.name, bundle.version)
        directory.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.source / BUNDLE_FILE, directory / BUNDLE_FILE)
        entry = bundle.model_file(variant)
        shutil.copyfile(self.source / entry.name, directory / entry.name)
        return bundle

    def add_variant(self, name: str, version: str, entry: BundleFile, path: Path) -> dict[str, Any]:
        assert file_digest(path) == (entry.sha256, entry.length)
        kept = self.source.parent / "published" / entry.name
        kept.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, kept)
        self.published.append((name, version, entry, kept))
        return {"variant": entry.variant}


def test_build_trt_fp16_publishes_a_variant_the_agent_runs(
    cnn: tuple[Bundle, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx
    from typer.testing import CliRunner

    from corral.cli import app
    from trainer import trt

    bundle, folder = cnn
    registry = FakeRegistry(tmp_path / "registry" / "cnn-1.0.0")
    shutil.copytree(folder, registry.source)
    monkeypatch.setattr("corral.cli.RegistryClient", lambda *_args: registry)

    args = ["model", "build-trt", f"{bundle.name}@{bundle.version}", "--profile", "x86-nvidia"]
    args += ["--precision", "fp16", "--work-dir", str(tmp_path / "work")]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, [*args, "--registry", "http://fake"])
    print(result.output)
    assert result.exit_code == 0, result.output

    info = trt.probe()
    [(name, version, entry, path)] = registry.published
    assert (name, version) == (bundle.name, bundle.version)
    assert entry.variant == trt.variant_name("fp16", info.gpu, info.tensorrt_version)
    assert entry.unrecognized["parity"]["passed"]
    model = onnx.load(str(path))
    assert any(node.op_type == "EPContext" for node in model.graph.node)

    # The agent installs it: the variant beside the fp32 file, loaded on TensorRT, smoke-tested.
    device = tmp_path / "device"
    shutil.copytree(folder, device)
    shutil.copyfile(path, device / entry.name)
    with_variant = dataclasses.replace(bundle, files=[*bundle.files, entry])
    runtime = ModelRuntime.load(
        with_variant, device, PROVIDERS, variant=entry.variant, precision="fp16"
    )
    assert runtime.providers[0] == TRT, runtime.providers
    assert np.isfinite(runtime.smoke_test())
