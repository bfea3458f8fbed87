"""A consumer's batches commit without waiting for the disk; their messages are acknowledged
only once a sync has made them durable, one for the batches of `sync_every` seconds
(`Inbox.defers_sync`, `Consumer._unsynced`). On SQLite the sync is an fsync of the
write-ahead log; on PostgreSQL (whose batches commit with `synchronous_commit` off) a commit
that waits for the server's flush, and that checks that the store still holds every batch
this process committed, which a server that crashed before flushing would not."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import nats
import pytest
from eventsourcing.persistence import OperationalError
from nats.aio.msg import Msg

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from shared import consumer as consumer_module
from shared.consumer import (
    Consumer,
    Inbox,
    LostCommits,
    Outcome,
    Received,
    SyncUnconfirmed,
    parse,
)
from shared.sql import Database
from shared.store import store_env
from tests.integration.consumers import (
    SOURCE,
    FailsOnce,
    Running,
    goals_events,
    publish,
    running,
)
from tests.support import SECRET, NatsServer
from tests.system import STORES


async def _unacknowledged(url: str, durable: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().consumer_info("OKR", durable)).num_ack_pending
    finally:
        await nc.close()


def _database(store: dict[str, Any]) -> tuple[ProjectionsApplication, Database]:
    app = ProjectionsApplication(env=store_env(ProjectionsSettings(jwt_secret=SECRET, **store)))
    return app, Database(app)


def _recorded_sync(store: dict[str, Any], consumer: str) -> int:
    """What the consumer's last sync found applied (PostgreSQL)."""
    app, db = _database(store)
    try:
        with db.transaction(commit=False) as tx:
            row = tx.execute(
                "SELECT applied FROM {t}inbox_syncs WHERE consumer = ?", (consumer,)
            ).fetchone()
        return int(row["applied"])
    finally:
        app.close()


def _lose_one(store: dict[str, Any], consumer: str) -> None:
    """As if the server had crashed before flushing the consumer's last commit: the store
    counts one applied event fewer than the process committed."""
    app, db = _database(store)
    try:
        with db.transaction() as tx:
            tx.execute(
                "UPDATE {t}inbox_positions SET applied = applied - 1 WHERE consumer = ?",
                (consumer,),
            )
    finally:
        app.close()


