"""The PostgreSQL roles of `deploy/postgres/init.sh` (what the compose file runs): every service
runs as a role of its own that owns its schema and reaches nothing else, and the script can run
again to bring an older database in line (one role for all, tables owned by it) or to rotate
the passwords."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import psycopg
import pytest
from psycopg import errors

from tests.http.checkins_helpers import check_in
from tests.http.reviews_helpers import reviewed
from tests.http.test_projections import read
from tests.support import SECRET, NatsServer, Postgres, RunningService, declare_stream, serve
from tests.system import REQUIRE_POSTGRES, SERVICES, app_for

pytestmark = pytest.mark.postgres

INIT = Path(__file__).resolve().parents[2] / "deploy" / "postgres" / "init.sh"
NAMES = ("goals", "checkins", "reviews", "projections")


@dataclass
class Cluster:
    """A database and roles the script made, under names of this test's own."""

    admin_url: str
    database: str
    prefix: str
    environment: dict[str, str]

    def role(self, service: str) -> str:
        return f"{self.prefix}{service}"

    def url(self, service: str) -> str:
        admin = urlparse(self.admin_url)
        password = self.environment[f"OKR_{service.upper()}_DB_PASSWORD"]
        return (
            f"postgresql://{self.role(service)}:{password}@{admin.hostname}:{admin.port or 5432}"
            f"/{self.database}"
        )

    def admin(self, database: str | None = None) -> psycopg.Connection:
        base = self.admin_url.rsplit("/", 1)[0]
        return psycopg.connect(f"{base}/{database or self.database}", autocommit=True)

    def run_script(self, **changes: str | None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in (self.environment | changes).items() if v is not None}
        return subprocess.run(
            ["sh", str(INIT)], env=env, capture_output=True, text=True, timeout=60, check=False
        )


def unavailable(reason: str) -> None:
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason} (OKR_REQUIRE_POSTGRES is set)")
    pytest.skip(reason)


@pytest.fixture
def cluster(postgres: Postgres | None) -> Iterator[Cluster]:
    if postgres is None:
        unavailable("PostgreSQL is not reachable")
    assert postgres is not None
    if shutil.which("psql") is None:
        unavailable("psql, which runs deploy/postgres/init.sh, is not installed")
    admin = urlparse(postgres.admin_url)
    tag = uuid.uuid4().hex[:10]
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PGHOST": admin.hostname or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "POSTGRES_USER": unquote(admin.username or "postgres"),
        "POSTGRES_DB": admin.path.lstrip("/") or "postgres",
        "OKR_DB_NAME": f"okr_roles_{tag}",
        "OKR_DB_ROLE_PREFIX": f"r{tag}_",
    } | {f"OKR_{name.upper()}_DB_PASSWORD": uuid.uuid4().hex for name in NAMES}
    if admin.password:
        environment["PGPASSWORD"] = unquote(admin.password)
    c = Cluster(
        postgres.admin_url,
        environment["OKR_DB_NAME"],
        environment["OKR_DB_ROLE_PREFIX"],
        environment,
    )
    try:
        yield c
    finally:
        with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{c.database}" WITH (FORCE)')
            for name in NAMES:
                conn.execute(f'DROP ROLE IF EXISTS "{c.role(name)}"')


async def services_as_roles(
    cluster: Cluster, base: Path, stack: AsyncExitStack
) -> dict[str, RunningService]:
    """The four services on one nats-server, each connecting as its own role, in the schema
    named after it (the settings' default)."""
    nats = NatsServer(base / "nats")
    nats.start()
    stack.callback(nats.stop)
    await declare_stream(nats.url)
    running = {}
    for name in NAMES:
        settings = SERVICES[name][0](
            jwt_secret=SECRET,
            nats_url=nats.url,
            data_dir=base / "data",
            database_url=cluster.url(name),
            relay_poll_interval_s=0.05,
            consumer_poll_interval_s=0.2,
            consumer_ack_wait_s=2,
        )
        running[name] = await stack.enter_async_context(serve(app_for(name, settings)))
    return running


def tables(conn: psycopg.Connection, schema: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = %s", (schema,)
    ).fetchall()
    return {name: owner for name, owner in rows}


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


