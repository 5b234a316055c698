"""Errors of the agent, rooted by whose fault it is::

    AgentError
    ├── ConfigError            the agent's own configuration is missing or wrong
    │   └── DataDirLockedError another agent process owns the data folder
    ├── EnrolmentError         the registry refused or could not be reached at enrolment
    ├── CameraError            a camera source cannot be opened or read
    ├── ImageInputError        `corral predict` was given a missing or unreadable image
    ├── RuntimeLoadError       a model cannot be loaded into ONNX Runtime
    └── UpdateError            an update was refused or failed; carries a ``reason`` code
        ├── VerificationError  TUF or the bundle check refused what was downloaded
        ├── DownloadError      the registry could not be reached or sent an error
        │   └── RegistryBusyError  the registry said busy (429, 503 with Retry-After)
        └── SmokeTestError     the new model gave wrong answers on its golden samples

Every ``UpdateError`` has a short machine-readable ``reason`` (``verification``,
``download``, ``registry_busy``, ``incompatible``, ``smoke_test``, ``install``,
``timeout``) that goes into the ``events`` payload, and a message that says what
to do.
"""

from __future__ import annotations

from corral.errors import CorralError

__all__ = [
    "AgentError",
    "CameraError",
    "ConfigError",
    "DataDirLockedError",
    "DownloadError",
    "EnrolmentError",
    "ImageInputError",
    "RegistryBusyError",
    "RuntimeLoadError",
    "SmokeTestError",
    "UpdateError",
    "VerificationError",
]


class AgentError(CorralError):
    """Base of the agent's errors."""


class ImageInputError(AgentError):
    """An input image or folder is missing, unreadable or not an image."""


class ConfigError(AgentError):
    """The agent's configuration is missing or invalid."""


class DataDirLockedError(ConfigError):
    """Another agent process holds the data folder's lock."""


class EnrolmentError(AgentError):
    """Enrolment with the registry failed."""


class CameraError(AgentError):
    """A camera source cannot be opened or read."""


class RuntimeLoadError(AgentError):
    """A model file cannot be loaded into an inference session."""


class UpdateError(AgentError):
    """An update was refused or failed; the current model keeps running."""

    reason = "install"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class VerificationError(UpdateError):
    """TUF metadata or a downloaded file failed verification."""

    reason = "verification"


class DownloadError(UpdateError):
    """The registry could not be reached, or answered with an error."""

    reason = "download"


class RegistryBusyError(DownloadError):
    """The registry answered "busy, come back later" (429, or 503 with ``Retry-After``).

    Args:
        message: what happened and what the agent does next.
        reason: the reason code; default ``registry_busy``.
        retry_after_s: the wait the registry asked for (0.0 when it named none).
    """

    reason = "registry_busy"

    def __init__(self, message: str, reason: str | None = None, retry_after_s: float = 0.0) -> None:
        super().__init__(message, reason)
        self.retry_after_s = retry_after_s


class SmokeTestError(UpdateError):
    """The new model's outputs on its golden samples are off by more than the tolerance."""

    reason = "smoke_test"
