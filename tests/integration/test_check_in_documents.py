"""A key result's check-ins live in documents written with their events, not in the
aggregate's state (both stores): a store from before that has them rebuilt from its events at
start, and a snapshot of the old, larger state still loads."""

from __future__ import annotations

import uuid
from typing import Any

from eventsourcing.domain import Snapshot

from services.checkins.application import CHECK_IN_DOCUMENT, CHECK_IN_LOOKUP, CheckinsApplication
from services.checkins.domain import (
    KeyResultProgress,
    KeyResultTerms,
    check_in_entry,
    corrected_entry,
)
from services.checkins.main import CheckinsSettings
from shared.domain import CommandContext, command_context
from shared.store import Document, Lookup, store_env
from tests.support import SECRET

CONTEXT = CommandContext("alice", "c", "c")


def _app(store: dict[str, Any]) -> CheckinsApplication:
    return CheckinsApplication(store_env(CheckinsSettings(jwt_secret=SECRET, **store)))


def _terms() -> KeyResultTerms:
    return KeyResultTerms(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "number", 0, 100)


def _history(
    terms: KeyResultTerms, check_ins: int
) -> tuple[KeyResultProgress, dict[str, dict[str, Any]]]:
    """A progress with `check_ins` check-ins, every third one corrected twice, and the
    documents they should have."""
    entries: dict[str, dict[str, Any]] = {}
    with command_context(CONTEXT):
        progress = KeyResultProgress.open(terms)
        for n in range(1, check_ins + 1):
            checked_in = progress.check_in(terms, float(n), 5, f"note {n}", [])
            entry = check_in_entry(checked_in)
            cid = checked_in.check_in_id
            if n % 3 == 0:
                for value in (n + 0.5, n + 0.25):
                    entry = corrected_entry(
                        entry, progress.correct(terms, entry, cid, value, None, "fix")
                    )
            entries[str(cid)] = entry
    return progress, entries


def test_check_ins_written_before_documents_get_them_at_start(store: dict[str, Any]) -> None:
    terms = [_terms(), _terms()]
    app = _app(store)
    try:
        expected: dict[str, dict[str, Any]] = {}
        for t in terms:
            progress, entries = _history(t, 12)
            # As the service saved them before: events and lookups, no documents.
            lookups = [Lookup(CHECK_IN_LOOKUP, key, str(progress.id)) for key in entries]
            app.save(progress, lookups=lookups)
            expected |= entries
        assert app.count_documents(CHECK_IN_DOCUMENT) == 0
    finally:
        app.close()

    again = _app(store)  # rebuilds the documents
    try:
        assert again.count_documents(CHECK_IN_DOCUMENT) == 24
        for key, entry in expected.items():
            assert again.find_document(CHECK_IN_DOCUMENT, key) == entry
        progress_of_first = again.progress(terms[0].id)
        assert progress_of_first is not None and progress_of_first.count == 12
        page = again.check_ins(progress_of_first, before=6, limit=3)
        assert [e["number"] for e in page] == [5, 4, 3]
        assert page[2]["value"] == 3.25 and len(page[2]["corrections"]) == 2
        assert again.add_missing_check_ins() == 0  # nothing left to do
    finally:
        again.close()


def test_documents_written_since_are_kept_by_the_rebuild(store: dict[str, Any]) -> None:
    t = _terms()
    app = _app(store)
    try:
        progress, entries = _history(t, 3)
        keys = list(entries)
        lookups = [Lookup(CHECK_IN_LOOKUP, key, str(progress.id)) for key in keys]
        newer = entries[keys[0]] | {"note": "written by a newer process"}
        app.save(
            progress,
            lookups=lookups,
            documents=[Document(CHECK_IN_DOCUMENT, keys[0], str(progress.id), 1, newer)],
        )
        assert app.add_missing_check_ins() == 1
        assert app.find_document(CHECK_IN_DOCUMENT, keys[0]) == newer
        assert app.find_document(CHECK_IN_DOCUMENT, keys[1]) == entries[keys[1]]
    finally:
        app.close()


def test_a_snapshot_of_the_old_state_still_loads(store: dict[str, Any]) -> None:
    t = _terms()
    app = _app(store)
    try:
        progress, entries = _history(t, 4)
        app.save(progress)
        taken = Snapshot.take(progress)
        state = dict(taken.state)
        assert state.pop("class_version") == 2 and state.pop("count") == 4
        # Version 1 kept every check-in in the state, and named the latest.
        old = Snapshot(
            originator_id=taken.originator_id,
            originator_version=taken.originator_version,
            timestamp=taken.timestamp,
            topic=taken.topic,
            state=state | {"check_ins": entries, "latest": list(entries)[-1]},
        )
        app.snapshots.put([old])  # type: ignore[union-attr]
        loaded = app.repository.get(progress.id)
        assert loaded.count == 4 and loaded.version == progress.version
        assert not hasattr(loaded, "check_ins") and not hasattr(loaded, "latest")
        with command_context(CONTEXT):
            loaded.check_in(t, 50.0, 6, "", [])  # numbers on from the lifted count
        assert loaded.count == 5
    finally:
        app.close()
