"""TensorRT variants, built through ONNX Runtime's TensorRT execution provider.

A TensorRT engine is tied to one GPU model and one TensorRT version, so it is
built on a machine that has both (``corral model build-trt``) and added to an
existing version as a derived variant named after them
(``trt-fp16-rtx-4090-trt10.3``; see :func:`variant_name`).

Why an ONNX "EPContext" model and not a bare ``.plan``: the TensorRT provider
can dump, after it has built the engine, an ONNX model whose ``EPContext``
node carries the serialized engine (``trt_dump_ep_context_model``, embed mode
1: one self-contained file). The agent then loads every variant the same way,
with ONNX Runtime and the execution providers its profile lists, and runs the
same smoke test; nothing on a park computer needs the ``tensorrt`` Python
package or a second runtime. ONNX Runtime checks the engine's TensorRT
version when it loads it, and a file that cannot run fails at load time,
before an agent switches to it.

:func:`build_trt_variant`, in order:

1. :func:`probe` (the CLI calls it before it fetches anything): this
   onnxruntime has the TensorRT and CUDA providers, a GPU answers and a
   TensorRT library is found, else :class:`TensorRTUnavailableError`;
   :func:`check_profile`: the firmware profile uses TensorRT, at least the
   version it requires, else :class:`TrainConfigError`.
2. int8 only (:func:`calibrate_int8`): calibrate with
   ``onnxruntime.quantization`` (min-max ranges per tensor, on the CPU) and
   write ``calibration.flatbuffers``, the table format the provider reads
   (``trt_int8_calibration_table_name``, not TensorRT's native one). The inputs
   are the caller's :class:`trainer.calibration.CalibrationSet` (``--calibration``)
   or else the bundle's golden inputs; the record says which, and whether parity
   (always on the golden inputs) was then measured on the calibration data.
3. One ONNX Runtime session with the TensorRT provider builds the engine: fp16
   always allowed (int8 layers TensorRT cannot run fall back to it), int8 with
   the table, one optimisation profile from batch 1 to the firmware profile's
   batch size, and the EP-context dump. The dumped file must hold an
   ``EPContext`` node, or nothing was compiled (:class:`EngineBuildError`).
4. Parity (:mod:`trainer.parity`): the golden inputs through the dumped file on
   the TensorRT provider and through the fp32 file on ONNX Runtime's CPU
   provider.
5. The bundle entry: name, digest, length, variant, and extras an older agent
   keeps as they are: the engine's own golden outputs with a tolerance (the
   agent's smoke test reads them, as for int8), the parity report, and the
   build facts (GPU, TensorRT and ONNX Runtime versions, profile, batch size,
   calibration).

Publishing (``RegistryClient.add_variant``) and the refusal above the parity
tolerance are the caller's; this module writes only under its work folder.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from corral.bundle import Bundle, BundleFile, file_digest
from corral.profiles import FirmwareProfile
from corral.tensorrt import tensorrt_version
from trainer.calibration import CalibrationSet
from trainer.errors import (
    EngineBuildError,
    ExportError,
    TensorRTUnavailableError,
    TrainConfigError,
)
from trainer.parity import ParityReport, compare_outputs, golden_inputs, run_onnx

__all__ = [
    "CALIBRATION_TABLE",
    "PRECISIONS",
    "TensorRTInfo",
    "TrtVariant",
    "build_trt_variant",
    "calibrate_int8",
    "check_profile",
    "probe",
    "variant_name",
    "write_calibration_table",
]

logger = logging.getLogger(__name__)

PRECISIONS = ("fp16", "int8")
#: The calibration table file the TensorRT provider reads, ONNX Runtime's format.
CALIBRATION_TABLE = "calibration.flatbuffers"
_TRT = "TensorrtExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_NEEDS = (
    "an NVIDIA GPU with its driver, CUDA and TensorRT libraries, and onnxruntime-gpu built "
    "with the TensorRT execution provider (`pip install onnxruntime-gpu tensorrt`)"
)
_MAX_VARIANT = 64


@dataclass(frozen=True)
class TensorRTInfo:
    """What this machine builds engines with."""

    gpu: str
    tensorrt_version: str
    onnxruntime_version: str
    device_id: int = 0

    @property
    def tensorrt_major_minor(self) -> str:
        """``10.3`` of ``10.3.0``."""
        return ".".join(self.tensorrt_version.split(".")[:2])


@dataclass(frozen=True)
class TrtVariant:
    """A built variant: its file, its bundle entry and its parity report."""

    path: Path
    entry: BundleFile
    parity: ParityReport


def _gpu_name(device_id: int) -> str | None:
    try:
        import pynvml
    except ImportError:
        pass
    else:
        try:
            pynvml.nvmlInit()
            try:
                name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(device_id))
            finally:
                pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            return None
        return name.decode() if isinstance(name, bytes) else str(name)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    query = [smi, "--query-gpu=name", "--format=csv,noheader", "-i", str(device_id)]
    try:
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def probe(device_id: int = 0) -> TensorRTInfo:
    """Check that this machine can build TensorRT engines through ONNX Runtime.

    Args:
        device_id: the CUDA device to build on.

    Returns:
        The GPU's name and the TensorRT and ONNX Runtime versions.

    Raises:
        TensorRTUnavailableError: a provider, the GPU or the TensorRT library is
            missing; the message says which, and what is needed.
    """
    available = ort.get_available_providers()
    missing = [p for p in (_TRT, _CUDA) if p not in available]
    if missing:
        raise TensorRTUnavailableError(
            f"this onnxruntime ({ort.__version__}) lacks {', '.join(missing)} (it has "
            f"{', '.join(available)}); building a TensorRT variant needs {_NEEDS}"
        )
    gpu = _gpu_name(device_id)
    if gpu is None:
        raise TensorRTUnavailableError(
            f"no NVIDIA GPU {device_id} answers (neither NVML nor nvidia-smi found one); "
            f"building a TensorRT variant needs {_NEEDS}"
        )
    version = tensorrt_version()
    if version is None:
        raise TensorRTUnavailableError(
            f"no TensorRT library found (neither the tensorrt package nor libnvinfer); "
            f"building a TensorRT variant needs {_NEEDS}"
        )
    return TensorRTInfo(gpu, version, ort.__version__, device_id)


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def check_profile(profile: FirmwareProfile, info: TensorRTInfo, precision: str | None) -> str:
    """The precision to build for ``profile`` on this machine.

    Args:
        profile: the firmware profile the variant is for.
        info: what :func:`probe` found.
        precision: asked for on the command line, or None for the profile's own
            (fp16 when the profile says fp32).

    Raises:
        TrainConfigError: the profile does not use TensorRT, needs a newer
            TensorRT than this machine has, or the precision is not fp16 or int8.
    """
    if _TRT not in profile.execution_providers:
        raise TrainConfigError(
            f"firmware profile {profile.name} does not use TensorRT (its providers are "
            f"{list(profile.execution_providers)}); pick a profile that lists {_TRT}"
        )
    wanted = precision or (profile.precision if profile.precision in PRECISIONS else "fp16")
    if wanted not in PRECISIONS:
        raise TrainConfigError(f"precision {wanted!r} is not one of {list(PRECISIONS)}")
    minimum = profile.requirements.get("min_tensorrt")
    if minimum and _version_tuple(info.tensorrt_version) < _version_tuple(minimum):
        raise TrainConfigError(
            f"firmware profile {profile.name} needs TensorRT {minimum} or newer; this machine "
            f"has {info.tensorrt_version}, and an engine runs only on the version that built it"
        )
    return wanted


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-.")
    return re.sub(r"^nvidia-", "", slug) or "gpu"


def variant_name(precision: str, gpu: str, tensorrt_version: str) -> str:
    """``trt-<precision>-<gpu slug>-trt<major.minor>``, at most 64 characters.

    ``variant_name("fp16", "NVIDIA GeForce RTX 4090", "10.3.0")`` is
    ``trt-fp16-geforce-rtx-4090-trt10.3``.
    """
    major_minor = ".".join(tensorrt_version.split(".")[:2])
    head, tail = f"trt-{precision}-", f"-trt{major_minor}"
    slug = _slug(gpu)[: _MAX_VARIANT - len(head) - len(tail)].strip("-.")
    return f"{head}{slug}{tail}"


def write_calibration_table(model: Path, inputs: np.ndarray, directory: Path) -> Path:
    """Calibrate ``model`` on ``inputs`` (min-max per tensor, CPU) and write the table.

    Args:
        model: the fp32 ONNX file.
        inputs: N x C x H x W float32 samples.
        directory: where ``calibration.flatbuffers`` (and ``.cache``, ``.json``) go.

    Returns:
        The path of ``calibration.flatbuffers``.

    Raises:
        ExportError: ONNX Runtime could not calibrate the model.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        create_calibrator,
    )
    from onnxruntime.quantization import write_calibration_table as write_table

    class _Samples(CalibrationDataReader):  # type: ignore[misc]  # untyped base class
        def __init__(self, name: str) -> None:
            self._rows: Iterator[np.ndarray] = iter(inputs[i : i + 1] for i in range(len(inputs)))
            self._name = name

        def get_next(self) -> dict[str, np.ndarray] | None:
            row = next(self._rows, None)
            return None if row is None else {self._name: row}

    directory.mkdir(parents=True, exist_ok=True)
    try:
        name = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()[0]
        calibrator = create_calibrator(
            str(model),
            [],
            augmented_model_path=str(directory / "augmented.onnx"),
            calibrate_method=CalibrationMethod.MinMax,
            providers=["CPUExecutionProvider"],
        )
        calibrator.collect_data(_Samples(name.name))
        write_table(calibrator.compute_data(), dir=str(directory))
    except Exception as e:  # onnxruntime.quantization raises untyped errors
        raise ExportError(f"cannot calibrate {model.name} for int8: {e}") from e
    return directory / CALIBRATION_TABLE