class _Trace:
    """What the consumer did, in order: events committed, syncs done, messages acknowledged."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.committed = 0
        self.synced = 0  # events committed before the last sync began
        self.syncs = 0
        self.batches = 0
        self.acked = 0
        self.early_acks = 0  # acknowledged before a sync covered them
        process, sync, acknowledge = Inbox.process, Inbox.sync, Consumer.acknowledge

        def traced_process(inbox: Inbox, events: list[Received], *rest: Any) -> Any:
            done = process(inbox, events, *rest)
            self.batches += 1
            self.committed += len(events)
            return done

        def traced_sync(inbox: Inbox) -> None:
            covered = self.committed
            sync(inbox)
            self.syncs += 1
            self.synced = covered

        async def traced_acknowledge(consumer: Consumer, msgs: Sequence[Msg]) -> None:
            self.acked += len(msgs)
            if self.acked > self.synced:
                self.early_acks += 1
            await acknowledge(consumer, msgs)

        monkeypatch.setattr(Inbox, "process", traced_process)
        monkeypatch.setattr(Inbox, "sync", traced_sync)
        monkeypatch.setattr(Consumer, "acknowledge", traced_acknowledge)


@pytest.mark.parametrize("sync_every", [0.0, 0.05, 3600.0])
async def test_a_message_is_acknowledged_only_once_its_batch_is_durable(
    store: dict[str, Any],
    nats_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
    sync_every: float,
) -> None:
    trace = _Trace(monkeypatch)
    bodies = goals_events(200)
    await publish(nats_server.url, bodies)
    async with running(store, nats_server.url, name="sync", sync_every=sync_every) as run:
        assert await run.consumer.wait_for(SOURCE, 200, 10)
        postgres = run.db.postgres
    # Stopped: whatever was still waiting for a sync was synced and acknowledged.
    assert trace.committed == 200
    assert trace.acked == 200
    assert await _unacknowledged(nats_server.url, "projections-sync") == 0
    assert trace.early_acks == 0
    if postgres:
        # The syncs found every event this process committed, and recorded so.
        assert await asyncio.to_thread(_recorded_sync, store, "sync") == 200
    if sync_every == 0:
        assert trace.syncs >= trace.batches  # one per batch
    if sync_every == 3600:
        # Twenty batches of ten came back to back: synced when the stream went quiet.
        assert trace.batches >= 20
        assert trace.syncs * 4 <= trace.batches


async def test_acknowledgements_wait_for_the_sync_while_reads_see_the_batch_at_once(
    store: dict[str, Any], nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A long poll, a long sync interval, no look at the acknowledgements: nothing makes the
    # consumer sync until it stops.
    monkeypatch.setattr(consumer_module, "DOUBTS_CHECKED_EVERY_S", 3600)
    trace = _Trace(monkeypatch)
    bodies = goals_events(30)
    await publish(nats_server.url, bodies)
    async with running(
        store, nats_server.url, name="held", sync_every=3600, poll_interval=3600
    ) as run:
        # Applied, committed and visible to readers ...
        deadline = time.monotonic() + 10
        while len(run.projector.applied) < 30:
            assert time.monotonic() < deadline, "not applied"
            await asyncio.sleep(0.02)
        assert run.consumer.positions[SOURCE] == 30
        assert await asyncio.to_thread(run.seen) == {b["id"] for b in bodies}
        # ... and still unacknowledged: no sync has made them durable yet.
        assert trace.syncs == 0
        assert await _unacknowledged(nats_server.url, "projections-held") == 30
    assert trace.syncs == 1
    assert trace.acked == 30 and trace.early_acks == 0
    assert await _unacknowledged(nats_server.url, "projections-held") == 0


async def test_a_failed_sync_leaves_everything_unacknowledged_and_stops_the_process(
    tmp_path: Path, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fsync fails (a disk error): what was committed may never reach the disk, while the
    # process holds it for applied. Nothing is acknowledged, and the process is asked to stop.
    trace = _Trace(monkeypatch)

    def failing_sync(inbox: Inbox) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Inbox, "sync", failing_sync)
    stops: list[bool] = []
    bodies = goals_events(30)
    await publish(nats_server.url, bodies)
    store = {"data_dir": tmp_path / "data"}
    async with running(
        store,
        nats_server.url,
        name="failing",
        sync_every=0,
        on_sync_failed=lambda: stops.append(True),
    ) as run:
        deadline = time.monotonic() + 10
        while not run.consumer.last_error:
            assert time.monotonic() < deadline, "the failed sync went unnoticed"
            await asyncio.sleep(0.02)
        assert "sync failed" in run.consumer.last_error
        assert trace.committed == 10  # the first batch; nothing after it
        await asyncio.sleep(0.3)
        assert trace.committed == 10
    assert stops == [True]
    assert trace.acked == 0
    assert await _unacknowledged(nats_server.url, "projections-failing") >= 10


POSTGRES = STORES[1:]


def _syncing_at_stop(
    store: dict[str, Any], url: str, name: str, stops: list[bool]
) -> AbstractAsyncContextManager[Running]:
    """A consumer that syncs only as it stops (long sync and poll intervals), recording in
    `stops` the stop of its process that it asks for."""
    return running(
        store,
        url,
        name=name,
        sync_every=3600,
        poll_interval=3600,
        on_sync_failed=lambda: stops.append(True),
    )


@pytest.mark.parametrize("store", POSTGRES, indirect=True)
async def test_commits_a_postgresql_server_lost_leave_everything_unacknowledged_and_stop_it(
    store: dict[str, Any], nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "DOUBTS_CHECKED_EVERY_S", 3600)
    trace = _Trace(monkeypatch)
    stops: list[bool] = []
    await publish(nats_server.url, goals_events(30))
    async with _syncing_at_stop(store, nats_server.url, "lost", stops) as run:
        assert await run.consumer.wait_for(SOURCE, 30, 10)
        assert trace.syncs == 0
        await asyncio.to_thread(_lose_one, store, "lost")
    # The sync as it stopped found one applied event missing: nothing acknowledged.
    assert stops == [True]
    assert trace.acked == 0
    assert await _unacknowledged(nats_server.url, "projections-lost") == 30


async def test_commits_lost_found_by_a_batch_leave_the_rest_unacknowledged_and_stop_it(
    store: dict[str, Any], nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch that reads the inbox's memory again after a store failure finds commits lost
    # (see the inbox's own test below): the consumer stops as for a failed sync.
    monkeypatch.setattr(consumer_module, "DOUBTS_CHECKED_EVERY_S", 3600)
    trace = _Trace(monkeypatch)
    process = Inbox.process
    calls: list[int] = []

    def loses_at_the_second(inbox: Inbox, events: list[Received]) -> Any:
        calls.append(len(events))
        if len(calls) == 2:
            raise LostCommits("the store holds 9 applied events, this process committed 10")
        return process(inbox, events)

    monkeypatch.setattr(Inbox, "process", loses_at_the_second)
    stops: list[bool] = []
    await publish(nats_server.url, goals_events(30))
    async with _syncing_at_stop(store, nats_server.url, "reread", stops) as run:
        deadline = time.monotonic() + 10
        while not stops:
            assert time.monotonic() < deadline, "the lost commits went unnoticed"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert "sync failed" in (run.consumer.last_error or "")
        assert len(calls) == 2  # nothing applied after
    assert trace.acked == 0
    assert await _unacknowledged(nats_server.url, "projections-reread") == 30


@pytest.mark.parametrize("store", POSTGRES, indirect=True)
async def test_a_postgresql_sync_that_could_not_be_done_is_done_again_later(
    store: dict[str, Any], nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server went away during a sync: nothing is known lost, so the process goes on and
    # acknowledges once a later sync confirms the commits.
    trace = _Trace(monkeypatch)
    sync = Inbox.sync
    failures: list[bool] = []

    def fails_once(inbox: Inbox) -> None:
        if not failures:
            failures.append(True)
            raise SyncUnconfirmed("the server went away")
        sync(inbox)

    monkeypatch.setattr(Inbox, "sync", fails_once)
    stops: list[bool] = []
    await publish(nats_server.url, goals_events(30))
    async with running(
        store, nats_server.url, name="later", on_sync_failed=lambda: stops.append(True)
    ) as run:
        deadline = time.monotonic() + 10
        while await _unacknowledged(nats_server.url, "projections-later") or trace.acked < 30:
            assert time.monotonic() < deadline, "never acknowledged"
            await asyncio.sleep(0.05)
        assert run.consumer.positions[SOURCE] == 30
    assert failures == [True]
    assert stops == []
    assert trace.early_acks == 0


# --- the store's part ---------------------------------------------------------------------


def _received(count: int) -> list[Received]:
    return [
        parse(b["type"].rsplit(".", 1)[0], json.dumps(b).encode(), f"okr/goals:{b['sequence']}")
        for b in goals_events(count)
    ]


@pytest.fixture
def postgres_db(store: dict[str, Any]) -> Iterator[Database]:
    """The projections' store on PostgreSQL (the tests using it take `store` as POSTGRES)."""
    app, db = _database(store)
    yield db
    app.close()


