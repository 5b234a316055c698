"""Export a trained model to ONNX and write it as a Corral bundle.

The order of steps in :func:`write_bundle`, and why:

1. Check the bundle name, version and output directory first, so that bad input
   fails before minutes of work and leaves nothing behind.
2. Export to ONNX (opset ``ONNX_OPSET``, dynamic batch axis, weights inside the
   file: a bundle file must be self-contained) into a staging directory beside
   the destination, and run ``onnx.checker`` on it.
3. Parity: ONNX Runtime on the CPU against PyTorch on the whole test split, with
   batch size 1 and a batch size above 1, so that a broken dynamic axis shows.
   Above ``PARITY_TOLERANCE`` the export is refused (:class:`ParityError`).
4. Golden samples, drift baseline and expected outputs come from ONNX Runtime,
   since that is what the agent will compare against.
5. Write ``bundle.json``, read it back with ``corral.Bundle.load`` and check the
   files with ``verify_files``: the contract package is the judge.
6. Only then move the staging directory into place; on any failure it is removed.

With ``int8=True``, step 4 is followed by :func:`trainer.quantize.quantize_int8`:
a second file, ``model.int8.onnx`` with variant ``int8``, whose ``files`` entry
carries its own expected outputs on the golden inputs (``golden``), since the
bundle's golden outputs are the fp32 file's; ``lineage.golden_variant`` says so
and ``lineage.int8`` holds the accuracy comparison.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import corral
from corral.bundle import BUNDLE_FILE, Bundle, BundleFile, GoldenSample, InputSpec, OutputSpec
from corral.errors import BundleError
from trainer.data import COLORS, IMAGE_SIZE, INPUT_SCALE, preprocess
from trainer.errors import ExportError, ParityError, TrainConfigError
from trainer.lineage import lineage_for
from trainer.metrics import drift_baseline
from trainer.quantize import Int8Report, quantize_int8, run_logits
from trainer.train import TrainResult, predict_logits

__all__ = [
    "COMPATIBLE_PROFILES",
    "INT8_FILE",
    "MODEL_FILE",
    "ONNX_OPSET",
    "PARITY_TOLERANCE",
    "REPORT_DIR",
    "ExportReport",
    "check_bundle_identity",
    "check_output_dir",
    "check_parity",
    "export_onnx",
    "write_bundle",
]

ONNX_OPSET = 18
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Logit units: quantized kernels differ between CPUs (VNNI or not) far more than fp32.
INT8_GOLDEN_TOLERANCE = 0.05
# Beside the bundle files but not one of them (bundle.json does not list it): the
# evaluation report and the dataset manifest, for people, not for devices.
REPORT_DIR = "report"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PARITY_TOLERANCE = 1e-4
GOLDEN_COUNT = 8
GOLDEN_TOLERANCE = 1e-3
HIST_BINS = 10
COMPATIBLE_PROFILES = ("x86-cpu", "x86-nvidia", "jetson-orin")
MIN_AGENT_VERSION = "0.1.0"
_PLACEHOLDER_SHA256 = "0" * 64


@dataclass(frozen=True)
class ExportReport:
    """What :func:`write_bundle` wrote."""

    path: Path
    bundle: Bundle
    parity_max_abs_diff: float
    int8: Int8Report | None = None


def _input_spec(color: str = "gray", size: int = IMAGE_SIZE) -> InputSpec:
    # Must say exactly what trainer.data.preprocess does.
    channels = COLORS[color][1]
    return InputSpec(
        name=INPUT_NAME,
        shape=[None, channels, size, size],
        color=color,
        scale=INPUT_SCALE,
        mean=[0.0] * channels,
        std=[1.0] * channels,
    )


def check_bundle_identity(name: str, version: str, labels: Sequence[str]) -> None:
    """Ask the contract package whether a bundle with this name, version and labels is valid.

    Args:
        name: the model name.
        version: the semantic version.
        labels: the class names.

    Raises:
        TrainConfigError: the contract refuses one of them; the message says which.
    """
    try:
        Bundle(
            name=name,
            version=version,
            input=_input_spec(),
            output=OutputSpec(name=OUTPUT_NAME, labels=list(labels), kind="logits"),
            files=[BundleFile(name=MODEL_FILE, sha256=_PLACEHOLDER_SHA256, length=0)],
        )
    except BundleError as e:
        raise TrainConfigError(str(e)) from e


def _replaceable(out: Path) -> bool:
    # Only a directory that looks like an earlier bundle (plain files beside a
    # bundle.json, and its report folder) is ever deleted, so a mistyped --out cannot
    # remove a home directory.
    entries = list(out.iterdir())
    return (out / BUNDLE_FILE).is_file() and all(
        e.is_file() or (e.name == REPORT_DIR and e.is_dir()) for e in entries
    )


def check_output_dir(out: Path, overwrite: bool = False) -> None:
    """Check that a bundle can be written to ``out``.

    Args:
        out: the bundle directory to create.
        overwrite: allow replacing an earlier bundle directory there.

    Raises:
        TrainConfigError: ``out`` is a file, or a non-empty directory that is not an
            earlier bundle or may not be replaced.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise TrainConfigError(f"{out} exists and is not a directory; choose another --out")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise TrainConfigError(
            f"{out} is not empty; choose another --out, or pass --force to replace a bundle"
        )
    if not _replaceable(out):
        raise TrainConfigError(
            f"{out} does not look like a bundle directory (bundle.json and plain files); "
            "refusing to replace it"
        )


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    # The exporter logs a warning per missing optional torchvision operator.
    onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # torch 2.13's exporter trips its own pytree deprecation (raised from
            # copyreg, so pyproject's per-module torch filters do not catch it).
            warnings.filterwarnings(
                "ignore",
                message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                category=FutureWarning,
            )
            yield
    finally:
        onnx_logger.setLevel(level)


