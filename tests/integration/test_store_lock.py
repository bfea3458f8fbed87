"""One process per service and store (shared/exclusive.py): a second process of a service on
the same store does not start and says who holds it; the lock goes with the process; on
PostgreSQL a lock whose connection was lost is taken again, and a process whose lock another
took meanwhile is stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shared.exclusive import PostgresStoreLock, StoreInUse, lock_store
from tests.support import NatsServer
from tests.system import app_for, service_settings

ROOT = Path(__file__).resolve().parents[2]


async def test_a_second_process_of_a_service_does_not_start_on_its_store(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    settings = service_settings("checkins", store, nats_server.url)
    first, second = app_for("checkins", settings), app_for("checkins", settings)
    async with first.router.lifespan_context(first):
        with pytest.raises(StoreInUse) as refused:
            async with second.router.lifespan_context(second):
                pytest.fail("a second checkins process started on the same store")
        assert f"okr-checkins pid {os.getpid()}" in str(refused.value)
        assert "one process per service and store" in str(refused.value)
        # The first one serves on, its store untouched by the refused start.
        assert first.state.runtime.writer is not None
    # Gone with the process that held it: the next one starts.
    async with second.router.lifespan_context(second):
        pass


async def test_services_on_their_own_stores_run_side_by_side(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    apps = [
        app_for(name, service_settings(name, store, nats_server.url))
        for name in ("goals", "checkins")
    ]
    async with apps[0].router.lifespan_context(apps[0]):
        async with apps[1].router.lifespan_context(apps[1]):
            pass


def test_a_service_process_started_beside_a_running_one_exits_with_who_holds_the_store(
    tmp_path: Path,
) -> None:
    """As an operator sees it: `python -m services.checkins` on a store whose lock is held
    exits at once (uvicorn's status for a failed start) and names the holder."""
    settings = service_settings("checkins", {"data_dir": tmp_path / "data"}, "nats://x:1")
    held = lock_store(settings)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "services.checkins"],
            cwd=ROOT,
            env=os.environ
            | {
                "OKR_DATA_DIR": str(tmp_path / "data"),
                "OKR_JWT_SECRET": "s" * 32,
                "OKR_NATS_URL": "nats://127.0.0.1:1",
                "OKR_LOG_FORMAT": "text",
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        held.release()
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"okr-checkins pid {os.getpid()}" in done.stdout + done.stderr


def _cut_off(lock: PostgresStoreLock, url: str) -> None:
    """End the lock's session from the server's side, as a restart or a cut network would."""
    assert lock._conn is not None
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (lock._conn.info.backend_pid,))


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_postgres_store_lock_whose_connection_was_lost_is_taken_again(
    store: dict[str, Any],
) -> None:
    url, schema = store["database_url"], store["database_schema"]
    lost = threading.Event()
    lock = PostgresStoreLock(url, schema, "checkins", on_lost=lost.set)
    try:
        # The server ends the session of a holder that went silent within half a minute,
        # not after the two hours of the default keepalive.
        assert lock._conn is not None
        assert lock._conn.execute("SHOW tcp_keepalives_idle").fetchone() == ("10",)
        _cut_off(lock, url)
        lock.check()  # notices, and takes it again on a new connection
        assert not lost.is_set()
        with pytest.raises(StoreInUse, match=f"okr-checkins pid {os.getpid()}"):
            PostgresStoreLock(url, schema, "checkins").release()
    finally:
        lock.release()
    PostgresStoreLock(url, schema, "checkins").release()  # released: free again


@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_process_whose_postgres_store_lock_another_took_is_stopped(
    store: dict[str, Any],
) -> None:
    url, schema = store["database_url"], store["database_schema"]
    lost = threading.Event()
    lock = PostgresStoreLock(url, schema, "checkins", on_lost=lost.set)
    other: PostgresStoreLock | None = None
    try:
        _cut_off(lock, url)
        other = PostgresStoreLock(url, schema, "checkins")  # a replica took over meanwhile
        lock.check()
        assert lost.is_set()
        lock.check()  # told once
    finally:
        lock.release()
        if other is not None:
            other.release()
