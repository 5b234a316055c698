"""Signed time: the registry's clock, signed, for park computers whose own clock is wrong.

The Uptane time-server idea. TUF refuses expired metadata (a freeze attack
replays old metadata forever), and "expired" needs a clock. A park computer's
clock may be years off: too fast, and it refuses everything; too slow, and it
accepts metadata that really expired. So the agent asks the registry for the
time, with a fresh random nonce, and checks the answer against the root it
trusts::

    GET {registry}/tuf/time?nonce=<nonce>

    {"signed": {"_type": "time", "time": "2025-01-01T12:00:00Z", "nonce": "<nonce>"},
     "signatures": [{"keyid": "<timestamp key id>", "sig": "<hex>"}]}

- The signatures cover the canonical JSON of ``signed`` (:func:`canonical`) and
  must reach the threshold root sets for the ``timestamp`` role. The timestamp
  key signs the time because it already decides freshness: whoever holds it can
  freeze agents without any help from a clock.
- The nonce binds an answer to one request: a recorded answer replayed later
  carries an old nonce and is refused, so an attacker cannot hand a device an
  old time together with the old metadata that was valid then.

Verification is pure (bytes in, time or :class:`SignedTimeError` out); the agent
does the fetching. Unknown fields in ``signed`` are kept and covered by the
signature, so a newer registry may add some.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from corral.errors import ContractError

if TYPE_CHECKING:
    from tuf.api.metadata import Root

__all__ = [
    "MAX_SIGNED_TIME_BYTES",
    "NONCE_PATTERN",
    "TIME_TYPE",
    "SignedTime",
    "SignedTimeError",
    "canonical",
    "check_nonce",
    "new_nonce",
    "sign_time",
    "verify_signed_time",
]

TIME_TYPE = "time"
#: An answer is a few hundred bytes; a root with many timestamp keys stays far below.
MAX_SIGNED_TIME_BYTES = 64 * 1024
#: What a nonce may be: 16 to 128 URL-safe characters.
NONCE_PATTERN = r"^[A-Za-z0-9_-]{16,128}$"
_NONCE = re.compile(NONCE_PATTERN)
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class SignedTimeError(ContractError):
    """A signed time is malformed, answers another request, or is not signed by trusted keys."""


def new_nonce() -> str:
    """A fresh random nonce (32 hex characters)."""
    return secrets.token_hex(16)


def check_nonce(nonce: str) -> str:
    """Return ``nonce`` if it is 16-128 characters of ``A-Z a-z 0-9 _ -``.

    Raises:
        SignedTimeError: it is not.
    """
    if not isinstance(nonce, str) or not _NONCE.match(nonce):
        raise SignedTimeError(
            f"a time nonce is 16 to 128 characters of A-Z, a-z, 0-9, '_' and '-'; "
            f"got {nonce!r:.40}"
        )
    return nonce


def canonical(signed: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: sorted keys, no whitespace, ASCII only."""
    return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


@dataclass(frozen=True)
class SignedTime:
    """The signed part of a time answer.

    Args:
        time: the registry's current time (aware UTC, whole seconds).
        nonce: the nonce the agent sent.
        unrecognized: fields a newer registry added (kept, and signed).

    Raises:
        SignedTimeError: the time is naive or the nonce is malformed.
    """

    time: datetime
    nonce: str
    unrecognized: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.time.tzinfo is None:
            raise SignedTimeError("a signed time must be timezone-aware (UTC)")
        object.__setattr__(self, "time", self.time.astimezone(UTC).replace(microsecond=0))
        check_nonce(self.nonce)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``signed``."""
        return {
            **self.unrecognized,
            "_type": TIME_TYPE,
            "time": self.time.strftime(_TIME_FORMAT),
            "nonce": self.nonce,
        }

    @classmethod
    def from_dict(cls, data: Any) -> SignedTime:
        """Parse the ``signed`` object.

        Raises:
            SignedTimeError: it is not a time object.
        """
        if not isinstance(data, dict):
            raise SignedTimeError("the signed time's 'signed' part is not a JSON object")
        rest = dict(data)
        if rest.pop("_type", None) != TIME_TYPE:
            raise SignedTimeError(f"the signed time's _type is not {TIME_TYPE!r}")
        text, nonce = rest.pop("time", None), rest.pop("nonce", None)
        try:
            when = datetime.strptime(str(text), _TIME_FORMAT).replace(tzinfo=UTC)
        except ValueError as e:
            raise SignedTimeError(
                f"the signed time {text!r:.40} is not of the form 2025-01-01T12:00:00Z"
            ) from e
        return cls(when, str(nonce) if isinstance(nonce, str) else "", rest)


class _Signer(Protocol):
    """What signs: securesystemslib's ``Signer`` (only ``sign`` is used)."""

    def sign(self, payload: bytes) -> Any: ...


def sign_time(signed: SignedTime, signers: Iterable[_Signer]) -> bytes:
    """The JSON answer for ``signed``, signed by each of ``signers``.

    Args:
        signed: the time and nonce.
        signers: securesystemslib signers (the registry's timestamp keys).

    Returns:
        The answer's bytes.
    """
    payload = canonical(signed.to_dict())
    signatures = [signer.sign(payload).to_dict() for signer in signers]
    return json.dumps({"signed": signed.to_dict(), "signatures": signatures}).encode()


def verify_signed_time(data: bytes, root: Root, nonce: str) -> datetime:
    """Check a time answer against ``root`` and the nonce sent; return the time.

    Args:
        data: the answer's bytes, as received.
        root: the root this device trusts (after walking root rotations).
        nonce: the nonce this device sent with the request.

    Returns:
        The registry's time, aware UTC.

    Raises:
        SignedTimeError: the answer is malformed or larger than
            :data:`MAX_SIGNED_TIME_BYTES`, carries another nonce (a replay), or
            lacks a threshold of valid signatures by root's timestamp keys (forged).
    """
    from securesystemslib.signer import Signature

    if len(data) > MAX_SIGNED_TIME_BYTES:
        raise SignedTimeError(f"the signed time is {len(data)} bytes, over {MAX_SIGNED_TIME_BYTES}")
    try:
        document = json.loads(data)
        raw_signatures = document["signatures"]
        signatures = {s["keyid"]: Signature.from_dict(dict(s)) for s in raw_signatures}
        raw_signed = document["signed"]
    except (ValueError, KeyError, TypeError) as e:
        raise SignedTimeError(
            f"the registry's signed time is not a signed time document ({type(e).__name__}: {e})"
        ) from e
    signed = SignedTime.from_dict(raw_signed)
    result = root.get_verification_result("timestamp", canonical(raw_signed), signatures)
    if not result:
        raise SignedTimeError(
            f"the registry's signed time carries {len(result.signed)} valid signature(s) by "
            f"the timestamp keys root {root.version} trusts, {result.threshold} needed: "
            "forged, or sent by someone other than the registry; refused"
        )
    if not secrets.compare_digest(signed.nonce, nonce):
        raise SignedTimeError(
            "the registry's signed time answers another request (its nonce is not the one "
            "sent): a replayed answer; refused"
        )
    return signed.time
