"""Fixtures: every integration and HTTP test runs against real NATS and real stores,
SQLite always and PostgreSQL whenever it is reachable (CI makes it reachable and sets
OKR_REQUIRE_POSTGRES=1, so there a missing PostgreSQL fails instead of skipping)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.checkins.main import CheckinsSettings
from services.goals.main import GoalsSettings
from services.projections.main import ProjectionsSettings
from services.reviews.main import ReviewsSettings
from tests.support import NatsServer, Postgres, RunningService, declare_stream, serve
from tests.system import ADMIN_URL, STORES, app_for, service_settings, store_for


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres | None]:
    pg = Postgres(ADMIN_URL)
    if not pg.reachable():
        yield None
        return
    yield pg
    pg.drop_all()


@pytest.fixture(scope="session")
def postgres_url(postgres: Postgres | None) -> str | None:
    """One fresh database for the whole run; tests isolate themselves by schema."""
    return postgres.create_database() if postgres is not None else None


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings that put a service's store on SQLite or on PostgreSQL (own schema per test)."""
    return store_for(request, tmp_path)


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    await declare_stream(server.url)
    yield server
    server.stop(kill=True)  # its store is the test's own, thrown away: no need to flush it


@pytest.fixture
def goals_settings(store: dict[str, Any], nats_server: NatsServer) -> GoalsSettings:
    settings: GoalsSettings = service_settings("goals", store, nats_server.url)
    return settings


@pytest.fixture
def checkins_settings(store: dict[str, Any], nats_server: NatsServer) -> CheckinsSettings:
    settings: CheckinsSettings = service_settings("checkins", store, nats_server.url)
    return settings


@pytest.fixture
def reviews_settings(store: dict[str, Any], nats_server: NatsServer) -> ReviewsSettings:
    settings: ReviewsSettings = service_settings("reviews", store, nats_server.url)
    return settings


@pytest.fixture
def projections_settings(store: dict[str, Any], nats_server: NatsServer) -> ProjectionsSettings:
    settings: ProjectionsSettings = service_settings("projections", store, nats_server.url)
    return settings


@pytest.fixture
async def goals(goals_settings: GoalsSettings) -> AsyncIterator[RunningService]:
    async with serve(app_for("goals", goals_settings)) as running:
        yield running


@pytest.fixture
async def checkins(
    goals: RunningService, checkins_settings: CheckinsSettings
) -> AsyncIterator[RunningService]:
    """The check-in service, with the goals service beside it on the same NATS."""
    async with serve(app_for("checkins", checkins_settings)) as running:
        yield running


@pytest.fixture
async def reviews(
    checkins: RunningService, reviews_settings: ReviewsSettings
) -> AsyncIterator[RunningService]:
    """The review service, with goals and checkins beside it on the same NATS."""
    async with serve(app_for("reviews", reviews_settings)) as running:
        yield running


@pytest.fixture
async def projections(
    checkins: RunningService, projections_settings: ProjectionsSettings
) -> AsyncIterator[RunningService]:
    """The projections service, with goals and checkins beside it on the same NATS."""
    async with serve(app_for("projections", projections_settings)) as running:
        yield running
