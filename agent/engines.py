"""Execution providers as a firmware profile asks for them, and TensorRT's engine cache.

ONNX Runtime's TensorRT provider compiles a model into an engine the first
time it loads it: seconds on a data-centre GPU, minutes on a Jetson. It can
keep engines on disk, but an engine is only good for the exact model file,
precision, GPU, driver, TensorRT and ONNX Runtime that built it, and
TensorRT does not notice every mismatch: a driver update or a new ONNX
Runtime can load a stale engine that misbehaves. So every engine lives in a
folder named after all six (:class:`EngineKey`): anything that changes gets a
new folder and a fresh build, and a stale engine is never looked at. The
newest :data:`KEEP` folders stay; older ones are removed when a new one is
made (a rollback to the previous model finds its engine still there).

An engine is built while the new model is loaded, before the swap, so the
running model keeps serving while it builds (``agent.updater``). A variant
that already embeds its engine (``corral model build-trt``, an ONNX EPContext
file) needs no cache: ONNX Runtime loads the engine from the file.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from corral.tensorrt import tensorrt_version as read_tensorrt_version

__all__ = [
    "KEEP",
    "EngineKey",
    "engine_folder",
    "provider_options",
    "tensorrt_version",
]

logger = logging.getLogger(__name__)

TRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
#: How many engine folders are kept (the current model's and a few before it).
KEEP = 4

#: A provider as ONNX Runtime takes it: a name, or a name and its options.
Provider = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine is only good for; its folder is named after all of it."""

    model_sha256: str
    precision: str
    gpu: str
    driver: str
    onnxruntime: str
    tensorrt: str

    def folder(self) -> str:
        """``<first 12 of the model digest>-<precision>-<hash of the rest>``."""
        whole = "\n".join(f"{k}={v}" for k, v in asdict(self).items())
        digest = hashlib.sha256(whole.encode()).hexdigest()[:16]
        return f"{self.model_sha256[:12]}-{self.precision}-{digest}"


def tensorrt_version() -> str:
    """The TensorRT this process would use (``corral.tensorrt``), or ``unknown``.

    Read from the library when the ``tensorrt`` package is absent, as on park
    computers: a TensorRT upgrade there changes the key, so an engine built by
    the old one is never loaded.
    """
    return read_tensorrt_version() or "unknown"


def engine_folder(root: Path, key: EngineKey, keep: int = KEEP) -> Path:
    """The folder for ``key``'s engines under ``root``, made if new; old folders pruned.

    Args:
        root: where engine folders live (``{data_dir}/engines``).
        key: what the engine is for.
        keep: how many folders stay, the most recently used first.

    Returns:
        The folder.
    """
    folder = root / key.folder()
    folder.mkdir(parents=True, exist_ok=True)
    folder.touch()  # its time is when it was last used
    others = sorted(
        (p for p in root.iterdir() if p.is_dir() and p != folder),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for stale in others[max(0, keep - 1) :]:
        logger.info("removing the TensorRT engines in %s (not used lately)", stale)
        shutil.rmtree(stale, ignore_errors=True)
    return folder


def provider_options(
    providers: Sequence[str],
    precision: str,
    engine_root: Path | None,
    key: Callable[[], EngineKey],
    device_id: int = 0,
) -> list[Provider]:
    """The providers for a session, with their options, in the profile's order.

    Providers this onnxruntime build lacks are left out (CPU stays as the last
    resort). TensorRT gets fp16 when the profile's precision is fp16 (or int8,
    whose calibrated engines come from ``corral model build-trt``), a timing
    cache, and, with ``engine_root``, an engine cache in ``key()``'s folder;
    CUDA gets the device.

    Args:
        providers: the profile's execution providers, best first.
        precision: the profile's precision (fp32, fp16 or int8).
        engine_root: where engine folders live; None keeps no engines.
        key: the engine key, asked only when TensorRT is used.
        device_id: the GPU.

    Returns:
        What ``onnxruntime.InferenceSession(providers=...)`` takes.
    """
    available = set(ort.get_available_providers())
    chosen: list[Provider] = []
    for name in providers:
        if name not in available:
            continue
        if name == TRT:
            options: dict[str, Any] = {
                "device_id": device_id,
                "trt_fp16_enable": precision in ("fp16", "int8"),
            }
            if engine_root is not None:
                folder = engine_folder(engine_root, key())
                options |= {
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(folder),
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": str(folder),
                }
            chosen.append((TRT, options))
        elif name == CUDA:
            chosen.append((CUDA, {"device_id": device_id}))
        else:
            chosen.append(name)
    return chosen or ["CPUExecutionProvider"]
