"""The bundle contract: what the trainer writes and the agent trusts."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral import Bundle, BundleError
from tests.corral.conftest import bundle_dict


def test_round_trip_keeps_every_field_including_unknown_ones() -> None:
    doc = bundle_dict()
    doc["future_field"] = {"from": "a newer trainer"}
    doc["input"]["future_input_field"] = 7
    bundle = Bundle.from_dict(doc)
    again = Bundle.from_bytes(bundle.to_bytes())
    assert again.to_dict() == bundle.to_dict()
    assert again.unrecognized == {"future_field": {"from": "a newer trainer"}}
    assert again.to_dict()["input"]["future_input_field"] == 7


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("files.0.name", "../../etc/passwd", "not a plain file name"),
        ("files.0.name", "sub/model.onnx", "not a plain file name"),
        ("files.0.name", "bundle.json", "not a plain file name"),
        ("files.0.sha256", "xyz", "64 lowercase hex"),
        ("version", "1.0", "semantic version"),
        ("version", "01.0.0", "semantic version"),
        ("name", "Animals!", "lowercase"),
        ("input.color", "cmyk", "gray, rgb or bgr"),
        ("input.shape", [None, 3, 4, 4], "channel"),
        ("output.labels", ["cat"], "two or more"),
        ("golden.samples.0.input", [0.5] * 15, "expected 16"),
        ("golden.samples.0.output", [1.0], "one per label"),
        ("files", [], "no files"),
        ("input", _DELETE, "missing required field 'input'"),
        ("format", "something/else", "not a Corral bundle"),
    ],
    ids=lambda v: str(v)[:24],
)
def test_malformed_bundles_are_refused_with_a_message_naming_the_problem(
    path: str, value: Any, message: str
) -> None:
    with pytest.raises(BundleError, match=message):
        Bundle.from_dict(_set(bundle_dict(), path, value))


def test_non_json_bundle_is_refused() -> None:
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.from_bytes(b"{not json")


def test_intact_files_verify(bundle_dir: Path) -> None:
    Bundle.load(bundle_dir).verify_files(bundle_dir)


def test_a_file_changed_by_one_byte_is_refused(bundle_dir: Path) -> None:
    model = bundle_dir / "model.onnx"
    data = bytearray(model.read_bytes())
    data[0] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="changed after signing"):
        Bundle.load(bundle_dir).verify_files(bundle_dir)


def test_a_missing_or_truncated_file_is_refused(bundle_dir: Path) -> None:
    model = bundle_dir / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1])
    with pytest.raises(BundleError, match="expected 10 bytes"):
        Bundle.load(bundle_dir).verify_files(bundle_dir)
    model.unlink()
    with pytest.raises(BundleError, match="missing"):
        Bundle.load(bundle_dir).verify_files(bundle_dir)


def test_model_file_picks_the_variant_or_says_which_exist() -> None:
    bundle = Bundle.from_dict(bundle_dict())
    assert bundle.model_file("fp32").name == "model.onnx"
    with pytest.raises(BundleError, match=r"no 'int8' variant; has \['fp32'\]"):
        bundle.model_file("int8")


@given(
    extra=st.dictionaries(
        st.sampled_from(["a", "b_c", "x_future", "zz", "signatures_v2"]),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=5),
            lambda inner: st.lists(inner, max_size=3)
            | st.dictionaries(st.text(max_size=3), inner, max_size=3),
            max_leaves=5,
        ),
        max_size=4,
    ),
    tolerance=st.floats(min_value=1e-9, max_value=10),
)
def test_any_extra_fields_survive_a_round_trip(extra: dict[str, Any], tolerance: float) -> None:
    doc = bundle_dict()
    doc.update(extra)
    doc["golden"]["tolerance"] = tolerance
    bundle = Bundle.from_bytes(json.dumps(doc).encode())
    assert Bundle.from_bytes(bundle.to_bytes()).to_dict() == bundle.to_dict()
    assert bundle.unrecognized == extra


def test_a_device_verifies_only_the_variant_it_fetched(tmp_path: Path) -> None:
    doc = bundle_dict()
    doc["files"].append({**doc["files"][0], "name": "model-int8.onnx", "variant": "int8"})
    (tmp_path / "model.onnx").write_bytes(b"onnx-bytes")
    bundle = Bundle.from_dict(doc)
    bundle.verify_files(tmp_path, variant="fp32")
    with pytest.raises(BundleError, match="model-int8.onnx is missing"):
        bundle.verify_files(tmp_path)
