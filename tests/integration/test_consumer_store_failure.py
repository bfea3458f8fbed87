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
from typing import Any

import pytest
from eventsourcing.persistence import PersistenceError

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from shared.consumer import Inbox, Outcome, Received, parse
from shared.sql import Database
from shared.store import store_env
from tests.integration.consumers import FailsOnce, goals_events, publish, running
from tests.integration.test_contract_consumers import SCHEDULED, envelope
from tests.support import SECRET, NatsServer


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
    count = 60
    await publish(nats_server.url, goals_events(count))
    # Batches of ten; the store fails under the third, with the fourth checked behind it.
    async with running(
        store, nats_server.url, name="store-failure", fail_from=25, ack_wait=3
    ) as run:
        started = time.monotonic()
        while (done := len(await asyncio.to_thread(run.seen))) < count:
            assert time.monotonic() - started < 20, f"{done} of {count} applied"
            await asyncio.sleep(0.05)
        assert run.projector.failed
        assert run.consumer.last_error is None
        await asyncio.sleep(3.5)  # past the ack wait: whatever was redelivered came and went
        assert len(await asyncio.to_thread(run.seen)) == count  # `seen` is keyed by event id
        assert run.consumer.last_error is None
