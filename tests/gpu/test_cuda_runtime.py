"""The agent's runtime on ONNX Runtime's CUDA provider, with IO binding, against the CPU.

The trainer's CNN (tests/gpu/models.py) is loaded the way the agent loads it
(:meth:`agent.runtime.ModelRuntime.load` with the profile's providers): on a
GPU the session must run on CUDA, bind its input buffer on the device
(``_Binding``), give the CPU provider's outputs within the bundle's golden
tolerance for several batch sizes (buffers reused), and pass the smoke test with the
trainer's golden tolerance, since that is what an install on a GPU park
computer asks. Skipped with the reason where this onnxruntime has no CUDA
provider or no GPU answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.runtime import ModelRuntime
from corral.bundle import Bundle
from tests.gpu.models import cnn_bundle, random_batch
from tests.gpu.probes import CUDA, provider_missing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(provider_missing(CUDA) is not None, reason=str(provider_missing(CUDA))),
]

#: The x86-nvidia profile's batch size, and smaller batches a quiet camera set gives.
BATCHES = (16, 1, 5, 16)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, Path]:
    folder = tmp_path_factory.mktemp("cnn")
    return cnn_bundle(folder), folder


def test_cuda_runtime_with_io_binding_matches_the_cpu(cnn: tuple[Bundle, Path]) -> None:
    bundle, folder = cnn
    gpu = ModelRuntime.load(bundle, folder, providers=[CUDA, "CPUExecutionProvider"])
    cpu = ModelRuntime.load(bundle, folder, providers=["CPUExecutionProvider"])
    assert gpu.providers[0] == CUDA, gpu.providers
    binding = gpu._binding
    assert binding is not None and binding._device == "cuda", "no IO binding on the GPU"
    for n, size in enumerate(BATCHES):
        batch = random_batch(28, 1, size, seed=n)
        got, expected = gpu.run(batch), cpu.run(batch)
        assert got.shape == expected.shape == (size, 2)
        worst = float(np.max(np.abs(got - expected)))
        print(f"batch {size}: max |CUDA - CPU| = {worst:.3g}")
        # fp32 on both: within what the smoke test allows (TF32 convolutions included).
        assert worst <= bundle.golden_tolerance
    # One pair of device/host buffers per batch size, reused on the repeat.
    assert sorted(s[0] for s in binding._buffers) == sorted(set(BATCHES))


def test_smoke_test_passes_with_the_nvidia_profiles_providers(cnn: tuple[Bundle, Path]) -> None:
    bundle, folder = cnn
    runtime = ModelRuntime.load(
        bundle, folder, providers=["TensorrtExecutionProvider", CUDA, "CPUExecutionProvider"]
    )
    worst = runtime.smoke_test()
    print(
        f"smoke test on {runtime.providers[0]}: worst {worst:.3g} (tolerance "
        f"{bundle.golden_tolerance:g})"
    )
    assert np.isfinite(worst)