def export_onnx(
    model: nn.Module,
    path: Path,
    opset: int = ONNX_OPSET,
    sample_shape: tuple[int, int, int] = (1, IMAGE_SIZE, IMAGE_SIZE),
) -> None:
    """Export the model to a self-contained ONNX file with a dynamic batch axis.

    Args:
        model: the network; it is put in eval mode.
        path: the ``.onnx`` file to write.
        opset: the ONNX opset, 17 or later.
        sample_shape: one input's (C, H, W).

    Raises:
        ExportError: the exporter failed, the result fails ``onnx.checker``, or it
            refers to external data.
    """
    if opset < 17:
        raise ExportError(f"opset {opset} is too old; Corral agents expect 17 or later")
    model.eval()
    example = torch.zeros(2, *sample_shape)
    try:
        with _quiet_exporter(), torch.no_grad():
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                external_data=False,
                verbose=False,
            )
    except Exception as e:
        # The exporter raises many internal error types; all mean "no model file".
        raise ExportError(f"ONNX export failed: {e}") from e
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto, full_check=True)
    except (OSError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported {path.name} is not a valid ONNX model: {e}") from e
    external = [
        t.name for t in proto.graph.initializer if onnx.external_data_helper.uses_external_data(t)
    ]
    if external:
        raise ExportError(
            f"{path.name} keeps weights in external files ({external[:3]}); expected one file"
        )
    opsets = {o.domain: o.version for o in proto.opset_import}
    if opsets.get("", 0) < 17:
        raise ExportError(f"{path.name} has opset {opsets.get('')}, expected 17 or later")


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only; the CLI owns the terminal
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session: ort.InferenceSession, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    outputs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: inputs[start : start + batch_size]})[0]
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32)


def check_parity(
    model: nn.Module,
    onnx_path: Path,
    inputs: np.ndarray,
    batch_sizes: Sequence[int] = (1, 7),
    tolerance: float = PARITY_TOLERANCE,
) -> float:
    """Compare ONNX Runtime (CPU) with PyTorch on the same inputs.

    Args:
        model: the PyTorch network the file was exported from.
        onnx_path: the exported model.
        inputs: float32 (N, C, H, W) preprocessed inputs.
        batch_sizes: the ONNX Runtime batch sizes to try, each over all inputs;
            include 1 and one above 1 to exercise the dynamic batch axis.
        tolerance: the largest absolute difference allowed.

    Returns:
        The largest absolute difference between any two logits.

    Raises:
        ParityError: the difference exceeds ``tolerance``.
        ExportError: ONNX Runtime cannot load or run the file.
    """
    expected = predict_logits(model, inputs)
    try:
        session = _session(onnx_path)
        got = [_run(session, inputs, b) for b in batch_sizes]
    except Exception as e:
        # onnxruntime raises its own pybind exception types; wrap them all here.
        raise ExportError(f"ONNX Runtime cannot run {onnx_path.name}: {e}") from e
    diff = max(float(np.max(np.abs(g - expected))) for g in got)
    if not diff <= tolerance:  # also catches NaN
        raise ParityError(diff, tolerance)
    return diff


def _pick_goldens(labels: np.ndarray, count: int) -> list[int]:
    # Round-robin over the classes, so every class has golden samples.
    per_class = [list(np.flatnonzero(labels == c)) for c in range(int(labels.max()) + 1)]
    picked: list[int] = []
    while len(picked) < min(count, len(labels)):
        for rows in per_class:
            if rows and len(picked) < count:
                picked.append(int(rows.pop(0)))
    return picked


