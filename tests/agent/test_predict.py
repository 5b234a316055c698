"""``corral predict``: offline predictions with the agent's runtime, on a real bundle and PNGs.

Manifests and labels are scored by hand here; ``--model`` fetches from a real registry
(uvicorn on a thread, SQLite) into a cache, then runs from that cache with no registry.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import typer
from typer.testing import CliRunner

from agent.cli import EXIT_BAD_INPUT, predict
from corral import Bundle, file_digest
from corral.client import RegistryClient
from tests.agent.fixtures import tiny_bundle

ROOT = Path(__file__).resolve().parents[2]

app = typer.Typer()
app.command("predict")(predict)


@app.callback()
def _main() -> None:
    """Keep ``predict`` a subcommand, as under ``corral``."""


runner = CliRunner()

#: Gray levels of the test images; the tiny model says "bright" iff the mean is above 127.5.
LEVELS = {"a_dark.png": 30, "b_bright.png": 220, "c_dim.png": 100}


def bundle_dir(directory: Path) -> Path:
    """The tiny real classifier of ``fixtures.tiny_bundle``, with its bundle.json."""
    bundle = tiny_bundle(directory)
    (directory / "bundle.json").write_bytes(bundle.to_bytes())
    return directory


def expected(level: int) -> tuple[str, float]:
    """The tiny model's answer computed by hand: logits (m, -m), m the normalised mean pixel."""
    m = (level / 255.0 - 0.5) / 0.5
    bright = 1.0 / (1.0 + math.exp(-2.0 * m))
    return ("bright", bright) if bright > 0.5 else ("dark", 1.0 - bright)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return bundle_dir(tmp_path / "bundle")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder of real PNGs (gray, and one BGR in a sub-folder), other sizes than the model's."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    for name, level in LEVELS.items():
        assert cv2.imwrite(str(folder / name), np.full((40, 30), level, np.uint8))
    assert cv2.imwrite(str(folder / "more" / "d_colour.png"), np.full((56, 56, 3), 200, np.uint8))
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def test_a_folder_gives_a_table_row_per_image(bundle: Path, images: Path) -> None:
    result = runner.invoke(app, ["predict", str(bundle), str(images)], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert "tiny 1.0.0 (fp32, CPUExecutionProvider): 4 image(s)" in result.output
    rows = [
        [cell.strip() for cell in line.strip("│ ").split("│")]
        for line in result.output.splitlines()
        if ".png" in line
    ]
    names = [Path(row[0]).name for row in rows]
    assert names == ["a_dark.png", "b_bright.png", "c_dim.png", "d_colour.png"]
    for row, level in zip(rows, LEVELS.values(), strict=False):
        label, confidence = expected(level)
        assert row[1:3] == [label, f"{confidence:.3f}"]
        assert row[3].startswith(f"{label} {confidence:.3f}, ")
    assert "notes.txt" not in result.output


def test_json_gives_the_runtimes_scores_in_input_order(bundle: Path, images: Path) -> None:
    files = [images / name for name in LEVELS]
    result = runner.invoke(app, ["predict", str(bundle), *map(str, files), "--json", "--top", "1"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["model"], document["version"], document["variant"]) == (
        "tiny",
        "1.0.0",
        "fp32",
    )
    assert [p["file"] for p in document["predictions"]] == [str(f) for f in files]
    for p, level in zip(document["predictions"], LEVELS.values(), strict=True):
        label, confidence = expected(level)
        assert p["label"] == label
        assert p["confidence"] == pytest.approx(confidence, abs=1e-5)
        assert p["top"] == [{"label": label, "score": p["confidence"]}]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_out_writes_every_prediction(
    bundle: Path, images: Path, tmp_path: Path, suffix: str
) -> None:
    out = tmp_path / f"predictions{suffix}"
    result = runner.invoke(app, ["predict", str(bundle), str(images), "--out", str(out)])

    assert result.exit_code == 0, result.output
    text = out.read_text()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
        got = {Path(r["file"]).name: (r["label"], r["top"][1]["label"]) for r in rows}
    else:
        rows = list(csv.DictReader(text.splitlines()))
        header = ["file", "label", "confidence", "label_1", "score_1", "label_2", "score_2"]
        assert list(rows[0]) == header
        got = {Path(r["file"]).name: (r["label"], r["label_2"]) for r in rows}
    assert len(rows) == 4
    for name, level in LEVELS.items():
        label = expected(level)[0]
        assert got[name] == (label, "dark" if label == "bright" else "bright")


def test_a_model_with_a_fixed_batch_size_gets_padded_batches(tmp_path: Path, images: Path) -> None:
    directory = tmp_path / "fixed"
    bundle = tiny_bundle(directory)
    model = onnx.load(str(directory / "model.onnx"))
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 3
    onnx.save(model, str(directory / "model.onnx"))
    data = bundle.to_dict()
    data["input"]["shape"][0] = 3
    digest, length = file_digest(directory / "model.onnx")
    data["files"][0].update(sha256=digest, length=length)
    (directory / "bundle.json").write_bytes(Bundle.from_dict(data).to_bytes())

    result = runner.invoke(app, ["predict", str(directory), str(images), "--json"])

    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)["predictions"]
    # One full batch of 3, then one padded batch of 1 (ONNX Runtime refuses any other size).
    assert [p["label"] for p in predictions] == ["dark", "bright", "dark", "bright"]


def _break_bundle_json(bundle: Path) -> None:
    (bundle / "bundle.json").write_text('{"name": "tiny"')


def _tamper_model(bundle: Path) -> None:
    with (bundle / "model.onnx").open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 0xFF]))


