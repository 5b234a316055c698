"""Model aliases: ``production``, ``staging`` and ``champion`` per model, with history.

Moving an alias, in one transaction: check the version exists (404), lock
the alias row where the database can (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite serialises writers anyway), point it at the version,
append the move (from, to, who, when, why) to ``alias_moves`` and write the
audit row. The history is append-only; ``GET .../history`` lists it newest
first. Moving an alias to where it already points is still recorded: the
reason may matter (a re-approval).

These routes share the ``/api/v1/models`` prefix; the app includes this
router before the models router so ``/{name}/aliases`` is not read as a
version.
"""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from registry import audit
from registry._time import iso, utcnow
from registry.api.deps import OperatorDep, SessionDep, ViewerDep
from registry.errors import NotFoundError
from registry.schemas import PROBLEM_RESPONSES, Alias, AliasMoveOut, AliasMoveRequest, AliasOut
from registry.tables import AliasMove, ModelAlias, ModelVersion

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/models", tags=["aliases"], responses=PROBLEM_RESPONSES)


def _out(row: ModelAlias) -> AliasOut:
    return AliasOut(
        model=row.model,
        alias=Alias(row.alias),
        version=row.version,
        moved_at=iso(row.moved_at) or "",
        moved_by=row.moved_by,
    )


@router.get("/{name}/aliases", response_model=list[AliasOut])
def list_aliases(name: str, _viewer: ViewerDep, session: SessionDep) -> list[AliasOut]:
    """Where each alias of a model points (aliases never set are absent).

    Raises:
        AuthError: not a viewer.
    """
    rows = session.scalars(
        select(ModelAlias).where(ModelAlias.model == name).order_by(ModelAlias.alias)
    )
    return [_out(r) for r in rows]


@router.put("/{name}/aliases/{alias}", response_model=AliasOut)
def move_alias(
    name: str, alias: Alias, body: AliasMoveRequest, operator: OperatorDep, session: SessionDep
) -> AliasOut:
    """Point an alias at a version, recording who, when and why.

    Raises:
        AuthError: not an operator.
        NotFoundError: no such model version.
    """
    exists = select(ModelVersion.id).where(
        ModelVersion.name == name, ModelVersion.version == body.version
    )
    if session.scalar(exists) is None:
        raise NotFoundError(
            f"no model {name} {body.version}; `corral model list` shows what exists"
        )
    now = utcnow()
    row = session.scalar(
        select(ModelAlias)
        .where(ModelAlias.model == name, ModelAlias.alias == alias.value)
        .with_for_update()
    )
    previous = row.version if row is not None else None
    if row is None:
        row = ModelAlias(
            model=name,
            alias=alias.value,
            version=body.version,
            moved_at=now,
            moved_by=operator.name,
        )
        session.add(row)
    else:
        row.version, row.moved_at, row.moved_by = body.version, now, operator.name
    session.add(
        AliasMove(
            model=name,
            alias=alias.value,
            from_version=previous,
            to_version=body.version,
            moved_at=now,
            moved_by=operator.name,
            reason=body.reason,
        )
    )
    audit.record(
        session,
        operator,
        "alias.move",
        f"{name}/{alias.value}",
        **{"from": previous, "to": body.version, "reason": body.reason},
    )
    session.commit()
    return _out(row)


@router.get("/{name}/aliases/{alias}", response_model=AliasOut)
def get_alias(name: str, alias: Alias, _viewer: ViewerDep, session: SessionDep) -> AliasOut:
    """Where one alias points.

    Raises:
        AuthError: not a viewer.
        NotFoundError: the alias was never set for this model.
    """
    row = session.scalar(
        select(ModelAlias).where(ModelAlias.model == name, ModelAlias.alias == alias.value)
    )
    if row is None:
        raise NotFoundError(
            f"model {name!r} has no {alias.value} alias yet; set it with "
            f"`corral alias set {name} {alias.value} VERSION --reason ...`"
        )
    return _out(row)


@router.get("/{name}/aliases/{alias}/history", response_model=list[AliasMoveOut])
def alias_history(
    name: str, alias: Alias, _viewer: ViewerDep, session: SessionDep
) -> list[AliasMoveOut]:
    """Every move of an alias, newest first (empty when it was never set).

    Raises:
        AuthError: not a viewer.
    """
    moves = session.scalars(
        select(AliasMove)
        .where(AliasMove.model == name, AliasMove.alias == alias.value)
        .order_by(AliasMove.id.desc())
    )
    return [AliasMoveOut.of(m) for m in moves]
