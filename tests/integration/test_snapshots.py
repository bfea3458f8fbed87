"""Snapshots of a key result's progress (every 50 events) are taken on a thread of their own:
the save that crossed the interval does not wait for one, the snapshot is taken all the same,
and loading the aggregate afterwards gives the same state (both stores)."""

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
    take = app.take_snapshot

    def slow_take(*args: Any, **kwargs: Any) -> None:
        taking.set()
        assert release.wait(10), "the test never let the snapshot go"
        take(*args, **kwargs)

    app.take_snapshot = slow_take  # type: ignore[method-assign]
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
