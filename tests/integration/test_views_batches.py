"""The views write a batch's states, history and audit in a few statements at its end, and
keep recent states in memory: an event set aside in the middle of a batch leaves no trace of
the attempt, the batch's later events see the states its earlier ones made, and the states
kept in memory stay those of the store (both stores)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from services.projections.main import ProjectionsApplication, ProjectionsSettings
from services.projections.queries import okr_states
from services.projections.views import Tables, Views
from shared.consumer import Inbox, Outcome, Received, parse
from shared.sql import Database, Tx
from shared.store import store_env
from tests.integration.test_contract_consumers import envelope
from tests.integration.test_sql import round_trips
from tests.support import SECRET
from tests.system import STORES

KR, OBJECTIVE, CYCLE = (str(uuid.uuid4()) for _ in range(3))
PROGRESS = str(uuid.uuid4())


def _event(
    name: str,
    data: dict[str, Any],
    sequence: int,
    version: int,
    aggregate: str,
    time: str = "2027-01-04T09:00:00+00:00",
) -> Received:
    subject = f"okr.checkins.key_result_progress.{name}"
    body = {
        **envelope(subject, data, sequence, aggregateversion=version, time=time),
        "subject": aggregate,
    }
    return parse(subject, json.dumps(body).encode(), f"okr/checkins:{sequence}")


def _checked_in(
    key_result_id: str,
    number: int,
    value: float,
    sequence: int,
    aggregate: str,
    version: int = 0,
    time: str = "2027-01-04T09:00:00+00:00",
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
    return _event("checked_in", data, sequence, version or number + 1, aggregate, time)


def _opened(
    key_result_id: str, aggregate: str, time: str = "2027-01-04T09:00:00+00:00"
) -> Received:
    data = {"key_result_id": key_result_id, "objective_id": OBJECTIVE, "cycle_id": CYCLE}
    return _event("opened", data, 1, 1, aggregate, time)


@pytest.fixture
def app(store: dict[str, Any]) -> Iterator[ProjectionsApplication]:
    application = ProjectionsApplication(
        env=store_env(ProjectionsSettings(jwt_secret=SECRET, **store))
    )
    try:
        yield application
    finally:
        application.close()


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


def test_a_clock_that_stepped_back_keeps_each_history_in_time_order(
    app: ProjectionsApplication,
) -> None:
    """A state is valid from its event's time but never before the state it replaces, whether
    that one is staged in the batch, kept in memory or read from the store: `as_of` seeks an
    entity's history by time, so it must be in time order."""
    kr, progress = str(uuid.uuid4()), str(uuid.uuid4())
    at = "2027-01-04T10:00:{:02d}+00:00".format
    db = Database(app)
    inbox = Inbox(db, "views", Views())
    inbox.setup()
    opened = _opened(kr, progress, at(0))
    # The second check-in's clock is behind the first's (staged in the same batch).
    batch = [opened, _checked_in(kr, 1, 10.0, 2, progress, time=at(5))]
    batch.append(_checked_in(kr, 2, 20.0, 3, progress, time=at(3)))
    assert inbox.process(batch)[0] == [Outcome.APPLIED] * 3
    # Behind again, in the next batch: the state before it is the one kept in memory.
    assert inbox.process([_checked_in(kr, 3, 30.0, 4, progress, time=at(2))])[0] == [
        Outcome.APPLIED
    ]
    # And once more after a restart: the state before it is read from the store.
    again = Inbox(db, "views", Views())
    again.setup()
    assert again.process([_checked_in(kr, 4, 40.0, 5, progress, time=at(1))])[0] == [
        Outcome.APPLIED
    ]
    with db.transaction(commit=False) as tx:
        rows = tx.execute(
            "SELECT valid_from FROM {t}view_history WHERE kind = 'progress' AND id = ?"
            " ORDER BY pos",
            (kr,),
        ).fetchall()
        since = [r["valid_from"] for r in rows]
        assert since == [
            "2027-01-04T10:00:00.000000Z",
            *["2027-01-04T10:00:05.000000Z"] * 4,
        ]

        def current(as_of: str) -> Any:
            states = okr_states(tx, Tables(1), CYCLE, as_of)
            return states[("progress", kr)]["current"] if ("progress", kr) in states else "-"

        assert current("2027-01-04T09:59:59.000000Z") == "-"  # not opened yet
        assert current("2027-01-04T10:00:04.000000Z") is None  # opened, no check-in
        # Every check-in, the late-stamped ones too, after the first one's time.
        assert current("2027-01-04T10:00:05.000000Z") == 40.0
        assert current("2027-01-04T11:00:00.000000Z") == 40.0


@pytest.mark.parametrize("store", STORES[1:], indirect=True)  # round trips: PostgreSQL
def test_a_batch_of_known_aggregates_is_one_round_trip(
    app: ProjectionsApplication,
) -> None:
    """The inbox keeps the versions it committed: a batch whose aggregates it knows reads
    nothing before its writes, and those go with BEGIN and COMMIT in one round trip."""
    kr, progress = str(uuid.uuid4()), str(uuid.uuid4())
    db = Database(app)
    inbox = Inbox(db, "views", Views())
    inbox.setup()
    opened = _opened(kr, progress)
    assert (
        inbox.process([opened, _checked_in(kr, 1, 10.0, 2, progress)])[0] == [Outcome.APPLIED] * 2
    )
    batch = [_checked_in(kr, n, float(n), n + 1, progress) for n in (2, 3, 4)]
    with round_trips(db) as counted:
        assert inbox.process(batch)[0] == [Outcome.APPLIED] * 3
    assert sum(counted) == 1
    # A redelivery is still known for what it is.
    with round_trips(db) as counted:
        assert inbox.process(batch[-1:])[0] == [Outcome.DUPLICATE]
    assert sum(counted) == 0


class Counts:
    """A projector that keeps nothing: the inbox's own records are what is looked at."""

    def tables(self) -> list[str]:
        return []

    def load(self, tx: Tx) -> None:
        pass

    def apply(self, tx: Tx, event: Received) -> None:
        pass

    def flush(self, tx: Tx) -> None:
        pass

    def committed(self) -> None:
        pass

    def rolled_back(self) -> None:
        pass


def test_a_version_moved_by_another_writer_is_read_again(app: ProjectionsApplication) -> None:
    """Should another process ever apply the same consumer's events (not a supported
    deployment), an event that looks early against the versions kept in memory makes the
    inbox read that aggregate's version from the store again, instead of waiting forever."""
    kr, progress = str(uuid.uuid4()), str(uuid.uuid4())
    db = Database(app)
    inbox = Inbox(db, "counts", Counts())
    inbox.setup()
    opened = _opened(kr, progress)
    assert inbox.process([opened])[0] == [Outcome.APPLIED]
    # Another projector applies versions 2 and 3.
    other = Inbox(db, "counts", Counts())
    other.setup()
    checks = [_checked_in(kr, n, float(n), n + 1, progress) for n in (1, 2, 3)]
    assert other.process(checks[:2])[0] == [Outcome.APPLIED] * 2
    assert inbox.process(checks[2:])[0] == [Outcome.EARLY]  # it still knows version 1
    assert inbox.process(checks[2:])[0] == [Outcome.APPLIED]  # read again: version 3
    assert inbox.process(checks[:1])[0] == [Outcome.DUPLICATE]
