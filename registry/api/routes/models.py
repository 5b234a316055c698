"""Model versions: push (multipart), list, read back the bundle, and audit one.

A push, in order: parse bundle.json (``corral.Bundle``); refuse a name and
version that exist (409: versions are immutable); match the uploaded parts to
the bundle's files by name (422 for a missing or an extra file); stream each
into the blob store, checking length and SHA-256 against the bundle (422 on
mismatch); store bundle.json's bytes as uploaded; then sign one TUF target
per file plus ``bundle.json`` and commit rows and metadata together. Blobs
written for a push that is then refused stay in the store (content-addressed
and harmless); a garbage collector is a later issue.

``GET /{name}/{version}/audit`` is the version's audit document, built by
``registry.modelcard`` (the console's model card reads it).
"""

from __future__ import annotations

import io
from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile, status
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from tuf.api.metadata import TargetFile

from corral.bundle import BUNDLE_FILE, Bundle
from corral.targets import bundle_target, file_target
from registry import audit
from registry._time import utcnow
from registry.api.deps import ContextDep, OperatorDep, SessionDep, ViewerDep
from registry.errors import ConflictError, InvalidInputError, NotFoundError
from registry.modelcard import model_audit
from registry.schemas import PROBLEM_RESPONSES, ModelAudit, ModelPushed, ModelSummary
from registry.tables import ModelFile, ModelVersion

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/models", tags=["models"], responses=PROBLEM_RESPONSES)

_MAX_BUNDLE_JSON = 16 * 1024 * 1024


def _conflict(name: str, version: str) -> ConflictError:
    return ConflictError(
        f"model {name} {version} already exists and versions are immutable; "
        "bump the version in bundle.json"
    )


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ModelPushed)
def push_model(
    operator: OperatorDep,
    context: ContextDep,
    session: SessionDep,
    bundle: Annotated[UploadFile, File(description="bundle.json")],
    files: Annotated[list[UploadFile], File(description="the files bundle.json lists")],
) -> ModelPushed:
    """Register and sign a new model version.

    Raises:
        AuthError: not an operator.
        BundleError: bundle.json is invalid (422).
        ConflictError: the version exists.
        InvalidInputError: the files do not match the bundle.
    """
    raw = bundle.file.read(_MAX_BUNDLE_JSON + 1)
    parsed = Bundle.from_bytes(raw)
    exists = select(ModelVersion.id).where(
        ModelVersion.name == parsed.name, ModelVersion.version == parsed.version
    )
    if session.scalar(exists) is not None:
        raise _conflict(parsed.name, parsed.version)
    uploads: dict[str, UploadFile] = {}
    for upload in files:
        if upload.filename in uploads:
            raise InvalidInputError(f"file {upload.filename!r} was uploaded twice")
        uploads[upload.filename or ""] = upload
    listed = {f.name for f in parsed.files}
    if extra := sorted(set(uploads) - listed):
        raise InvalidInputError(
            f"uploaded file(s) {extra} are not listed in bundle.json (it lists {sorted(listed)}); "
            "upload only the bundle's files, named as bundle.json names them"
        )
    if missing := sorted(listed - set(uploads)):
        raise InvalidInputError(f"bundle.json lists {missing} but they were not uploaded")

    targets: list[TargetFile] = []
    rows: list[ModelFile] = []
    for entry in parsed.files:
        info = context.blobs.put(
            uploads[entry.name].file,
            expected_sha256=entry.sha256,
            expected_length=entry.length,
            name=entry.name,
        )
        path = file_target(parsed.name, parsed.version, entry.name)
        targets.append(TargetFile(info.length, {"sha256": info.sha256}, path))
        rows.append(
            ModelFile(
                name=entry.name, sha256=info.sha256, length=info.length, variant=entry.variant
            )
        )
    bundle_info = context.blobs.put(io.BytesIO(raw), name=BUNDLE_FILE)
    targets.append(
        TargetFile(
            bundle_info.length,
            {"sha256": bundle_info.sha256},
            bundle_target(parsed.name, parsed.version),
        )
    )
    session.add(
        ModelVersion(
            name=parsed.name,
            version=parsed.version,
            created=parsed.created,
            registered_at=utcnow(),
            bundle=parsed.to_dict(),
            bundle_sha256=bundle_info.sha256,
            bundle_length=bundle_info.length,
            files=rows,
        )
    )
    audit.record(
        session,
        operator,
        "model.push",
        f"{parsed.name}/{parsed.version}",
        files=[f.name for f in parsed.files],
        bundle_sha256=bundle_info.sha256,
    )
    try:
        context.tuf.add_targets(session, targets)
    except IntegrityError as e:
        session.rollback()
        raise _conflict(parsed.name, parsed.version) from e
    return ModelPushed(
        name=parsed.name, version=parsed.version, files=[f.name for f in parsed.files]
    )


@router.get("", response_model=list[ModelSummary])
def list_models(_viewer: ViewerDep, session: SessionDep) -> list[ModelSummary]:
    """Every model version, by name then registration order.

    Raises:
        AuthError: not a viewer.
    """
    rows = session.scalars(select(ModelVersion).order_by(ModelVersion.name, ModelVersion.id))
    return [
        ModelSummary(
            name=r.name,
            version=r.version,
            created=r.created,
            metrics=dict(r.bundle.get("metrics", {})),
            lineage=dict(r.bundle.get("lineage", {})),
        )
        for r in rows
    ]


@router.get("/{name}/{version}")
def get_model(name: str, version: str, _viewer: ViewerDep, session: SessionDep) -> dict[str, Any]:
    """The bundle dict of one version.

    Raises:
        AuthError: not a viewer.
        NotFoundError: no such version.
    """
    row = session.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )
    if row is None:
        raise NotFoundError(f"no model {name} {version}; `corral model list` shows what exists")
    return dict(row.bundle)


@router.get("/{name}/{version}/audit", response_model=ModelAudit)
def get_model_audit(name: str, version: str, _viewer: ViewerDep, session: SessionDep) -> ModelAudit:
    """The audit document of one version (``registry.modelcard``): its bundle facts,
    lineage and metrics, alias moves and approvals, rollouts, the devices that ran
    it and when, and the audit-log entries that name it.

    Raises:
        AuthError: not a viewer.
        NotFoundError: no such version.
    """
    return model_audit(session, name, version)
