"""The PostgreSQL store's own wiring. The pool's check of the connections it hands out
(`check_if_spoken_to`): no round trip for a live idle connection, and a connection the server
has closed is refused, so the pool hands out another and the store carries on. And no NOTIFY
with the events, since nothing listens."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError
from psycopg_pool import ConnectionPool, PoolTimeout

from services.checkins.application import CheckinsApplication
from services.checkins.main import CheckinsSettings
from shared.store import (
    Document,
    IdempotencyRecord,
    Lookup,
    check_if_spoken_to,
    store_env,
)
from tests.system import store_for

pytestmark = pytest.mark.postgres


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def app(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[CheckinsApplication]:
    settings = CheckinsSettings(jwt_secret="s" * 32, **store_for(request, tmp_path))
    application = CheckinsApplication(store_env(settings))
    yield application
    application.close()


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The round trips the check makes (the library's check, counted)."""
    made: list[object] = []
    real = ConnectionPool.check_connection

    def counted(conn: Any) -> None:
        made.append(conn)
        real(conn)

    monkeypatch.setattr(ConnectionPool, "check_connection", staticmethod(counted))
    return made


def _end_backends(dsn: str, pids: list[int]) -> None:
    """Another session ends these backends, as a server restart would (their sockets then have
    the end to read), and waits until they are gone."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        while admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone()[0]:  # type: ignore[index]
            time.sleep(0.01)


def test_the_pool_checks_connections_with_it(app: CheckinsApplication) -> None:
    pool = app.recorder.datastore.pool  # type: ignore[attr-defined]
    assert pool._check.func is check_if_spoken_to
    assert pool._check.keywords == {"pool": pool}


def test_a_live_idle_connection_costs_no_round_trip(
    app: CheckinsApplication, pings: list[object]
) -> None:
    for _ in range(20):
        app.ping()
    assert app.recorder.max_notification_id() is None
    assert pings == []


def test_a_connection_the_server_closed_is_pinged_and_refused(
    app: CheckinsApplication, pings: list[object]
) -> None:
    pool = app.recorder.datastore.pool  # type: ignore[attr-defined]
    conn = pool.getconn()
    try:
        check_if_spoken_to(conn)  # alive and idle: passes, no round trip
        assert pings == []
        _end_backends(conn.info.dsn, [conn.info.backend_pid])
        with pytest.raises(psycopg.OperationalError):
            check_if_spoken_to(conn)
        assert pings == [conn]
    finally:
        pool.putconn(conn)  # broken: the pool drops it
    app.ping()
    assert app.recorder.max_notification_id() is None


def test_after_the_server_closed_every_idle_connection_the_next_call_is_prompt(
    app: CheckinsApplication,
) -> None:
    """As after a restart: without the pool testing them all at the first dead one, it backs
    off over each (1 s, 2 s, 4 s: past its 5 s timeout with four)."""
    pool = app.recorder.datastore.pool  # type: ignore[attr-defined]
    held = [pool.getconn() for _ in range(pool.get_stats()["pool_available"])]
    pids = [c.info.backend_pid for c in held]
    dsn = held[0].info.dsn
    for c in held:
        pool.putconn(c)
    assert len(pids) >= 2
    _end_backends(dsn, pids)
    started = time.monotonic()
    assert app.recorder.max_notification_id() is None
    assert time.monotonic() - started < 1.0


def test_a_closed_connection_is_refused_without_a_round_trip(
    app: CheckinsApplication, pings: list[object]
) -> None:
    pool = app.recorder.datastore.pool  # type: ignore[attr-defined]
    conn = pool.getconn()
    try:
        conn.close()
        with pytest.raises(psycopg.OperationalError):
            check_if_spoken_to(conn)
    finally:
        pool.putconn(conn)
    assert pings == []
    app.ping()


def test_saving_events_sends_no_notification(app: CheckinsApplication) -> None:
    """Nothing listens for the library's NOTIFY with each insert, so none is sent."""
    recorder: Any = app.recorder
    pool = recorder.datastore.pool
    with pool.connection() as conn:
        dsn = conn.info.dsn
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute(f'LISTEN "{recorder.channel_name}"')
        aggregate = Aggregate()
        app.save(aggregate)
        assert app.recorder.max_notification_id() == 1
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []


def _all_idle(app: CheckinsApplication) -> bool:
    """Every pooled connection is out of any transaction (none left open or aborted)."""
    pool = app.recorder.datastore.pool  # type: ignore[attr-defined]
    stats = pool.get_stats()
    conns = [pool.getconn() for _ in range(stats["pool_size"])]
    try:
        return all(c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE for c in conns)
    finally:
        for c in conns:
            pool.putconn(c)


def test_a_save_is_one_transaction_with_its_answers_lookups_and_documents(
    app: CheckinsApplication,
) -> None:
    first, second = Aggregate(), Aggregate()
    record = IdempotencyRecord("alice:k1", "f", 201, {"id": str(first.id)}, [(first.id, 1)])
    app.save(
        first,
        idempotency=[record],
        lookups=[Lookup("check-in", "c1", str(first.id))],
        documents=[Document("check-in", "c1", str(first.id), 1, {"n": 1})],
    )
    answer = app.find_answer("alice:k1")
    assert answer is not None and answer.body["position"] == "1"
    assert app.find_lookup("check-in", "c1") == str(first.id)
    assert app.find_document("check-in", "c1") == {"n": 1}

    # A key, or a lookup, already recorded: the whole save fails and leaves nothing behind.
    again = IdempotencyRecord("alice:k1", "f", 201, {"id": str(second.id)}, [(second.id, 1)])
    with pytest.raises(IntegrityError):
        app.save(second, idempotency=[again], documents=[Document("check-in", "c2", "x", 1, {})])
    with pytest.raises(IntegrityError):
        app.save(second, lookups=[Lookup("check-in", "c1", str(second.id))])
    assert app.recorder.max_notification_id() == 1
    assert app.find_document("check-in", "c2") is None
    assert app.find_lookup("check-in", "c1") == str(first.id)
    assert _all_idle(app)

    # The connections are fine afterwards.
    third = Aggregate()
    app.save(third, lookups=[Lookup("check-in", "c2", str(third.id))])
    stored = app.recorder.select_notifications(start=None, limit=10)
    assert [n.originator_id for n in stored] == [first.id, third.id]
    assert app.find_lookup("check-in", "c2") == str(third.id)


def test_a_busy_pool_is_not_taken_for_an_unreachable_server(app: CheckinsApplication) -> None:
    """Every connection in use and a wait that times out, with no failed attempt to connect:
    calls keep waiting the pool's whole timeout (`FailFast` only shortens it in an outage,
    tests/faults/test_store_outage.py)."""
    pool = app.recorder.datastore.pool  # type: ignore[attr-defined]
    assert app.fail_fast is not None and pool.getconn == app.fail_fast.getconn
    held = [pool.getconn() for _ in range(pool.max_size)]
    try:
        with pytest.raises(PoolTimeout):
            pool.getconn(timeout=0.2)
        assert not app.fail_fast.unreachable
    finally:
        for conn in held:
            pool.putconn(conn)
    app.ping()
