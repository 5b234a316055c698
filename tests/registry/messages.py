"""Agent payloads the registry tests publish, built with the real contract encoder."""

from __future__ import annotations

from corral.payloads import encode

__all__ = ["accuracy_payload"]


def accuracy_payload(device: str, seq: int, correct: int, labelled: int, version: str) -> bytes:
    """An ``accuracy`` window of ``correct`` out of ``labelled`` frames on animals ``version``."""
    body = {
        "window_s": 60.0,
        "labelled": labelled,
        "correct": correct,
        "accuracy": correct / labelled,
        "per_class": {},
        "model": "animals",
        "version": version,
    }
    return encode("accuracy", device, seq, body)
