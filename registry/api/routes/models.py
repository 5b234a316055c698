"""Model versions: push (multipart), add a derived variant, list, read back, audit.

A push, in order: parse bundle.json (``corral.Bundle``); refuse a name and
version that exist (409: versions are immutable); match the uploaded parts to
the bundle's files by name (422 for a missing or an extra file); stream each
into the blob store, checking length and SHA-256 against the bundle (422 on
mismatch); store bundle.json's bytes as uploaded; then sign one TUF target
per file plus ``bundle.json`` and commit rows and metadata together. Blobs
written for a push that is then refused stay in the store (content-addressed
and harmless); a garbage collector is a later issue.

``POST /{name}/{version}/variants`` adds one derived file (a TensorRT build
of the fp32 model, say) to an existing version. The version's model, labels
and golden samples stay as they were; only its file list grows. In order,
under a lock on the version's row (an UPDATE of the row to itself: a row lock
on PostgreSQL, the database's write lock on SQLite) so that two additions
cannot both read the old file list: check the entry (``corral.BundleFile``,
422) and that the upload is named as it says (422); refuse a variant or file
name the version has (409); stream the file into the blob store against the
entry's length and SHA-256 (422); write the new bundle.json (the stored
bundle plus the entry); then sign the file's target and the new bundle.json's
target (replacing the old one) and commit rows, audit entry and metadata
together, as a push does (the same helpers store and sign).

``GET /{name}/{version}/audit`` is the version's audit document, built by
``registry.modelcard`` (the console's model card reads it).
"""

from __future__ import annotations

import dataclasses
import io
import json
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, File, Form, UploadFile, status
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from tuf.api.metadata import TargetFile

from corral.bundle import BUNDLE_FILE, Bundle, BundleFile
from corral.errors import BundleError
from corral.targets import bundle_target, file_target
from registry import audit
from registry._time import utcnow
from registry.api.deps import ContextDep, OperatorDep, SessionDep, ViewerDep
from registry.core.context import RegistryContext
from registry.errors import ConflictError, InvalidInputError, NotFoundError
from registry.modelcard import model_audit
from registry.schemas import (
    PROBLEM_RESPONSES,
    ModelAudit,
    ModelPushed,
    ModelSummary,
    VariantAdded,
)
from registry.tables import ModelFile, ModelVersion

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/models", tags=["models"], responses=PROBLEM_RESPONSES)

_MAX_BUNDLE_JSON = 16 * 1024 * 1024


def _conflict(name: str, version: str) -> ConflictError:
    return ConflictError(
        f"model {name} {version} already exists and versions are immutable; "
        "bump the version in bundle.json"
    )


def _store_file(
    context: RegistryContext, name: str, version: str, entry: BundleFile, stream: BinaryIO
) -> tuple[TargetFile, ModelFile]:
    """Stream one model file into the blob store; its TUF target and its row.

    Raises:
        BlobMismatchError: the data's length or SHA-256 is not the entry's.
    """
    info = context.blobs.put(
        stream, expected_sha256=entry.sha256, expected_length=entry.length, name=entry.name
    )
    path = file_target(name, version, entry.name)
    target = TargetFile(info.length, {"sha256": info.sha256}, path)
    row = ModelFile(name=entry.name, sha256=info.sha256, length=info.length, variant=entry.variant)
    return target, row


def _store_bundle(
    context: RegistryContext, name: str, version: str, raw: bytes
) -> tuple[TargetFile, str, int]:
    """Store bundle.json's bytes; its TUF target, SHA-256 and length."""
    info = context.blobs.put(io.BytesIO(raw), name=BUNDLE_FILE)
    target = TargetFile(info.length, {"sha256": info.sha256}, bundle_target(name, version))
    return target, info.sha256, info.length


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
        target, row = _store_file(
            context, parsed.name, parsed.version, entry, uploads[entry.name].file
        )
        targets.append(target)
        rows.append(row)
    bundle_target_file, bundle_sha256, bundle_length = _store_bundle(
        context, parsed.name, parsed.version, raw
    )
    targets.append(bundle_target_file)
    session.add(
        ModelVersion(
            name=parsed.name,
            version=parsed.version,
            created=parsed.created,
            registered_at=utcnow(),
            bundle=parsed.to_dict(),
            bundle_sha256=bundle_sha256,
            bundle_length=bundle_length,
            files=rows,
        )
    )
    audit.record(
        session,
        operator,
        "model.push",
        f"{parsed.name}/{parsed.version}",
        files=[f.name for f in parsed.files],
        bundle_sha256=bundle_sha256,
    )
    try:
        context.tuf.add_targets(session, targets)
    except IntegrityError as e:
        session.rollback()
        raise _conflict(parsed.name, parsed.version) from e
    return ModelPushed(
        name=parsed.name, version=parsed.version, files=[f.name for f in parsed.files]
    )


