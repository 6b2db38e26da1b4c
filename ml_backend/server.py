"""Run the ML backend under uvicorn: one process, one shared model, one inference thread."""

from __future__ import annotations

import logging

from ml_backend.settings import BackendSettings


def serve(settings: BackendSettings | None = None) -> None:
    import uvicorn

    from ml_backend.app import create_app

    settings = settings or BackendSettings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                access_log=False, timeout_graceful_shutdown=5)
