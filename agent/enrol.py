"""Enrolment: trade a one-time token for this device's credentials and trust root.

``POST {registry}/api/v1/enrol`` with the token, the device id, the hardware
facts and the firmware profile. The registry answers with the device's token,
the broker address, the TUF URLs and the repository's ``root.json``. The root is
checked to be a self-signed TUF root and pinned: every model the agent installs
later must chain from it.

When the registry's broker speaks TLS, the answer says so (``mqtt.tls``) and
carries the broker's CA certificate (``mqtt.ca_pem``), the way it carries the
TUF root: it is checked to be PEM and kept as ``mqtt-ca.pem``, so a technician
copies no certificate by hand. Both arrive over the enrolment connection, so
enrol over ``https://`` wherever the network between the park computer and the
registry is not trusted.

Order of writes: ``tuf/metadata/root.json`` and ``mqtt-ca.pem`` first,
``agent.json`` last, because the existence of agent.json is what "enrolled"
means. An existing enrolment is refused before the token is spent, unless
``force`` (which also clears the cached TUF metadata of the old repository).

A busy registry (429, or 503 with ``Retry-After``: ``agent.backoff``) turns
the request away before it reads the token, so the token is not spent: the
request is made again after the wait it asks for (at most a minute each, three
tries in all), so that a technician running the install script does not have
to start over because the registry was briefly at its limit.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
from tuf.api.exceptions import RepositoryError
from tuf.api.metadata import Metadata, Root

import corral
from agent.backoff import busy_wait_s, jitter
from agent.config import CONFIG_FILE, MQTT_CA_FILE, AgentConfig, write_file_atomic
from agent.errors import ConfigError, EnrolmentError
from corral.errors import PayloadError, TlsConfigError
from corral.profiles import FirmwareProfile, HardwareFacts
from corral.tls import check_ca_pem
from corral.topics import check_device_id

__all__ = ["ENROL_PATH", "enrol"]

logger = logging.getLogger(__name__)

ENROL_PATH = "/api/v1/enrol"
_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
#: Requests made while the registry says busy, and the longest wait between two.
_BUSY_TRIES = 3
_BUSY_WAIT_CAP_S = 60.0
_MAX_ANSWER = 1 << 20  # an enrolment answer is a few kB; a root with many keys stays far below


def _post(
    url: str, body: dict[str, Any], timeout: httpx.Timeout, transport: httpx.BaseTransport | None
) -> httpx.Response:
    try:
        with httpx.Client(timeout=timeout, transport=transport) as client:
            return client.post(url, json=body)
    except httpx.TimeoutException as e:
        raise EnrolmentError(
            f"the registry at {url} did not answer in time ({type(e).__name__}); "
            "check the address and the network, then try again"
        ) from e
    except httpx.HTTPError as e:
        raise EnrolmentError(
            f"cannot reach the registry at {url}: {e}; check the address and the network"
        ) from e


def _detail(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])[:500]
    return json.dumps(data)[:500]


def _refusal(response: httpx.Response, device_id: str) -> EnrolmentError:
    status = response.status_code
    detail = _detail(response)
    if status in (401, 403):
        return EnrolmentError(
            f"the registry refused the enrolment token (HTTP {status}: {detail}): it is "
            "unknown, already used or expired; ask an admin for a new one"
        )
    if status == 409:
        return EnrolmentError(
            f"the registry already has a device called {device_id!r} (HTTP 409: {detail}); "
            "choose another --device-id, or ask an admin to remove the old device"
        )
    if status == 422:
        return EnrolmentError(f"the registry refused the enrolment request as invalid: {detail}")
    if busy_wait_s(status, response.headers) is not None:
        return EnrolmentError(
            f"the registry is busy (HTTP {status}: {detail}) and stayed so over {_BUSY_TRIES} "
            "tries; the token is not spent: enrol again in a few minutes"
        )
    return EnrolmentError(
        f"the registry answered HTTP {status} to the enrolment ({detail}); try again later"
    )


def _field(data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EnrolmentError(
            f"the registry's enrolment answer has no valid {key!r} (got {value!r:.60}); "
            "it does not follow the contract in docs/contracts.md"
        )
    return value


def _check_root(document: Any) -> bytes:
    """Return root.json bytes after checking they are a TUF root signed by its own keys."""
    if not isinstance(document, dict):
        raise EnrolmentError("the registry's enrolment answer has no tuf_root object")
    raw = json.dumps(document, indent=1, sort_keys=True).encode()
    try:
        root = Metadata[Root].from_bytes(raw)
        if not isinstance(root.signed, Root):
            raise EnrolmentError("the registry's tuf_root is not root metadata")
        # Self-signed by a threshold of its own root keys, as TUF requires of a root.
        root.signed.verify_delegate(Root.type, root.signed_bytes, root.signatures)
    except RepositoryError as e:
        raise EnrolmentError(
            f"the registry sent a TUF root that is not a valid self-signed root.json: {e}"
        ) from e
    role = root.signed.roles[Root.type]
    # Later roots must chain from this one: each signed by a threshold of the previous one's keys.
    logger.info(
        "pinning TUF root v%d (%d of %d root keys sign it)",
        root.signed.version,
        role.threshold,
        len(role.keyids),
    )
    return raw


def _broker_ca(mqtt: dict[str, Any]) -> tuple[bool, bytes | None]:
    """Whether the broker speaks TLS, and the CA (PEM bytes) the registry handed out, checked."""
    tls = mqtt.get("tls", False)  # a registry from before TLS sends no "tls"
    if not isinstance(tls, bool):
        raise EnrolmentError(
            f"the registry's enrolment answer has a non-boolean mqtt.tls: {tls!r:.60}"
        )
    pem = mqtt.get("ca_pem")
    if pem is None or not tls:
        return tls, None
    if not isinstance(pem, str):
        raise EnrolmentError("the registry's enrolment answer has a mqtt.ca_pem that is not text")
    try:
        check_ca_pem(pem, "the broker CA the registry sent (mqtt.ca_pem)")
    except TlsConfigError as e:
        raise EnrolmentError(str(e)) from e
    return tls, pem.encode()


def enrol(
    registry_url: str,
    token: str,
    device_id: str,
    data_dir: Path,
    facts: HardwareFacts,
    profile: FirmwareProfile,
    *,
    pin_profile: bool = False,
    force: bool = False,
    timeout: httpx.Timeout = _TIMEOUT,
    transport: httpx.BaseTransport | None = None,
) -> AgentConfig:
    """Enrol this device with the registry and persist what it answers.

    Args:
        registry_url: e.g. ``http://registry:8000``.
        token: the one-time enrolment token an admin created.
        device_id: this device's id (lowercase letters, digits, ``-``).
        data_dir: the agent's data folder (agent.json, tuf/, models/).
        facts: the detected hardware, sent to the registry.
        profile: the firmware profile, whose name is sent to the registry.
        pin_profile: store the profile's name in agent.json, instead of
            detecting the hardware again at every start.
        force: replace an existing enrolment (and its cached TUF metadata).
        timeout: HTTP timeouts.
        transport: an httpx transport (tests).

    Returns:
        The saved configuration.

    Raises:
        EnrolmentError: already enrolled without ``force``, bad device id or URL,
            the registry refused (403 token, 409 id taken, 422 bad input), stayed
            busy over three tries, or could not be reached, or its answer breaks
            the contract.
        ConfigError: agent.json or root.json cannot be written.
    """
    data_dir = Path(data_dir)
    try:
        check_device_id(device_id)
    except PayloadError as e:
        raise EnrolmentError(str(e)) from e
    base = registry_url.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise EnrolmentError(f"registry URL should start with http:// or https://, got {base!r}")
    if (data_dir / CONFIG_FILE).exists() and not force:
        raise EnrolmentError(
            f"this device is already enrolled ({data_dir / CONFIG_FILE} exists); "
            "pass --force to enrol again, which replaces its credentials"
        )
    body = {
        "token": token,
        "device_id": device_id,
        "facts": facts.to_dict(),
        "profile": profile.name,
        "agent_version": corral.__version__,
    }
    url = base + ENROL_PATH
    logger.info("enrolling %s at %s", device_id, url)
    for attempt in range(1, _BUSY_TRIES + 1):
        response = _post(url, body, timeout, transport)
        busy = busy_wait_s(response.status_code, response.headers)
        if busy is None or attempt == _BUSY_TRIES:
            break
        wait = min(jitter(busy, low=0.0), _BUSY_WAIT_CAP_S)
        logger.warning(
            "the registry is busy (HTTP %d); enrolling again in %.0f s", response.status_code, wait
        )
        time.sleep(wait)
    if response.status_code != 201:
        raise _refusal(response, device_id)
    if len(response.content) > _MAX_ANSWER:
        raise EnrolmentError(f"the registry's enrolment answer is over {_MAX_ANSWER} bytes")
    try:
        answer = response.json()
    except ValueError as e:
        raise EnrolmentError(f"the registry's enrolment answer is not JSON: {e}") from e
    if not isinstance(answer, dict):
        raise EnrolmentError("the registry's enrolment answer is not a JSON object")
    mqtt = _field(answer, "mqtt", dict)
    tls, ca_pem = _broker_ca(mqtt)
    root = _check_root(answer.get("tuf_root"))
    if _field(answer, "device_id", str) != device_id:
        raise EnrolmentError(
            f"the registry enrolled device {answer['device_id']!r}, expected {device_id!r}"
        )
    try:
        config = AgentConfig(
            data_dir=data_dir,
            device_id=device_id,
            device_token=_field(answer, "device_token", str),
            registry_url=base,
            mqtt_host=_field(mqtt, "host", str),
            mqtt_port=_field(mqtt, "port", int),
            metadata_url=_field(answer, "metadata_url", str),
            targets_url=_field(answer, "targets_url", str),
            profile=profile.name if pin_profile else None,
            mqtt_tls=tls,
            mqtt_ca_file=Path(MQTT_CA_FILE) if ca_pem is not None else None,
        )
    except ConfigError as e:
        raise EnrolmentError(f"the registry's enrolment answer is not usable: {e}") from e
    metadata_dir = config.tuf_metadata_dir
    try:
        if force and metadata_dir.exists():
            # Cached timestamp/snapshot/targets belong to the old root's repository.
            shutil.rmtree(metadata_dir)
        metadata_dir.mkdir(parents=True, exist_ok=True)
        write_file_atomic(metadata_dir / "root.json", root)
    except OSError as e:
        raise ConfigError(f"cannot write the trusted root into {metadata_dir}: {e}") from e
    ca_path = data_dir / MQTT_CA_FILE
    try:
        if ca_pem is not None:
            write_file_atomic(ca_path, ca_pem)
        elif ca_path.exists():
            ca_path.unlink()  # an old enrolment's broker CA; this one trusts no file
    except OSError as e:
        raise ConfigError(f"cannot write the broker's CA certificate to {ca_path}: {e}") from e
    config.save()
    logger.info("enrolled %s; profile %s", device_id, profile.name)
    return config
