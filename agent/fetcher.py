"""The network seam: TUF's ``FetcherInterface`` on httpx, with resumable target downloads.

TUF's updater asks this fetcher for bytes and checks everything it gets (length
caps, hashes, signatures), so this module only moves bytes and maps failures
onto TUF's exceptions::

    HTTP 429, or 503 with Retry-After      -> BusyHTTPError (a DownloadHTTPError
                                              with the registry's retry_after_s)
    HTTP status >= 400 (after redirects)   -> tuf DownloadHTTPError(status_code)
    httpx timeouts, total deadline passed  -> tuf SlowRetrievalError
    other httpx errors (connect, TLS, ...) -> tuf DownloadError
    more bytes than TUF allows             -> tuf DownloadLengthMismatchError

The device's Bearer token goes only to the origins the agent was configured
with (the registry's, metadata's and targets'), never to a host a redirect or a
future mirror points at; httpx also drops it when a redirect changes origin.

Every fetch is bounded: connect and read timeouts, and a total deadline per
file, so a server that trickles bytes cannot hold an install forever.

Resumable downloads
-------------------
ngclient downloads into an anonymous temporary file and starts from zero on
every try. For URLs under ``resume_urls`` (the targets base URL: those files
are content-addressed, ``.../{sha256}.{file}``) this fetcher instead keeps a
partial file per URL in ``resume_dir``::

    {resume_dir}/{sha256 of the URL}.part    the bytes received so far
    {resume_dir}/{sha256 of the URL}.json    {"url": ..., "etag": ...}

and continues it with ``Range: bytes=N-`` and ``If-Range: <etag>``:

- after a connection that drops mid-file, within the same download (a try
  that made progress may be resumed; ``max_resumes`` tries in a row without
  progress end it), and
- at the next install after a failed one or an agent restart, since the
  partial file is on disk (appended without fsync: a kill leaves a prefix of
  what was received; a power loss may leave garbage, which TUF refuses).

The server answers 206 (the rest, appended), 200 (the file changed or the
server ignores ranges: start over) or 416 (start over). TUF still checks the
final length and hash of the whole file, so a wrong partial file is refused
like any other tampered download. Once a download is complete the partial
file is handed to TUF and removed when TUF is done with it, whatever TUF
decided, so a wrong file is never resumed twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO
from urllib.parse import urlsplit

import httpx
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

import corral
from agent.backoff import busy_wait_s

__all__ = ["BusyHTTPError", "FetchStats", "HttpxFetcher"]

logger = logging.getLogger(__name__)

_CHUNK = 256 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, parts.hostname or "", port)


@dataclass
class FetchStats:
    """Counters of one fetcher, for logs, tests and benchmarks.

    ``body_bytes`` counts response body bytes received over the network (not
    those read back from a partial file); ``resumed`` counts requests sent
    with a ``Range``; ``restarted`` counts partial files thrown away because the
    server sent the whole file again (200 or 416).
    """

    requests: int = 0
    body_bytes: int = 0
    resumed: int = 0
    restarted: int = 0


class BusyHTTPError(exceptions.DownloadHTTPError):
    """The registry said busy (429, or 503 with ``Retry-After``; see :func:`busy_wait_s`).

    A TUF ``DownloadHTTPError``, so that ngclient passes it through unchanged;
    the updater turns it into ``RegistryBusyError``.

    Args:
        message: the URL and the answer.
        status_code: 429 or 503.
        retry_after_s: the wait the registry asked for (0.0 when it named none).
    """

    def __init__(self, message: str, status_code: int, retry_after_s: float) -> None:
        super().__init__(message, status_code)
        self.retry_after_s = retry_after_s


class _BrokenError(Exception):
    """A resumable response ended early; ``cause`` is the httpx error, if any."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


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
        resume_dir: where partial files live; ``None`` turns resuming off.
        resume_urls: URL prefixes of content-addressed files that may be resumed.
        max_resumes: tries in a row without progress before a download gives up.
        resume_delay_s: the wait before the first resume; doubles with each try
            without progress.
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
        resume_dir: Path | None = None,
        resume_urls: Iterable[str] = (),
        max_resumes: int = 3,
        resume_delay_s: float = 0.2,
    ) -> None:
        self._token = token
        self._auth_origins = {_origin(u) for u in auth_urls}
        self.total_timeout_s = total_timeout_s
        self.chunk_size = chunk_size
        self.resume_dir = None if resume_dir is None else Path(resume_dir)
        self.resume_urls = tuple(resume_urls)
        self.max_resumes = max_resumes
        self.resume_delay_s = resume_delay_s
        self.stats = FetchStats()
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

    # --- plain downloads (metadata) --------------------------------------------

    def _headers(self, url: str, offset: int, etag: str | None = None) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._token and (not self._auth_origins or _origin(url) in self._auth_origins):
            headers["Authorization"] = f"Bearer {self._token}"
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if etag:
                headers["If-Range"] = etag
        return headers

    def _open(self, url: str, offset: int = 0, etag: str | None = None) -> httpx.Response:
        """Send the request and return the streaming response, or raise TUF's errors."""
        request = self._client.build_request("GET", url, headers=self._headers(url, offset, etag))
        self.stats.requests += 1
        try:
            response = self._client.send(request, stream=True)
        except httpx.TimeoutException as e:
            raise exceptions.SlowRetrievalError(f"{url}: no answer in time ({e})") from e
        except httpx.HTTPError as e:
            raise exceptions.DownloadError(f"cannot fetch {url}: {e}") from e
        if response.status_code >= 300 and not (offset and response.status_code == 416):
            # 3xx left over after following redirects is as useless as an error.
            response.close()
            busy = busy_wait_s(response.status_code, response.headers)
            if busy is not None:
                raise BusyHTTPError(
                    f"{url}: HTTP {response.status_code}, the registry is busy "
                    f"(retry after {busy:g} s)",
                    response.status_code,
                    busy,
                )
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
            BusyHTTPError: the registry said busy (429, 503 with ``Retry-After``).
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
                self.stats.body_bytes += len(chunk)
                yield chunk
        except httpx.TimeoutException as e:
            raise exceptions.SlowRetrievalError(f"{url}: stalled ({e})") from e
        except httpx.HTTPError as e:
            raise exceptions.DownloadError(f"{url}: download broke off: {e}") from e
        finally:
            response.close()

    # --- resumable downloads (targets) -------------------------------------------

    def resumable(self, url: str) -> bool:
        """Whether ``url`` is downloaded through a partial file."""
        return self.resume_dir is not None and url.startswith(self.resume_urls)

    def partial_path(self, url: str) -> Path:
        """The partial file of ``url`` (it may not exist).

        Raises:
            ValueError: resuming is off (no ``resume_dir``).
        """
        if self.resume_dir is None:
            raise ValueError("this fetcher has no resume_dir")
        return self.resume_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}.part"

    def discard_partials(self) -> int:
        """Remove every partial file (after an install, none is needed any more).

        Returns:
            How many partial downloads were removed.
        """
        if self.resume_dir is None or not self.resume_dir.is_dir():
            return 0
        removed = 0
        for path in self.resume_dir.iterdir():
            if path.suffix in (".part", ".json"):
                removed += path.suffix == ".part"
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return removed

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO[bytes]]:
        """Download ``url`` into a file, resuming a partial one where allowed.

        Args:
            url: the URL TUF built.
            max_length: the most bytes allowed (a target's signed length).

        Yields:
            The downloaded file, opened for reading at its start.

        Raises:
            tuf.api.exceptions.DownloadLengthMismatchError: more than ``max_length`` bytes.
            BusyHTTPError: the registry said busy (429, 503 with ``Retry-After``).
            tuf.api.exceptions.DownloadHTTPError: the server answered an HTTP error.
            tuf.api.exceptions.SlowRetrievalError: a timeout passed.
            tuf.api.exceptions.DownloadError: the download failed; a partial file stays.
            OSError: the partial file cannot be written.
        """
        if not self.resumable(url):
            with super().download_file(url, max_length) as handle:
                yield handle
            return
        part = self.partial_path(url)
        self._download_resumable(url, max_length, part)
        try:
            with part.open("rb") as handle:
                yield handle
        finally:
            # Complete: TUF accepted it, or refused it and it must not be resumed.
            self._discard(part)

    @staticmethod
    def _discard(part: Path) -> None:
        for path in (part, part.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _start_state(self, url: str, part: Path, max_length: int) -> tuple[int, str | None]:
        """The offset and ETag to resume ``url`` from; a stale partial file is discarded."""
        try:
            meta = json.loads(part.with_suffix(".json").read_bytes())
            size = part.stat().st_size
        except (OSError, ValueError):
            self._discard(part)
            return 0, None
        if not isinstance(meta, dict) or meta.get("url") != url or size > max_length:
            self._discard(part)
            return 0, None
        etag = meta.get("etag")
        return size, etag if isinstance(etag, str) else None

    def _write_meta(self, url: str, part: Path, etag: str | None) -> None:
        part.with_suffix(".json").write_text(json.dumps({"url": url, "etag": etag}))

    def _download_resumable(self, url: str, max_length: int, part: Path) -> None:
        assert self.resume_dir is not None
        self.resume_dir.mkdir(parents=True, exist_ok=True)
        offset, etag = self._start_state(url, part, max_length)
        if offset and offset == max_length:
            return  # complete before a crash; TUF decides whether it is right
        if offset:
            logger.info("resuming %s at byte %d of %d", url, offset, max_length)
        deadline = time.monotonic() + self.total_timeout_s
        idle_tries = 0
        received_any = offset > 0
        while True:
            if offset:
                self.stats.resumed += 1
            before = offset
            try:
                self._attempt(url, max_length, part, offset, etag, deadline)
                return
            except _BrokenError as e:
                offset, etag = self._start_state(url, part, max_length)
                received_any = received_any or offset > 0
                idle_tries = 0 if offset > before else idle_tries + 1
                # A first request that fails outright is an ordinary download error;
                # only a download that got somewhere is worth resuming.
                if not received_any or idle_tries > self.max_resumes or time.monotonic() > deadline:
                    if isinstance(e.cause, httpx.TimeoutException):
                        raise exceptions.SlowRetrievalError(f"{url}: {e}") from e.cause
                    raise exceptions.DownloadError(f"{url}: {e}") from e.cause
                delay = self.resume_delay_s * (2 ** max(idle_tries - 1, 0))
                logger.warning("%s: %s; resuming at byte %d in %.1f s", url, e, offset, delay)
                time.sleep(min(delay, max(0.0, deadline - time.monotonic())))

    def _attempt(
        self,
        url: str,
        max_length: int,
        part: Path,
        offset: int,
        etag: str | None,
        deadline: float,
    ) -> None:
        """One request: append what it brings to ``part`` (complete when it returns).

        Raises:
            _BrokenError: the connection could not be opened or ended early.
            tuf.api.exceptions.DownloadError: an HTTP error, or too many bytes.
        """
        try:
            response = self._open(url, offset, etag)
        except exceptions.DownloadHTTPError:
            raise
        except exceptions.DownloadError as e:
            raise _BrokenError(str(e), e.__cause__) from e
        with contextlib.closing(response):
            status = response.status_code
            expected_end: int | None = None
            if status == 416:
                # Our partial file is longer than the file now is: start over.
                self.stats.restarted += 1
                self._discard(part)
                raise _BrokenError("the server cannot serve the rest (416); starting over")
            if status == 206:
                match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
                if match is None or int(match.group(1)) != offset:
                    self.stats.restarted += 1
                    self._discard(part)
                    raise _BrokenError(
                        f"expected a Content-Range from byte {offset}, got "
                        f"{response.headers.get('Content-Range')!r}; starting over"
                    )
                if match.group(3) != "*":
                    expected_end = int(match.group(3))
            else:
                if offset:
                    logger.info("%s: the server sent the whole file again; starting over", url)
                    self.stats.restarted += 1
                offset = 0
                length = response.headers.get("Content-Length")
                expected_end = int(length) if length and length.isdigit() else None
            new_etag = response.headers.get("ETag")
            strong = new_etag if new_etag and not new_etag.startswith("W/") else None
            if offset == 0 or (strong is not None and strong != etag):
                self._write_meta(url, part, strong)
            if expected_end is not None and expected_end > max_length:
                self._discard(part)
                raise exceptions.DownloadLengthMismatchError(
                    f"{url} is {expected_end} bytes, more than the {max_length} allowed"
                )
            with part.open("ab" if offset else "wb") as out:
                try:
                    # No chunk_size: httpx would hold back up to a chunk's worth of
                    # received bytes and lose them with the connection.
                    for chunk in response.iter_bytes():
                        if time.monotonic() > deadline:
                            raise exceptions.SlowRetrievalError(
                                f"{url}: download took longer than {self.total_timeout_s:.0f} s"
                            )
                        offset += len(chunk)
                        if offset > max_length:
                            out.close()
                            self._discard(part)
                            raise exceptions.DownloadLengthMismatchError(
                                f"Downloaded {offset} bytes exceeding the maximum "
                                f"allowed length of {max_length}"
                            )
                        out.write(chunk)
                        self.stats.body_bytes += len(chunk)
                except httpx.HTTPError as e:
                    raise _BrokenError(f"download broke off at byte {offset}: {e}", e) from e
            if expected_end is not None and offset < expected_end:
                raise _BrokenError(f"the server closed at byte {offset} of {expected_end}")