#: (arguments after ``predict`` from the bundle, image folder and --out file; message).
BAD_INPUTS = [
    pytest.param(
        lambda b, i, o: [b, i / "broken.png", "--out", o],
        "broken.png: not an image",
        id="bad-image",
    ),
    pytest.param(
        lambda b, i, o: [b, i / "empty.png", "--out", o],
        "empty.png: not an image",
        id="empty-image",
    ),
    pytest.param(lambda b, i, o: [b, i, "--out", o], "broken.png: not an image", id="folder"),
    pytest.param(
        lambda b, i, o: [b, i / "missing.png", "--out", o],
        "missing.png does not exist",
        id="missing-image",
    ),
    pytest.param(lambda b, i, o: [b, i / "none", "--out", o], "holds no images", id="empty-dir"),
    pytest.param(lambda b, i, o: [b.parent / "nope", i, "--out", o], "bundle folder", id="no-dir"),
    pytest.param(
        lambda b, i, o: [b, i / "a_dark.png", "--variant", "int8", "--out", o],
        "no 'int8' variant; has ['fp32']",
        id="no-variant",
    ),
    pytest.param(
        lambda b, i, o: [b, i / "a_dark.png", "--out", o.with_suffix(".txt")],
        ".jsonl or .csv",
        id="bad-out",
    ),
]
Args = Callable[[Path, Path, Path], list[Path | str]]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(
    bundle: Path, images: Path, tmp_path: Path, args: Args, message: str
) -> None:
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing of a PNG")
    (images / "empty.png").write_bytes(b"")
    (images / "none").mkdir()
    out = tmp_path / "predictions.jsonl"
    out.write_text("kept\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    result = runner.invoke(app, ["predict", *map(str, args(bundle, images, out))])

    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1
    assert message in result.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_every_bad_image_is_named_in_one_error(bundle: Path, images: Path) -> None:
    for name in ("x.png", "y.png"):
        (images / name).write_bytes(b"garbage")

    result = runner.invoke(app, ["predict", str(bundle), str(images)])

    assert result.exit_code == EXIT_BAD_INPUT
    assert "2 input file(s) cannot be used" in result.stderr
    assert "x.png" in result.stderr and "y.png" in result.stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(_break_bundle_json, "not valid JSON", id="bad-bundle-json"),
        pytest.param(_tamper_model, "does not match", id="tampered-model"),
    ],
)
def test_a_bad_bundle_exits_2(
    bundle: Path, images: Path, damage: Callable[[Path], None], message: str
) -> None:
    damage(bundle)

    result = runner.invoke(app, ["predict", str(bundle), str(images)])

    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert message in result.stderr


