"""Test helpers: a small real TUF repository served over real HTTP, and tiny real models.

``TufRepo`` builds root, targets, snapshot and timestamp metadata with
python-tuf's Metadata API (ed25519 keys, consistent snapshots, the registry's
URL layout from docs/contracts.md) and serves them with ``http.server`` in a
thread. It can publish model versions, expire the timestamp (freeze), tamper
with a served file without re-signing (what an attacker on the wire or in the
blob store could do), and answer "busy" (503 or 429 with ``Retry-After``).

``make_model`` builds a real ONNX classifier (input ``[N,1,28,28]`` -> Flatten ->
MatMul -> ``logits [N,2]``) and ``make_bundle`` a real bundle around it whose
golden outputs are computed with ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from securesystemslib.signer import CryptoSigner, Signer
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from agent.config import AgentConfig
from corral.bundle import Bundle, BundleFile, GoldenSample, InputSpec, OutputSpec
from corral.signedtime import SignedTime, SignedTimeError, sign_time
from corral.targets import bundle_target, file_target

__all__ = ["TufRepo", "make_bundle", "make_model", "publish_bundle", "serve_repo"]

MODEL_FILE = "model.onnx"
LABELS = ["cat", "dog"]


def _in(days: float) -> datetime:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0)


class TufRepo:
    """An in-memory TUF repository with consistent snapshots.

    URL layout (relative to the server): ``/metadata/{N}.root.json``,
    ``/metadata/timestamp.json``, ``/metadata/{N}.snapshot.json``,
    ``/metadata/{N}.targets.json`` and ``/targets/{dir}/{sha256}.{name}``.
    """

    def __init__(self) -> None:
        self.signers: dict[str, Signer] = {
            role: CryptoSigner.generate_ed25519()
            for role in (Root.type, Targets.type, Snapshot.type, Timestamp.type)
        }
        root = Root(expires=_in(365), consistent_snapshot=True)
        for role, signer in self.signers.items():
            root.add_key(signer.public_key, role)
        self.root = Metadata(root)
        self.targets = Metadata(Targets(expires=_in(30)))
        self.snapshot = Metadata(Snapshot(expires=_in(7)))
        self.timestamp = Metadata(Timestamp(expires=_in(1)))
        #: URL path -> body served for it.
        self.files: dict[str, bytes] = {}
        #: (path, Authorization header or None) of every request, in order.
        self.requests: list[tuple[str, str | None]] = []
        #: ``time.monotonic()`` of every request, in the same order.
        self.request_times: list[float] = []
        #: when set, requests without ``Bearer <token>`` get 401.
        self.required_token: str | None = None
        #: URL path -> body bytes after which the next responses for it drop the
        #: connection (one entry per response, consumed in order).
        self.cuts: dict[str, list[int]] = {}
        #: (bytes, seconds): send model files (``.onnx``) in pieces of this size with this pause.
        self.throttle: tuple[int, float] | None = None
        #: (path, Range header, If-Range header, status) of every request, in order.
        self.ranges: list[tuple[str, str | None, str | None, int]] = []
        #: URL path -> body bytes sent for it, over all responses.
        self.sent: dict[str, int] = {}
        #: the registry's clock, which ``/time`` signs.
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        #: the keys that sign ``/time``; None: the timestamp key.
        self.time_signers: list[Signer] | None = None
        #: when set, ``/time`` answers these bytes whatever the nonce (a replay).
        self.time_reply: bytes | None = None
        #: when False, ``/time`` answers 404 (a registry without signed time).
        self.serves_time = True
        #: URL path (without query) -> (status, Retry-After or None) answers to give
        #: instead of the file, one per request, consumed in order (a busy registry).
        self.busy: dict[str, list[tuple[int, str | None]]] = {}
        self._sign_root()
        self.targets.signed.version = 0
        self.snapshot.signed.version = 0
        self.timestamp.signed.version = 0
        self.publish()

    def _sign(self, md: Metadata[Any], role: str) -> bytes:
        md.signatures.clear()
        md.sign(self.signers[role])
        return md.to_bytes()

    def _sign_root(self) -> None:
        data = self._sign(self.root, Root.type)
        self.files[f"/metadata/{self.root.signed.version}.root.json"] = data

    @property
    def root_bytes(self) -> bytes:
        """The first root.json: what the registry hands out at enrolment."""
        return self.files["/metadata/1.root.json"]

    def add_target(self, path: str, data: bytes) -> None:
        """Sign ``data`` as target ``path`` (takes effect at the next :meth:`publish`)."""
        info = TargetFile.from_data(path, data, ["sha256"])
        self.targets.signed.targets[path] = info
        directory, _, name = path.rpartition("/")
        self.files[f"/targets/{directory}/{info.hashes['sha256']}.{name}"] = data

    def publish(self, timestamp_expires: datetime | None = None) -> None:
        """Sign new targets, snapshot and timestamp versions."""
        targets, snapshot, timestamp = (
            self.targets.signed,
            self.snapshot.signed,
            self.timestamp.signed,
        )
        targets.version += 1
        self.files[f"/metadata/{targets.version}.targets.json"] = self._sign(
            self.targets, Targets.type
        )
        snapshot.meta["targets.json"] = MetaFile(version=targets.version)
        snapshot.version += 1
        self.files[f"/metadata/{snapshot.version}.snapshot.json"] = self._sign(
            self.snapshot, Snapshot.type
        )
        timestamp.snapshot_meta = MetaFile(version=snapshot.version)
        timestamp.version += 1
        timestamp.expires = timestamp_expires or _in(1)
        self.files["/metadata/timestamp.json"] = self._sign(self.timestamp, Timestamp.type)

    def signed_time(self, nonce: str) -> bytes:
        """The ``/time`` answer for ``nonce``: ``clock()`` signed by ``time_signers``."""
        if self.time_reply is not None:
            return self.time_reply
        signers = self.time_signers or [self.signers[Timestamp.type]]
        return sign_time(SignedTime(self.clock(), nonce), signers)

    def served_target_path(self, target: str) -> str:
        """The URL path a target is served at."""
        info = self.targets.signed.targets[target]
        directory, _, name = target.rpartition("/")
        return f"/targets/{directory}/{info.hashes['sha256']}.{name}"

    def tamper(self, target: str, offset: int = -1) -> None:
        """Change one byte of the served file of ``target``, leaving its signature as is."""
        path = self.served_target_path(target)
        data = bytearray(self.files[path])
        data[offset] ^= 0x01
        self.files[path] = bytes(data)


class _Handler(BaseHTTPRequestHandler):
    repo: TufRepo

    def do_GET(self) -> None:  # noqa: N802 (http.server names it)
        auth = self.headers.get("Authorization")
        self.repo.requests.append((self.path, auth))
        self.repo.request_times.append(time.monotonic())
        if self.repo.required_token and auth != f"Bearer {self.repo.required_token}":
            self.send_error(401)
            return
        path, _, query = self.path.partition("?")
        busy = self.repo.busy.get(path)
        if busy:
            status, retry_after = busy.pop(0)
            body = b'{"title": "Service Unavailable", "detail": "the registry is busy"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/problem+json")
            self.send_header("Content-Length", str(len(body)))
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.end_headers()
            self.wfile.write(body)
            return
        if path == "/time" and self.repo.serves_time:
            try:
                answer = self.repo.signed_time(parse_qs(query).get("nonce", [""])[0])
            except SignedTimeError:
                self.send_error(422)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        body = self.repo.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        # Range and If-Range as the registry serves targets: a strong ETag of the
        # SHA-256, one "bytes=N-" range, 416 past the end.
        etag = f'"{hashlib.sha256(body).hexdigest()}"'
        wanted = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        start, status = 0, 200
        match = re.fullmatch(r"bytes=(\d+)-", wanted or "")
        if match and (if_range is None or if_range == etag):
            start, status = int(match.group(1)), 206
        self.repo.ranges.append(
            (self.path, wanted, if_range, 416 if start >= len(body) and status == 206 else status)
        )
        if status == 206 and start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        payload = body[start:]
        cuts = self.repo.cuts.get(self.path)
        if cuts:
            payload = payload[: cuts.pop(0)]
            self.close_connection = True
        piece, pause = self.repo.throttle or (len(payload) or 1, 0.0)
        if not self.path.endswith(".onnx"):
            piece, pause = len(payload) or 1, 0.0
        for i in range(0, len(payload), piece):
            self.wfile.write(payload[i : i + piece])
            self.wfile.flush()
            self.repo.sent[self.path] = self.repo.sent.get(self.path, 0) + len(
                payload[i : i + piece]
            )
            if pause:
                time.sleep(pause)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-body (a killed agent) is what some tests do.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve_repo(repo: TufRepo) -> Iterator[str]:
    """Serve ``repo`` on 127.0.0.1; yield the base URL (``http://127.0.0.1:PORT``)."""
    handler = type("Handler", (_Handler,), {"repo": repo})
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def make_model(seed: int) -> bytes:
    """A real ONNX classifier: [N,1,28,28] -> Flatten -> MatMul(784x2) -> logits [N,2]."""
    weights = np.random.default_rng(seed).normal(0, 0.05, (784, 2)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["input"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_bundle(
    name: str, version: str, model: bytes, *, wrong_golden: bool = False, **extra: Any
) -> Bundle:
    """A bundle for ``model`` with three golden samples computed by ONNX Runtime."""
    inputs = np.random.default_rng(7).random((3, 1, 28, 28), dtype=np.float32)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    outputs = session.run(["logits"], {"input": inputs})[0]
    if wrong_golden:
        outputs = outputs + 1.0
    digest = TargetFile.from_data("x", model, ["sha256"]).hashes["sha256"]
    return Bundle(
        name=name,
        version=version,
        input=InputSpec(name="input", shape=[None, 1, 28, 28]),
        output=OutputSpec(name="logits", labels=list(LABELS)),
        files=[BundleFile(name=MODEL_FILE, sha256=digest, length=len(model))],
        golden=[
            GoldenSample(input=[float(v) for v in x.ravel()], output=[float(v) for v in y])
            for x, y in zip(inputs, outputs, strict=True)
        ],
        golden_tolerance=1e-4,
        **extra,
    )


def publish_bundle(repo: TufRepo, bundle: Bundle, files: dict[str, bytes]) -> None:
    """Sign ``bundle``'s bundle.json and ``files`` as targets and publish."""
    repo.add_target(bundle_target(bundle.name, bundle.version), bundle.to_bytes())
    for name, data in files.items():
        repo.add_target(file_target(bundle.name, bundle.version, name), data)
    repo.publish()


#: The device token a repository that checks tokens (``required_token``) is given.
TOKEN = "device-secret-token"


def enrolled(data_dir: Path, repo: TufRepo, url: str, **fields: Any) -> AgentConfig:
    """What enrolment leaves on disk for an agent of ``repo`` served at ``url``.

    ``agent.json`` and the pinned root; ``fields`` override the config's
    defaults (device ``park-1``, :data:`TOKEN`, a broker on localhost:1883).
    """
    config = AgentConfig(
        **{
            "data_dir": data_dir,
            "device_id": "park-1",
            "device_token": TOKEN,
            "registry_url": url,
            "mqtt_host": "localhost",
            "mqtt_port": 1883,
            "metadata_url": f"{url}/metadata/",
            "targets_url": f"{url}/targets/",
            **fields,
        }
    )
    config.tuf_metadata_dir.mkdir(parents=True)
    (config.tuf_metadata_dir / "root.json").write_bytes(repo.root_bytes)
    config.save()
    return config
