"""Is there real GPU hardware here? Each probe answers ``None`` (yes) or the LOUD SKIP reason.

The probes run once, when a test module of ``tests/gpu`` is imported, and cost
nothing on a machine without a GPU: no ``pynvml`` or no ``nvidia-smi`` on PATH
answers at once. On a GPU machine ``scripts/gpu-check`` runs these tests
(docs/gpu.md). Nothing heavy is imported here (no torch), so collecting the
GPU tests does not slow the rest of the suite.
"""

from __future__ import annotations

import onnxruntime as ort

from agent.hardware import probe_nvidia_smi, probe_nvml

__all__ = [
    "CUDA",
    "GPU_MISSING",
    "NVML_MISSING",
    "TRT",
    "provider_missing",
    "torch_cuda_missing",
]

CUDA = "CUDAExecutionProvider"
TRT = "TensorrtExecutionProvider"
_HOW = "run scripts/gpu-check on a GPU machine (docs/gpu.md)"


def _nvml_missing() -> str | None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return f"LOUD SKIP: no NVIDIA GPU/NVML: pynvml (nvidia-ml-py) is not installed; {_HOW}"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return f"LOUD SKIP: no NVIDIA GPU/NVML: nvmlInit failed ({e}); {_HOW}"
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError as e:
        return f"LOUD SKIP: no NVIDIA GPU/NVML: nvmlDeviceGetCount failed ({e}); {_HOW}"
    finally:
        pynvml.nvmlShutdown()
    if count == 0:
        return f"LOUD SKIP: no NVIDIA GPU/NVML: NVML started but lists no GPU; {_HOW}"
    return None


def _gpu_missing() -> str | None:
    # Our own probes, in the agent's order: NVML, then nvidia-smi (10 s timeout).
    info = probe_nvml() or probe_nvidia_smi()
    if info is None or not info.names:
        return f"LOUD SKIP: no NVIDIA GPU: neither NVML nor nvidia-smi found one; {_HOW}"
    return None


#: Why the NVML tests cannot run here, or None.
NVML_MISSING = _nvml_missing()
#: Why tests that need a GPU (any way of finding it) cannot run here, or None.
GPU_MISSING = _gpu_missing()


def provider_missing(name: str) -> str | None:
    """Why a test needing ONNX Runtime's ``name`` provider on a GPU cannot run here, or None."""
    if GPU_MISSING is not None:
        return GPU_MISSING
    available = ort.get_available_providers()
    if name in available:
        return None
    return (
        f"LOUD SKIP: no {name} in this onnxruntime {ort.__version__} ({available}); it needs "
        f"onnxruntime-gpu{' and TensorRT' if name == TRT else ''} (docs/gpu.md says why the GPU "
        "machine lacks them)"
    )


def torch_cuda_missing() -> str | None:
    """Why torch cannot load the GPU here (the NVML load test uses it), or None.

    Imports torch, so call it inside a test, not at collection.
    """
    if NVML_MISSING is not None:
        return NVML_MISSING
    try:
        import torch
    except ImportError:
        return "LOUD SKIP: no torch to put load on the GPU; install the trainer extra"
    if not torch.cuda.is_available():
        return f"LOUD SKIP: torch {torch.__version__} sees no CUDA device"
    return None