def test_corral_predict_is_mounted_on_the_main_cli(bundle: Path, images: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "corral.cli", "predict", str(bundle), str(images), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )

    assert proc.returncode == 0, proc.stderr
    labels = [p["label"] for p in json.loads(proc.stdout)["predictions"]]
    assert labels == ["dark", "bright", "dark", "bright"]


# --- manifests and labels -------------------------------------------------------------------

#: Rows of a manifest in ``lists/`` beside ``images/``: (path relative to ``lists/``, label).
#: Right, wrong, right, a label the model lacks, an absolute path, and no label.
MANIFEST_ROWS: list[tuple[str, str | None]] = [
    ("../images/a_dark.png", "dark"),
    ("../images/b_bright.png", "dark"),
    ("../images/c_dim.png", "dark"),
    ("../images/more/d_colour.png", "cat"),
    ("ABSOLUTE", "bright"),
    ("../images/a_dark.png", None),
]


def _manifest(tmp_path: Path, images: Path, suffix: str) -> tuple[Path, list[Path]]:
    """The rows above as a .csv or .jsonl manifest; and the image each row names."""
    lists = tmp_path / "lists"
    lists.mkdir()
    rows = [
        (str(images / "b_bright.png") if p == "ABSOLUTE" else p, label)
        for p, label in MANIFEST_ROWS
    ]
    manifest = lists / f"m{suffix}"
    if suffix == ".csv":
        lines = ["path,label", *(f"{p},{label or ''}" for p, label in rows)]
    else:
        lines = [
            json.dumps({"path": p, **({"label": label} if label else {})}) for p, label in rows
        ]
    manifest.write_text("\n".join(lines) + "\n")
    return manifest, [(lists / p).resolve() for p, _ in rows]


def _level(path: Path) -> int:
    return 200 if path.name == "d_colour.png" else LEVELS[path.name]


def _scores(files: list[Path]) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """(right, scored, per expected label (right, total)) worked out from the rows by hand."""
    right = scored = 0
    recall: dict[str, tuple[int, int]] = {}
    for path, (_, label) in zip(files, MANIFEST_ROWS, strict=True):
        if label not in ("bright", "dark"):
            continue
        hit = expected(_level(path))[0] == label
        right, scored = right + hit, scored + 1
        r, t = recall.get(label, (0, 0))
        recall[label] = (r + hit, t + 1)
    return right, scored, recall


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_manifest_with_labels_gives_expected_and_accuracy(
    bundle: Path, images: Path, tmp_path: Path, suffix: str
) -> None:
    manifest, files = _manifest(tmp_path, images, suffix)
    right, scored, recall = _scores(files)
    assert (right, scored) == (3, 4)  # the rows above mean to test a partly wrong run

    result = runner.invoke(app, ["predict", str(bundle), str(manifest), "--json"])

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    predictions = document["predictions"]
    assert [Path(p["file"]).resolve() for p in predictions] == files
    for p, path, (_, label) in zip(predictions, files, MANIFEST_ROWS, strict=True):
        assert p["label"] == expected(_level(path))[0]
        assert p["expected"] == label
        known = label in ("bright", "dark")
        assert p["correct"] == ((p["label"] == label) if known else None)
    assert document["evaluation"] == {
        "labelled": 5,
        "scored": scored,
        "correct": right,
        "accuracy": pytest.approx(right / scored),
        "recall": {
            label: {"correct": r, "total": t, "recall": pytest.approx(r / t)}
            for label, (r, t) in recall.items()
        },
        "unknown_labels": {"cat": 1},
    }


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_out_rows_carry_expected_and_correct(
    bundle: Path, images: Path, tmp_path: Path, suffix: str
) -> None:
    manifest, files = _manifest(tmp_path, images, ".csv")
    out = tmp_path / f"predictions{suffix}"

    result = runner.invoke(app, ["predict", str(bundle), str(manifest), "--out", str(out)])

    assert result.exit_code == 0, result.output
    text = out.read_text()
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines()]
        got = [(r["expected"], r["correct"]) for r in rows]
    else:
        rows = list(csv.DictReader(text.splitlines()))
        assert list(rows[0])[:5] == ["file", "label", "confidence", "expected", "correct"]
        marks = {"true": True, "false": False, "": None}
        got = [(r["expected"] or None, marks[r["correct"]]) for r in rows]
    want = [
        (label, None if label not in ("bright", "dark") else expected(_level(f))[0] == label)
        for f, (_, label) in zip(files, MANIFEST_ROWS, strict=True)
    ]
    assert got == want
    right, scored, _ = _scores(files)
    assert sum(1 for _, correct in got if correct) / scored == right / scored


