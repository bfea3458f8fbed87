"""Fixtures: every integration and HTTP test runs against real NATS and real stores,
SQLite always and PostgreSQL whenever it is reachable (CI makes it reachable and sets
OKR_REQUIRE_POSTGRES=1, so there a missing PostgreSQL fails instead of skipping)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.checkins.main import CheckinsSettings
from services.checkins.main import create_app as create_checkins
from services.goals.main import GoalsSettings, create_app
from services.projections.main import ProjectionsSettings
from services.projections.main import create_app as create_projections
from services.reviews.main import ReviewsSettings
from services.reviews.main import create_app as create_reviews
from tests.support import SECRET, NatsServer, Postgres, RunningService, declare_stream, serve

ADMIN_URL = os.environ.get("OKR_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("OKR_REQUIRE_POSTGRES", "") not in ("", "0", "false")


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """Settings that put a service's store on SQLite or on PostgreSQL (own schema per test)."""
    if request.param == "sqlite":
        return {"data_dir": tmp_path / "data"}
    url = request.getfixturevalue("postgres_url")
    if url is None:
        if REQUIRE_POSTGRES:
            pytest.fail(
                f"PostgreSQL is required (OKR_REQUIRE_POSTGRES) but {ADMIN_URL} is unreachable"
            )
        pytest.skip(f"PostgreSQL not reachable at {ADMIN_URL}")
    schema = "t_" + uuid.uuid4().hex[:12]
    return {"data_dir": tmp_path / "data", "database_url": url, "database_schema": schema}


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    server.start()
    await declare_stream(server.url)
    yield server
    server.stop()


@pytest.fixture
def goals_settings(store: dict[str, Any], nats_server: NatsServer) -> GoalsSettings:
    return GoalsSettings(
        jwt_secret=SECRET,
        nats_url=nats_server.url,
        relay_poll_interval_s=0.05,
        consumer_poll_interval_s=0.2,
        consumer_ack_wait_s=2,
        **store,
    )


@pytest.fixture
async def goals(goals_settings: GoalsSettings) -> AsyncIterator[RunningService]:
    async with serve(create_app(goals_settings)) as running:
        yield running


@pytest.fixture
def checkins_settings(store: dict[str, Any], nats_server: NatsServer) -> CheckinsSettings:
    # Beside goals on the same database, in a schema of its own.
    own = {**store}
    if "database_schema" in own:
        own["database_schema"] = own["database_schema"] + "_checkins"
    return CheckinsSettings(
        jwt_secret=SECRET,
        nats_url=nats_server.url,
        relay_poll_interval_s=0.05,
        consumer_poll_interval_s=0.2,
        consumer_ack_wait_s=2,
        **own,
    )


@pytest.fixture
async def checkins(
    goals: RunningService, checkins_settings: CheckinsSettings
) -> AsyncIterator[RunningService]:
    """The check-in service, with the goals service beside it on the same NATS."""
    async with serve(create_checkins(checkins_settings)) as running:
        yield running


@pytest.fixture
def reviews_settings(store: dict[str, Any], nats_server: NatsServer) -> ReviewsSettings:
    own = {**store}
    if "database_schema" in own:
        own["database_schema"] = own["database_schema"] + "_reviews"
    return ReviewsSettings(
        jwt_secret=SECRET,
        nats_url=nats_server.url,
        relay_poll_interval_s=0.05,
        consumer_poll_interval_s=0.2,
        consumer_ack_wait_s=2,
        **own,
    )


@pytest.fixture
async def reviews(
    checkins: RunningService, reviews_settings: ReviewsSettings
) -> AsyncIterator[RunningService]:
    """The review service, with goals and checkins beside it on the same NATS."""
    async with serve(create_reviews(reviews_settings)) as running:
        yield running


@pytest.fixture
def projections_settings(store: dict[str, Any], nats_server: NatsServer) -> ProjectionsSettings:
    own = {**store}
    if "database_schema" in own:
        own["database_schema"] = own["database_schema"] + "_projections"
    return ProjectionsSettings(
        jwt_secret=SECRET,
        nats_url=nats_server.url,
        consumer_poll_interval_s=0.2,
        consumer_ack_wait_s=2,
        **own,
    )


@pytest.fixture
async def projections(
    checkins: RunningService, projections_settings: ProjectionsSettings
) -> AsyncIterator[RunningService]:
    """The projections service, with goals and checkins beside it on the same NATS."""
    async with serve(create_projections(projections_settings)) as running:
        yield running
