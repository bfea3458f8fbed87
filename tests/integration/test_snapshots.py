"""Snapshots of a key result's progress (every 50 events) are written on a thread of their own:
the save that crossed the interval does not wait for one, the snapshot is taken all the same,
and loading the aggregate afterwards gives the same state (both stores). A snapshot is made
from the aggregate as it was saved, and is the one the store's events make."""

from __future__ import annotations

import threading
import uuid
from typing import Any

from services.checkins.application import CheckinsApplication
from services.checkins.domain import KeyResultProgress, KeyResultTerms
from services.checkins.main import CheckinsSettings
from shared.domain import CommandContext, command_context
from shared.store import store_env
from tests.support import SECRET

INTERVAL = CheckinsApplication.snapshotting_intervals[KeyResultProgress]


def test_a_snapshot_is_taken_without_holding_up_the_save(store: dict[str, Any]) -> None:
    app = CheckinsApplication(store_env(CheckinsSettings(jwt_secret=SECRET, **store)))
    taking = threading.Event()
    release = threading.Event()
    recorder: Any = app.snapshots.recorder  # type: ignore[union-attr]
    write = recorder.insert_events

    def slow_write(*args: Any, **kwargs: Any) -> Any:
        taking.set()
        assert release.wait(10), "the test never let the snapshot go"
        return write(*args, **kwargs)

    recorder.insert_events = slow_write
    try:
        terms = KeyResultTerms(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "number", 0, 100)
        with command_context(CommandContext("alice", "c", "c")):
            progress = KeyResultProgress.open(terms)
            for n in range(INTERVAL - 1):  # the opening event is version 1
                progress.check_in(terms, float(n), 5, "", [])
                app.save(progress)
        assert progress.version == INTERVAL
        assert taking.wait(10), "no snapshot was asked for at the interval"
        # The save returned while the snapshot is still held: it did not wait for it.
        assert list(app.snapshots.get(progress.id)) == []  # type: ignore[union-attr]

        release.set()
        app.wait_for_snapshots()
        snapshots = list(app.snapshots.get(progress.id))  # type: ignore[union-attr]
        assert [s.originator_version for s in snapshots] == [INTERVAL]
        loaded = app.repository.get(progress.id)
        assert loaded.version == INTERVAL
        assert loaded.count == progress.count == INTERVAL - 1
    finally:
        release.set()
        app.close()


def test_closing_with_snapshots_waiting_loses_nothing(store: dict[str, Any]) -> None:
    app = CheckinsApplication(store_env(CheckinsSettings(jwt_secret=SECRET, **store)))
    every = [
        KeyResultTerms(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "number", 0, 100) for _ in range(5)
    ]
    with command_context(CommandContext("alice", "c", "c")):
        progresses = [KeyResultProgress.open(terms) for terms in every]
        for progress, terms in zip(progresses, every, strict=True):
            for n in range(INTERVAL - 1):
                progress.check_in(terms, float(n), 5, "", [])
        app.save(*progresses)
    app.close()  # five snapshots were due: taken or dropped, never raised

    again = CheckinsApplication(store_env(CheckinsSettings(jwt_secret=SECRET, **store)))
    try:
        for progress in progresses:
            taken = list(again.snapshots.get(progress.id))  # type: ignore[union-attr]
            assert [s.originator_version for s in taken] in ([], [INTERVAL])
            loaded = again.repository.get(progress.id)
            assert (loaded.version, loaded.count) == (INTERVAL, INTERVAL - 1)
    finally:
        again.close()


def test_a_snapshot_made_from_memory_is_the_one_the_store_makes(store: dict[str, Any]) -> None:
    app = CheckinsApplication(store_env(CheckinsSettings(jwt_secret=SECRET, **store)))
    reloaded: list[Any] = []  # the aggregates whose snapshot was read back from the store
    take = app.take_snapshot

    def counted(aggregate_id: Any, **kwargs: Any) -> None:
        reloaded.append(aggregate_id)
        take(aggregate_id, **kwargs)

    app.take_snapshot = counted  # type: ignore[method-assign]
    try:
        terms = KeyResultTerms(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "number", 0, 100)
        with command_context(CommandContext("alice", "c", "c")):
            progress = KeyResultProgress.open(terms)
            app.save(progress)
            for n in range(INTERVAL - 2):
                progress.check_in(terms, float(n), n % 11, f"note {n}", ["a blocker"] * (n % 2))
                app.save(progress)
            # The save that reaches the interval holds two events of the same aggregate: the
            # version due is not the saved one, so that snapshot is read from the store.
            others = KeyResultTerms(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "number", 0, 100)
            other = KeyResultProgress.open(others)
            for n in range(INTERVAL - 1):
                other.check_in(others, float(n), 5, "", [])
            other.check_in(others, 99.0, 5, "", [])
            progress.check_in(terms, 1.5, 9, "last", [])
            app.save(progress, other)
        assert (progress.version, other.version) == (INTERVAL, INTERVAL + 1)
        app.wait_for_snapshots()
        assert reloaded == [other.id]
        for aggregate in (progress, other):
            taken = list(app.snapshots.get(aggregate.id))  # type: ignore[union-attr]
            assert [s.originator_version for s in taken] == [INTERVAL]
            # What the store's events make of it at that version, the way the library does.
            replayed = app.repository.get(aggregate.id, version=INTERVAL, projector_func=_replay)
            assert taken[0].state == KeyResultProgress.Snapshot.take(replayed).state
            loaded = app.repository.get(aggregate.id)
            assert loaded.__dict__.keys() == aggregate.__dict__.keys()
            assert (loaded.version, loaded.count) == (aggregate.version, aggregate.count)
    finally:
        app.close()


def _replay(aggregate: Any, events: Any) -> Any:
    """The library's projector, from the events alone (no snapshot)."""
    from eventsourcing.application import project_aggregate

    return project_aggregate(aggregate, events)
