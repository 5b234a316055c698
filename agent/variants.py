"""Which TensorRT variant of a bundle this device can run, when the rollout names none.

A TensorRT variant (``corral model build-trt``, ``trainer.trt``) embeds an
engine built for one GPU model and one TensorRT version; its bundle entry says
which in a ``tensorrt`` record (``gpu``, ``tensorrt_version``, ``batch_size``,
``precision``, ``profile``...). A fleet with mixed GPUs cannot be served by one
rollout naming one variant, so the updater asks :func:`choose_tensorrt_variant`
when the rollout names none. The rule, in order:

1. The firmware profile lists the TensorRT execution provider, and this
   onnxruntime has it (:func:`detect_tensorrt_device`); else no choice.
2. A variant qualifies only if its record was built for exactly this device:
   the same GPU name (case and spacing aside) and the same TensorRT
   major.minor, with a batch size at least the profile's. An engine for another
   GPU or TensorRT version is never chosen: it would not load, or worse.
3. Among those, the profile's precision first (fp16 or int8; an fp32 profile
   takes no prebuilt engine), then the other; then an engine from the exact
   TensorRT version, one built for this profile, the smallest batch size that
   fits, and the variant's name, so that the choice is the same on every
   device alike.

No qualifying variant, or no TensorRT here: ``None``, and the updater keeps its
usual rule (the profile's variant, else fp32). Why a variant was passed over is
logged at debug level. Everything here is pure except
:func:`detect_tensorrt_device`, whose probes are parameters.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from corral.bundle import Bundle, BundleFile
from corral.profiles import FirmwareProfile, HardwareFacts

__all__ = [
    "TRT_PRECISIONS",
    "TensorRTDevice",
    "choose_tensorrt_variant",
    "detect_tensorrt_device",
    "precision_order",
    "tensorrt_record",
]

logger = logging.getLogger(__name__)

#: The same name as ``agent.engines.TRT``, which imports onnxruntime; this module does not.
TRT = "TensorrtExecutionProvider"
#: The precisions a TensorRT variant is built in, in the order chosen when the
#: profile prefers neither.
TRT_PRECISIONS = ("fp16", "int8")


@dataclass(frozen=True)
class TensorRTDevice:
    """What a TensorRT engine must have been built for to run here."""

    gpu: str
    tensorrt_version: str

    @property
    def tensorrt_major_minor(self) -> str:
        """``10.3`` of ``10.3.0``."""
        return _major_minor(self.tensorrt_version)


def _major_minor(version: str) -> str:
    return ".".join(version.strip().split(".")[:2])


def _same_gpu(a: str, b: str) -> bool:
    return " ".join(a.split()).casefold() == " ".join(b.split()).casefold()


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _facts() -> HardwareFacts:
    from agent.hardware import detect_facts

    return detect_facts()


def _tensorrt_version() -> str:
    from agent.engines import tensorrt_version

    return tensorrt_version()


def detect_tensorrt_device(
    *,
    providers: Callable[[], Sequence[str]] = _available_providers,
    facts: Callable[[], HardwareFacts] = _facts,
    tensorrt: Callable[[], str] = _tensorrt_version,
) -> TensorRTDevice | None:
    """This device's GPU and TensorRT version, the facts the engine cache is keyed on.

    Args:
        providers: onnxruntime's available execution providers.
        facts: the hardware facts (``agent.hardware.detect_facts``: NVML, then
            nvidia-smi); the first GPU is the one ONNX Runtime uses (device 0).
        tensorrt: the TensorRT version: the ``tensorrt`` package's, else the
            library's (``agent.engines.tensorrt_version``), else ``unknown``.

    Returns:
        The device, or ``None`` when this onnxruntime lacks the TensorRT
        provider, no GPU answers, or the TensorRT version cannot be told (an
        engine is then never matched to it).

    Raises:
        Nothing: a probe that cannot tell means "no TensorRT here".
    """
    if TRT not in providers():
        return None
    gpus = facts().gpus
    version = tensorrt()
    if not gpus or not version or version == "unknown":
        logger.info(
            "TensorRT variants are not chosen here: GPU %s, TensorRT %s",
            gpus[0] if gpus else "not found",
            version or "unknown",
        )
        return None
    return TensorRTDevice(gpu=gpus[0], tensorrt_version=version)


def tensorrt_record(entry: BundleFile) -> Mapping[str, Any] | None:
    """The ``tensorrt`` build record of a bundle entry, or ``None`` if it has none."""
    record = entry.unrecognized.get("tensorrt")
    return record if isinstance(record, Mapping) else None


def precision_order(profile: FirmwareProfile) -> tuple[str, ...]:
    """The TensorRT precisions ``profile`` takes, preferred first.

    ``fp16`` profile: fp16, int8; ``int8`` profile: int8, fp16; any other
    (``fp32``): none. A profile that asks for full precision gets no prebuilt
    engine, which would run in fp16 or int8; its TensorRT provider builds an
    fp32 engine itself.
    """
    if profile.precision in TRT_PRECISIONS:
        return (profile.precision, *(p for p in TRT_PRECISIONS if p != profile.precision))
    return ()


def _mismatch(
    record: Mapping[str, Any], profile: FirmwareProfile, device: TensorRTDevice
) -> str | None:
    """Why an engine built as ``record`` cannot run here, or ``None`` if it can."""
    gpu, version = record.get("gpu"), record.get("tensorrt_version")
    batch, precision = record.get("batch_size"), record.get("precision")
    if not isinstance(gpu, str) or not _same_gpu(gpu, device.gpu):
        return f"built for GPU {gpu!r}, this is {device.gpu!r}"
    if not isinstance(version, str) or _major_minor(version) != device.tensorrt_major_minor:
        return f"built with TensorRT {version!r}, this has {device.tensorrt_version}"
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < profile.batch_size:
        return f"built for batch size {batch!r}, profile {profile.name} runs {profile.batch_size}"
    if precision not in TRT_PRECISIONS:
        return f"precision {precision!r} is not one of {list(TRT_PRECISIONS)}"
    return None


def choose_tensorrt_variant(
    bundle: Bundle, profile: FirmwareProfile, device: TensorRTDevice | None
) -> str | None:
    """The TensorRT variant of ``bundle`` built for this device, by the rule in the module doc.

    Args:
        bundle: the version's bundle.
        profile: this device's firmware profile.
        device: what :func:`detect_tensorrt_device` found; ``None``: no TensorRT.

    Returns:
        The variant's name, or ``None`` when no variant qualifies.

    Raises:
        Nothing.
    """
    if device is None or TRT not in profile.execution_providers:
        return None
    order = precision_order(profile)
    if not order:
        return None
    ranked: list[tuple[tuple[int, bool, bool, int, str], str]] = []
    for entry in bundle.files:
        record = tensorrt_record(entry)
        if record is None:
            continue
        why = _mismatch(record, profile, device)
        if why is not None:
            logger.debug("%s %s: not %s: %s", bundle.name, bundle.version, entry.variant, why)
            continue
        key = (
            order.index(record["precision"]),
            record["tensorrt_version"].strip() != device.tensorrt_version.strip(),
            record.get("profile") != profile.name,
            int(record["batch_size"]),
            entry.variant,
        )
        ranked.append((key, entry.variant))
    return min(ranked)[1] if ranked else None
