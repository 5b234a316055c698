"""Signed time: what the registry signs and what the agent accepts, bytes in, time or error out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Root

from corral.signedtime import (
    MAX_SIGNED_TIME_BYTES,
    SignedTime,
    SignedTimeError,
    check_nonce,
    new_nonce,
    sign_time,
    verify_signed_time,
)

NOW = datetime(2030, 5, 6, 7, 8, 9, tzinfo=UTC)
NONCE = "a" * 32


def _root(*signers: CryptoSigner, threshold: int = 1) -> Root:
    root = Root(expires=NOW + timedelta(days=365))
    for signer in signers:
        root.add_key(signer.public_key, "timestamp")
    root.roles["timestamp"].threshold = threshold
    return root


@pytest.fixture(scope="module")
def keys() -> list[CryptoSigner]:
    return [CryptoSigner.generate_ed25519() for _ in range(3)]


def test_a_time_signed_by_the_timestamp_key_verifies(keys: list[CryptoSigner]) -> None:
    answer = sign_time(SignedTime(NOW, NONCE), [keys[0]])
    assert verify_signed_time(answer, _root(keys[0]), NONCE) == NOW
    assert json.loads(answer)["signed"] == {
        "_type": "time",
        "time": "2030-05-06T07:08:09Z",
        "nonce": NONCE,
    }


def test_a_threshold_of_timestamp_keys_is_needed(keys: list[CryptoSigner]) -> None:
    root = _root(*keys, threshold=2)
    with pytest.raises(SignedTimeError, match="1 valid signature.*2 needed"):
        verify_signed_time(sign_time(SignedTime(NOW, NONCE), keys[:1]), root, NONCE)
    assert verify_signed_time(sign_time(SignedTime(NOW, NONCE), keys[:2]), root, NONCE) == NOW


def test_a_time_signed_by_another_key_is_refused_as_forged(keys: list[CryptoSigner]) -> None:
    with pytest.raises(SignedTimeError, match="forged"):
        verify_signed_time(sign_time(SignedTime(NOW, NONCE), [keys[1]]), _root(keys[0]), NONCE)


def test_a_time_for_another_nonce_is_refused_as_replayed(keys: list[CryptoSigner]) -> None:
    answer = sign_time(SignedTime(NOW, NONCE), [keys[0]])
    with pytest.raises(SignedTimeError, match="replayed"):
        verify_signed_time(answer, _root(keys[0]), "b" * 32)


def _tampered(answer: bytes, change: Any) -> bytes:
    document = json.loads(answer)
    change(document)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["signed"].update(time="2031-01-01T00:00:00Z"), "forged"),
        (lambda d: d["signed"].update(extra=1), "forged"),
        (lambda d: d["signed"].update(time="yesterday"), "not of the form"),
        (lambda d: d["signed"].update(_type="timestamp"), "_type"),
        (lambda d: d.pop("signatures"), "not a signed time document"),
        (lambda d: d.update(signatures=[{"keyid": 1}]), "not a signed time document"),
        (lambda d: d.update(signed=[1]), "not a JSON object"),
    ],
    ids=["later-time", "added-field", "bad-time", "wrong-type", "no-signatures", "bad-sig", "list"],
)
def test_a_changed_or_malformed_answer_is_refused(
    keys: list[CryptoSigner], change: Any, message: str
) -> None:
    answer = _tampered(sign_time(SignedTime(NOW, NONCE), [keys[0]]), change)
    with pytest.raises(SignedTimeError, match=message):
        verify_signed_time(answer, _root(keys[0]), NONCE)


def test_not_json_and_oversized_answers_are_refused(keys: list[CryptoSigner]) -> None:
    with pytest.raises(SignedTimeError, match="not a signed time document"):
        verify_signed_time(b"<html>", _root(keys[0]), NONCE)
    with pytest.raises(SignedTimeError, match="over"):
        verify_signed_time(b" " * (MAX_SIGNED_TIME_BYTES + 1), _root(keys[0]), NONCE)


def test_unknown_fields_from_a_newer_registry_are_kept_and_signed(
    keys: list[CryptoSigner],
) -> None:
    answer = sign_time(SignedTime(NOW, NONCE, {"leap": False}), [keys[0]])
    assert verify_signed_time(answer, _root(keys[0]), NONCE) == NOW
    assert SignedTime.from_dict(json.loads(answer)["signed"]).unrecognized == {"leap": False}


@pytest.mark.parametrize(
    "nonce", ["", "short", "x" * 129, "with space" * 2, "ü" * 20], ids=str.__len__
)
def test_malformed_nonces_are_refused(nonce: str) -> None:
    with pytest.raises(SignedTimeError, match="nonce"):
        check_nonce(nonce)


def test_new_nonces_are_fresh_and_valid() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(check_nonce(n) == n for n in nonces)


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(SignedTimeError, match="timezone-aware"):
        SignedTime(datetime(2030, 1, 1), NONCE)


@given(
    when=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)
    ),
    nonce=st.from_regex(r"\A[A-Za-z0-9_-]{16,128}\Z"),
)
def test_round_trip(when: datetime, nonce: str) -> None:
    signed = SignedTime(when, nonce)
    assert SignedTime.from_dict(json.loads(json.dumps(signed.to_dict()))) == signed
    assert signed.time == when.replace(microsecond=0)