def _locked_version(session: Session, name: str, version: str) -> ModelVersion:
    """The version's row, locked until the session commits.

    An UPDATE of the row to itself: on PostgreSQL a row lock, on SQLite (no row
    locks) the database's one write lock. Either way a concurrent variant
    addition waits here and then reads the file list this one wrote.

    Raises:
        NotFoundError: no such version.
    """
    where = (ModelVersion.name == name, ModelVersion.version == version)
    session.execute(
        update(ModelVersion).where(*where).values(name=ModelVersion.name),
        execution_options={"synchronize_session": False},
    )
    row = session.scalar(select(ModelVersion).where(*where))
    if row is None:
        raise NotFoundError(f"no model {name} {version}; `corral model list` shows what exists")
    return row


def _parse_entry(text: str) -> BundleFile:
    """The ``entry`` form field: a bundle ``files`` item as JSON.

    Raises:
        BundleError: not JSON, or not a valid file entry (422).
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"entry is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise BundleError("entry should be a JSON object like one item of bundle.json's files")
    return BundleFile.from_dict(data)


@router.post(
    "/{name}/{version}/variants",
    status_code=status.HTTP_201_CREATED,
    response_model=VariantAdded,
)
def add_variant(
    name: str,
    version: str,
    operator: OperatorDep,
    context: ContextDep,
    session: SessionDep,
    entry: Annotated[
        str,
        Form(
            description="the new file's bundle entry as JSON: name, sha256, length, variant "
            "and any extra fields (its own golden outputs, parity, build facts)"
        ),
    ],
    file: Annotated[UploadFile, File(description="the file, named as the entry names it")],
) -> VariantAdded:
    """Add a derived variant (one file) to an existing version and sign it.

    Raises:
        AuthError: not an operator.
        BundleError: the entry is not a valid bundle file entry (422).
        InvalidInputError: the upload's name differs from the entry's, or its length
            or SHA-256 does (422).
        NotFoundError: no such version.
        ConflictError: the version has this variant or this file name already.
    """
    parsed = _parse_entry(entry)
    if file.filename != parsed.name:
        raise InvalidInputError(
            f"the uploaded file is named {file.filename!r} but the entry names {parsed.name!r}; "
            "upload it under the entry's name"
        )
    row = _locked_version(session, name, version)
    bundle = Bundle.from_dict(row.bundle)
    where = f"{name} {version}"
    if any(f.variant == parsed.variant for f in bundle.files):
        raise ConflictError(
            f"{where} already has a {parsed.variant!r} variant; a version's files never "
            "change, so build into a new version, or pick another variant name"
        )
    if any(f.name == parsed.name for f in bundle.files):
        raise ConflictError(f"{where} already has a file named {parsed.name!r}; rename the file")
    target, file_row = _store_file(context, name, version, parsed, file.file)
    grown = dataclasses.replace(bundle, files=[*bundle.files, parsed])
    raw = grown.to_bytes()
    bundle_target_file, bundle_sha256, bundle_length = _store_bundle(context, name, version, raw)
    row.bundle = grown.to_dict()
    row.bundle_sha256, row.bundle_length = bundle_sha256, bundle_length
    row.files.append(file_row)
    audit.record(
        session,
        operator,
        "model.variant",
        f"{name}/{version}",
        variant=parsed.variant,
        file=parsed.name,
        sha256=parsed.sha256,
        bundle_sha256=bundle_sha256,
    )
    try:
        context.tuf.add_targets(session, [target, bundle_target_file])
    except IntegrityError as e:
        session.rollback()
        raise ConflictError(
            f"{where} gained a file named {parsed.name!r} meanwhile; rename the file"
        ) from e
    return VariantAdded(
        name=name,
        version=version,
        variant=parsed.variant,
        file=parsed.name,
        bundle_sha256=bundle_sha256,
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