def _int8_file(
    result: TrainResult,
    staging: Path,
    inputs: np.ndarray,
    labels: np.ndarray,
    golden_inputs: np.ndarray,
    force: bool,
) -> tuple[BundleFile, Int8Report]:
    path = staging / INT8_FILE
    train_images, _ = result.dataset.split("train")
    report = quantize_int8(
        staging / MODEL_FILE, path, preprocess(train_images), inputs, labels, force=force
    )
    expected = run_logits(path, golden_inputs)
    sha256, length = corral.file_digest(path)
    golden = {"tolerance": INT8_GOLDEN_TOLERANCE, "outputs": expected.tolist()}
    entry = BundleFile(
        name=INT8_FILE,
        sha256=sha256,
        length=length,
        variant="int8",
        unrecognized={"golden": golden},
    )
    return entry, report


def _build(
    result: TrainResult,
    staging: Path,
    name: str,
    version: str,
    int8: bool = False,
    force_int8: bool = False,
) -> tuple[Bundle, float, Int8Report | None]:
    model_path = staging / MODEL_FILE
    dataset = result.dataset
    export_onnx(
        result.model,
        model_path,
        sample_shape=(dataset.channels, dataset.image_size, dataset.image_size),
    )
    images, labels = result.dataset.split("test")
    inputs = preprocess(images)
    parity = check_parity(result.model, model_path, inputs)
    logits = _run(_session(model_path), inputs, 64)
    classes = list(result.dataset.classes)
    picked = _pick_goldens(labels, GOLDEN_COUNT)
    golden = [
        GoldenSample(
            input=inputs[i].reshape(-1).tolist(),
            output=logits[i].tolist(),
            label=classes[int(labels[i])],
        )
        for i in picked
    ]
    sha256, length = corral.file_digest(model_path)
    files = [BundleFile(name=MODEL_FILE, sha256=sha256, length=length, variant="fp32")]
    lineage = lineage_for(result)
    lineage["golden_variant"] = "fp32"
    int8_report = None
    if int8:
        entry, int8_report = _int8_file(result, staging, inputs, labels, inputs[picked], force_int8)
        files.append(entry)
        lineage["int8"] = int8_report.to_dict()
    bundle = Bundle(
        name=name,
        version=version,
        created=corral.utc_now(),
        input=_input_spec(dataset.color, dataset.image_size),
        output=OutputSpec(name=OUTPUT_NAME, labels=classes, kind="logits"),
        files=files,
        golden=golden,
        golden_tolerance=GOLDEN_TOLERANCE,
        drift_baseline=drift_baseline(inputs, logits, classes, bins=HIST_BINS),
        metrics=result.evaluation.to_dict(),
        lineage=lineage,
        compatibility={
            "profiles": list(COMPATIBLE_PROFILES),
            "min_agent_version": MIN_AGENT_VERSION,
            "onnx_opset": ONNX_OPSET,
        },
    )
    with (staging / BUNDLE_FILE).open("wb") as handle:
        handle.write(bundle.to_bytes())
        handle.flush()
        os.fsync(handle.fileno())
    return bundle, parity, int8_report


def write_bundle(
    result: TrainResult,
    out: Path,
    name: str,
    version: str,
    overwrite: bool = False,
    int8: bool = False,
    force_int8: bool = False,
) -> ExportReport:
    """Export the trained model and write the bundle directory ``out``.

    Args:
        result: what :func:`trainer.train.train_model` returned.
        out: the bundle directory (``model.onnx`` and ``bundle.json``).
        name: the model name (lowercase letters, digits, ``-``).
        version: the semantic version, e.g. ``1.0.0``.
        overwrite: replace an earlier bundle directory at ``out``.
        int8: also write a statically quantized ``model.int8.onnx`` variant.
        force_int8: keep the int8 variant even when it loses more than
            :data:`trainer.quantize.MAX_ACCURACY_LOSS_POINTS` points.

    Returns:
        The bundle as read back from disk, its path and the parity figure.

    Raises:
        TrainConfigError: the name, version or output directory is refused; nothing
            was written.
        ParityError: ONNX Runtime and PyTorch disagree; nothing was written.
        QuantizationError: the int8 variant loses too much accuracy; nothing was
            written.
        ExportError: the export or the bundle check failed; nothing was written.
    """
    check_bundle_identity(name, version, result.dataset.classes)
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from other users
        _, parity, int8_report = _build(result, staging, name, version, int8, force_int8)
        try:
            bundle = Bundle.load(staging)
            bundle.verify_files(staging)
        except BundleError as e:
            raise ExportError(f"the written bundle does not pass the contract: {e}") from e
        if out.exists():
            shutil.rmtree(out)  # checked by check_output_dir: empty or an earlier bundle
        staging.replace(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportReport(path=out, bundle=bundle, parity_max_abs_diff=parity, int8=int8_report)
