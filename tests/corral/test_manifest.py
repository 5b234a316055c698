"""``corral.manifest``: the CSV / JSONL image lists the trainer and ``corral predict`` read."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.errors import ManifestError
from corral.manifest import ManifestRow, is_manifest, read_manifest


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def test_csv_rows_resolve_relative_paths_from_the_manifests_folder(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    manifest = _write(
        tmp_path / "lists" / "m.csv",
        "id,path,label,note\n"
        "1,a.png,cat,x\n"
        "\n"  # a blank line: skipped, and still counted in later line numbers
        f"2,{tmp_path / 'abs.png'}, dog ,y\n"
        "3,sub/c.png,,z\n",
    )

    read = read_manifest(manifest)

    assert read.problems == ()
    assert read.rows == (
        ManifestRow(tmp_path / "lists" / "a.png", "cat", 2),
        ManifestRow(tmp_path / "abs.png", "dog", 4),
        ManifestRow(tmp_path / "lists" / "sub" / "c.png", None, 5),
    )


def test_jsonl_rows_keep_labels_and_line_numbers(tmp_path: Path) -> None:
    manifest = _write(
        tmp_path / "m.jsonl",
        json.dumps({"path": "a.png", "label": "cat", "extra": 1})
        + "\n\n"
        + json.dumps({"path": "b.png", "label": None})
        + "\n"
        + json.dumps({"path": "c.png"})
        + "\n",
    )

    read = read_manifest(manifest)

    assert read.problems == ()
    assert read.rows == (
        ManifestRow(tmp_path / "a.png", "cat", 1),
        ManifestRow(tmp_path / "b.png", None, 3),
        ManifestRow(tmp_path / "c.png", None, 4),
    )


#: (manifest name, its text, the expected ``where: reason`` of each problem).
BAD_LINES = [
    pytest.param(
        "m.jsonl",
        '{"path": "a.png"}\n{not json\n[1, 2]\n{"label": "cat"}\n{"path": "b.png", "label": 3}\n',
        [
            "m.jsonl:2: not JSON",
            "m.jsonl:3: expected a JSON object, got list",
            "m.jsonl:4: expected a non-empty 'path'",
            "m.jsonl:5: expected 'label' to be a string, got 3",
        ],
        id="jsonl",
    ),
    pytest.param(
        "m.csv",
        "path,label\na.png,cat\n,dog\n",
        ["m.csv:3: expected a non-empty 'path'"],
        id="csv-empty-path",
    ),
    pytest.param(
        "m.csv",
        "file,label\na.png,cat\nb.png,dog\n",
        [
            "m.csv:2: the header names no 'path' column ('file', 'label')",
            "m.csv:3: the header names no 'path' column ('file', 'label')",
        ],
        id="csv-no-path-column",
    ),
]


@pytest.mark.parametrize(("name", "text", "problems"), BAD_LINES)
def test_bad_lines_are_problems_located_file_colon_line(
    tmp_path: Path, name: str, text: str, problems: list[str]
) -> None:
    read = read_manifest(_write(tmp_path / name, text))

    got = [str(p) for p in read.problems]
    assert len(got) == len(problems)
    for line, expected in zip(got, problems, strict=True):
        assert line.startswith(expected), got


def test_a_required_label_makes_an_unlabelled_line_a_problem(tmp_path: Path) -> None:
    manifest = _write(tmp_path / "m.csv", "path,label\na.png,cat\nb.png,\nc.png,   \n")

    required = read_manifest(manifest, require_label=True)
    optional = read_manifest(manifest)

    assert [r.label for r in required.rows] == ["cat"]
    assert [p.where for p in required.problems] == ["m.csv:3", "m.csv:4"]
    assert all("'path' and 'label'" in p.reason for p in required.problems)
    assert [r.label for r in optional.rows] == ["cat", None, None]
    assert optional.problems == ()


def test_a_byte_order_mark_before_the_header_is_ignored(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("path,label\na.png,cat\n".encode("utf-8-sig"))

    assert read_manifest(manifest).rows == (ManifestRow(tmp_path / "a.png", "cat", 2),)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        pytest.param("m.txt", b"path\na.png\n", "is not a manifest", id="suffix"),
        pytest.param("m.csv", None, "cannot read the manifest", id="missing"),
        pytest.param("m.jsonl", b'{"path": "\xff"}\n', "cannot read the manifest", id="not-utf8"),
    ],
)
def test_a_file_that_is_no_readable_manifest_raises(
    tmp_path: Path, name: str, content: bytes | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(ManifestError, match=message):
        read_manifest(path)


def test_is_manifest_goes_by_suffix() -> None:
    assert is_manifest(Path("x/M.CSV")) and is_manifest(Path("m.jsonl"))
    assert not is_manifest(Path("m.json")) and not is_manifest(Path("a.png"))


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1)
_rows = st.lists(st.tuples(_text, st.one_of(st.none(), _text)), max_size=8)


@given(rows=_rows)
def test_what_csv_and_jsonl_writers_write_reads_back(rows: list[tuple[str, str | None]]) -> None:
    """Any path and label a csv or json writer writes comes back (labels stripped)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label"])
    writer.writerows([(path, label or "") for path, label in rows])
    jsonl = "".join(json.dumps({"path": path, "label": label}) + "\n" for path, label in rows)
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        expected = [
            (folder / path, None if label is None else label.strip() or None)
            for path, label in rows
        ]
        for name, text in (("m.csv", buffer.getvalue()), ("m.jsonl", jsonl)):
            read = read_manifest(_write(folder / name, text))
            assert read.problems == ()
            assert [(r.path, r.label) for r in read.rows] == expected
