"""Retrain a model from its bundle: its recorded config, its data, new labelled data.

``corral train --retrain-from NAME@VERSION|DIR --data FEEDBACK --version X`` and
:func:`retrain` (for the registry's governance code) do, in order:

1. Find the parent (:func:`load_parent`): a bundle directory, or ``NAME@VERSION``
   fetched from the registry (``bundle.json`` from the API, ``model.onnx`` from
   the TUF targets, checked against the SHA-256 that bundle.json lists).
2. Take its training settings from ``lineage.hyperparameters``
   (:func:`parent_config`), apply the caller's overrides, and add the new data
   as one more ``extra_data`` source. The parent's own sources (Animal-MNIST, or
   the folders it recorded) are read again, so the new model learns from the old
   data and the new; a source no longer at its recorded path is an error unless
   ``parent_data`` says where it is now.
3. Read and merge the data (:func:`trainer.pipeline.load_training_data`). New
   images are split by their hash like every other (about a fifth go to test,
   so the new model is also tested on field images); a new image identical to an
   old one under another label relabels it (field feedback is a correction).
   Whether the parent's data came back identical is recorded
   (``lineage.parent.dataset_reproduced``: the rebuilt version equals the
   parent's ``dataset_version``).
4. With ``init_weights``, start from the parent's weights. A bundle holds only
   ONNX, so they are read back from ``model.onnx`` (:func:`weights_from_onnx`):
   the exporter folds each batch norm into the convolution before it, so the
   network is rebuilt with the folded weights and batch-norm layers set to pass
   them through, then each batch norm is recalibrated on the new training
   images (running mean and variance from the data, scale and shift chosen so
   that the eval-mode output is unchanged while training-mode batch statistics
   start close to it). The result must reproduce the parent's golden outputs
   within its ``golden_tolerance``, else :class:`ParentModelError`: nothing is
   guessed.
5. Train, export and write as any run (:func:`trainer.pipeline.train_and_package`)
   with ``lineage.parent`` (``name``, ``version``, ``ref`` = ``NAME@VERSION``,
   where it came from, its model file's SHA-256, its dataset version, whether
   it was reproduced, whether its weights were the start) and
   ``lineage.new_data`` (each new source: kept, added, relabelled).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from torch import nn

from corral.bundle import Bundle
from corral.client import RegistryClient
from corral.errors import VersionError
from corral.version import Version
from trainer.data import preprocess
from trainer.errors import DatasetError, ParentModelError, TrainConfigError
from trainer.model import AnimalNet
from trainer.pipeline import Packaged, load_training_data, train_and_package
from trainer.search import Trial
from trainer.tracking import safe_uri
from trainer.train import EpochStats, TrainConfig

__all__ = [
    "SHAPE_SETTINGS",
    "Parent",
    "initial_weights",
    "load_parent",
    "next_version",
    "parent_config",
    "parse_reference",
    "retrain",
    "weights_from_onnx",
]

# Settings that decide the network's tensors: --init-weights needs the parent's.
SHAPE_SETTINGS = ("classes", "color", "image_size", "width", "depth")
_REFERENCE = re.compile(r"^([a-z0-9][a-z0-9-]*)@([^@/\s]+)$")
_CALIBRATION_IMAGES = 1024
_CALIBRATION_BATCH = 256


@dataclass(frozen=True)
class Parent:
    """A model to retrain from.

    ``directory`` holds its ``bundle.json`` and (checked) fp32 model file;
    ``origin`` is ``"directory"`` or the registry URL it was fetched from.
    """

    bundle: Bundle
    directory: Path
    origin: str

    @property
    def ref(self) -> str:
        """``NAME@VERSION``."""
        return f"{self.bundle.name}@{self.bundle.version}"


def parse_reference(reference: str) -> tuple[str, str] | None:
    """``(name, version)`` of a ``NAME@VERSION`` reference, or None if it is not one.

    Raises:
        TrainConfigError: it looks like one but the version is not semver.
    """
    match = _REFERENCE.match(reference)
    if match is None:
        return None
    try:
        Version.parse(match.group(2))
    except VersionError as e:
        raise TrainConfigError(f"--retrain-from {reference}: {e}") from e
    return match.group(1), match.group(2)


def load_parent(
    reference: str | Path, client: RegistryClient | None = None, into: Path | None = None
) -> Parent:
    """Find the model to retrain from.

    Args:
        reference: a bundle directory, or ``NAME@VERSION`` in the registry.
        client: the registry to fetch ``NAME@VERSION`` from; by default one for
            ``CORRAL_REGISTRY`` and ``CORRAL_TOKEN``.
        into: where a fetched bundle is written; by default a new temporary
            folder, which the caller removes when done.

    Returns:
        The parent, its fp32 model file checked against its bundle.json.

    Raises:
        TrainConfigError: ``reference`` is neither a directory nor ``NAME@VERSION``.
        BundleError: the bundle is invalid or its model file differs from it.
        ApiError: the registry refused or could not be reached.
    """
    path = Path(reference)
    if path.is_dir():
        bundle = Bundle.load(path)
        bundle.verify_files(path, "fp32")
        return Parent(bundle=bundle, directory=path, origin="directory")
    parsed = parse_reference(str(reference))
    if parsed is None:
        raise TrainConfigError(
            f"--retrain-from {reference} is neither a bundle directory nor NAME@VERSION "
            "(e.g. animals@1.0.0)"
        )
    own = client is None
    registry = client if client is not None else RegistryClient()
    into = into if into is not None else Path(tempfile.mkdtemp(prefix="corral-parent-"))
    try:
        bundle = registry.fetch_bundle(*parsed, into)
    finally:
        if own:
            registry.close()
    return Parent(bundle=bundle, directory=into, origin=safe_uri(registry.base_url))


def next_version(version: str) -> str:
    """The next minor release: ``1.2.3`` -> ``1.3.0``, the default version of a retrain."""
    parsed = Version.parse(version)
    return str(Version(parsed.major, parsed.minor + 1, 0))


def _recorded_config(parent: Parent) -> TrainConfig:
    recorded = parent.bundle.lineage.get("hyperparameters")
    if not isinstance(recorded, Mapping):
        raise ParentModelError(
            f"{parent.ref} has no lineage.hyperparameters, so there is no training config "
            "to start from; retrain it with corral train and explicit settings instead"
        )
    try:
        config = TrainConfig.from_dict(recorded)
    except TrainConfigError as e:
        raise ParentModelError(f"{parent.ref}'s recorded training settings: {e}") from e
    if list(config.classes) != list(parent.bundle.output.labels):
        raise ParentModelError(
            f"{parent.ref}'s lineage trains classes {list(config.classes)} but its output "
            f"labels are {parent.bundle.output.labels}; the bundle is inconsistent"
        )
    return config


def parent_config(
    parent: Parent,
    new_data: Sequence[Path] = (),
    overrides: Mapping[str, Any] | None = None,
    parent_data: Path | None = None,
) -> TrainConfig:
    """The retrain's config: the parent's, with overrides and the new data added.

    Args:
        parent: the model retrained.
        new_data: image folders or manifests to add, in order (later ones win a
            label conflict).
        overrides: :class:`TrainConfig` fields to change, e.g. ``{"epochs": 5}``.
        parent_data: where the parent's data is now, replacing every source it
            recorded (they moved, or this machine mounts them elsewhere).

    Returns:
        The config.

    Raises:
        ParentModelError: the parent has no usable recorded config.
        TrainConfigError: an override is unknown or refused.
        DatasetError: a recorded source is not on this machine.
    """
    config = _recorded_config(parent)
    if parent_data is not None:
        config = replace(config, data=str(parent_data), extra_data=())
    for source in (config.data, *config.extra_data):
        if source != "animal-mnist" and not Path(source).exists():
            raise DatasetError(
                f"{parent.ref} was trained on {source}, which is not on this machine; "
                "pass --parent-data with where that data is now"
            )
    changes = dict(overrides or {})
    known = {f.name for f in fields(TrainConfig)} - {"data", "extra_data"}
    unknown = sorted(set(changes) - known)
    if unknown:
        raise TrainConfigError(f"cannot override {unknown}; settings are {sorted(known)}")
    if "classes" in changes:
        changes["classes"] = tuple(changes["classes"])
    extra = (*config.extra_data, *(str(p) for p in new_data))
    return replace(config, **changes, extra_data=extra)


def _conv_inputs(node: onnx.NodeProto, values: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    missing = [name for name in node.input[1:] if name and name not in values]
    if missing:
        raise ParentModelError(
            f"{node.op_type} node {node.name!r} takes computed weights {missing}; expected "
            "constant weights as the trainer exports them"
        )
    return [values[name] for name in node.input[1:] if name]


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def weights_from_onnx(path: Path, config: TrainConfig) -> tuple[AnimalNet, list[int]]:
    """Rebuild the PyTorch network from an ONNX file the trainer exported.

    Conv nodes map in order to the network's convolutions, the Gemm node to its
    classifier. A BatchNormalization node after a convolution is loaded as it is;
    where the exporter folded it into the convolution, the batch norm is set to
    pass the folded weights through (scale 1, shift = the folded bias, mean 0,
    variance 1 - eps), which gives the same eval-mode output.

    Args:
        path: the ``model.onnx``.
        config: the parent's config (the network's shape).

    Returns:
        The network in eval mode, and the indices of its convolution blocks whose
        batch norm was folded (to recalibrate before training).

    Raises:
        ParentModelError: the file cannot be read, or its layers do not match the
            config's network.
    """
    try:
        proto = onnx.load(str(path))
    except (OSError, ValueError, DecodeError) as e:
        raise ParentModelError(f"cannot read the parent's {path.name}: {e}") from e
    graph = proto.graph
    # copies: torch refuses to wrap onnx's read-only buffers
    values = {t.name: numpy_helper.to_array(t).copy() for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and "value" in _attributes(node):
            values[node.output[0]] = numpy_helper.to_array(_attributes(node)["value"]).copy()
    convs = [n for n in graph.node if n.op_type == "Conv"]
    norms = {n.input[0]: n for n in graph.node if n.op_type == "BatchNormalization"}
    gemms = [n for n in graph.node if n.op_type == "Gemm"]
    model = config.build_model()
    conv_layers = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norm_layers = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    if len(convs) != len(conv_layers) or len(gemms) != 1:
        raise ParentModelError(
            f"the parent's {path.name} has {len(convs)} Conv and {len(gemms)} Gemm nodes; "
            f"its recorded config (depth {config.depth}) expects {len(conv_layers)} and 1"
        )
    folded: list[int] = []
    with torch.no_grad():
        for block, (node, conv, norm) in enumerate(
            zip(convs, conv_layers, norm_layers, strict=True)
        ):
            inputs = _conv_inputs(node, values)
            weight = inputs[0]
            bias = inputs[1] if len(inputs) > 1 else np.zeros(weight.shape[0], np.float32)
            if tuple(weight.shape) != tuple(conv.weight.shape):
                raise ParentModelError(
                    f"the parent's convolution {block} has weights {list(weight.shape)}, "
                    f"its recorded config expects {list(conv.weight.shape)}"
                )
            conv.weight.copy_(torch.from_numpy(weight))
            after = norms.get(node.output[0])
            assert norm.running_mean is not None and norm.running_var is not None  # tracked
            if after is not None:
                scale, shift, mean, var = _conv_inputs(after, values)
                norm.eps = float(_attributes(after).get("epsilon", 1e-5))
                norm.weight.copy_(torch.from_numpy(scale))
                norm.bias.copy_(torch.from_numpy(shift))
                # a convolution bias before the norm shifts what it subtracts
                norm.running_mean.copy_(torch.from_numpy(mean - bias))
                norm.running_var.copy_(torch.from_numpy(var))
            else:
                norm.weight.fill_(1.0)
                norm.bias.copy_(torch.from_numpy(bias))
                norm.running_mean.zero_()
                norm.running_var.fill_(1.0 - norm.eps)
                folded.append(block)
        gemm = gemms[0]
        attributes = _attributes(gemm)
        if attributes.get("transA", 0) or attributes.get("alpha", 1.0) != 1.0:
            raise ParentModelError("the parent's classifier Gemm is not plain x·Wᵀ + b")
        weight, *rest = _conv_inputs(gemm, values)
        if not attributes.get("transB", 0):
            weight = weight.T
        linear = model.head[-1]
        assert isinstance(linear, nn.Linear)
        if tuple(weight.shape) != tuple(linear.weight.shape):
            raise ParentModelError(
                f"the parent's classifier has weights {list(weight.shape)}, its recorded "
                f"config expects {list(linear.weight.shape)}"
            )
        linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        beta = float(attributes.get("beta", 1.0))
        linear.bias.copy_(torch.from_numpy(rest[0] * beta if rest else np.zeros(weight.shape[0])))
    return model.eval(), folded


def _recalibrate(model: AnimalNet, blocks: list[int], inputs: np.ndarray) -> None:
    """Give folded batch norms data statistics without changing the eval output.

    For a folded block the norm sees z = conv(x) and outputs z + b. With the
    data's per-channel mean m and variance v of z: running mean m, running
    variance v, scale sqrt(v + eps), shift m + b. In eval mode that is exactly
    z + b again; in training mode, batch statistics near m and v give nearly it.
    """
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, nn.BatchNorm2d)]
    sums = {b: torch.zeros(convs[b].out_channels, dtype=torch.float64) for b in blocks}
    squares = {b: torch.zeros_like(sums[b]) for b in blocks}
    counts = dict.fromkeys(blocks, 0)

    def hook(block: int) -> Callable[[nn.Module, Any, torch.Tensor], None]:
        def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            z = output.detach().double()
            sums[block] += z.sum(dim=(0, 2, 3))
            squares[block] += (z * z).sum(dim=(0, 2, 3))
            counts[block] += z.shape[0] * z.shape[2] * z.shape[3]

        return record

    handles = [convs[b].register_forward_hook(hook(b)) for b in blocks]
    try:
        model.eval()
        with torch.no_grad():
            for start in range(0, len(inputs), _CALIBRATION_BATCH):
                model(torch.from_numpy(inputs[start : start + _CALIBRATION_BATCH]))
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        for b in blocks:
            mean = sums[b] / counts[b]
            var = (squares[b] / counts[b] - mean * mean).clamp(min=0.0)
            norm = norms[b]
            assert norm.running_mean is not None and norm.running_var is not None  # tracked
            shift = norm.bias.detach().double().clone()
            norm.running_mean.copy_(mean)
            norm.running_var.copy_(var)
            norm.weight.copy_(torch.sqrt(var + norm.eps))
            norm.bias.copy_(mean + shift)


def initial_weights(
    parent: Parent, config: TrainConfig, calibration: np.ndarray
) -> dict[str, torch.Tensor]:
    """The parent's weights as a ``state_dict`` of ``config``'s network, proven faithful.

    Args:
        parent: the model retrained; its fp32 ONNX file is read.
        config: the retrain's config; its network shape must be the parent's.
        calibration: preprocessed float32 (N, C, H, W) training inputs for the
            batch-norm statistics (up to 1,024 are used).

    Returns:
        The weights, ready for :func:`trainer.train.train_model`'s ``initial_state``.

    Raises:
        TrainConfigError: the config changes the network's shape.
        ParentModelError: the weights cannot be read, or do not reproduce the
            parent's golden outputs within its golden tolerance.
    """
    recorded = _recorded_config(parent)
    changed = [k for k in SHAPE_SETTINGS if getattr(recorded, k) != getattr(config, k)]
    if changed:
        shown = ", ".join(f"{k} {getattr(recorded, k)} -> {getattr(config, k)}" for k in changed)
        raise TrainConfigError(
            f"--init-weights needs the parent's network shape, but {shown}; keep those "
            "settings, or retrain without --init-weights"
        )
    if not parent.bundle.golden:
        raise ParentModelError(
            f"{parent.ref} has no golden samples, so weights read from its ONNX file cannot "
            "be checked; retrain without --init-weights"
        )
    model, folded = weights_from_onnx(parent.directory / parent.bundle.model_file().name, config)
    if folded:
        _recalibrate(model, folded, calibration[:_CALIBRATION_IMAGES])
    golden_in = np.array([g.input for g in parent.bundle.golden], dtype=np.float32)
    golden_in = golden_in.reshape(len(parent.bundle.golden), *parent.bundle.input.sample_shape)
    expected = np.array([g.output for g in parent.bundle.golden], dtype=np.float32)
    with torch.no_grad():
        got = model.eval()(torch.from_numpy(golden_in)).numpy()
    diff = float(np.max(np.abs(got - expected)))
    if not diff <= parent.bundle.golden_tolerance:
        raise ParentModelError(
            f"the weights read from {parent.ref}'s ONNX file differ from its golden outputs by "
            f"{diff:.3g}, more than its tolerance {parent.bundle.golden_tolerance:.3g}; the "
            "file was not exported from this trainer's network. Retrain without --init-weights"
        )
    return {k: v.clone() for k, v in model.state_dict().items()}


def retrain(
    parent: str | Path | Parent,
    out: Path,
    version: str | None = None,
    *,
    new_data: Sequence[Path] = (),
    name: str | None = None,
    client: RegistryClient | None = None,
    init_weights: bool = False,
    overrides: Mapping[str, Any] | None = None,
    parent_data: Path | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    int8: bool = False,
    force_int8: bool = False,
    search_mode: str | None = None,
    trials: int = 8,
    test_images: Path | None = None,
    mlflow_uri: str | None = None,
    mlflow_experiment: str | None = None,
    on_epoch: Callable[[EpochStats], None] | None = None,
    on_trial: Callable[[Trial], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> Packaged:
    """Retrain a model on its own data plus new labelled data and write a bundle.

    For the registry's governance code as much as for ``corral train
    --retrain-from``; see the module docstring for the steps.

    Args:
        parent: a bundle directory, ``NAME@VERSION`` in the registry, or a
            :class:`Parent` already loaded.
        out: the new bundle directory.
        version: the new version; default the parent's next minor (1.0.0 -> 1.1.0).
        new_data: image folders (``<label>/<image>``) or manifests to add.
        name: the new model name; default the parent's.
        client: the registry for ``NAME@VERSION``; default ``CORRAL_REGISTRY``.
        init_weights: start from the parent's weights (same network shape).
        overrides: training settings to change (:class:`TrainConfig` fields).
        parent_data: where the parent's data is now, if it moved.
        workers: image decoding processes (default one per CPU).
        overwrite: replace an earlier bundle at ``out``.
        int8: also ship an INT8 variant; ``force_int8`` keeps it whatever it loses.
        force_int8: see ``int8``.
        search_mode: ``"grid"`` or ``"random"`` to search instead (not with
            ``init_weights``); ``trials`` points.
        trials: see ``search_mode``.
        test_images: also write the test split there as PNGs.
        mlflow_uri: track the run in MLflow; ``mlflow_experiment`` names the
            experiment (default the model name).
        mlflow_experiment: see ``mlflow_uri``.
        on_epoch: called after each epoch.
        on_trial: called after each search trial.
        on_progress: called with (done, listed) while images are ingested.

    Returns:
        The run and its bundle (None outside the main process of a torchrun group).

    Raises:
        TrainConfigError: a bad reference, version, override, output directory,
            a new label the parent does not know, or a shape change with
            ``init_weights``; nothing was written.
        ParentModelError: the parent has no usable config or weights.
        DatasetError: the parent's data is not here, or data cannot be read.
        BundleError: the parent's bundle is invalid or tampered with.
        ApiError: the registry refused or could not be reached.
        ExportError: the export failed; nothing was written.
        TrackingError: MLflow failed.
    """
    with tempfile.TemporaryDirectory(prefix="corral-parent-") as scratch:
        found = parent if isinstance(parent, Parent) else load_parent(parent, client, Path(scratch))
        config = parent_config(found, new_data, overrides, parent_data)
        data = load_training_data(config, workers, on_progress)
        state = None
        if init_weights:
            train_images, _ = data.dataset.split("train")
            state = initial_weights(found, config, preprocess(train_images))
        recorded = _recorded_config(found)
        same_split = all(
            getattr(recorded, k) == getattr(config, k)
            for k in ("classes", "color", "image_size", "test_percent", "validation_percent")
        )
        parent_sources = 0 if parent_data is not None else len(recorded.extra_data)
        reproduced = (
            data.versions[parent_sources] == found.bundle.lineage.get("dataset_version")
            if same_split
            else None
        )
        lineage = {
            "parent": {
                "name": found.bundle.name,
                "version": found.bundle.version,
                "ref": found.ref,
                "origin": found.origin,
                "model_sha256": found.bundle.model_file().sha256,
                "dataset_version": found.bundle.lineage.get("dataset_version"),
                "dataset_reproduced": reproduced,
                "init_weights": init_weights,
            },
            # the parent's own extra sources come first in data.parts, the new ones last
            "new_data": data.parts[len(data.parts) - len(new_data) :],
        }
        report_extra: dict[str, Any] = {"retrain": lineage}
        if data.base_ingest is not None:
            report_extra["ingest"] = data.base_ingest.to_dict()
        return train_and_package(
            config,
            data.dataset,
            out,
            name or found.bundle.name,
            version or next_version(found.bundle.version),
            search_mode=search_mode,
            trials=trials,
            int8=int8,
            force_int8=force_int8,
            overwrite=overwrite,
            initial_state=state,
            extra_lineage=lineage,
            report_extra=report_extra,
            test_images=test_images,
            mlflow_uri=mlflow_uri,
            mlflow_experiment=mlflow_experiment,
            run_params={"parent": found.ref, "init_weights": init_weights},
            parent=found.ref,
            on_epoch=on_epoch,
            on_trial=on_trial,
        )
