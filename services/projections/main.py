"""Composition root of the projections service."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

from fastapi import FastAPI
from pydantic import AliasChoices, Field, field_validator

from services.projections import queries
from services.projections.board import board_router, origin_of
from services.projections.http import LiveViews, routers
from services.projections.live import Stopping, live_router
from services.projections.rebuild import ensure_generations, live_generation
from services.projections.views import Tables, Views
from shared.consumer import Consumer, Inbox
from shared.contract import SUBSCRIPTIONS
from shared.service import Runtime, create_service
from shared.settings import ServiceSettings, is_origin
from shared.sql import Database
from shared.store import ServiceApplication
from shared.telemetry import KEY_RESULTS

log = logging.getLogger(__name__)

GENERATION_POLL_S = 1.0
# How often the key results by status (`okr_key_results`) are counted from the views.
KEY_RESULTS_EVERY_S = 15.0


class ProjectionsApplication(ServiceApplication):
    """No aggregates: the store holds the views and the consumer's inbox."""

    name = "projections"


class ProjectionsSettings(ServiceSettings):
    service = "projections"
    port: int = Field(
        default=8004, ge=0, le=65535, validation_alias=AliasChoices("OKR_PROJECTIONS_PORT", "port")
    )
    database_schema: str = Field(
        default="projections",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        validation_alias=AliasChoices("OKR_PROJECTIONS_DATABASE_SCHEMA", "database_schema"),
    )
    overdue_cadence_days: int = Field(
        default=7, ge=1, le=365, description="A key result without a check-in for longer is overdue"
    )
    # Where the board's forms send check-ins and meetings: the check-in service as a browser
    # reaches it. Its origin must be in that service's OKR_CORS_ORIGINS.
    board_checkins_url: str = "http://127.0.0.1:8002"

    @field_validator("board_checkins_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = value.rstrip("/")
        parts = urlsplit(url)
        if not is_origin(origin_of(url)) or parts.query or parts.fragment:
            raise ValueError(f"OKR_BOARD_CHECKINS_URL: {value!r} is not an http(s) URL")
        return url


def _consumer(runtime: Runtime, db: Database, tables: Tables) -> Consumer:
    """Every event of every service, through one durable consumer, into one generation."""
    inbox = Inbox(db, tables.consumer, Views(tables))
    return Consumer.for_service(
        runtime.settings, tables.consumer, runtime.link, inbox, SUBSCRIPTIONS["projections"][1]
    )


def _wire(runtime: Runtime) -> None:
    db = Database(runtime.app)
    ensure_generations(db)
    live = LiveViews(db, Tables(live_generation(db)))
    runtime.consumers.append(_consumer(runtime, db, live.tables))
    runtime.parts["views"] = live

    async def follow_rebuilds() -> None:
        """Switch to the generation a rebuild made live: its tables and its consumer."""
        while True:
            await asyncio.sleep(GENERATION_POLL_S)
            generation = await asyncio.to_thread(live_generation, db)
            if generation == live.tables.generation:
                continue
            tables = Tables(generation)
            fresh = _consumer(runtime, db, tables)
            await fresh.start()
            old, runtime.consumers[0] = runtime.consumers[0], fresh
            live.tables = tables
            log.info("views now answered from generation %d", generation)
            await old.stop()

    runtime.background.append(follow_rebuilds)

    async def count_key_results() -> None:
        """Key results by status for `okr_key_results`: counted off the event loop, so a
        scrape of /metrics never waits on the store."""
        while True:
            try:
                counts = await asyncio.to_thread(queries.key_result_statuses, db, live.tables)
            except Exception as e:  # the store is unreachable: keep the last counts
                log.warning("could not count key results by status: %s", e)
            else:
                for status, count in counts.items():
                    KEY_RESULTS.labels(status).set(count)
            await asyncio.sleep(KEY_RESULTS_EVERY_S)

    runtime.background.append(count_key_results)

    stopping = Stopping()
    runtime.parts["stopping"] = stopping
    runtime.background.append(stopping.watch)


def create_app(settings: ProjectionsSettings | None = None) -> FastAPI:
    settings = settings or ProjectionsSettings()
    return create_service(
        settings,
        ProjectionsApplication,
        [*routers, live_router, board_router(settings.board_checkins_url)],
        title="OKR projections",
        description="The OKR tree of a cycle, now or at any past moment (`as_of`); the audit "
        "trail of every change; check-in histories, overdue check-ins, team meetings and "
        "reviews; a live stream of the views' progress; the OKR board at `/`. Read-only: "
        "every view is built from the events on `okr.>`.",
        on_runtime=_wire,
    )
