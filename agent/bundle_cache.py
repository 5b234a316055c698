"""A local cache of registry bundles for ``corral predict --model NAME@VERSION``.

A version's bundle never changes once pushed (a later variant only adds a file,
and bundle.json lists it beside the old ones), so a bundle fetched once can be
kept and run again without the registry. The steps, in order:

1. parse ``NAME@VERSION`` (:func:`parse_model`): an exact semantic version,
   because the cache is keyed by it; an alias would move under the cache;
2. look in ``CACHE/NAME/VERSION`` (:func:`cached_bundle`): use it when its
   bundle.json names this model and version and the variant's file still has
   the length and SHA-256 bundle.json lists, so a second run works offline;
3. otherwise fetch (:meth:`corral.client.RegistryClient.fetch_bundle`, which
   caps and checks the file) into a fresh temporary folder beside the cache
   entry, then move the model file and, last, bundle.json into place with
   an atomic rename: a failed or interrupted fetch leaves the cache as it was, and
   two runs fetching at once do not see each other's half-written files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from corral.bundle import BUNDLE_FILE, Bundle
from corral.errors import BundleError, VersionError
from corral.version import Version

if TYPE_CHECKING:
    from corral.client import RegistryClient

__all__ = ["cached_bundle", "default_cache_dir", "parse_model"]

logger = logging.getLogger(__name__)

# A bundle's model name (see corral.bundle): also safe as one folder name.
_MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def parse_model(reference: str) -> tuple[str, str]:
    """Split ``NAME@VERSION`` into the model name and its exact version.

    Raises:
        BundleError: not ``NAME@VERSION``, the name is not a bundle name, or the
            version is not semantic (``1.2.0``).
    """
    name, at, version = reference.rpartition("@")
    if not at or not _MODEL_NAME.match(name):
        raise BundleError(
            f"--model {reference!r}: expected NAME@VERSION, e.g. animals@1.2.0, with NAME "
            "in lowercase letters, digits and '-'"
        )
    try:
        Version.parse(version)
    except VersionError as e:
        raise BundleError(
            f"--model {reference!r}: {version!r} is not an exact version like 1.2.0 "
            "(aliases move, so they cannot be cached)"
        ) from e
    return name, version


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/corral/bundles``, or ``~/.cache/corral/bundles``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "corral" / "bundles"


def _usable(directory: Path, name: str, version: str, variant: str) -> bool:
    """Whether ``directory`` holds this version's bundle.json and an intact ``variant`` file."""
    if not (directory / BUNDLE_FILE).is_file():
        return False
    try:
        bundle = Bundle.load(directory)
        if (bundle.name, bundle.version) != (name, version):
            return False
        bundle.verify_files(directory, variant)
    except BundleError as e:
        logger.info("cached bundle %s is not usable (%s); fetching it again", directory, e)
        return False
    return True


def cached_bundle(
    name: str,
    version: str,
    variant: str,
    cache_dir: Path,
    client: RegistryClient | None,
) -> tuple[Path, bool]:
    """The folder of ``name`` ``version`` with an intact ``variant`` file, fetched if need be.

    Args:
        name: the model.
        version: its exact version.
        variant: the file to have (``fp32``, ``int8``, ...).
        cache_dir: the cache's root; the bundle lives in ``cache_dir/name/version``.
        client: the registry to fetch from on a miss; None to refuse a miss.

    Returns:
        The bundle folder, and whether it was fetched now (False: from the cache).

    Raises:
        ApiError: a miss, and the registry has no such version (404), refuses the
            token (403) or cannot be reached.
        BundleError: a miss with no ``client``; or the version has no such variant,
            or the registry sent a file that differs from what its bundle.json lists.
        OSError: the cache folder cannot be written.
    """
    target = cache_dir / name / version
    if _usable(target, name, version, variant):
        return target, False
    if client is None:
        raise BundleError(f"{name} {version} ({variant}) is not in the cache {cache_dir}")
    made = _make_dirs(target.parent)
    try:
        scratch = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
        try:
            bundle = client.fetch_bundle(name, version, scratch, variant)
            if (bundle.name, bundle.version) != (name, version):
                raise BundleError(
                    f"the registry sent bundle {bundle.name} {bundle.version} when asked "
                    f"for {name} {version}"
                )
            if not target.exists():
                made.append(target)
                target.mkdir()
            # The model file first and bundle.json last: a bundle.json in the cache only
            # lists files that are there or that a later run finds missing and fetches.
            model = bundle.model_file(variant).name
            (scratch / model).replace(target / model)
            (scratch / BUNDLE_FILE).replace(target / BUNDLE_FILE)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    except BaseException:
        for directory in reversed(made):  # a failed first fetch leaves no empty folders
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return target, True


def _make_dirs(directory: Path) -> list[Path]:
    """Create ``directory`` and its missing parents; the ones created, outermost first."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))