def test_the_table_ends_with_accuracy_recall_and_unknown_labels(
    bundle: Path, images: Path, tmp_path: Path
) -> None:
    manifest, files = _manifest(tmp_path, images, ".jsonl")
    right, scored, recall = _scores(files)

    result = runner.invoke(app, ["predict", str(bundle), str(manifest)], env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"accuracy {right / scored:.3f}: {right} of {scored} scored input(s) right" in lines
    per_class = ", ".join(
        f"{label} {r / t:.3f} ({r}/{t})" for label, (r, t) in sorted(recall.items())
    )
    assert f"recall: {per_class}" in lines
    assert any(line.startswith("not scored: 1 input(s)") and "cat (1)" in line for line in lines)
    assert "(wrong)" in result.stdout and "(not a model label)" in result.stdout


def test_labels_from_folders_scores_an_image_folder(bundle: Path, tmp_path: Path) -> None:
    root = tmp_path / "labelled"
    for label, name, level in [
        ("bright", "x.png", 220),
        ("dark", "y.png", 30),
        ("dark", "z.png", 220),  # a wrong answer
    ]:
        (root / label).mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / label / name), np.full((28, 28), level, np.uint8))
    assert cv2.imwrite(str(root / "loose.png"), np.full((28, 28), 30, np.uint8))

    plain = runner.invoke(app, ["predict", str(bundle), str(root), "--json"])
    scored = runner.invoke(
        app, ["predict", str(bundle), str(root), "--json", "--labels-from-folders"]
    )

    assert plain.exit_code == scored.exit_code == 0, plain.output + scored.output
    assert json.loads(plain.stdout)["evaluation"] is None
    document = json.loads(scored.stdout)
    assert [p["expected"] for p in document["predictions"]] == ["bright", "dark", "dark", None]
    assert document["evaluation"]["correct"] == 2
    assert document["evaluation"]["accuracy"] == pytest.approx(2 / 3)


BAD_MANIFESTS = [
    pytest.param(
        "m.jsonl",
        '{"path": "a_dark.png", "label": "dark"}\n{oops\n'
        '{"path": "b_bright.png"}\n{"label": "x"}\n',
        ["m.jsonl:2", "m.jsonl:4"],
        id="jsonl",
    ),
    pytest.param("m.csv", "path,label\na_dark.png,dark\n,bright\n", ["m.csv:3"], id="csv"),
    pytest.param("m.csv", "file,label\na_dark.png,dark\n", ["m.csv:2", "no 'path'"], id="header"),
    pytest.param("m.csv", "path,label\n", ["lists no images"], id="empty"),
]


@pytest.mark.parametrize(("name", "text", "named"), BAD_MANIFESTS)
def test_bad_manifest_lines_exit_2_naming_them_and_write_nothing(
    bundle: Path, images: Path, tmp_path: Path, name: str, text: str, named: list[str]
) -> None:
    (images / name).write_text(text)
    out = tmp_path / "predictions.csv"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    result = runner.invoke(app, ["predict", str(bundle), str(images / name), "--out", str(out)])

    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    for where in named:
        assert where in result.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


# --- --model NAME@VERSION through a real registry --------------------------------------------


