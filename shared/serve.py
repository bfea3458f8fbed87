"""Run one service under uvicorn (uvloop + httptools), shutting down cleanly on SIGTERM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from shared.collector import tune_collector
from shared.logs import configure
from shared.settings import ServiceSettings

S = TypeVar("S", bound=ServiceSettings)


def serve(settings_class: type[S], create_app: Callable[[Any], FastAPI]) -> None:
    settings = settings_class()
    configure(settings.service, fmt=settings.log_format, level=settings.log_level)
    app = create_app(settings)
    tune_collector()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers go through ours
        access_log=False,
        timeout_graceful_shutdown=10,
    )
