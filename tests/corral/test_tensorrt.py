"""Which TensorRT a machine has: the package's version, else the library's."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from corral.tensorrt import parse_tensorrt_version, tensorrt_version


@pytest.mark.parametrize(
    ("number", "version"),
    [(100300, "10.3.0"), (8601, "8.6.1"), (100001, "10.0.1"), (8503, "8.5.3")],
)
def test_tensorrt_library_versions_are_decoded(number: int, version: str) -> None:
    assert parse_tensorrt_version(number) == version


class _Version:
    """``getInferLibVersion`` of a fake libnvinfer: ctypes sets ``restype`` on it."""

    restype: object = None

    def __init__(self, number: int) -> None:
        self.number = number

    def __call__(self) -> int:
        return self.number


class _Nvinfer:
    def __init__(self, number: int) -> None:
        self.getInferLibVersion = _Version(number)


def _loader(libraries: dict[str, object]) -> Callable[[str], object]:
    def load(name: str) -> object:
        if name not in libraries:
            raise OSError(f"{name}: cannot open shared object file")
        return libraries[name]

    return load


@pytest.mark.parametrize(
    ("libraries", "version"),
    [
        ({"libnvinfer.so.10": _Nvinfer(100300)}, "10.3.0"),
        ({"libnvinfer.so.8": _Nvinfer(8601)}, "8.6.1"),
        ({"libnvinfer.so.10": object(), "libnvinfer.so": _Nvinfer(100801)}, "10.8.1"),
        ({}, None),
    ],
    ids=["tensorrt-10", "tensorrt-8", "no-version-symbol-then-next", "none"],
)
def test_the_tensorrt_library_says_its_version(
    libraries: dict[str, object], version: str | None
) -> None:
    assert tensorrt_version(_loader(libraries), package=lambda: None) == version


def test_the_package_says_its_version_before_any_library_is_asked() -> None:
    def load(name: str) -> object:
        raise AssertionError(f"{name} opened although the package answered")

    assert tensorrt_version(load, package=lambda: "10.7.0.post1") == "10.7.0.post1"