@dataclass
class Pushed:
    """A running registry holding ``tiny 1.0.0``, and a viewer's token."""

    url: str
    token: str


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    from tests.registry.conftest import serve

    root = tmp_path_factory.mktemp("registry")
    with serve(root, f"sqlite:///{root / 'registry.db'}") as running:
        with RegistryClient(running.url, running.context.admin_token) as client:
            client.push_model(bundle_dir(root / "bundle"))  # what `corral model push` does
        yield Pushed(running.url, running.api_token("viewer"))


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_model_is_fetched_once_and_then_runs_offline_from_the_cache(
    pushed: Pushed, images: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    model = ["predict", "--model", "tiny@1.0.0", "--cache-dir", str(cache)]
    local = runner.invoke(app, ["predict", str(bundle_dir(tmp_path / "b")), str(images), "--json"])

    first = runner.invoke(
        app,
        [*model, str(images), "--json"],
        env={"CORRAL_REGISTRY": pushed.url, "CORRAL_TOKEN": pushed.token},
    )
    offline = runner.invoke(app, [*model, "--registry", _dead_url(), str(images), "--json"])

    assert first.exit_code == 0, first.output
    assert "fetched tiny 1.0.0 (fp32)" in first.stderr
    assert sorted(p.name for p in (cache / "tiny" / "1.0.0").iterdir()) == [
        "bundle.json",
        "model.onnx",
    ]
    assert offline.exit_code == 0, offline.output
    assert offline.stderr == ""
    assert json.loads(first.stdout) == json.loads(offline.stdout) == json.loads(local.stdout)


def test_a_cached_bundle_that_no_longer_verifies_is_fetched_again(
    pushed: Pushed, images: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    model = ["predict", "--model", "tiny@1.0.0", "--cache-dir", str(cache), str(images)]
    live = ["--registry", pushed.url, "--token", pushed.token]
    assert runner.invoke(app, [*model, *live]).exit_code == 0
    _tamper_model(cache / "tiny" / "1.0.0")

    offline = runner.invoke(app, [*model, "--registry", _dead_url()])
    again = runner.invoke(app, [*model, *live, "--json"])

    assert offline.exit_code == EXIT_BAD_INPUT
    assert "cannot reach the registry" in offline.stderr
    assert again.exit_code == 0, again.output
    assert "fetched tiny 1.0.0" in again.stderr
    labels = [p["label"] for p in json.loads(again.stdout)["predictions"]]
    assert labels == ["dark", "bright", "dark", "bright"]


#: (--model, whether to send the viewer token, whether the registry is the live one; message).
BAD_MODELS = [
    pytest.param("tiny@9.9.9", True, True, "404: no model tiny 9.9.9", id="unknown-version"),
    pytest.param("huge@1.0.0", True, True, "404: no model huge 1.0.0", id="unknown-model"),
    pytest.param("tiny@1.0.0", False, True, "registry answered 40", id="no-token"),
    pytest.param("tiny@1.0.0", True, False, "cannot reach the registry", id="unreachable"),
    pytest.param("tiny@latest", True, True, "not an exact version", id="alias"),
    pytest.param("tiny", True, True, "expected NAME@VERSION", id="no-version"),
    pytest.param("../x@1.0.0", True, True, "expected NAME@VERSION", id="path-name"),
]


@pytest.mark.parametrize(("reference", "token", "live", "message"), BAD_MODELS)
def test_registry_errors_exit_2_and_write_nothing(
    pushed: Pushed,
    images: Path,
    tmp_path: Path,
    reference: str,
    token: bool,
    live: bool,
    message: str,
) -> None:
    out = tmp_path / "predictions.jsonl"
    cache = tmp_path / "cache"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    options = ["--registry", pushed.url if live else _dead_url(), "--cache-dir", str(cache)]

    result = runner.invoke(
        app,
        ["predict", "--model", reference, *options, str(images), "--out", str(out)],
        env={"CORRAL_TOKEN": pushed.token if token else ""},
    )

    assert result.exit_code == EXIT_BAD_INPUT, result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert not cache.exists()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_both_or_neither_bundle_exits_2(bundle: Path, images: Path) -> None:
    both = runner.invoke(app, ["predict", "--model", "tiny@1.0.0", str(bundle), str(images)])
    neither = runner.invoke(app, ["predict", str(images)])
    only_bundle = runner.invoke(app, ["predict", str(bundle)])

    for result in (both, neither, only_bundle):
        assert result.exit_code == EXIT_BAD_INPUT, result.output
        assert result.stdout == ""
    assert "give one" in both.stderr
    assert "no bundle given" in neither.stderr and "no bundle given" in only_bundle.stderr
