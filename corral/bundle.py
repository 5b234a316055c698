"""The model bundle: ``bundle.json`` beside the model files.

A bundle is what the trainer writes, the registry stores and signs, and the
agent verifies and installs. ``Bundle`` follows TUF's payload classes: explicit
``from_dict``/``to_dict``, validation in the constructor, and unknown fields
kept so that an older agent can read a newer bundle and write it back intact.

File names inside a bundle are plain names; a name that could climb out of the
bundle directory is refused when the bundle is read, not when it is used.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import BundleError
from corral.version import Version

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "Bundle",
    "BundleFile",
    "GoldenSample",
    "InputSpec",
    "OutputSpec",
    "file_digest",
]

BUNDLE_FORMAT = "corral.bundle/1"
BUNDLE_FILE = "bundle.json"
_MAX_BUNDLE_JSON = 16 * 1024 * 1024
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
#: A variant name: lowercase, digits, '.', '_', '-' (e.g. ``trt-fp16-rtx-4090-trt10.3``).
_VARIANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise BundleError(f"{where}: missing required field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise BundleError(f"{where}: field {key!r} should be {_kind_name(kind)}, got {value!r:.80}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def _rest(data: Mapping[str, Any], known: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in known}


def file_digest(path: Path) -> tuple[str, int]:
    """Return the SHA-256 hex digest and the length of the file at ``path``."""
    digest = hashlib.sha256()
    length = 0
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            length += len(chunk)
    return digest.hexdigest(), length


@dataclass
class InputSpec:
    """How a frame becomes the model's input tensor.

    ``shape`` is NCHW with ``None`` for the dynamic batch axis. A pixel value
    ``p`` (0..255, in ``color`` order) becomes ``(p * scale - mean[c]) / std[c]``.
    """

    name: str
    shape: list[int | None]
    dtype: str = "float32"
    layout: str = "NCHW"
    color: str = "gray"
    scale: float = 1.0 / 255.0
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("name", "shape", "dtype", "layout", "color", "scale", "mean", "std")

    def __post_init__(self) -> None:
        where = "bundle input"
        if self.layout != "NCHW":
            raise BundleError(f"{where}: layout {self.layout!r} is not supported; use 'NCHW'")
        if self.color not in ("gray", "rgb", "bgr"):
            raise BundleError(f"{where}: color {self.color!r} should be gray, rgb or bgr")
        if self.dtype != "float32":
            raise BundleError(f"{where}: dtype {self.dtype!r} is not supported; use 'float32'")
        if len(self.shape) != 4 or not all(isinstance(d, int) and d > 0 for d in self.shape[1:]):
            raise BundleError(f"{where}: shape should be [batch, C, H, W], got {self.shape}")
        channels = 1 if self.color == "gray" else 3
        if self.shape[1] != channels:
            raise BundleError(
                f"{where}: color {self.color!r} needs {channels} channel(s), "
                f"shape has {self.shape[1]}"
            )
        if len(self.mean) != channels or len(self.std) != channels:
            raise BundleError(f"{where}: mean and std need {channels} value(s) each")
        if any(s == 0 or not math.isfinite(s) for s in self.std):
            raise BundleError(f"{where}: std values must be finite and non-zero")

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one sample."""
        _, c, h, w = self.shape
        assert c is not None and h is not None and w is not None
        return (c, h, w)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        """Build from a dict.

        Raises:
            BundleError: a field is missing or malformed.
        """
        where = "bundle input"
        shape = _require(data, "shape", list, where)
        return cls(
            name=_require(data, "name", str, where),
            shape=[None if d is None else int(d) for d in shape],
            dtype=data.get("dtype", "float32"),
            layout=data.get("layout", "NCHW"),
            color=data.get("color", "gray"),
            scale=float(data.get("scale", 1.0 / 255.0)),
            mean=[float(v) for v in data.get("mean", [0.0])],
            std=[float(v) for v in data.get("std", [1.0])],
            unrecognized=_rest(data, cls._KNOWN),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "layout": self.layout,
            "color": self.color,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            **self.unrecognized,
        }


