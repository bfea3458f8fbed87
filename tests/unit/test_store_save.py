"""`ServiceApplication.save` gathers plain aggregates' events itself (skipping the library's
runtime-Protocol checks) and must record exactly what the library's `save` records."""

from __future__ import annotations

import uuid

from eventsourcing.application import Application

from services.checkins.application import CheckinsApplication
from services.checkins.domain import KeyResultProgress, KeyResultTerms
from shared.domain import CommandContext, command_context
from shared.store import Lookup

ENV = {
    "PERSISTENCE_MODULE": "eventsourcing.sqlite",
    "SQLITE_DBNAME": ":memory:",
    "APPLICATION_RECORDER_TOPIC": "shared.store:SQLiteStoreRecorder",
}


def _progresses(n: int, check_ins: int) -> list[KeyResultProgress]:
    made = []
    with command_context(CommandContext("alice", "c", "c")):
        for _ in range(n):
            t = KeyResultTerms(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "number", 0, 100)
            progress = KeyResultProgress.open(t)
            for v in range(check_ins):
                progress.check_in(t, float(v), 5, "", [])
            made.append(progress)
    return made


def test_save_records_what_the_library_records() -> None:
    ours, theirs = CheckinsApplication(env=ENV), CheckinsApplication(env=ENV)
    try:
        first, second = _progresses(2, 3)
        twin_first, twin_second = (KeyResultProgress.__new__(KeyResultProgress) for _ in "ab")
        for twin, original in ((twin_first, first), (twin_second, second)):
            twin.__dict__ = dict(original.__dict__, _pending_events=list(original.pending_events))
        lookup = Lookup("check_in", "k", str(first.id))
        mine = ours.save(first, second, lookups=[lookup])
        library = Application.save(theirs, twin_first, twin_second, lookups=[lookup])
        assert [
            (r.notification.originator_id, r.notification.originator_version, r.notification.id)
            for r in mine
        ] == [
            (r.notification.originator_id, r.notification.originator_version, r.notification.id)
            for r in library
        ]
        assert len(mine) == 8 and not first.pending_events and not second.pending_events
        assert ours.find_lookup("check_in", "k") == theirs.find_lookup("check_in", "k")
        for app in (ours, theirs):
            assert app.repository.get(first.id).count == 3
    finally:
        ours.close()
        theirs.close()


def test_anything_but_aggregates_goes_to_the_library() -> None:
    app = CheckinsApplication(env=ENV)
    try:
        [progress] = _progresses(1, 1)
        events = list(progress.collect_events())
        recordings = app.save(*events)  # domain events, not aggregates
        assert [r.notification.originator_version for r in recordings] == [1, 2]
        assert app.save(None) == []
    finally:
        app.close()
