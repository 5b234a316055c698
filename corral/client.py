"""A small client of the registry's HTTP API, used by the CLI and the demo.

The REST API is the one way the CLI and the console change state, so every
command goes through here. Errors come back as :class:`corral.errors.ApiError`
carrying the registry's own ``detail`` message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx

from corral.bundle import BUNDLE_FILE, Bundle, BundleFile, file_digest
from corral.errors import ApiError, BundleError
from corral.targets import file_target

__all__ = ["DEFAULT_REGISTRY", "RegistryClient"]

DEFAULT_REGISTRY = "http://127.0.0.1:8080"


class RegistryClient:
    """Calls the registry's ``/api/v1`` with a bearer token."""

    def __init__(
        self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0
    ):
        self.base_url = (base_url or os.environ.get("CORRAL_REGISTRY") or DEFAULT_REGISTRY).rstrip(
            "/"
        )
        token = token or os.environ.get("CORRAL_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ApiError(
                f"cannot reach the registry at {self.base_url}: {e}; "
                "is `corral registry serve` running, and is --registry right?"
            ) from e
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(
                f"registry answered {response.status_code}: {detail}", response.status_code
            )
        return response.json() if response.content else None

    def health(self) -> bool:
        """Whether the registry answers ``/healthz``."""
        try:
            return bool(self._call("GET", "/healthz").get("ok"))
        except ApiError:
            return False

    def create_enrolment_token(self, ttl_s: int = 3600) -> dict[str, Any]:
        """A one-time enrolment token.

        Raises:
            ApiError: the registry refused or is unreachable.
        """
        return dict(self._call("POST", "/api/v1/enrolment-tokens", json={"ttl_s": ttl_s}))

    def push_model(self, bundle_dir: Path) -> dict[str, Any]:
        """Upload a bundle directory (bundle.json and the files it lists).

        Raises:
            BundleError: the directory does not hold a valid, intact bundle.
            ApiError: the registry refused it (409: version exists; 422: invalid).
        """
        bundle_dir = Path(bundle_dir)
        bundle = Bundle.load(bundle_dir)
        bundle.verify_files(bundle_dir)
        handles = [(bundle_dir / f.name).open("rb") for f in bundle.files]
        try:
            files: list[tuple[str, tuple[str, Any, str]]] = [
                (
                    "bundle",
                    (BUNDLE_FILE, (bundle_dir / BUNDLE_FILE).read_bytes(), "application/json"),
                )
            ]
            files += [
                ("files", (f.name, h, "application/octet-stream"))
                for f, h in zip(bundle.files, handles, strict=True)
            ]
            return dict(self._call("POST", "/api/v1/models", files=files))
        finally:
            for h in handles:
                h.close()

    def add_variant(self, name: str, version: str, entry: BundleFile, path: Path) -> dict[str, Any]:
        """Add a derived variant's file to an existing version; the registry signs it.

        Args:
            name: the model.
            version: its version.
            entry: the file's bundle entry (name, digest, length, variant, extras).
            path: the file; checked against ``entry`` before it is sent.

        Raises:
            BundleError: the file does not match ``entry``.
            ApiError: the registry refused it (404: no such version; 409: the variant
                or file name exists; 422: a bad entry or a file that does not match it).
        """
        digest, length = file_digest(path)
        if (digest, length) != (entry.sha256, entry.length):
            raise BundleError(
                f"{path} has SHA-256 {digest[:12]}… and {length} bytes, the entry says "
                f"{entry.sha256[:12]}… and {entry.length}; rebuild the variant"
            )
        with Path(path).open("rb") as handle:
            return dict(
                self._call(
                    "POST",
                    f"/api/v1/models/{name}/{version}/variants",
                    data={"entry": json.dumps(entry.to_dict())},
                    files=[("file", (entry.name, handle, "application/octet-stream"))],
                )
            )

    def models(self) -> list[dict[str, Any]]:
        """Every registered model version."""
        return list(self._call("GET", "/api/v1/models"))

    def fetch_bundle(
        self, name: str, version: str, directory: Path, variant: str = "fp32"
    ) -> Bundle:
        """Download a version's bundle.json and its ``variant`` file into ``directory``.

        bundle.json comes from the API (a viewer token); the file from the TUF
        targets by its SHA-256 name, capped at and checked against the length and
        SHA-256 that bundle.json lists (e.g. for ``corral train --retrain-from``).

        Raises:
            ApiError: no such version (404), not a viewer (403), or unreachable.
            BundleError: the bundle is invalid, has no such variant, or the file
                differs from what it lists.
        """
        bundle = Bundle.from_dict(self._call("GET", f"/api/v1/models/{name}/{version}"))
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / BUNDLE_FILE).write_bytes(bundle.to_bytes())
        entry = bundle.model_file(variant)
        url = f"/tuf/targets/{file_target(name, version, f'{entry.sha256}.{entry.name}')}"
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    raise ApiError(
                        f"registry answered {response.status_code} for {url}",
                        response.status_code,
                    )
                with (directory / entry.name).open("wb") as handle:
                    for chunk in response.iter_bytes():
                        if handle.tell() + len(chunk) > entry.length:
                            raise BundleError(
                                f"{entry.name}: the registry sent more than the "
                                f"{entry.length} bytes bundle.json lists"
                            )
                        handle.write(chunk)
        except httpx.HTTPError as e:
            raise ApiError(f"cannot download {entry.name} from {self.base_url}: {e}") from e
        bundle.verify_files(directory, variant)
        return bundle

    def model_audit(self, name: str, version: str) -> dict[str, Any]:
        """The audit document of one version (``registry.modelcard``): bundle facts,
        lineage, metrics, alias moves, approvals, rollouts, the devices that ran it
        and when, and the audit-log entries that name it.

        Raises:
            ApiError: no such version (404), not a viewer (403), or unreachable.
        """
        return dict(self._call("GET", f"/api/v1/models/{name}/{version}/audit"))

    def devices(self) -> list[dict[str, Any]]:
        """Every enrolled device's summary."""
        return list(self._call("GET", "/api/v1/devices"))

    def device(self, device_id: str) -> dict[str, Any]:
        """One device's summary with its recent events and seq accounting."""
        return dict(self._call("GET", f"/api/v1/devices/{device_id}"))

    def start_rollout(
        self, model: str, version: str, devices: list[str] | None = None
    ) -> dict[str, Any]:
        """Set the desired version of ``devices`` (all when None).

        Raises:
            ApiError: unknown model version or device (404), or bad input (422).
        """
        body = {"model": model, "version": version, "devices": devices}
        return dict(self._call("POST", "/api/v1/rollouts", json=body))

    def apply_rollout(self, plan: dict[str, Any]) -> dict[str, Any]:
        """Start a staged rollout from a plan (``registry.rollout.plan.RolloutPlan`` as JSON).

        Raises:
            ApiError: unknown version or device (404), devices busy or staging
                missing (409), or a plan the registry refuses (422, with why).
        """
        return dict(self._call("POST", "/api/v1/rollouts", json=plan))

    def start_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        """Start an A/B experiment (name, model, a, b, selector, split); its first comparison.

        Raises:
            ApiError: unknown version or device (404), name taken (409), bad split (422).
        """
        return dict(self._call("POST", "/api/v1/experiments", json=body))

    def experiment(self, name: str) -> dict[str, Any]:
        """An experiment's cohorts and B - A differences with 95 % intervals."""
        return dict(self._call("GET", f"/api/v1/experiments/{name}"))

    def desired(self, device_id: str) -> dict[str, Any]:
        """A device's desired model, version and shadow candidate (``shadow`` null when none)."""
        return dict(self._call("GET", f"/api/v1/devices/{device_id}/desired"))

    def start_shadow(self, body: dict[str, Any]) -> dict[str, Any]:
        """Run a candidate in shadow (name, model, version, selector); the trial's report.

        Raises:
            ApiError: unknown version or device (404), name taken or a device already
                shadowing (409), an empty selection (422).
        """
        return dict(self._call("POST", "/api/v1/shadows", json=body))

    def shadow(self, name: str) -> dict[str, Any]:
        """A shadow trial's agreement, latency cost and paired accuracy, overall and per device."""
        return dict(self._call("GET", f"/api/v1/shadows/{name}"))

    def shadows(self) -> list[dict[str, Any]]:
        """Every shadow trial, newest first."""
        return list(self._call("GET", "/api/v1/shadows"))

    def stop_shadow(self, name: str) -> dict[str, Any]:
        """Stop a shadow trial; its devices drop the candidate. Its final report."""
        return dict(self._call("POST", f"/api/v1/shadows/{name}/stop"))

    def alerts(self, state: str = "firing", rule: str | None = None) -> list[dict[str, Any]]:
        """Alerts, newest first (``firing``, ``resolved`` or ``all``)."""
        params = {"state": state, **({"rule": rule} if rule else {})}
        return list(self._call("GET", "/api/v1/alerts", params=params))

    def ack_alert(self, alert_id: int, note: str = "") -> dict[str, Any]:
        """Acknowledge an alert.

        Raises:
            ApiError: no such alert (404) or already acknowledged (409).
        """
        return dict(self._call("POST", f"/api/v1/alerts/{alert_id}/ack", json={"note": note}))

    def silence(
        self, rule: str | None, subject: str | None, duration_s: float, reason: str
    ) -> dict[str, Any]:
        """Mute matching alerts for ``duration_s``."""
        body = {"rule": rule, "subject": subject, "duration_s": duration_s, "reason": reason}
        return dict(self._call("POST", "/api/v1/silences", json=body))

    def actions(self, state: str | None = None) -> list[dict[str, Any]]:
        """What governance policies did or wait to do, newest first."""
        return list(self._call("GET", "/api/v1/actions", params={"state": state} if state else {}))

    def approve_action(self, action_id: int) -> dict[str, Any]:
        """Let a pending governance action run.

        Raises:
            ApiError: no such action (404) or not pending (409).
        """
        return dict(self._call("POST", f"/api/v1/actions/{action_id}/approve"))

    def rollout_action(self, rollout_id: int | str, action: str, note: str = "") -> dict[str, Any]:
        """``approve``, ``pause``, ``resume`` or ``abort`` a rollout, with a note for its log.

        Raises:
            ApiError: no such rollout (404) or not possible in its state (409).
        """
        return dict(
            self._call("POST", f"/api/v1/rollouts/{rollout_id}/{action}", json={"note": note})
        )

    def rollouts(self) -> list[dict[str, Any]]:
        """Every rollout, newest first."""
        return list(self._call("GET", "/api/v1/rollouts"))

    def rollout(self, rollout_id: int | str) -> dict[str, Any]:
        """One rollout with each device's desired and reported version."""
        return dict(self._call("GET", f"/api/v1/rollouts/{rollout_id}"))

    def create_api_token(self, name: str, role: str) -> dict[str, Any]:
        """A named API token with ``role`` (viewer, operator, admin); its secret is shown once.

        Raises:
            ApiError: not an admin (403), the name is taken (409), or bad input (422).
        """
        return dict(self._call("POST", "/api/v1/tokens", json={"name": name, "role": role}))

    def api_tokens(self) -> list[dict[str, Any]]:
        """Every API token, revoked ones too, without secrets."""
        return list(self._call("GET", "/api/v1/tokens"))

    def revoke_api_token(self, name: str) -> dict[str, Any]:
        """Revoke an API token by name.

        Raises:
            ApiError: not an admin (403), no such token (404), already revoked (409).
        """
        return dict(self._call("POST", f"/api/v1/tokens/{name}/revoke"))

    def revoke_device(self, device_id: str, reason: str = "") -> dict[str, Any]:
        """Revoke a device: its token stops working and its MQTT messages are dropped.

        Raises:
            ApiError: not an admin (403), no such device (404), already revoked (409).
        """
        return dict(
            self._call("POST", f"/api/v1/devices/{device_id}/revoke", json={"reason": reason})
        )

    def audit(self, limit: int = 100, **filters: str) -> list[dict[str, Any]]:
        """The newest audit entries; ``filters`` may name ``actor``, ``action``, ``target``.

        Raises:
            ApiError: not an admin (403).
        """
        params: dict[str, Any] = {"limit": limit, **filters}
        return list(self._call("GET", "/api/v1/audit", params=params))

    def move_alias(self, model: str, alias: str, version: str, reason: str) -> dict[str, Any]:
        """Point ``alias`` of ``model`` at ``version``, saying why.

        Raises:
            ApiError: not an operator (403), no such version (404), bad alias (422).
        """
        body = {"version": version, "reason": reason}
        return dict(self._call("PUT", f"/api/v1/models/{model}/aliases/{alias}", json=body))

    def alias_history(self, model: str, alias: str) -> list[dict[str, Any]]:
        """Every move of an alias, newest first."""
        return list(self._call("GET", f"/api/v1/models/{model}/aliases/{alias}/history"))