@pytest.mark.parametrize("store", POSTGRES, indirect=True)
def test_a_postgresql_sync_checks_that_the_store_holds_what_was_committed(
    store: dict[str, Any], postgres_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = postgres_db
    inbox = Inbox(db, "checked", FailsOnce(True, fail_from=10**9))
    inbox.setup()
    inbox.process(_received(5))
    assert inbox.applied == 5
    inbox.sync()
    assert _recorded_sync(store, "checked") == 5
    # A process started afresh counts from what the store holds.
    again = Inbox(db, "checked", FailsOnce(True, fail_from=10**9))
    again.setup()
    assert again.applied == 5

    _lose_one(store, "checked")
    with pytest.raises(LostCommits, match="holds 4 applied events, this process committed 5"):
        inbox.sync()

    # A sync the store fails under is unconfirmed, not a loss.
    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OperationalError("connection refused")

    monkeypatch.setattr(db, "transaction", unreachable)
    with pytest.raises(SyncUnconfirmed):
        again.sync()


@pytest.mark.parametrize("store", POSTGRES, indirect=True)
def test_commits_lost_are_found_when_the_memory_is_read_again_after_a_store_failure(
    store: dict[str, Any], postgres_db: Database
) -> None:
    # Read again after a failure, the memory would otherwise take the store's smaller count
    # for its own, and the lost batch, unacknowledged, would then be acknowledged unapplied.
    def failed_once(consumer: str) -> tuple[Inbox, list[Received]]:
        """An inbox that applied five events, then failed under the next five."""
        inbox = Inbox(postgres_db, consumer, FailsOnce(True, fail_from=8))
        inbox.setup()
        events = _received(10)
        inbox.process(events[:5])
        with pytest.raises(OperationalError):  # the store fails under the next batch
            inbox.process(events[5:])
        return inbox, events[5:]

    inbox, rest = failed_once("reread")
    _lose_one(store, "reread")
    with pytest.raises(LostCommits):
        inbox.process(rest)
    # Without a loss, the batch after a failure applies as usual.
    fresh, rest = failed_once("fresh")
    assert fresh.process(rest)[0] == [Outcome.APPLIED] * 5
    assert fresh.applied == 10


@pytest.mark.parametrize("store", POSTGRES, indirect=True)
def test_a_postgresql_batch_commits_without_waiting_for_the_flush_for_itself_only(
    postgres_db: Database,
) -> None:
    db = postgres_db
    setting = "SELECT current_setting('synchronous_commit') AS v"
    insert = "INSERT INTO {t}t (n) VALUES (1)"
    db.create(["CREATE TABLE IF NOT EXISTS {t}t (n INTEGER)"])
    assert db.defers_sync
    with db.batch(synced=False) as tx:
        tx.execute(insert)  # a batch's reads join its transaction once it has written
        assert tx.execute(setting).fetchone()["v"] == "off"
    with db.transaction(synced=False) as tx:
        assert tx.execute(setting).fetchone()["v"] == "off"
    for _ in range(3):  # whichever connection of the pool comes next
        with db.batch() as tx:
            tx.execute(insert)
            assert tx.execute(setting).fetchone()["v"] == "on"
        with db.transaction() as tx:
            assert tx.execute(setting).fetchone()["v"] == "on"
    with db.transaction(commit=False) as tx:
        assert tx.execute("SELECT COUNT(*) AS n FROM {t}t").fetchone()["n"] == 4


@pytest.fixture
def views(tmp_path: Path) -> Iterator[Database]:
    settings = ProjectionsSettings(jwt_secret=SECRET, data_dir=tmp_path / "data")
    app = ProjectionsApplication(env=store_env(settings))
    db = Database(app)
    db.create(["CREATE TABLE IF NOT EXISTS {t}t (n INTEGER)"])
    yield db
    app.close()


def _level(db: Database) -> int:
    with db.transaction(commit=False) as tx:
        return int(tx.execute("PRAGMA synchronous").fetchone()[0])


def test_an_unsynced_transaction_commits_without_the_disk_and_leaves_the_connection_as_it_was(
    views: Database,
) -> None:
    assert views.defers_sync
    before = _level(views)
    assert before == 2  # FULL: every other commit waits for the disk
    with views.transaction(synced=False) as tx:
        assert tx.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        tx.execute("INSERT INTO {t}t (n) VALUES (1)")
    assert _level(views) == before
    with pytest.raises(OperationalError), views.batch(synced=False) as tx:
        tx.execute("INSERT INTO {t}no_such_table (n) VALUES (2)")
    assert _level(views) == before  # after a rollback too
    with views.transaction(commit=False) as tx:
        assert [r["n"] for r in tx.execute("SELECT n FROM {t}t").fetchall()] == [1]


def test_a_sync_fsyncs_the_write_ahead_log(
    views: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    wal = views._datastore.pool.db_name + "-wal"
    synced: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    with views.transaction(synced=False) as tx:
        tx.execute("INSERT INTO {t}t (n) VALUES (1)")
    assert synced == []  # the commit itself did not
    views.sync()
    assert synced == [wal]
    # A WAL made anew (SQLite removes it when its last connection closes) is the one synced.
    os.rename(wal, wal + ".old")
    views.sync()  # none there: nothing to sync
    os.rename(wal + ".old", wal)
    Path(wal + ".copy").write_bytes(Path(wal).read_bytes())
    os.replace(wal + ".copy", wal)
    views.sync()
    assert synced == [wal, wal]
    assert os.stat(wal).st_ino == os.fstat(views._datastore._wal._fd).st_ino


def test_by_default_a_failed_sync_stops_the_process_as_a_signal_would(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    consumer_module._stop_this_process()
    assert sent == [(os.getpid(), signal.SIGTERM)]
