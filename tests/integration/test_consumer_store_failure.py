"""A store that fails while a consumer applies an event is a failure to retry, never a reason
to set the event aside as invalid: the event comes again and is applied once.

On PostgreSQL the projector's own connection is terminated mid-transaction (the server's
`AdminShutdown`, as when the server is killed); on SQLite the statement fails with the
driver's `OperationalError`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from eventsourcing.persistence import PersistenceError

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from shared.consumer import Inbox, Outcome, Received, parse
from shared.sql import Database, Tx
from shared.store import store_env
from tests.integration.test_contract_consumers import SCHEDULED, envelope
from tests.support import SECRET


class FailsOnce:
    """Records what it applies; the first time, the store fails under it."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres
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
        if not self.failed:
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
