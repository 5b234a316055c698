"""poll_select: select.select's contract for paho, with descriptors past 1,024."""

from __future__ import annotations

import os
import resource
import select
import socket
from collections.abc import Iterator

import pytest

from agent.pollselect import poll_select


@pytest.fixture
def high_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A socket pair whose descriptors are above FD_SETSIZE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1300:
        if hard != resource.RLIM_INFINITY and hard < 1300:
            pytest.skip(f"SKIPPED LOUDLY: the open-file limit is {hard}; need 1,300")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
    a, b = socket.socketpair()
    filler = [os.dup(a.fileno()) for _ in range(1100)]
    high_a, high_b = socket.socketpair()
    a.close()
    b.close()
    try:
        assert high_a.fileno() >= 1024
        yield high_a, high_b
    finally:
        high_a.close()
        high_b.close()
        for fd in filler:
            os.close(fd)


def test_select_refuses_high_descriptors_and_poll_select_does_not(
    high_pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = high_pair
    with pytest.raises(ValueError):
        select.select([a], [], [], 0)
    readable, writable, _ = poll_select([a], [a], [], 0)
    assert (readable, writable) == ([], [a]), "writable at once, nothing to read yet"
    b.sendall(b"x")
    readable, _, _ = poll_select([a, b], [], [], 1.0)
    assert readable == [a]


def test_poll_select_times_out_and_rejects_closed_sockets() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert poll_select([a], [], [], 0.05) == ([], [], [])
    with pytest.raises(ValueError):
        poll_select([a], [], [], 0)
