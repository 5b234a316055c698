"""Builders for valid contract objects that each test then breaks in one way."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from corral import Bundle


def bundle_dict(model_bytes: bytes = b"onnx-bytes") -> dict[str, Any]:
    """A valid bundle.json document for a two-class 1x4x4 gray model."""
    return {
        "format": "corral.bundle/1",
        "name": "animals",
        "version": "1.2.3",
        "created": "2026-11-22T06:00:00Z",
        "input": {"name": "input", "shape": [None, 1, 4, 4], "color": "gray"},
        "output": {"name": "logits", "labels": ["cat", "dog"]},
        "files": [
            {
                "name": "model.onnx",
                "sha256": hashlib.sha256(model_bytes).hexdigest(),
                "length": len(model_bytes),
                "variant": "fp32",
            }
        ],
        "golden": {"tolerance": 0.001, "samples": [{"input": [0.5] * 16, "output": [1.0, -1.0]}]},
        "lineage": {"dataset_version": "abc"},
    }


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A directory holding a valid bundle and its model file."""
    (tmp_path / "model.onnx").write_bytes(b"onnx-bytes")
    (tmp_path / "bundle.json").write_bytes(Bundle.from_dict(bundle_dict()).to_bytes())
    return tmp_path
