"""A man in the middle: a real HTTP relay between agents and the registry that an attacker runs.

``Interceptor(upstream)`` listens on 127.0.0.1 and forwards every ``GET`` to the
registry (headers an agent sends included: ``Authorization``, ``Range``,
``If-Range``, ``If-None-Match``), answering with the registry's status and body,
unless the test told it otherwise for that path (the query string is not part of
the match):

- ``replace[path] = bytes``: answer these bytes with 200 instead (a replayed
  old file, another repository's file, a forged one);
- ``rewrite[path] = f``: answer ``f(registry's body)`` (a flipped byte);
- ``endless`` holds paths answered with a body that never ends (no
  ``Content-Length``), up to ``ENDLESS_CAP`` bytes; ``sent[path]`` counts what
  the client took before it hung up.

``recorded[path]`` keeps the registry's last 200 body for every path, which is
how an attacker collects old, validly signed metadata to replay later. The
registry behind it is never changed by anything the relay does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

__all__ = ["ENDLESS_CAP", "Interceptor", "intercept"]

#: The most an endless answer sends; far past any signed length in these tests.
ENDLESS_CAP = 256 * 1024 * 1024
_PIECE = 64 * 1024
_FORWARDED = ("Authorization", "Range", "If-Range", "If-None-Match")
_RETURNED = ("Content-Type", "ETag", "Content-Range", "Accept-Ranges", "Cache-Control")


@dataclass
class Interceptor:
    """What the relay does and saw; see the module docstring."""

    upstream: str
    url: str = ""
    replace: dict[str, bytes] = field(default_factory=dict)
    rewrite: dict[str, Callable[[bytes], bytes]] = field(default_factory=dict)
    endless: set[str] = field(default_factory=set)
    recorded: dict[str, bytes] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)

    def clear(self) -> None:
        """Stop every substitution: from now on the relay forwards faithfully."""
        self.replace.clear()
        self.rewrite.clear()
        self.endless.clear()


def _handler(spy: Interceptor, client: httpx.Client) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server names it)
            path = self.path.partition("?")[0]
            spy.paths.append(path)
            if path in spy.endless:
                self._endless(path)
                return
            headers = {h: v for h in _FORWARDED if (v := self.headers.get(h)) is not None}
            answer = client.get(spy.upstream + self.path, headers=headers)
            body = answer.content
            if answer.status_code == 200:
                spy.recorded[path] = body
            status = answer.status_code
            if path in spy.replace:
                status, body = 200, spy.replace[path]
            elif path in spy.rewrite:
                body = spy.rewrite[path](body)
            self.send_response(status)
            for name in _RETURNED:
                if name in answer.headers:
                    self.send_header(name, answer.headers[name])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _endless(self, path: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")  # the body ends when the socket does
            self.end_headers()
            self.close_connection = True
            piece = b"\0" * _PIECE
            spy.sent[path] = 0
            try:
                while spy.sent[path] < ENDLESS_CAP:
                    self.wfile.write(piece)
                    spy.sent[path] += _PIECE
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped reading: what the test wants to see

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client hanging up mid-answer is part of several attacks


@contextmanager
def intercept(upstream: str) -> Iterator[Interceptor]:
    """Run a relay to ``upstream`` on a free port of 127.0.0.1 until the block ends."""
    spy = Interceptor(upstream.rstrip("/"))
    with httpx.Client(timeout=30) as client:
        server = _Server(("127.0.0.1", 0), _handler(spy, client))
        spy.url = f"http://127.0.0.1:{server.server_address[1]}"
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        try:
            yield spy
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
