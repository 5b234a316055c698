"""Which TensorRT a machine has, read the same way by every role.

The trainer records it in a TensorRT variant when ``corral model build-trt``
builds the engine; the agent compares its own with that record to choose a
variant (``agent.variants``) and keys its engine cache by it
(``agent.engines``), so that an engine is never loaded by another TensorRT.
The ``tensorrt`` Python package says its version directly, but park computers
run engines through ONNX Runtime's provider without that package; the
library (``libnvinfer``) is asked then. Nothing heavy is imported: the
package only when asked for, the library through ctypes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

__all__ = ["parse_tensorrt_version", "tensorrt_version"]

#: Where ONNX Runtime's TensorRT provider finds TensorRT, newest first.
_NVINFER = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so", "nvinfer_10.dll", "nvinfer.dll")


def parse_tensorrt_version(number: int) -> str:
    """``getInferLibVersion()``'s integer as ``major.minor.patch``.

    TensorRT 10 encodes ``major*10000 + minor*100 + patch`` (100300 is 10.3.0),
    earlier releases ``major*1000 + minor*100 + patch`` (8601 is 8.6.1).

    Raises:
        Nothing.
    """
    if number >= 100000:
        return f"{number // 10000}.{number // 100 % 100}.{number % 100}"
    return f"{number // 1000}.{number // 100 % 10}.{number % 100}"


def _package_version() -> str | None:
    try:
        import tensorrt  # type: ignore[import-not-found]
    except ImportError:
        return None
    version = getattr(tensorrt, "__version__", None)
    return str(version) if version else None


def tensorrt_version(
    load: Callable[[str], Any] = ctypes.CDLL,
    package: Callable[[], str | None] = _package_version,
) -> str | None:
    """The TensorRT this process would use: the package's version, else the library's.

    Args:
        load: opens a shared library by name (``ctypes.CDLL``; tests pass a fake).
        package: the ``tensorrt`` package's version, or None without it (a seam
            for tests, like ``load``).

    Returns:
        ``major.minor.patch`` (the package may add more), or None when neither
        the package nor a TensorRT library is found.

    Raises:
        Nothing: a library that cannot be opened or asked means "not found".
    """
    version = package()
    if version is not None:
        return version
    for name in _NVINFER:
        try:
            lib = load(name)
            lib.getInferLibVersion.restype = ctypes.c_int32
            number = int(lib.getInferLibVersion())
        except (OSError, AttributeError):
            continue
        return parse_tensorrt_version(number)
    return None
