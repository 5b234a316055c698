"""Names of TUF targets: where a model version's files live in the signed repository.

The registry signs and the agent fetches by these names, so both build them here.
"""

from __future__ import annotations

from corral.bundle import BUNDLE_FILE
from corral.topics import check_device_id
from corral.version import Version

__all__ = ["bundle_target", "file_target"]


def file_target(model: str, version: str, filename: str) -> str:
    """``models/{model}/{version}/{filename}``.

    Raises:
        VersionError: ``version`` is not semver.
    """
    Version.parse(version)
    check_device_id(model)  # same character rules as device ids
    return f"models/{model}/{version}/{filename}"


def bundle_target(model: str, version: str) -> str:
    """The target path of a version's ``bundle.json``."""
    return file_target(model, version, BUNDLE_FILE)
