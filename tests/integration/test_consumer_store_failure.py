"""A store that fails while a consumer applies an event is a failure to retry, never a reason
to set the event aside as invalid: the event comes again and is applied once. Through the
real consumer and a real NATS server too, where the next batch is already checked when the
store fails under the one before: every event is still applied, once.

On PostgreSQL the projector's own connection is terminated mid-transaction (the server's
`AdminShutdown`, as when the server is killed); on SQLite the statement fails with the
driver's `OperationalError`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from typing import Any

import nats
import pytest
from eventsourcing.persistence import PersistenceError

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from shared.consumer import Consumer, Inbox, Outcome, Received, parse
from shared.nats import NatsLink
from shared.sql import Database, Tx
from shared.store import store_env
from tests.integration.test_contract_consumers import SCHEDULED, envelope
from tests.support import SECRET, NatsServer


class FailsOnce:
    """Records what it applies; the first time, the store fails under it."""

    def __init__(self, postgres: bool, fail_from: int = 1) -> None:
        self.postgres = postgres
        self.fail_from = fail_from  # the first event at or past this sequence fails
        self.failed = False

    def tables(self) -> Sequence[str]:
        return ["CREATE TABLE IF NOT EXISTS {t}seen (id TEXT PRIMARY KEY)"]

    def load(self, tx: Tx) -> None:
        pass

    def flush(self, tx: Tx) -> None:
        pass

    def committed(self) -> None:
        pass

    def rolled_back(self) -> None:
        pass

    def apply(self, tx: Tx, event: Received) -> None:
        if not self.failed and event.sequence >= self.fail_from:
            self.failed = True
            if self.postgres:
                tx.execute("SELECT pg_terminate_backend(pg_backend_pid())")
            else:
                tx.execute("SELECT * FROM {t}no_such_table")
        tx.execute("INSERT INTO {t}seen (id) VALUES (?)", (event.id,))


def _event() -> Received:
    body = envelope("okr.goals.cycle.scheduled", SCHEDULED, 1)
    return parse("okr.goals.cycle.scheduled", json.dumps(body).encode(), "okr/goals:1")


def test_a_store_failure_mid_apply_is_retried_not_rejected(store: dict[str, Any]) -> None:
    settings = ProjectionsSettings(jwt_secret=SECRET, **store)
    app = ProjectionsApplication(env=store_env(settings))
    try:
        db = Database(app)
        projector = FailsOnce(db.postgres)
        inbox = Inbox(db, "store-failure", projector)
        inbox.setup()
        event = _event()
        with pytest.raises(PersistenceError):
            inbox.process([event])
        outcomes, invalid = inbox.process([event])
        assert (outcomes, invalid) == ([Outcome.APPLIED], {})
        with db.transaction(commit=False) as tx:
            rows = tx.execute("SELECT id FROM {t}seen").fetchall()
        assert [r["id"] for r in rows] == [event.id]
    finally:
        app.close()


async def test_a_store_failure_with_a_batch_checked_behind_loses_nothing(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    count, batch = 60, 10
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        for n in range(1, count + 1):
            body = envelope("okr.goals.cycle.scheduled", SCHEDULED, n)
            await js.publish(
                "okr.goals.cycle.scheduled",
                json.dumps(body).encode(),
                stream="OKR",
                headers={"Nats-Msg-Id": f"okr/goals:{n}"},
            )
    finally:
        await nc.close()

    settings = ProjectionsSettings(jwt_secret=SECRET, **store)
    app = ProjectionsApplication(env=store_env(settings))
    link = NatsLink(nats_server.url, "store-failure")
    db = Database(app)
    projector = FailsOnce(db.postgres, fail_from=25)  # past two batches of ten
    consumer = Consumer(
        "projections",
        "store-failure",
        link,
        Inbox(db, "store-failure", projector),
        stream="OKR",
        subjects=["okr.goals.>"],
        batch_size=batch,
        ack_wait=3,
        poll_interval=0.2,
    )
    await link.start()
    await consumer.start()

    def applied() -> int:
        with db.transaction(commit=False) as tx:
            return len(tx.execute("SELECT id FROM {t}seen").fetchall())

    try:
        started = time.monotonic()
        while (done := await asyncio.to_thread(applied)) < count:
            assert time.monotonic() - started < 20, f"{done} of {count} applied"
            await asyncio.sleep(0.05)
        assert projector.failed
        assert consumer.last_error is None
        await asyncio.sleep(3.5)  # past the ack wait: whatever was redelivered came and went
        assert await asyncio.to_thread(applied) == count  # `seen` is keyed by the event id
        assert consumer.last_error is None
    finally:
        await consumer.stop()
        await link.close()
        app.close()
