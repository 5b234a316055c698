"""Install a model version: fetch, verify, smoke-test, persist, activate.

``Updater.install(model, version)`` runs these steps, in this order, and stops
at the first failure with the staging folder removed and ``state.json``
untouched, so the model that is running keeps running:

1. TUF refresh from the root pinned at enrolment (``tuf/metadata/``): root
   rotation (root N+1 must be signed by a threshold of root N's keys and of its
   own), then the registry's signed time, then timestamp, snapshot and targets,
   each signed, unexpired and not older than what this device saw before
   (rollback and freeze refused).
2. ``models/{model}/{version}/bundle.json`` must be a signed target (absent:
   reason ``not_found``); it is downloaded (length and hash checked by TUF),
   parsed, and must name the model and version asked for.
3. The bundle must allow this profile and agent version. The variant is the
   one the rollout asks for (the hint's ``variant``); when it names none, a
   TensorRT variant built for exactly this device if the profile runs TensorRT
   (``agent.variants``); else the profile's variant, else ``fp32``. The
   variant's file must be a signed target whose length and SHA-256 agree with
   the bundle; it is downloaded into staging.
4. The staged files are checked against the bundle once more.
5. ONNX Runtime loads the file with the profile's providers and runs the
   bundle's golden samples (the smoke test). The loader is a seam
   (``runtime_loader``): the fleet simulator (``agent.simulate``) passes one
   that returns a simulated model, so steps 1-4 and 6 stay the real ones.
   A TensorRT variant the agent chose for itself that fails to load or fails
   its smoke test is removed from staging, and steps 3-5 run again, in the same
   install, with the variant the rollout-less rule gives (the profile's, else
   ``fp32``); ``InstallResult.fallback`` says which failed and why. A variant
   the rollout named gets no such fallback: the operator asked for it.
6. The staging folder becomes a slot, and the slot becomes current
   (``agent.slots``); the old current becomes previous.

Each step is bounded: the fetcher has connect, read and total timeouts, TUF
caps every metadata length, and the model file has a size cap. ``install``
blocks; the service runs it in a worker thread and swaps the returned,
already smoke-tested runtime into the pipeline.

Model files download resumably (``agent.fetcher``): a file whose connection
drops continues from where it stopped, in the same install or the next one,
even after a restart, from ``{data_dir}/downloads/``. After a successful
install the partial files left there (versions given up on) are removed.

Signed time
-----------
"Unexpired" is judged against the registry's signed time, not this device's
clock (park computers' clocks are often years off): after walking root
rotations, the updater fetches ``{registry}/tuf/time?nonce=<fresh nonce>``
and checks that a threshold of the timestamp keys the newest trusted root
names signed it, with this request's nonce (:mod:`corral.signedtime`). A
forged, replayed or missing time refuses the install. ngclient takes "now"
from the device clock once per update, in ``TrustedMetadataSet.reference_time``,
and its ``UpdaterConfig`` has no setting for it; ``_SignedTimeUpdater`` sets
that attribute between ngclient's own refresh steps (a test pins the seam).

Errors are the agent's ``UpdateError`` family, each with a ``reason``; the
mapping of third-party errors is ``_ERROR_MAP`` below.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urljoin

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Root, TargetFile, Targets
from tuf.ngclient import Updater as TufUpdater
from tuf.ngclient.fetcher import FetcherInterface

import corral
from agent.config import AgentConfig
from agent.engines import TRT
from agent.errors import (
    DownloadError,
    RegistryBusyError,
    RuntimeLoadError,
    SmokeTestError,
    UpdateError,
    VerificationError,
)
from agent.fetcher import BusyHTTPError, HttpxFetcher
from agent.runtime import ModelRuntime
from agent.slots import Slot, Slots
from agent.variants import (
    TensorRTDevice,
    choose_tensorrt_variant,
    detect_tensorrt_device,
    tensorrt_record,
)
from corral.bundle import BUNDLE_FILE, Bundle, BundleFile
from corral.errors import BundleError, ContractError, VersionError
from corral.payloads import VariantFallback
from corral.profiles import FirmwareProfile
from corral.signedtime import (
    MAX_SIGNED_TIME_BYTES,
    SignedTimeError,
    new_nonce,
    verify_signed_time,
)
from corral.targets import bundle_target, file_target
from corral.version import Version

__all__ = [
    "DEFAULT_MAX_MODEL_BYTES",
    "InstallResult",
    "LoadedModel",
    "RuntimeLoader",
    "Updater",
    "load_onnx_runtime",
    "time_url",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_MODEL_BYTES = 4 * 1024**3
_MAX_BUNDLE_JSON = 16 * 1024**2
_DISK_MARGIN = 64 * 1024**2
_KEEPS_RUNNING = "the current model keeps running"
#: A device clock further than this from the registry's signed time is logged.
_CLOCK_SKEW_WARNING = timedelta(minutes=5)

#: Third-party errors and what they become, most specific first. The message
#: part says what was refused; ``_map_error`` adds the model and the advice.
_ERROR_MAP: tuple[tuple[type[BaseException], type[UpdateError], str | None, str], ...] = (
    (
        tuf_errors.DownloadLengthMismatchError,
        VerificationError,
        None,
        "the registry sent more bytes than the signed metadata allows",
    ),
    (tuf_errors.SlowRetrievalError, DownloadError, "timeout", "the download timed out"),
    (BusyHTTPError, RegistryBusyError, None, "the registry is busy"),
    (tuf_errors.DownloadHTTPError, DownloadError, None, "the registry answered with an error"),
    (tuf_errors.DownloadError, DownloadError, None, "the download failed"),
    (
        tuf_errors.ExpiredMetadataError,
        VerificationError,
        None,
        "the signed metadata has expired (a freeze attack, or a registry that stopped re-signing)",
    ),
    (
        tuf_errors.BadVersionNumberError,
        VerificationError,
        None,
        "the signed metadata is older than what this device has seen (a rollback attack)",
    ),
    (
        tuf_errors.UnsignedMetadataError,
        VerificationError,
        None,
        "the metadata is not signed by the keys this device trusts",
    ),
    (
        tuf_errors.LengthOrHashMismatchError,
        VerificationError,
        None,
        "a file differs from its signed length or hash (tampered or corrupted)",
    ),
    (tuf_errors.RepositoryError, VerificationError, None, "TUF refused the registry's metadata"),
    (
        SignedTimeError,
        VerificationError,
        None,
        "the registry's signed time cannot be trusted, so expiry cannot be judged",
    ),
    (BundleError, VerificationError, None, "the bundle does not match what was signed"),
    (RuntimeLoadError, UpdateError, "incompatible", "ONNX Runtime cannot load the model"),
    (httpx.HTTPError, DownloadError, None, "the download failed"),
    (OSError, UpdateError, "install", "a disk operation failed"),
)


def _map_error(error: BaseException, model: str, version: str) -> UpdateError | None:
    """The ``UpdateError`` for a third-party ``error``, or ``None`` if it is not ours to map."""
    if isinstance(error, UpdateError):
        return error
    for kind, agent_kind, reason, what in _ERROR_MAP:
        if isinstance(error, kind):
            if issubclass(agent_kind, DownloadError):
                advice = f"{_KEEPS_RUNNING}; the install will be retried"
            else:
                advice = f"refused; {_KEEPS_RUNNING}"
            mapped = agent_kind(f"{model} {version}: {what}: {error} ({advice})", reason)
            if isinstance(mapped, RegistryBusyError) and isinstance(error, BusyHTTPError):
                # The wait the registry asked for goes on to InstallBackoff.
                mapped.retry_after_s = error.retry_after_s
            return mapped
    return None


class LoadedModel(Protocol):
    """What an install hands back to run: a ``ModelRuntime``, or a simulated model."""

    @property
    def bundle(self) -> Bundle: ...

    def smoke_test(self) -> float:
        """Run the golden samples; the largest difference (raises ``SmokeTestError``)."""
        ...


#: Loads a staged or installed model: (bundle, folder, variant, profile) -> model.
RuntimeLoader = Callable[[Bundle, Path, str, FirmwareProfile], LoadedModel]


def load_onnx_runtime(
    bundle: Bundle,
    path: Path,
    variant: str,
    profile: FirmwareProfile,
    engine_root: Path | None = None,
) -> ModelRuntime:
    """The default :data:`RuntimeLoader`: ONNX Runtime with the profile's providers.

    Args:
        bundle: the bundle.
        path: the folder holding its files.
        variant: which model file.
        profile: the firmware profile (providers, precision, threads).
        engine_root: where TensorRT engines are kept (``agent.engines``); the
            updater passes ``{data_dir}/engines``.

    Raises:
        RuntimeLoadError: ONNX Runtime cannot load the file.
    """
    return ModelRuntime.load(
        bundle,
        path,
        providers=profile.execution_providers,
        variant=variant,
        intra_op_threads=profile.intra_op_threads,
        precision=profile.precision,
        engine_root=engine_root,
    )


@dataclass(frozen=True)
class InstallResult:
    """What ``install`` did: the slot that is now current and its loaded runtime.

    ``fallback`` is set when the TensorRT variant the agent chose for itself
    failed to load or smoke-test and ``variant`` is the one installed instead.
    """

    model: str
    version: str
    variant: str
    slot: Path
    smoke_max_diff: float
    seconds: float
    runtime: LoadedModel = field(repr=False, compare=False)
    fallback: VariantFallback | None = None


def time_url(metadata_url: str) -> str:
    """Where the registry serves its signed time: ``time`` beside the metadata folder.

    ``http://registry/tuf/metadata/`` gives ``http://registry/tuf/time``.
    """
    base = metadata_url if metadata_url.endswith("/") else metadata_url + "/"
    return urljoin(base, "../time")


def _device_now() -> datetime:
    return datetime.now(UTC)


class _SignedTimeUpdater(TufUpdater):
    """ngclient's ``Updater`` with the reference time for expiry checks from a callback.

    ``refresh`` runs ngclient's own steps in ngclient's order; between the root
    walk (which checks no expiry: TUF lets intermediate roots be expired) and
    the timestamp (the first expiry check) it sets ngclient's reference time to
    ``reference_time(newest trusted root)``. The time is checked against the
    newest root, so a rotated timestamp key does not strand an agent that was
    several roots behind.

    Args:
        reference_time: returns the time to judge expiry by, for a root.
        *args: ngclient ``Updater``'s arguments.
        **kwargs: ngclient ``Updater``'s keyword arguments.
    """

    def __init__(
        self, *args: Any, reference_time: Callable[[Root], datetime], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._reference_time = reference_time

    def refresh(self) -> None:
        """Root walk, reference time, then timestamp, snapshot, targets.

        Raises:
            tuf.api.exceptions.RepositoryError: metadata failed to verify.
            tuf.api.exceptions.DownloadError: a download failed.
            corral.signedtime.SignedTimeError: the signed time failed to verify.
            OSError: metadata could not be written to disk.
        """
        self._load_root()
        self._trusted_set.reference_time = self._reference_time(self._trusted_set.root)
        self._load_timestamp()
        self._load_snapshot()
        self._load_targets(Targets.type, Root.type)


def _trusted_root(metadata_dir: Path) -> bytes:
    """The newest root this device trusts: root.json, or the newest cached rotation."""
    try:
        return (metadata_dir / "root.json").read_bytes()
    except FileNotFoundError:
        pass
    # TUF replaces root.json (a link into root_history/) by remove-then-link; a
    # crash in between leaves only the history, which holds the same verified roots.
    history = sorted(
        (p for p in (metadata_dir / "root_history").glob("*.root.json") if p.name[0].isdigit()),
        key=lambda p: int(p.name.split(".", 1)[0]),
    )
    if not history:
        raise VerificationError(
            f"no trusted TUF root in {metadata_dir}; run `corral agent enrol` again"
        )
    return history[-1].read_bytes()


class Updater:
    """Installs signed model versions into the agent's slots.

    Args:
        config: the agent's configuration (URLs, token, data folder).
        profile: the firmware profile (variant, execution providers, threads).
        fetcher: TUF's network seam; default an ``HttpxFetcher`` with the device token.
        slots: the slots to install into; default those of ``config.data_dir``.
        max_model_bytes: refuse model files larger than this.
        require_golden: refuse bundles without golden samples (nothing to smoke-test).
        runtime_loader: loads a staged or installed model; default ONNX Runtime
            (:func:`load_onnx_runtime`). The fleet simulator passes its own.
        signed_time: judge expiry by the registry's signed time (the default);
            False trusts this device's clock, as plain TUF does.
        clock: this device's clock (tests set it wrong); with signed time it is
            only compared with the signed time, and a skew over 5 minutes logged.
        tensorrt_device: finds this device's GPU and TensorRT version, or None
            without TensorRT (:func:`agent.variants.detect_tensorrt_device`);
            asked only when the profile runs TensorRT, the rollout names no
            variant and the bundle has TensorRT variants.

    Raises:
        OSError: the slots cannot be recovered (see ``Slots.recover``).
    """

    def __init__(
        self,
        config: AgentConfig,
        profile: FirmwareProfile,
        *,
        fetcher: FetcherInterface | None = None,
        slots: Slots | None = None,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        require_golden: bool = True,
        runtime_loader: RuntimeLoader | None = None,
        signed_time: bool = True,
        clock: Callable[[], datetime] = _device_now,
        tensorrt_device: Callable[[], TensorRTDevice | None] = detect_tensorrt_device,
    ) -> None:
        self.config = config
        self._tensorrt_device = tensorrt_device
        self.signed_time = signed_time
        self._clock = clock
        #: This device's clock minus the registry's signed time, at the last update.
        self.clock_skew: timedelta | None = None
        self.profile = profile
        self.max_model_bytes = max_model_bytes
        self.require_golden = require_golden
        self.runtime_loader: RuntimeLoader = runtime_loader or self._load_onnx
        self._owns_fetcher = fetcher is None
        self._fetcher: FetcherInterface = fetcher or HttpxFetcher(
            config.device_token,
            auth_urls=(config.registry_url, config.metadata_url, config.targets_url),
            resume_dir=config.downloads_dir,
            resume_urls=(config.targets_url,),
        )
        self.slots = slots or Slots(config.data_dir)
        self.slots.recover()
        self._lock = threading.Lock()

    @property
    def fetcher(self) -> FetcherInterface:
        """The network seam TUF downloads through."""
        return self._fetcher

    def close(self) -> None:
        """Close the fetcher if this updater made it."""
        if self._owns_fetcher and isinstance(self._fetcher, HttpxFetcher):
            self._fetcher.close()

    # --- what is installed ------------------------------------------------------

    def current(self) -> Slot | None:
        """The current slot, or ``None``.

        Raises:
            Nothing: see ``Slots.current``.
        """
        return self.slots.current()

    def installed(self) -> tuple[str, str] | None:
        """(model, version) of the current slot, or ``None`` when there is none.

        Raises:
            Nothing: see ``Slots.current``.
        """
        slot = self.slots.current()
        return None if slot is None else (slot.model, slot.version)

    def load(self, slot: Slot) -> ModelRuntime:
        """Load ``slot`` into ONNX Runtime with the profile's providers.

        Always ONNX Runtime, whatever ``runtime_loader`` is: rollback and start
        run real models (the simulator does neither).

        Args:
            slot: an installed slot (current after a start or a rollback).

        Returns:
            The runtime, ready to run.

        Raises:
            RuntimeLoadError: ONNX Runtime cannot load the file.
        """
        return self._load_onnx(slot.bundle, slot.path, slot.variant, self.profile)

    def _load_onnx(
        self, bundle: Bundle, path: Path, variant: str, profile: FirmwareProfile
    ) -> ModelRuntime:
        return load_onnx_runtime(
            bundle, path, variant, profile, engine_root=self.config.data_dir / "engines"
        )

    def rollback(self) -> Slot:
        """Make the previous slot current again (and the current one previous).

        Returns:
            The slot now current; load it with :meth:`load`.

        Raises:
            UpdateError: there is no usable previous slot.
            OSError: state.json cannot be written.
        """
        with self._lock:
            return self.slots.rollback()

    # --- install -------------------------------------------------------------------

    def install(
        self,
        model: str,
        version: str,
        *,
        into: Slots | None = None,
        variant: str | None = None,
    ) -> InstallResult:
        """Fetch, verify, smoke-test and activate ``model`` ``version``.

        Args:
            model: the model's name.
            version: its semver version.
            into: the slots to install into; default this updater's. The agent
                installs a shadow candidate into its own slots, through the
                same verification, so the current model's slots stay untouched.
            variant: the file variant the rollout asks for; None: a TensorRT
                variant built for this device (falling back, if it fails to load
                or smoke-test, to what follows), else the profile's variant if
                the bundle has it, else fp32.

        Returns:
            The new current slot with its loaded, smoke-tested runtime.

        Raises:
            VerificationError: TUF or the bundle check refused something (reason
                ``verification``), or the version is not in the signed metadata
                (reason ``not_found``).
            RegistryBusyError: the registry said busy (reason ``registry_busy``),
                with the wait it asked for in ``retry_after_s``.
            DownloadError: the registry could not be reached or answered an error
                (reason ``download``, or ``timeout``).
            SmokeTestError: the model's golden outputs are wrong (reason ``smoke_test``).
            UpdateError: the bundle is not for this device (reason ``incompatible``)
                or the disk refused (reason ``install``).
        """
        started = time.monotonic()
        with self._lock:
            try:
                result = self._install(model, version, started, into or self.slots, variant)
            except Exception as e:
                mapped = _map_error(e, model, version)
                if mapped is None:
                    raise
                logger.warning("install of %s %s failed: %s", model, version, mapped)
                if mapped is e:
                    raise
                raise mapped from e
        if isinstance(self._fetcher, HttpxFetcher):
            # Partial downloads of versions given up on are of no use any more.
            self._fetcher.discard_partials()
        logger.info(
            "installed %s %s (%s%s) in %.1f s; smoke max diff %.3g",
            model,
            version,
            result.variant,
            "" if result.fallback is None else f", after {result.fallback.variant} failed",
            result.seconds,
            result.smoke_max_diff,
        )
        return result

    def _install(
        self, model: str, version: str, started: float, slots: Slots, wanted: str | None
    ) -> InstallResult:
        try:
            target = bundle_target(model, version)
            Version.parse(version)
        except ContractError as e:
            raise VerificationError(
                f"{model} {version} cannot be in the signed metadata: {e}", reason="not_found"
            ) from e
        metadata_dir = self.config.tuf_metadata_dir
        with slots.staging() as staging:
            tuf = _SignedTimeUpdater(
                metadata_dir=str(metadata_dir),
                metadata_base_url=self.config.metadata_url,
                target_base_url=self.config.targets_url,
                target_dir=str(staging),
                fetcher=self._fetcher,
                bootstrap=_trusted_root(metadata_dir),
                reference_time=self._reference_time,
            )
            tuf.refresh()
            bundle = self._fetch_bundle(tuf, target, model, version, staging)
            variant = self._choose_variant(bundle, wanted)
            chosen = None if wanted is not None else self._device_variant(bundle, variant)
            fallback = None
            if chosen is not None:
                try:
                    runtime, smoke = self._stage(tuf, bundle, chosen, staging)
                except (RuntimeLoadError, SmokeTestError) as e:
                    reason = e.reason if isinstance(e, SmokeTestError) else "incompatible"
                    fallback = VariantFallback(chosen, reason, str(e))
                    logger.warning(
                        "%s %s: %s, chosen for this device, failed (%s): %s; installing %s",
                        model,
                        version,
                        chosen,
                        reason,
                        e,
                        variant,
                    )
                    (staging / bundle.model_file(chosen).name).unlink(missing_ok=True)
                else:
                    variant = chosen
            if chosen is None or fallback is not None:
                runtime, smoke = self._stage(tuf, bundle, variant, staging)
            slot = slots.commit(staging, bundle, variant)
        return InstallResult(
            model=model,
            version=version,
            variant=variant,
            slot=slot.path,
            smoke_max_diff=smoke,
            seconds=time.monotonic() - started,
            runtime=runtime,
            fallback=fallback,
        )

    def _stage(
        self, tuf: TufUpdater, bundle: Bundle, variant: str, staging: Path
    ) -> tuple[LoadedModel, float]:
        """Fetch ``variant``'s file into staging, verify, load and smoke-test it."""
        entry = bundle.model_file(variant)
        self._fetch_model_file(tuf, bundle, entry, staging)
        # Only this variant's file was fetched; the bundle may list others.
        dataclasses.replace(bundle, files=[entry]).verify_files(staging)
        runtime = self.runtime_loader(bundle, staging, variant, self.profile)
        return runtime, runtime.smoke_test()

    def _device_variant(self, bundle: Bundle, usual: str) -> str | None:
        """The TensorRT variant built for this device, if it is not ``usual`` already.

        The device is probed only when the profile runs TensorRT and the bundle
        has TensorRT variants.
        """
        if TRT not in self.profile.execution_providers:
            return None
        if not any(tensorrt_record(f) is not None for f in bundle.files):
            return None
        chosen = choose_tensorrt_variant(bundle, self.profile, self._tensorrt_device())
        if chosen is None:
            logger.info(
                "%s %s: no TensorRT variant built for this device; installing %s",
                bundle.name,
                bundle.version,
                usual,
            )
        return None if chosen == usual else chosen

    def _reference_time(self, root: Root) -> datetime:
        """The time to judge expiry by: the registry's signed time, checked against ``root``.

        Raises:
            SignedTimeError: forged (not signed by root's timestamp keys), replayed
                (another nonce) or malformed.
            VerificationError: the registry serves no signed time.
            tuf.api.exceptions.DownloadError: it could not be fetched.
        """
        device_now = self._clock()
        if not self.signed_time:
            return device_now
        nonce = new_nonce()
        url = f"{time_url(self.config.metadata_url)}?nonce={nonce}"
        try:
            data = self._fetcher.download_bytes(url, MAX_SIGNED_TIME_BYTES)
        except tuf_errors.DownloadHTTPError as e:
            if e.status_code != 404:
                raise
            raise VerificationError(
                f"the registry serves no signed time at {url.split('?')[0]} (HTTP 404); this "
                "agent judges expiry by it, whatever its own clock says: upgrade the registry; "
                f"{_KEEPS_RUNNING}"
            ) from e
        signed_now = verify_signed_time(data, root, nonce)
        self.clock_skew = device_now - signed_now
        if abs(self.clock_skew) > _CLOCK_SKEW_WARNING:
            logger.warning(
                "this device's clock is %s %s the registry's signed time; metadata expiry is "
                "judged by the signed time (set the clock, or enable NTP)",
                abs(self.clock_skew),
                "ahead of" if self.clock_skew > timedelta(0) else "behind",
            )
        return signed_now

    def _fetch_bundle(
        self, tuf: TufUpdater, target: str, model: str, version: str, staging: Path
    ) -> Bundle:
        info = tuf.get_targetinfo(target)
        if info is None:
            raise VerificationError(
                f"{model} {version} is not in the registry's signed metadata; "
                f"nothing installed, {_KEEPS_RUNNING}",
                reason="not_found",
            )
        if info.length > _MAX_BUNDLE_JSON:
            raise VerificationError(
                f"{model} {version}: bundle.json is signed as {info.length} bytes, "
                f"over the {_MAX_BUNDLE_JSON} limit; refused, {_KEEPS_RUNNING}"
            )
        path = Path(tuf.download_target(info, filepath=str(staging / BUNDLE_FILE)))
        bundle = Bundle.from_bytes(path.read_bytes())
        if (bundle.name, bundle.version) != (model, version):
            raise VerificationError(
                f"the signed target for {model} {version} holds a bundle of {bundle.name} "
                f"{bundle.version}; refused, {_KEEPS_RUNNING}"
            )
        if self.require_golden and not bundle.golden:
            raise SmokeTestError(
                f"{model} {version} has no golden samples, so it cannot be smoke-tested; "
                f"refused, {_KEEPS_RUNNING}"
            )
        return bundle

    def _choose_variant(self, bundle: Bundle, wanted: str | None = None) -> str:
        """``wanted``, else the profile's variant if the bundle has it, else fp32.

        Checks compatibility first. The TensorRT variant built for this device
        (:meth:`_device_variant`) goes before this one when ``wanted`` is None.
        """
        where = f"{bundle.name} {bundle.version}"
        allowed = bundle.compatibility.get("profiles") or []
        if allowed and self.profile.name not in allowed:
            raise UpdateError(
                f"{where} is built for profiles {allowed}, not this device's "
                f"{self.profile.name!r}; {_KEEPS_RUNNING}",
                reason="incompatible",
            )
        minimum = bundle.compatibility.get("min_agent_version")
        if minimum:
            try:
                too_old = Version.parse(corral.__version__) < Version.parse(str(minimum))
            except VersionError:
                too_old = True
            if too_old:
                raise UpdateError(
                    f"{where} needs agent {minimum}, this is {corral.__version__}; "
                    f"upgrade the agent, {_KEEPS_RUNNING}",
                    reason="incompatible",
                )
        variants = {f.variant for f in bundle.files}
        if wanted is not None:
            if wanted not in variants:
                raise UpdateError(
                    f"{where}: the rollout asks for variant {wanted!r}, the bundle has "
                    f"{sorted(variants)}; {_KEEPS_RUNNING}",
                    reason="incompatible",
                )
            return wanted
        for variant in (self.profile.variant, "fp32"):
            if variant in variants:
                return variant
        raise UpdateError(
            f"{where} has variants {sorted(variants)}; profile {self.profile.name} needs "
            f"{self.profile.variant!r} or 'fp32'; {_KEEPS_RUNNING}",
            reason="incompatible",
        )

    def _fetch_model_file(
        self, tuf: TufUpdater, bundle: Bundle, entry: BundleFile, staging: Path
    ) -> None:
        where = f"{bundle.name} {bundle.version}"
        info: TargetFile | None = tuf.get_targetinfo(
            file_target(bundle.name, bundle.version, entry.name)
        )
        if info is None:
            raise VerificationError(
                f"{where}: the bundle lists {entry.name} but the signed metadata does not; "
                f"refused, {_KEEPS_RUNNING}"
            )
        if info.hashes.get("sha256") != entry.sha256 or info.length != entry.length:
            raise VerificationError(
                f"{where}: {entry.name} is signed as {info.length} bytes with SHA-256 "
                f"{str(info.hashes.get('sha256'))[:12]}…, the bundle says {entry.length} "
                f"bytes and {entry.sha256[:12]}…; refused, {_KEEPS_RUNNING}"
            )
        if info.length > self.max_model_bytes:
            raise VerificationError(
                f"{where}: {entry.name} is {info.length} bytes, over this device's limit of "
                f"{self.max_model_bytes}; refused, {_KEEPS_RUNNING}"
            )
        free = shutil.disk_usage(staging).free
        if free < info.length + _DISK_MARGIN:
            raise UpdateError(
                f"{where}: {entry.name} needs {info.length} bytes, the disk has {free} free; "
                f"free some space, {_KEEPS_RUNNING}",
                reason="install",
            )
        tuf.download_target(info, filepath=str(staging / entry.name))
