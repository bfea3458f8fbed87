"""Starting real services for tests: which store (SQLite, or PostgreSQL in a schema of its own),
each service's settings, and a whole system on one nats-server for module-wide fixtures."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from services.checkins.main import CheckinsSettings
from services.checkins.main import create_app as create_checkins
from services.goals.main import GoalsSettings
from services.goals.main import create_app as create_goals
from services.projections.main import ProjectionsSettings
from services.projections.main import create_app as create_projections
from services.reviews.main import ReviewsSettings
from services.reviews.main import create_app as create_reviews
from shared.settings import ServiceSettings
from tests.support import SECRET, NatsServer, RunningService, declare_stream, serve

ADMIN_URL = os.environ.get("OKR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("OKR_REQUIRE_POSTGRES", "") not in ("", "0", "false")
STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

SERVICES: dict[str, tuple[type[ServiceSettings], Callable[[Any], FastAPI]]] = {
    "goals": (GoalsSettings, create_goals),
    "checkins": (CheckinsSettings, create_checkins),
    "reviews": (ReviewsSettings, create_reviews),
    "projections": (ProjectionsSettings, create_projections),
}


def store_for(request: pytest.FixtureRequest, base: Path) -> dict[str, Any]:
    """Settings that put stores on SQLite or on PostgreSQL (a fresh schema), by the fixture's
    param. Without a reachable PostgreSQL its tests are skipped, or fail when it is required."""
    if request.param == "sqlite":
        return {"data_dir": base / "data"}
    url = request.getfixturevalue("postgres_url")
    if url is None:
        if REQUIRE_POSTGRES:
            pytest.fail(
                f"PostgreSQL is required (OKR_REQUIRE_POSTGRES) but {ADMIN_URL} is unreachable"
            )
        pytest.skip(f"PostgreSQL not reachable at {ADMIN_URL}")
    schema = "t_" + uuid.uuid4().hex[:12]
    return {"data_dir": base / "data", "database_url": url, "database_schema": schema}


def service_settings(name: str, store: dict[str, Any], nats_url: str) -> Any:
    """A service's settings for tests: quick polling, short ack waits, and on PostgreSQL a
    schema of its own beside the others (goals keeps the store's own schema)."""
    cls, _ = SERVICES[name]
    own = {**store}
    if "database_schema" in own and name != "goals":
        own["database_schema"] = f"{own['database_schema']}_{name}"
    return cls(
        jwt_secret=SECRET,
        nats_url=nats_url,
        relay_poll_interval_s=0.05,
        consumer_poll_interval_s=0.2,
        consumer_ack_wait_s=2,
        **own,
    )


def app_for(name: str, settings: Any) -> FastAPI:
    return SERVICES[name][1](settings)


@asynccontextmanager
async def running(
    store: dict[str, Any], base: Path, *names: str
) -> AsyncIterator[dict[str, RunningService]]:
    """A nats-server and the named services on it, until the block ends."""
    nats_server = NatsServer(base / "nats")
    nats_server.start()
    try:
        await declare_stream(nats_server.url)
        async with AsyncExitStack() as stack:
            services = {}
            for name in names:
                app = app_for(name, service_settings(name, store, nats_server.url))
                services[name] = await stack.enter_async_context(serve(app))
            yield services
    finally:
        nats_server.stop()
