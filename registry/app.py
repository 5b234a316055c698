"""The app factory: ``create_app(settings)`` wires storage, signing, MQTT and routes.

Building the app opens the database and the TUF keys at once (so a bad
configuration fails before serving); the lifespan starts the MQTT bridge,
the ingest worker, the TUF refresher and the engines, then the retention job
(``app.state.retention``, registry.retention), and stops them on shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from registry.api.admission import Admission
from registry.api.errors import install_error_handlers
from registry.api.routes import (
    alerts,
    aliases,
    audit,
    console,
    devices,
    downloads,
    enrol,
    experiments,
    governance,
    metrics,
    models,
    rollouts,
    series,
    shadows,
    tokens,
    tuf,
)
from registry.core.config import Settings
from registry.core.context import RegistryContext
from registry.retention import Retention

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the registry app.

    Args:
        settings: the settings; read from ``CORRAL_*`` variables when None.

    Returns:
        The FastAPI app; ``app.state.registry`` is its :class:`RegistryContext`.

    Raises:
        ConfigError: unusable settings.
        sqlalchemy.exc.SQLAlchemyError: the database cannot be opened.
    """
    context = RegistryContext.build(settings or Settings())
    retention = Retention(context.sessions, context.settings.retention)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        context.start()
        retention.start()
        try:
            yield
        finally:
            retention.stop()
            context.stop()

    app = FastAPI(title="Corral registry", version="0.1.0", lifespan=lifespan)
    app.state.registry = context
    app.state.retention = retention
    app.state.admission = Admission(
        context.settings.max_db_requests, context.settings.request_wait_s
    )
    install_error_handlers(app)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    # aliases before models: /models/{name}/aliases must not match /models/{name}/{version}.
    routers = (
        alerts,
        enrol,
        devices,
        aliases,
        models,
        rollouts,
        experiments,
        shadows,
        governance,
        tokens,
        audit,
        tuf,
        downloads,
        metrics,
        series,
        console,
    )
    for module in routers:
        app.include_router(module.router)
    return app