def calibrate_int8(
    bundle: Bundle, fp32: Path, work_dir: Path, data: CalibrationSet | None = None
) -> tuple[Path, dict[str, Any]]:
    """Write the int8 calibration table for ``fp32`` and describe what it was computed on.

    Args:
        bundle: the version's bundle (its golden inputs are the fallback data).
        fp32: its fp32 ONNX file.
        work_dir: where the table goes.
        data: calibration images read by :func:`trainer.calibration.load_calibration`,
            or None for the bundle's golden inputs.

    Returns:
        The table's path, and the variant's ``calibration`` record: ``method``,
        ``source``, ``samples``, ``skipped`` and ``parity_on_calibration_data``
        (true for golden inputs: parity then tells little about unseen data).

    Raises:
        ExportError: no golden samples (without ``data``); calibration failed.
    """
    if data is None:
        inputs = golden_inputs(bundle)
        record: dict[str, Any] = {
            "source": {"kind": "golden"},
            "samples": len(inputs),
            "skipped": 0,
            "parity_on_calibration_data": True,
        }
    else:
        inputs, record = data.inputs, data.metadata()
    table = write_calibration_table(fp32, inputs, work_dir)
    return table, {"method": "minmax", **record}


def _shape(bundle: Bundle, batch: int) -> str:
    c, h, w = bundle.input.sample_shape
    return f"{bundle.input.name}:{batch}x{c}x{h}x{w}"


