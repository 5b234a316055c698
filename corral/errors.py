"""Errors of the shared contract.

Rooted by whose fault it is::

    CorralError
    └── ContractError          data that breaks the contract (caller's or sender's fault)
        ├── BundleError        a bundle.json or a file beside it is malformed or tampered
        ├── ManifestError      an image manifest (.csv/.jsonl) is not one or cannot be read
        ├── PayloadError       an MQTT payload or topic is malformed
        ├── ProfileError       a firmware profile is malformed or none matches
        └── VersionError       a version string is not semver
    └── ApiError               the registry's API refused a request or could not be reached
    └── TlsConfigError         a CA bundle, certificate or key for TLS to the broker is unusable
"""

from __future__ import annotations

__all__ = [
    "ApiError",
    "BundleError",
    "ContractError",
    "CorralError",
    "ManifestError",
    "PayloadError",
    "ProfileError",
    "TlsConfigError",
    "VersionError",
]


class CorralError(Exception):
    """Base of every error Corral raises on purpose."""


class ContractError(CorralError):
    """Data crossing a process boundary does not follow the contract."""


class BundleError(ContractError):
    """A bundle (bundle.json or one of its files) is malformed or was tampered with."""


class ManifestError(ContractError):
    """An image manifest is not a ``.csv`` / ``.jsonl`` file, or cannot be read.

    Bad lines of a readable manifest are not errors: :func:`corral.manifest.read_manifest`
    returns them as problems, for the caller to count or refuse.
    """


class PayloadError(ContractError):
    """An MQTT topic or payload is malformed."""


class ProfileError(ContractError):
    """A firmware profile is malformed, or no profile matches the hardware."""


class VersionError(ContractError):
    """A model version is not a semantic version (MAJOR.MINOR.PATCH)."""


class ApiError(CorralError):
    """The registry's HTTP API refused a request (``status``) or could not be reached (0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class TlsConfigError(CorralError):
    """A CA bundle, client certificate or key for TLS to the MQTT broker cannot be used.

    The operator's to fix: the message names the file and what is wrong with it.
    """
