"""The views write a batch's states, history and audit in a few statements at its end, and
keep recent states in memory: an event set aside in the middle of a batch leaves no trace of
the attempt, the batch's later events see the states its earlier ones made, and the states
kept in memory stay those of the store (both stores)."""

from __future__ import annotations

import json
import uuid
from typing import Any

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from services.projections.views import Views
from shared.consumer import Inbox, Outcome, Received, parse
from shared.sql import Database
from shared.store import store_env
from tests.integration.test_contract_consumers import envelope
from tests.support import SECRET

KR, OBJECTIVE, CYCLE = (str(uuid.uuid4()) for _ in range(3))
PROGRESS = str(uuid.uuid4())


def _event(
    name: str, data: dict[str, Any], sequence: int, version: int, aggregate: str
) -> Received:
    subject = f"okr.checkins.key_result_progress.{name}"
    body = {
        **envelope(subject, data, sequence, aggregateversion=version),
        "subject": aggregate,
    }
    return parse(subject, json.dumps(body).encode(), f"okr/checkins:{sequence}")


def _checked_in(
    key_result_id: str, number: int, value: float, sequence: int, aggregate: str, version: int = 0
) -> Received:
    data = {
        "check_in_id": str(uuid.uuid4()),
        "key_result_id": key_result_id,
        "number": number,
        "value": value,
        "confidence": 7,
        "note": "",
        "blockers": [],
    }
    return _event("checked_in", data, sequence, version or number + 1, aggregate)


def _views(app: ProjectionsApplication) -> dict[str, Any]:
    with Database(app).transaction(commit=False) as tx:
        progress = tx.execute(
            "SELECT state FROM {t}view_entities WHERE kind = 'progress' AND id = ?", (KR,)
        ).fetchone()
        history = tx.execute(
            "SELECT COUNT(*) AS n FROM {t}view_history WHERE kind = 'progress' AND id = ?", (KR,)
        ).fetchone()
        audit = tx.execute("SELECT pos FROM {t}view_audit ORDER BY pos").fetchall()
    return {
        "progress": json.loads(progress["state"]),
        "history": int(history["n"]),
        "audit": [int(r["pos"]) for r in audit],
    }


def test_an_event_set_aside_mid_batch_leaves_no_trace_of_the_attempt(
    store: dict[str, Any],
) -> None:
    settings = ProjectionsSettings(jwt_secret=SECRET, **store)
    app = ProjectionsApplication(env=store_env(settings))
    try:
        inbox = Inbox(Database(app), "views", Views())
        inbox.setup()
        opened = _event(
            "opened",
            {"key_result_id": KR, "objective_id": OBJECTIVE, "cycle_id": CYCLE},
            1,
            1,
            PROGRESS,
        )
        # A check-in on a key result whose progress was never opened cannot be applied.
        stray = _checked_in(str(uuid.uuid4()), 1, 1.0, 3, str(uuid.uuid4()), version=1)
        batch = [
            opened,
            _checked_in(KR, 1, 10.0, 2, PROGRESS),
            stray,
            _checked_in(KR, 2, 20.0, 4, PROGRESS),
        ]
        outcomes, invalid = inbox.process(batch)
        assert outcomes == [Outcome.APPLIED, Outcome.APPLIED, Outcome.INVALID, Outcome.APPLIED]
        assert list(invalid) == [2]
        views = _views(app)
        # The second check-in read the state the first one staged in the same batch.
        assert views["progress"]["check_in_count"] == 2
        assert views["progress"]["current"] == 20.0
        assert views["history"] == 3  # opened, two check-ins: the failed attempt wrote none
        assert views["audit"] == [1, 2, 3]

        # The next batch starts from the state kept in memory, which is the stored one.
        outcomes, _ = inbox.process([_checked_in(KR, 3, 30.0, 5, PROGRESS)])
        assert outcomes == [Outcome.APPLIED]
        assert _views(app)["progress"]["check_in_count"] == 3

        # A fresh projector (a restart) reads the same state from the store.
        again = Inbox(Database(app), "views", Views())
        again.setup()
        outcomes, _ = again.process([_checked_in(KR, 4, 40.0, 6, PROGRESS)])
        assert outcomes == [Outcome.APPLIED]
        after = _views(app)
        assert after["progress"]["check_in_count"] == 4
        assert after["audit"] == [1, 2, 3, 4, 5]
    finally:
        app.close()