def _has_ep_context(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(node.op_type == "EPContext" for node in model.graph.node)


def build_engine(
    model: Path,
    out: Path,
    bundle: Bundle,
    precision: str,
    batch_size: int,
    work_dir: Path,
    calibration: Path | None = None,
    device_id: int = 0,
) -> Path:
    """Build a TensorRT engine for ``model`` and dump it as an EPContext model at ``out``.

    Raises:
        EngineBuildError: the provider failed, or dumped no EPContext node.
    """
    options: dict[str, str] = {
        "device_id": str(device_id),
        "trt_fp16_enable": "1",
        "trt_int8_enable": "1" if precision == "int8" else "0",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": str(work_dir.resolve()),
        "trt_dump_ep_context_model": "1",
        "trt_ep_context_file_path": str(out.resolve()),
        "trt_ep_context_embed_mode": "1",
        "trt_profile_min_shapes": _shape(bundle, 1),
        "trt_profile_opt_shapes": _shape(bundle, batch_size),
        "trt_profile_max_shapes": _shape(bundle, batch_size),
    }
    if precision == "int8":
        if calibration is None:
            raise EngineBuildError("an int8 engine needs a calibration table")
        # The provider looks the table up by name in its engine cache folder.
        if calibration.parent.resolve() != work_dir.resolve():
            shutil.copyfile(calibration, work_dir / CALIBRATION_TABLE)
        options["trt_int8_calibration_table_name"] = CALIBRATION_TABLE
        options["trt_int8_use_native_calibration_table"] = "0"
    session_options = ort.SessionOptions()
    session_options.log_severity_level = 2
    try:
        session = ort.InferenceSession(
            str(model), sess_options=session_options, providers=[(_TRT, options), _CUDA]
        )
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise EngineBuildError(f"TensorRT could not build {model.name}: {e}") from e
    if _TRT not in session.get_providers():
        raise EngineBuildError(
            f"ONNX Runtime did not enable {_TRT} (it chose {session.get_providers()}); "
            "check the TensorRT and CUDA libraries are on the library path"
        )
    del session
    if not out.is_file() or not _has_ep_context(out):
        raise EngineBuildError(
            f"ONNX Runtime wrote no EPContext model at {out}: TensorRT compiled no part of "
            f"{model.name}; this onnxruntime ({ort.__version__}) may be too old for "
            "trt_dump_ep_context_model (1.17 or newer)"
        )
    return out


def build_trt_variant(
    bundle: Bundle,
    bundle_dir: Path,
    profile: FirmwareProfile,
    precision: str,
    info: TensorRTInfo,
    work_dir: Path,
    on_step: Callable[[str], None] = lambda _step: None,
    calibration: CalibrationSet | None = None,
) -> TrtVariant:
    """Build, check and describe a TensorRT variant of ``bundle``'s fp32 file.

    Args:
        bundle: the version's bundle (its fp32 file is in ``bundle_dir``).
        bundle_dir: where the fp32 file is.
        profile: the firmware profile it is for (its batch size sets the engine's).
        precision: ``fp16`` or ``int8``.
        info: what :func:`probe` found.
        work_dir: scratch space; the variant's file is written here.
        on_step: told ``calibrate``, ``build``, ``parity`` as each step starts.
        calibration: int8 only: the images to calibrate on; by default the golden
            samples (see :func:`calibrate_int8`).

    Returns:
        The file, its entry and the parity report (the caller decides on it).

    Raises:
        TrainConfigError: calibration data given for an fp16 variant.
        ExportError: no golden samples; calibration failed.
        EngineBuildError: TensorRT failed to build the engine.
    """
    if calibration is not None and precision != "int8":
        raise TrainConfigError(f"calibration data applies to int8 only, not {precision}")
    fp32 = bundle_dir / bundle.model_file("fp32").name
    inputs = golden_inputs(bundle)
    variant = variant_name(precision, info.gpu, info.tensorrt_version)
    out = work_dir / f"{Path(fp32.name).stem}.{variant}.onnx"
    work_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] | None = None
    table: Path | None = None
    if precision == "int8":
        on_step("calibrate")
        table, record = calibrate_int8(bundle, fp32, work_dir, calibration)
    on_step("build")
    build_engine(fp32, out, bundle, precision, profile.batch_size, work_dir, table, info.device_id)
    on_step("parity")
    reference = run_onnx(fp32, inputs)
    candidate = run_onnx(out, inputs, [(_TRT, {"device_id": str(info.device_id)}), _CUDA])
    report = compare_outputs(reference, candidate, precision)
    digest, length = file_digest(out)
    entry = BundleFile(
        name=out.name,
        sha256=digest,
        length=length,
        variant=variant,
        unrecognized={
            "derived_from": "fp32",
            "format": "onnx-epcontext",
            # The agent's smoke test compares this file with its own outputs.
            "golden": {"outputs": candidate.tolist(), "tolerance": max(report.limit, 1e-3)},
            "parity": report.to_dict(),
            "tensorrt": {
                "precision": precision,
                "gpu": info.gpu,
                "tensorrt_version": info.tensorrt_version,
                "onnxruntime_version": info.onnxruntime_version,
                "profile": profile.name,
                "batch_size": profile.batch_size,
                "calibration": record,
            },
        },
    )
    return TrtVariant(path=out, entry=entry, parity=report)
