"""Corral's shared contract: what crosses a process boundary.

The bundle format, MQTT topics and payloads, firmware profiles, model versions,
TUF target names and image manifests. The trainer, the registry and the agent import this
package and never each other. It imports nothing heavy (no torch, no FastAPI,
no onnxruntime), so that every role can depend on it.
"""

from corral.bundle import (
    BUNDLE_FILE,
    BUNDLE_FORMAT,
    Bundle,
    BundleFile,
    GoldenSample,
    InputSpec,
    OutputSpec,
    file_digest,
)
from corral.errors import (
    BundleError,
    ContractError,
    CorralError,
    ManifestError,
    PayloadError,
    ProfileError,
    VersionError,
)
from corral.manifest import (
    MANIFEST_SUFFIXES,
    Manifest,
    ManifestProblem,
    ManifestRow,
    is_manifest,
    read_manifest,
)
from corral.payloads import (
    Message,
    VariantFallback,
    decode,
    encode,
    installed_event,
    rolled_back_event,
    utc_now,
)
from corral.profiles import (
    FirmwareProfile,
    HardwareFacts,
    load_profile,
    load_profiles,
    select_profile,
)
from corral.targets import bundle_target, file_target
from corral.topics import check_device_id, parse_topic, topic
from corral.version import Version

__version__ = "0.1.0"

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_FORMAT",
    "MANIFEST_SUFFIXES",
    "Bundle",
    "BundleError",
    "BundleFile",
    "ContractError",
    "CorralError",
    "FirmwareProfile",
    "GoldenSample",
    "HardwareFacts",
    "InputSpec",
    "Manifest",
    "ManifestError",
    "ManifestProblem",
    "ManifestRow",
    "Message",
    "OutputSpec",
    "PayloadError",
    "ProfileError",
    "VariantFallback",
    "Version",
    "VersionError",
    "__version__",
    "bundle_target",
    "check_device_id",
    "decode",
    "encode",
    "file_digest",
    "file_target",
    "installed_event",
    "is_manifest",
    "load_profile",
    "load_profiles",
    "parse_topic",
    "read_manifest",
    "rolled_back_event",
    "select_profile",
    "topic",
    "utc_now",
]
