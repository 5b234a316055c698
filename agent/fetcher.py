"""The network seam: TUF's ``FetcherInterface`` on httpx.

TUF's updater asks this fetcher for bytes and checks everything it gets (length
caps, hashes, signatures), so this module only moves bytes and maps failures
onto TUF's exceptions::

    HTTP status >= 400 (after redirects)   -> tuf DownloadHTTPError(status_code)
    httpx timeouts, total deadline passed  -> tuf SlowRetrievalError
    other httpx errors (connect, TLS, ...) -> tuf DownloadError

The device's Bearer token goes only to the origins the agent was configured
with (the registry's, metadata's and targets'), never to a host a redirect or a
future mirror points at; httpx also drops it when a redirect changes origin.

Every fetch is bounded: connect and read timeouts, and a total deadline per
file, so a server that trickles bytes cannot hold an install forever.
Resumable downloads (HTTP Range) will hook into :meth:`HttpxFetcher._open`,
which already takes the byte offset to start from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from urllib.parse import urlsplit

import httpx
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

import corral

__all__ = ["HttpxFetcher"]

logger = logging.getLogger(__name__)

_CHUNK = 256 * 1024


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, parts.hostname or "", port)


class HttpxFetcher(FetcherInterface):
    """Downloads for TUF's updater over one httpx connection pool.

    Args:
        token: the device token sent as ``Authorization: Bearer``; ``None`` for none.
        auth_urls: URLs whose origins may receive the token; empty means every origin.
        connect_timeout_s: time to open a connection.
        read_timeout_s: longest wait for the next bytes.
        total_timeout_s: longest time for one file, start to end.
        chunk_size: bytes per chunk handed to TUF.
        transport: an httpx transport (tests); the default opens real sockets.
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        auth_urls: Iterable[str] = (),
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 30.0,
        total_timeout_s: float = 900.0,
        chunk_size: int = _CHUNK,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._token = token
        self._auth_origins = {_origin(u) for u in auth_urls}
        self.total_timeout_s = total_timeout_s
        self.chunk_size = chunk_size
        self._client = httpx.Client(
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            follow_redirects=True,
            headers={"User-Agent": f"corral-agent/{corral.__version__}"},
            transport=transport,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> HttpxFetcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _headers(self, url: str, offset: int) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._token and (not self._auth_origins or _origin(url) in self._auth_origins):
            headers["Authorization"] = f"Bearer {self._token}"
        if offset:
            headers["Range"] = f"bytes={offset}-"
        return headers

    def _open(self, url: str, offset: int = 0) -> httpx.Response:
        """Send the request and return the streaming response, or raise TUF's errors."""
        request = self._client.build_request("GET", url, headers=self._headers(url, offset))
        try:
            response = self._client.send(request, stream=True)
        except httpx.TimeoutException as e:
            raise exceptions.SlowRetrievalError(f"{url}: no answer in time ({e})") from e
        except httpx.HTTPError as e:
            raise exceptions.DownloadError(f"cannot fetch {url}: {e}") from e
        if response.status_code >= 300:
            # 3xx left over after following redirects is as useless as an error.
            response.close()
            raise exceptions.DownloadHTTPError(
                f"{url}: HTTP {response.status_code}", response.status_code
            )
        return response

    def _fetch(self, url: str) -> Iterator[bytes]:
        """Start downloading ``url``.

        Args:
            url: the metadata or target URL TUF built.

        Returns:
            An iterator over the body's chunks.

        Raises:
            tuf.api.exceptions.DownloadHTTPError: the server answered an HTTP error.
            tuf.api.exceptions.SlowRetrievalError: a timeout passed.
            tuf.api.exceptions.DownloadError: the server could not be reached.
        """
        deadline = time.monotonic() + self.total_timeout_s
        response = self._open(url)
        return self._chunks(url, response, deadline)

    def _chunks(self, url: str, response: httpx.Response, deadline: float) -> Iterator[bytes]:
        try:
            for chunk in response.iter_bytes(self.chunk_size):
                if time.monotonic() > deadline:
                    raise exceptions.SlowRetrievalError(
                        f"{url}: download took longer than {self.total_timeout_s:.0f} s"
                    )
                yield chunk
        except httpx.TimeoutException as e:
            raise exceptions.SlowRetrievalError(f"{url}: stalled ({e})") from e
        except httpx.HTTPError as e:
            raise exceptions.DownloadError(f"{url}: download broke off: {e}") from e
        finally:
            response.close()
