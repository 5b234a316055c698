"""Retraining: a parent's settings and data, new field feedback, and its weights read back."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from corral import Bundle
from corral.client import RegistryClient
from trainer.data import preprocess
from trainer.errors import ParentModelError, TrainConfigError
from trainer.pipeline import load_training_data
from trainer.retraining import (
    initial_weights,
    load_parent,
    next_version,
    parent_config,
    parse_reference,
    retrain,
)
from trainer.train import evaluate

app = typer.Typer()


@app.callback()
def _main() -> None:
    """Keep ``train`` a subcommand, as under ``corral``."""


def _mount() -> None:
    from trainer.cli import train

    app.command("train")(train)


_mount()
runner = CliRunner()


def _copy_parent(parent_bundle: Path, to: Path) -> Path:
    shutil.copytree(parent_bundle, to)
    return to


def _edit_lineage(bundle_dir: Path, **changes: object) -> None:
    path = bundle_dir / "bundle.json"
    document = json.loads(path.read_text())
    document["lineage"]["hyperparameters"].update(changes)
    path.write_text(json.dumps(document))


# --- a retrain from a bundle directory ----------------------------------------------------


def test_a_retrain_adds_the_feedback_to_the_parents_data_and_records_the_parent(
    parent_bundle: Path, feedback: Path, tmp_path: Path
) -> None:
    out = tmp_path / "child"
    result = runner.invoke(
        app,
        [
            "train",
            *("--retrain-from", str(parent_bundle), "--data", str(feedback)),
            *("--out", str(out), "--epochs", "1", "--workers", "1"),
        ],
    )
    assert result.exit_code == 0, result.output
    parent, child = Bundle.load(parent_bundle), Bundle.load(out)
    child.verify_files(out)
    assert (child.name, child.version) == ("animals", "1.1.0")  # the parent's next minor
    lineage = child.lineage
    assert lineage["parent"] == {
        "name": "animals",
        "version": "1.0.0",
        "ref": "animals@1.0.0",
        "origin": "directory",
        "model_sha256": parent.model_file().sha256,
        "dataset_version": parent.lineage["dataset_version"],
        "dataset_reproduced": True,
        "init_weights": False,
    }
    settings = lineage["hyperparameters"]
    recorded = parent.lineage["hyperparameters"]
    assert settings["epochs"] == 1  # given on the command line
    assert {k: settings[k] for k in ("lr", "width", "classes", "seed", "data")} == {
        k: recorded[k] for k in ("lr", "width", "classes", "seed", "data")
    }
    assert settings["extra_data"] == [str(feedback)]
    [new] = lineage["new_data"]
    noisy = len(list(feedback.glob("*/[0-9]*.png")))  # the new pictures, not the copy
    assert (new["added"], new["duplicates"], new["relabelled"]) == (noisy, 1, 0)
    assert lineage["dataset"]["samples"] == parent.lineage["dataset"]["samples"] + new["added"]
    assert lineage["dataset"]["source"] == "animal-mnist/3+images"
    assert lineage["dataset_version"] != parent.lineage["dataset_version"]
    for shown in ("retrained from animals@1.0.0", "reproduced: yes", f"{noisy} images added"):
        assert shown in result.output


def test_the_new_images_are_split_by_hash_so_the_child_is_also_tested_on_them(
    parent_bundle: Path, feedback: Path
) -> None:
    parent = load_parent(parent_bundle)
    config = parent_config(parent, [feedback])
    data = load_training_data(config, workers=1)
    before = load_training_data(parent_config(parent)).dataset
    new_test = set(data.dataset.hashes("test")) - set(before.hashes("test"))
    new_train = set(data.dataset.hashes("train")) - set(before.hashes("train"))
    assert new_test and new_train  # field images on both sides of the split
    for split in ("train", "validation", "test"):  # no old sample moved
        assert set(before.hashes(split)) <= set(data.dataset.hashes(split))
    assert data.versions[0] == Bundle.load(parent_bundle).lineage["dataset_version"]


# --- starting from the parent's weights ---------------------------------------------------


def test_weights_read_back_from_onnx_reproduce_the_parent_exactly(parent_bundle: Path) -> None:
    parent = load_parent(parent_bundle)
    config = parent_config(parent)
    dataset = load_training_data(config).dataset
    train_images, _ = dataset.split("train")
    state = initial_weights(parent, config, preprocess(train_images))
    model = config.build_model()
    model.load_state_dict(state)
    evaluation = evaluate(model, dataset, "test")
    assert evaluation.accuracy == pytest.approx(parent.bundle.metrics["accuracy"], abs=1e-9)
    assert evaluation.confusion == parent.bundle.metrics["confusion"]
    # Batch norms were recalibrated on the data: in training mode (batch statistics)
    # the network starts near its eval-mode self, so fine-tuning does not start off a cliff.
    inputs = torch.from_numpy(preprocess(train_images[:512]))
    with torch.no_grad():
        eval_logits = model.eval()(inputs)
        model.train()
        for module in model.modules():  # dropout off, batch norm on batch statistics
            if isinstance(module, torch.nn.Dropout):
                module.eval()
        train_logits = model(inputs)
    assert float((train_logits - eval_logits).abs().mean()) < 0.1 * float(eval_logits.abs().mean())


def test_a_retrain_from_the_parents_weights_keeps_its_skill_after_one_epoch(
    parent_bundle: Path, feedback: Path, tmp_path: Path
) -> None:
    packaged = retrain(
        parent_bundle,
        tmp_path / "child",
        "1.0.1",
        new_data=[feedback],
        init_weights=True,
        overrides={"epochs": 1, "lr": 5e-4},
        workers=1,
    )
    assert packaged.export is not None
    lineage = packaged.export.bundle.lineage
    assert lineage["parent"]["init_weights"] is True
    assert lineage["hyperparameters"]["lr"] == 5e-4
    parent_accuracy = Bundle.load(parent_bundle).metrics["accuracy"]
    assert packaged.result.evaluation.accuracy > parent_accuracy - 0.03


def test_weights_that_do_not_reproduce_the_golden_outputs_are_refused(
    parent_bundle: Path, tmp_path: Path
) -> None:
    copy = _copy_parent(parent_bundle, tmp_path / "parent")
    document = json.loads((copy / "bundle.json").read_text())
    for sample in document["golden"]["samples"]:
        sample["output"] = [v + 0.5 for v in sample["output"]]
    (copy / "bundle.json").write_text(json.dumps(document))
    parent = load_parent(copy)
    config = parent_config(parent)
    calibration = np.zeros((4, 1, 28, 28), np.float32)
    with pytest.raises(ParentModelError, match="differ from its golden outputs by 0.5"):
        initial_weights(parent, config, calibration)


# --- what a retrain refuses, before any training ------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(
            ["--retrain-from", "no such thing"], 2, "neither a bundle directory", id="bad-ref"
        ),
        pytest.param(["--retrain-from", "animals@1.0"], 2, "semantic version", id="bad-version"),
        pytest.param(["--init-weights"], 2, "need --retrain-from", id="init-without-parent"),
        pytest.param(
            ["--retrain-from", "{parent}", "--init-weights", "--width", "32"],
            2,
            "width 16 -> 32",
            id="init-weights-new-shape",
        ),
        pytest.param(
            ["--retrain-from", "{parent}", "--init-weights", "--search", "grid"],
            2,
            "drop --search or --init-weights",
            id="init-weights-search",
        ),
        pytest.param(
            ["--retrain-from", "{parent}", "--data", "{horses}"],
            2,
            "label(s) horse",
            id="unknown-label",
        ),
        pytest.param(
            ["--retrain-from", "{moved}"], 1, "pass --parent-data", id="parent-data-moved"
        ),
        pytest.param(
            ["--retrain-from", "{tampered}"], 1, "changed after signing", id="tampered-model"
        ),
    ],
)
def test_bad_retrains_exit_with_one_line_and_write_nothing(
    parent_bundle: Path, tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    horses = tmp_path / "horses"
    (horses / "horse").mkdir(parents=True)
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(horses / "horse" / "0.png")
    moved = _copy_parent(parent_bundle, tmp_path / "moved")
    _edit_lineage(moved, data=str(tmp_path / "gone"))
    tampered = _copy_parent(parent_bundle, tmp_path / "tampered")
    model = bytearray((tampered / "model.onnx").read_bytes())
    model[len(model) // 2] ^= 0xFF  # one byte flipped, same length
    (tampered / "model.onnx").write_bytes(bytes(model))
    where = {"parent": parent_bundle, "horses": horses, "moved": moved, "tampered": tampered}
    out = tmp_path / "out"
    filled = [a.format(**where) for a in args]
    result = runner.invoke(app, ["train", "--out", str(out), "--epochs", "1", *filled])
    assert result.exit_code == code, result.output
    assert message in result.output
    assert result.output.startswith("error: ")
    assert not out.exists()


@pytest.mark.parametrize(
    ("reference", "parsed"),
    [
        pytest.param("animals@1.2.0", ("animals", "1.2.0"), id="name-at-version"),
        pytest.param("cats-v2@0.1.0-rc1", ("cats-v2", "0.1.0-rc1"), id="pre-release"),
        pytest.param("./animals@1.2.0/", None, id="a-path"),
        pytest.param("Animals@1.2.0", None, id="not-a-model-name"),
    ],
)
def test_references_name_a_model_and_a_semantic_version(
    reference: str, parsed: tuple[str, str] | None
) -> None:
    assert parse_reference(reference) == parsed


def test_a_version_that_is_not_semver_is_refused() -> None:
    with pytest.raises(TrainConfigError, match="semantic version"):
        parse_reference("animals@latest")


def test_the_default_version_is_the_next_minor() -> None:
    assert [next_version(v) for v in ("1.0.0", "1.4.2", "2.0.0-rc1")] == [
        "1.1.0",
        "1.5.0",
        "2.1.0",
    ]


def test_a_parent_without_recorded_settings_cannot_be_retrained(
    parent_bundle: Path, tmp_path: Path
) -> None:
    copy = _copy_parent(parent_bundle, tmp_path / "parent")
    document = json.loads((copy / "bundle.json").read_text())
    del document["lineage"]["hyperparameters"]
    (copy / "bundle.json").write_text(json.dumps(document))
    with pytest.raises(ParentModelError, match="no lineage.hyperparameters"):
        parent_config(load_parent(copy))


def test_settings_from_a_newer_trainer_are_refused(parent_bundle: Path, tmp_path: Path) -> None:
    copy = _copy_parent(parent_bundle, tmp_path / "parent")
    _edit_lineage(copy, mixup=0.2)
    with pytest.raises(ParentModelError, match=r"unknown training settings \['mixup'\]"):
        parent_config(load_parent(copy))


# --- through the registry -----------------------------------------------------------------


@dataclass
class _Registry:
    url: str
    token: str


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[_Registry]:
    """A real registry (SQLite, local blobs) served by uvicorn on a free port."""
    import uvicorn

    from registry import Settings, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}"
    settings = Settings(
        data_dir=tmp_path / "registry",
        public_url=url,
        mqtt_client_id=f"corral-trainer-test-{uuid.uuid4().hex[:8]}",
    )
    application = create_app(settings)
    server = uvicorn.Server(
        uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning", ws="none")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start in 15 s"
        time.sleep(0.02)
    yield _Registry(url, application.state.registry.admin_token)
    server.should_exit = True
    thread.join(timeout=15)


def test_push_sends_the_full_lineage_and_a_retrain_fetches_the_parent_from_the_registry(
    registry: _Registry, parent_bundle: Path, feedback: Path, tmp_path: Path
) -> None:
    with RegistryClient(registry.url, registry.token) as client:
        client.push_model(parent_bundle)  # what `corral model push` does
        stored = client.models()
    [summary] = stored
    assert summary["lineage"] == Bundle.load(parent_bundle).lineage  # every key, as written
    for key in (
        "dataset_version",
        "dataset",
        "code_commit",
        "code_dirty",
        "hyperparameters",
        "trainer_version",
        "dependencies",
    ):
        assert key in summary["lineage"], key

    out = tmp_path / "child"
    result = runner.invoke(
        app,
        [
            "train",
            *("--retrain-from", "animals@1.0.0", "--init-weights", "--data", str(feedback)),
            *("--registry", registry.url, "--token", registry.token),
            *("--out", str(out), "--version", "1.0.1", "--epochs", "1", "--workers", "1"),
        ],
    )
    assert result.exit_code == 0, result.output
    child = Bundle.load(out)
    assert child.lineage["parent"]["ref"] == "animals@1.0.0"
    assert child.lineage["parent"]["origin"] == registry.url
    assert child.lineage["parent"]["init_weights"] is True
    with RegistryClient(registry.url, registry.token) as client:
        client.push_model(out)
        pushed = {m["version"]: m["lineage"] for m in client.models()}
    assert pushed["1.0.1"]["parent"]["ref"] == "animals@1.0.0"
    assert pushed["1.0.1"]["parent"]["dataset_reproduced"] is True


def test_a_parent_the_registry_does_not_have_exits_2(registry: _Registry, tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "train",
            *("--retrain-from", "animals@9.9.9", "--out", str(tmp_path / "out")),
            *("--registry", registry.url, "--token", registry.token),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "404" in result.output
    assert "corral model list" in result.output