async def test_each_service_runs_as_its_own_postgres_role_and_reaches_no_other_schema(
    cluster: Cluster, tmp_path: Path, stack: AsyncExitStack
) -> None:
    done = cluster.run_script()
    assert done.returncode == 0, done.stderr
    with cluster.admin() as conn:
        roles = conn.execute(
            "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls"
            " FROM pg_roles WHERE rolname LIKE %s",
            (cluster.prefix + "%",),
        ).fetchall()
    assert sorted(r[0] for r in roles) == sorted(cluster.role(n) for n in NAMES)
    assert all(not any(r[1:]) for r in roles), roles  # no power beyond logging in

    s = await services_as_roles(cluster, tmp_path, stack)
    # Commands and events through every service: planned in goals, checked in, reviewed, and
    # shown by the projections; each service wrote only its own store.
    p, review_id = await reviewed(s["goals"], s["checkins"], s["reviews"])
    await check_in(s["checkins"].client, p.key_result_id, value=55)
    tree = await read(s["projections"], f"/v1/cycles/{p.cycle_id}/okrs", s["goals"], s["checkins"])
    [objective] = tree["objectives"]
    assert objective["key_results"][0]["progress"] == 0.55
    assert (await s["reviews"].client.get(f"/v1/reviews/{review_id}")).status_code == 200

    with cluster.admin() as conn:
        owned = {name: tables(conn, name) for name in NAMES}
    for name in NAMES:
        assert owned[name], f"{name} created no tables"
        assert set(owned[name].values()) == {cluster.role(name)}, owned[name]

    for name in NAMES:
        with psycopg.connect(cluster.url(name), autocommit=True) as conn:
            for other in NAMES:
                if other == name:
                    continue
                for table in owned[other]:
                    with pytest.raises(errors.InsufficientPrivilege):
                        conn.execute(f'SELECT 1 FROM "{other}"."{table}" LIMIT 1')
                with pytest.raises(errors.InsufficientPrivilege):
                    conn.execute(f'CREATE TABLE "{other}".intruder (x int)')
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("CREATE SCHEMA intruder")
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute("CREATE TABLE public.intruder (x int)")
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f'CREATE ROLE "{cluster.prefix}intruder"')
            # What the service needs, where it needs it: its own schema, first on its path.
            assert conn.execute("SHOW search_path").fetchone() == (name,)


def test_the_postgres_roles_script_brings_an_older_database_in_line_and_can_run_again(
    cluster: Cluster,
) -> None:
    # A database as the compose file made it before: every schema and table owned by the
    # one role all services shared (the superuser here).
    with cluster.admin("postgres") as conn:
        conn.execute(f'CREATE DATABASE "{cluster.database}"')
    with cluster.admin() as conn:
        conn.execute("CREATE SCHEMA goals")
        conn.execute("CREATE TABLE goals.stored_events (id BIGSERIAL PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO goals.stored_events (body) VALUES ('kept')")

    done = cluster.run_script()
    assert done.returncode == 0, done.stderr
    with psycopg.connect(cluster.url("goals"), autocommit=True) as conn:
        conn.execute("INSERT INTO goals.stored_events (body) VALUES ('new')")
        rows = conn.execute("SELECT body FROM goals.stored_events ORDER BY id").fetchall()
    assert rows == [("kept",), ("new",)]

    # Run again, after someone gave a role more than it should have: put right, nothing lost.
    with cluster.admin() as conn:
        conn.execute(f'ALTER ROLE "{cluster.role("checkins")}" CREATEDB CREATEROLE')
    again = cluster.run_script(OKR_CHECKINS_DB_PASSWORD=uuid.uuid4().hex)
    assert again.returncode == 0, again.stderr
    with cluster.admin() as conn:
        row = conn.execute(
            "SELECT rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s",
            (cluster.role("checkins"),),
        ).fetchone()
        assert row == (False, False)
        assert conn.execute("SELECT count(*) FROM goals.stored_events").fetchone() == (2,)


def test_the_postgres_roles_script_refuses_to_run_without_every_password(
    cluster: Cluster,
) -> None:
    done = cluster.run_script(OKR_REVIEWS_DB_PASSWORD=None)
    assert done.returncode != 0
    assert "OKR_REVIEWS_DB_PASSWORD" in done.stderr
    with cluster.admin("postgres") as conn:
        made = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (cluster.database,)
        ).fetchone()
    assert made is None
