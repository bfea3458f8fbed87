"""Snapshots of a key result's progress (every 50 events) are written in the transaction of the
save that reached the interval, from the aggregate as it was saved: there as soon as the save
returns, never without its events, and the state the store's events make (both stores). A
snapshot that cannot be made is skipped; the save goes on."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from eventsourcing.persistence import IntegrityError

from services.checkins.application import CheckinsApplication
from services.checkins.domain import KeyResultProgress, KeyResultTerms
from services.checkins.main import CheckinsSettings
from shared.domain import CommandContext, command_context
from shared.store import store_env
from tests.support import SECRET

INTERVAL = CheckinsApplication.snapshotting_intervals[KeyResultProgress]
CTX = CommandContext("alice", "c", "c")


def _terms() -> KeyResultTerms:
    return KeyResultTerms(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "number", 0, 100)


def _open(store: dict[str, Any]) -> CheckinsApplication:
    return CheckinsApplication(store_env(CheckinsSettings(jwt_secret=SECRET, **store)))


def _snapshot_versions(app: CheckinsApplication, aggregate_id: uuid.UUID) -> list[int]:
    return [s.originator_version for s in app.snapshots.get(aggregate_id)]  # type: ignore[union-attr]


def test_the_save_that_reaches_the_interval_writes_its_snapshot(store: dict[str, Any]) -> None:
    app = _open(store)
    recorder: Any = app.snapshots.recorder  # type: ignore[union-attr]

    def own_transaction(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a snapshot was written in a transaction of its own")

    recorder.insert_events = own_transaction
    try:
        terms = _terms()
        with command_context(CTX):
            progress = KeyResultProgress.open(terms)
            for n in range(INTERVAL - 1):  # the opening event is version 1
                progress.check_in(terms, float(n), 5, "", [])
                app.save(progress)
                if progress.version < INTERVAL:
                    assert _snapshot_versions(app, progress.id) == []
        assert progress.version == INTERVAL
        # Written by the save itself: nothing to wait for.
        assert _snapshot_versions(app, progress.id) == [INTERVAL]
        loaded = app.repository.get(progress.id)
        assert loaded.version == INTERVAL
        assert loaded.count == progress.count == INTERVAL - 1
    finally:
        app.close()

    again = _open(store)  # and it is stored, not only in memory
    try:
        assert _snapshot_versions(again, progress.id) == [INTERVAL]
    finally:
        again.close()


def test_a_save_that_fails_keeps_no_snapshot(store: dict[str, Any]) -> None:
    """Two copies of one aggregate: the second save of the same versions conflicts, and its
    snapshot goes with its events."""
    app = _open(store)
    try:
        terms = _terms()
        with command_context(CTX):
            progress = KeyResultProgress.open(terms)
            for n in range(INTERVAL - 2):
                progress.check_in(terms, float(n), 5, "", [])
            app.save(progress)
            assert progress.version == INTERVAL - 1
            rival = app.repository.get(progress.id)
            progress.check_in(terms, 1.0, 5, "", [])
            rival.check_in(terms, 2.0, 5, "", [])
            app.save(progress)
            assert _snapshot_versions(app, progress.id) == [INTERVAL]
            taken = list(app.snapshots.get(progress.id))  # type: ignore[union-attr]
            with pytest.raises(IntegrityError):
                app.save(rival)
        # The first save's snapshot, untouched by the one that failed.
        assert list(app.snapshots.get(progress.id)) == taken  # type: ignore[union-attr]
        assert app.repository.get(progress.id).version == INTERVAL
    finally:
        app.close()


def test_a_snapshot_that_cannot_be_made_does_not_fail_the_save(
    store: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = _open(store)

    def broken(aggregate: Any) -> Any:
        raise ValueError("cannot encode")

    app._snapshot_of = broken  # type: ignore[method-assign]
    try:
        terms = _terms()
        with command_context(CTX), caplog.at_level(logging.WARNING, "shared.store"):
            progress = KeyResultProgress.open(terms)
            for n in range(INTERVAL - 1):
                progress.check_in(terms, float(n), 5, "", [])
            recordings = app.save(progress)
        assert len(recordings) == INTERVAL
        assert _snapshot_versions(app, progress.id) == []
        assert app.repository.get(progress.id).version == INTERVAL
        assert any("snapshot" in r.getMessage() for r in caplog.records)
    finally:
        app.close()


def test_a_snapshot_made_from_memory_is_the_one_the_store_makes(store: dict[str, Any]) -> None:
    app = _open(store)
    try:
        terms = _terms()
        with command_context(CTX):
            progress = KeyResultProgress.open(terms)
            app.save(progress)
            for n in range(INTERVAL - 2):
                progress.check_in(terms, float(n), n % 11, f"note {n}", ["a blocker"] * (n % 2))
                app.save(progress)
            # The save that reaches the interval holds two events of `other`: its snapshot is
            # taken at the version saved, one past the interval, without reading anything back.
            others = _terms()
            other = KeyResultProgress.open(others)
            for n in range(INTERVAL - 1):
                other.check_in(others, float(n), 5, "", [])
            other.check_in(others, 99.0, 5, "", [])
            progress.check_in(terms, 1.5, 9, "last", [])
            app.save(progress, other)
        assert (progress.version, other.version) == (INTERVAL, INTERVAL + 1)
        for aggregate in (progress, other):
            taken = list(app.snapshots.get(aggregate.id))  # type: ignore[union-attr]
            assert [s.originator_version for s in taken] == [aggregate.version]
            # What the store's events make of it at that version, the way the library does.
            replayed = app.repository.get(
                aggregate.id, version=aggregate.version, projector_func=_replay
            )
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