@dataclass
class OutputSpec:
    """The model's output: one score per label, as logits or probabilities."""

    name: str
    labels: list[str]
    kind: str = "logits"
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("name", "labels", "kind")

    def __post_init__(self) -> None:
        if self.kind not in ("logits", "probabilities"):
            raise BundleError(
                f"bundle output: kind {self.kind!r} should be logits or probabilities"
            )
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise BundleError(f"bundle output: need two or more distinct labels, got {self.labels}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OutputSpec:
        """Build from a dict.

        Raises:
            BundleError: a field is missing or malformed.
        """
        where = "bundle output"
        labels = _require(data, "labels", list, where)
        if not all(isinstance(label, str) for label in labels):
            raise BundleError(f"{where}: labels must be strings")
        return cls(
            name=_require(data, "name", str, where),
            labels=list(labels),
            kind=data.get("kind", "logits"),
            unrecognized=_rest(data, cls._KNOWN),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": list(self.labels),
            "kind": self.kind,
            **self.unrecognized,
        }


@dataclass
class BundleFile:
    """One file of a bundle: a plain name, its digest and length, and its variant."""

    name: str
    sha256: str
    length: int
    variant: str = "fp32"
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _KNOWN = ("name", "sha256", "length", "variant")

    def __post_init__(self) -> None:
        if not _PLAIN_NAME.match(self.name) or self.name == BUNDLE_FILE:
            raise BundleError(
                f"bundle file name {self.name!r} is not a plain file name "
                "(letters, digits, '.', '_', '-'; no directories)"
            )
        if not _HEX64.match(self.sha256):
            raise BundleError(f"bundle file {self.name!r}: sha256 must be 64 lowercase hex digits")
        if self.length < 0:
            raise BundleError(f"bundle file {self.name!r}: length must not be negative")
        if not isinstance(self.variant, str) or not _VARIANT.match(self.variant):
            raise BundleError(
                f"bundle file {self.name!r}: variant {self.variant!r} should be 1-64 lowercase "
                "letters, digits, '.', '_' or '-', starting with a letter or digit"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BundleFile:
        """Build from a dict.

        Raises:
            BundleError: a field is missing or malformed.
        """
        where = "bundle file"
        return cls(
            name=_require(data, "name", str, where),
            sha256=_require(data, "sha256", str, where),
            length=_require(data, "length", int, where),
            variant=data.get("variant", "fp32"),
            unrecognized=_rest(data, cls._KNOWN),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "length": self.length,
            "variant": self.variant,
            **self.unrecognized,
        }


@dataclass
class GoldenSample:
    """A preprocessed input (flattened C*H*W floats) and the output it must give."""

    input: list[float]
    output: list[float]
    label: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GoldenSample:
        """Build from a dict.

        Raises:
            BundleError: a field is missing or malformed.
        """
        where = "bundle golden sample"
        values = _require(data, "input", list, where)
        output = _require(data, "output", list, where)
        try:
            return cls([float(v) for v in values], [float(v) for v in output], data.get("label"))
        except (TypeError, ValueError) as e:
            raise BundleError(f"{where}: input and output must be lists of numbers") from e

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"input": self.input, "output": self.output}
        if self.label is not None:
            out["label"] = self.label
        return out


@dataclass
class Bundle:
    """What ``bundle.json`` says about a model version.

    ``drift_baseline``, ``metrics``, ``lineage`` and ``compatibility`` are free-form
    objects whose well-known keys are documented in docs/contracts.md.
    """

    name: str
    version: str
    input: InputSpec
    output: OutputSpec
    files: list[BundleFile]
    golden: list[GoldenSample] = field(default_factory=list)
    golden_tolerance: float = 1e-3
    drift_baseline: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    compatibility: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    unrecognized: dict[str, Any] = field(default_factory=dict)

    _KNOWN = (
        "format",
        "name",
        "version",
        "input",
        "output",
        "files",
        "golden",
        "drift_baseline",
        "metrics",
        "lineage",
        "compatibility",
        "created",
    )

    def __post_init__(self) -> None:
        if not _MODEL_NAME.match(self.name):
            raise BundleError(
                f"bundle name {self.name!r} should be lowercase letters, digits and '-'"
            )
        try:
            Version.parse(self.version)
        except Exception as e:
            raise BundleError(f"bundle version: {e}") from e
        if not self.files:
            raise BundleError("bundle lists no files; it needs at least one model file")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise BundleError(f"bundle lists a file name twice: {names}")
        if not self.golden_tolerance > 0:
            raise BundleError("bundle golden tolerance must be positive")
        numel = math.prod(self.input.sample_shape)
        for i, sample in enumerate(self.golden):
            if len(sample.input) != numel:
                raise BundleError(
                    f"golden sample {i} has {len(sample.input)} input values, expected {numel}"
                )
            if len(sample.output) != len(self.output.labels):
                raise BundleError(
                    f"golden sample {i} has {len(sample.output)} outputs, "
                    f"expected {len(self.output.labels)} (one per label)"
                )

    @property
    def semver(self) -> Version:
        return Version.parse(self.version)

    def model_file(self, variant: str = "fp32") -> BundleFile:
        """The file of ``variant``.

        Raises:
            BundleError: the bundle has no such variant.
        """
        for f in self.files:
            if f.variant == variant:
                return f
        have = sorted({f.variant for f in self.files})
        raise BundleError(
            f"bundle {self.name} {self.version} has no {variant!r} variant; has {have}"
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Bundle:
        """Build and validate a bundle from the parsed ``bundle.json``.

        Raises:
            BundleError: the document does not follow the bundle contract.
        """
        if not isinstance(data, Mapping):
            raise BundleError("bundle.json must hold a JSON object")
        where = "bundle.json"
        fmt = data.get("format", BUNDLE_FORMAT)
        if not isinstance(fmt, str) or not fmt.startswith("corral.bundle/"):
            raise BundleError(f"{where}: format {fmt!r} is not a Corral bundle")
        golden = data.get("golden", {}) or {}
        if not isinstance(golden, Mapping):
            raise BundleError(f"{where}: golden should be an object with samples and tolerance")
        files = _require(data, "files", list, where)
        for key in ("drift_baseline", "metrics", "lineage", "compatibility"):
            if not isinstance(data.get(key, {}), Mapping):
                raise BundleError(f"{where}: {key} should be an object")
        return cls(
            name=_require(data, "name", str, where),
            version=_require(data, "version", str, where),
            input=InputSpec.from_dict(_require(data, "input", Mapping, where)),
            output=OutputSpec.from_dict(_require(data, "output", Mapping, where)),
            files=[BundleFile.from_dict(f) for f in files],
            golden=[GoldenSample.from_dict(s) for s in golden.get("samples", [])],
            golden_tolerance=float(golden.get("tolerance", 1e-3)),
            drift_baseline=dict(data.get("drift_baseline", {})),
            metrics=dict(data.get("metrics", {})),
            lineage=dict(data.get("lineage", {})),
            compatibility=dict(data.get("compatibility", {})),
            created=str(data.get("created", "")),
            unrecognized=_rest(data, cls._KNOWN),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "input": self.input.to_dict(),
            "output": self.output.to_dict(),
            "files": [f.to_dict() for f in self.files],
            "golden": {
                "tolerance": self.golden_tolerance,
                "samples": [s.to_dict() for s in self.golden],
            },
            "drift_baseline": self.drift_baseline,
            "metrics": self.metrics,
            "lineage": self.lineage,
            "compatibility": self.compatibility,
            **self.unrecognized,
        }

    # --- bytes and directories -------------------------------------------------

    @classmethod
    def from_bytes(cls, raw: bytes) -> Bundle:
        """Parse ``bundle.json`` bytes.

        Raises:
            BundleError: not JSON, too large, or not a valid bundle.
        """
        if len(raw) > _MAX_BUNDLE_JSON:
            raise BundleError(f"bundle.json is {len(raw)} bytes; the limit is {_MAX_BUNDLE_JSON}")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BundleError(f"bundle.json is not valid JSON: {e}") from e
        return cls.from_dict(data)

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False).encode() + b"\n"

    @classmethod
    def load(cls, directory: Path) -> Bundle:
        """Read ``directory/bundle.json`` (files are not checked; see :meth:`verify_files`).

        Raises:
            BundleError: the file is missing or not a valid bundle.
        """
        path = Path(directory) / BUNDLE_FILE
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise BundleError(f"cannot read {path}: {e.strerror}") from e
        return cls.from_bytes(raw)

    def verify_files(self, directory: Path, variant: str | None = None) -> None:
        """Check the listed files in ``directory`` against their length and SHA-256.

        Args:
            directory: where the files are.
            variant: check only this variant's file (a device fetches one variant);
                every file when None.

        Raises:
            BundleError: a file is missing, or its length or digest differs, or the
                bundle has no such variant.
        """
        entries = self.files if variant is None else [self.model_file(variant)]
        for entry in entries:
            path = Path(directory) / entry.name
            if not path.is_file():
                raise BundleError(f"bundle file {entry.name} is missing from {directory}")
            digest, length = file_digest(path)
            if length != entry.length:
                raise BundleError(
                    f"bundle file {entry.name}: expected {entry.length} bytes, found {length}"
                )
            if digest != entry.sha256:
                raise BundleError(
                    f"bundle file {entry.name}: SHA-256 {digest[:12]}… does not match the "
                    f"bundle's {entry.sha256[:12]}…; the file was changed after signing"
                )
