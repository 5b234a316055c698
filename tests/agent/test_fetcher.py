"""The httpx fetcher: token, timeouts, and the mapping onto TUF's download errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from tuf.api import exceptions

from agent.fetcher import HttpxFetcher

SEEN: list[dict[str, str | None]] = []


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server names it)
        SEEN.append({"path": self.path, "auth": self.headers.get("Authorization")})
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.02)
            return
        if self.path == "/stall":
            self.send_response(200)
            self.send_header("Content-Length", "10")
            self.end_headers()
            time.sleep(1.0)
            return
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/file")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path != "/file":
            self.send_error(404)
            return
        body = b"0123456789" * 1000
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def base() -> Iterator[str]:
    SEEN.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_with_the_device_token(base: str) -> None:
    with HttpxFetcher("tok", auth_urls=[base + "/metadata/"], chunk_size=1000) as fetcher:
        data = fetcher.download_bytes(base + "/file", 20_000)
    assert data == b"0123456789" * 1000
    assert SEEN == [{"path": "/file", "auth": "Bearer tok"}]


def test_the_token_goes_only_to_configured_origins(base: str) -> None:
    with HttpxFetcher("tok", auth_urls=["http://registry.example:8000/"]) as fetcher:
        fetcher.download_bytes(base + "/file", 20_000)
    assert SEEN[0]["auth"] is None


def test_redirects_are_followed(base: str) -> None:
    with HttpxFetcher("tok") as fetcher:
        assert len(fetcher.download_bytes(base + "/redirect", 20_000)) == 10_000


def test_more_bytes_than_allowed_are_refused(base: str) -> None:
    with (
        HttpxFetcher() as fetcher,
        pytest.raises(exceptions.DownloadLengthMismatchError),
    ):
        fetcher.download_bytes(base + "/file", 5_000)


def test_http_errors_carry_the_status(base: str) -> None:
    with HttpxFetcher() as fetcher, pytest.raises(exceptions.DownloadHTTPError) as caught:
        fetcher.download_bytes(base + "/missing", 100)
    assert caught.value.status_code == 404


def test_a_closed_port_is_a_download_error() -> None:
    with HttpxFetcher() as fetcher, pytest.raises(exceptions.DownloadError) as caught:
        fetcher.download_bytes("http://127.0.0.1:9/x", 100)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_a_stalled_body_times_out(base: str) -> None:
    with (
        HttpxFetcher(read_timeout_s=0.2) as fetcher,
        pytest.raises(exceptions.SlowRetrievalError),
    ):
        fetcher.download_bytes(base + "/stall", 100)


def test_a_trickling_body_hits_the_total_deadline(base: str) -> None:
    with (
        HttpxFetcher(total_timeout_s=0.3, chunk_size=1) as fetcher,
        pytest.raises(exceptions.SlowRetrievalError, match="longer than"),
    ):
        fetcher.download_bytes(base + "/slow", 100)


def test_works_over_an_httpx_transport() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("Authorization") != "Bearer tok":
            return httpx.Response(401)
        return httpx.Response(200, content=b"signed bytes")

    with HttpxFetcher("tok", transport=httpx.MockTransport(answer)) as fetcher:
        assert fetcher.download_bytes("http://registry/x", 100) == b"signed bytes"
    with (
        HttpxFetcher("other", transport=httpx.MockTransport(answer)) as fetcher,
        pytest.raises(exceptions.DownloadHTTPError),
    ):
        fetcher.download_bytes("http://registry/x", 100)
