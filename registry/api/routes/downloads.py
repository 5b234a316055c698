"""The agent wheel, for ``scripts/install-agent.sh`` on park computers.

The registry serves the newest ``corral-*.whl`` in ``{data_dir}/downloads/``
at ``/downloads/corral-agent.whl``; operators put the wheel of the release
they want installed there (``pip wheel --no-deps -w DATA_DIR/downloads .``).
It needs no token: the wheel holds no secret, and a park computer has only
its one-time enrolment token before it installs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from registry.api.deps import ContextDep
from registry.schemas import PROBLEM_RESPONSES

__all__ = ["router"]

router = APIRouter(tags=["downloads"], responses=PROBLEM_RESPONSES)


def _newest_wheel(directory: Path) -> Path | None:
    wheels = sorted(directory.glob("corral-*.whl"), key=lambda p: p.stat().st_mtime)
    return wheels[-1] if wheels else None


@router.get("/downloads/corral-agent.whl", response_class=FileResponse)
def agent_wheel(context: ContextDep) -> FileResponse:
    """The agent wheel to install on park computers.

    Raises:
        HTTPException: 404 when no wheel was put in the downloads folder.
    """
    folder = Path(context.settings.data_dir) / "downloads"
    wheel = _newest_wheel(folder)
    if wheel is None:
        raise HTTPException(
            404,
            f"no agent wheel in {folder}; build one there with "
            f"`pip wheel --no-deps -w {folder} <corral checkout>`",
        )
    return FileResponse(wheel, media_type="application/octet-stream", filename=wheel.name)
