"""The check-in use cases. Each takes a unit of work, the catalogue, ids and primitives, and
returns the aggregate the command changed; it knows nothing of HTTP or NATS.
"""

from __future__ import annotations

import logging
from datetime import date, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from services.checkins.domain import (
    KeyResultProgress,
    KeyResultTerms,
    TeamCheckIn,
    check_in_entry,
    corrected_entry,
    progress_id_for,
)
from shared.catalogue import Catalogue, CycleEntry, KeyResultEntry
from shared.domain import InvalidValue, NotFound, NotYetKnown, RuleBroken, check
from shared.permissions import Permission, require
from shared.store import Document, ServiceApplication
from shared.writer import UnitOfWork

log = logging.getLogger(__name__)

CHECK_IN_LOOKUP = "check_in"
CHECK_IN_DOCUMENT = "check_in"


class CheckinsApplication(ServiceApplication):
    name = "checkins"
    snapshotting_intervals = {KeyResultProgress: 50}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_missing_check_ins()

    def add_missing_check_ins(self) -> int:
        """Write the document of every check-in that has none, from the events.

        A store written before check-ins were documents has each check-in's lookup but no
        document; this folds those key results' histories once, at start. Cheap when there is
        nothing to do (two counts). Returns how many key results it folded."""
        if self.count_lookups(CHECK_IN_LOOKUP) == self.count_documents(CHECK_IN_DOCUMENT):
            return 0
        folded = 0
        for progress_id in self.lookup_values(CHECK_IN_LOOKUP):
            entries: dict[str, dict[str, Any]] = {}
            for event in self.events.get(UUID(progress_id)):
                if isinstance(event, KeyResultProgress.CheckedIn):
                    entries[str(event.check_in_id)] = check_in_entry(event)
                elif isinstance(event, KeyResultProgress.CheckInCorrected):
                    key = str(event.check_in_id)
                    entries[key] = corrected_entry(entries[key], event)
            self.add_missing_documents(
                [
                    Document(CHECK_IN_DOCUMENT, key, progress_id, entry["number"], entry)
                    for key, entry in entries.items()
                ]
            )
            folded += 1
        log.info("check-in documents written from the events of %d key results", folded)
        return folded

    def check_ins(
        self, progress: KeyResultProgress, *, before: int | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """A page of the check-ins of `progress`, newest first, numbered below `before`."""
        return self.documents_of(CHECK_IN_DOCUMENT, progress.id, before=before, limit=limit)

    def check_in(self, check_in_id: UUID) -> tuple[KeyResultProgress, dict[str, Any]] | None:
        """A check-in, with the progress that holds it."""
        entry = self.find_document(CHECK_IN_DOCUMENT, str(check_in_id))
        if entry is None:
            return None
        progress = self.progress(UUID(entry["key_result_id"]))
        return None if progress is None else (progress, entry)

    def progress(self, key_result_id: UUID) -> KeyResultProgress | None:
        try:
            agg: Any = self.repository.get(progress_id_for(key_result_id))
        except AggregateNotFoundError:
            return None
        return agg if isinstance(agg, KeyResultProgress) else None

    def meeting(self, meeting_id: UUID) -> TeamCheckIn | None:
        try:
            agg: Any = self.repository.get(meeting_id)
        except AggregateNotFoundError:
            return None
        return agg if isinstance(agg, TeamCheckIn) else None


# --- what the catalogue allows ------------------------------------------------------------


def _not_yet_known(what: str, ident: UUID) -> NotYetKnown:
    return NotYetKnown(
        f"No {what} {ident} is known to the check-in service yet. It learns of new ones from "
        "the goals service's events, usually within a second: retry shortly, or send "
        "`min_position` with the position the goals service answered to wait for it."
    )


def known_key_result(catalogue: Catalogue, key_result_id: UUID) -> KeyResultEntry:
    entry = catalogue.key_result(key_result_id)
    if entry is None:
        if catalogue.is_current():
            raise NotFound(f"No key result with id {key_result_id}")
        raise _not_yet_known("key result", key_result_id)
    return entry


def _open_cycle(catalogue: Catalogue, cycle_id: UUID, doing: str) -> CycleEntry:
    cycle = catalogue.cycle(cycle_id)
    check(cycle is not None, NotYetKnown, f"Cycle {cycle_id} is not known yet; retry shortly")
    assert cycle is not None
    check(
        cycle.status != "scheduled",
        RuleBroken,
        f"Cycle {cycle.name!r} has not started (it starts on {cycle.starts_on}): "
        f"{doing} open when it is started",
    )
    check(
        cycle.status != "closed",
        RuleBroken,
        f"Cycle {cycle.name!r} is closed: it takes no more {doing}",
    )
    return cycle


def require_check_in_on(catalogue: Catalogue, kr: KeyResultEntry) -> None:
    """Check-ins and corrections: a member of the key result's team, or its owner."""
    objective = catalogue.objective(kr.objective_id)
    require(Permission.CHECK_IN, team=objective.team if objective else None, owner=kr.owner)


def terms_for_check_in(catalogue: Catalogue, key_result_id: UUID) -> KeyResultTerms:
    """The key result, if it takes check-ins now; otherwise the reason it does not."""
    kr = known_key_result(catalogue, key_result_id)
    check(
        not kr.removed,
        RuleBroken,
        f"Key result {kr.id} was removed ({kr.removed_reason}): it takes no check-ins",
    )
    objective = catalogue.objective(kr.objective_id)
    check(
        objective is None or not objective.archived,
        RuleBroken,
        f"The objective of key result {kr.id} is archived: it takes no check-ins",
    )
    _open_cycle(catalogue, kr.cycle_id, "check-ins")
    return KeyResultTerms(kr.id, kr.objective_id, kr.cycle_id, kr.kind, kr.start, kr.target)


# --- check-ins ----------------------------------------------------------------------------


def check_in(
    uow: UnitOfWork,
    catalogue: Catalogue,
    *,
    key_result_id: UUID,
    value: float,
    confidence: int,
    note: str,
    blockers: list[str],
    expected: int | None,
) -> KeyResultProgress:
    require_check_in_on(catalogue, known_key_result(catalogue, key_result_id))
    terms = terms_for_check_in(catalogue, key_result_id)
    progress = uow.find(progress_id_for(key_result_id), KeyResultProgress)
    if progress is None:
        uow.expect_version_absent(expected)
        progress = uow.add(KeyResultProgress.open(terms))
    else:
        uow.expect_version(progress, expected)
    checked_in = progress.check_in(terms, value, confidence, note, blockers)
    check_in_id = checked_in.check_in_id
    uow.index(CHECK_IN_LOOKUP, check_in_id, progress.id)
    uow.put_document(
        Document(
            CHECK_IN_DOCUMENT,
            str(check_in_id),
            str(progress.id),
            checked_in.number,
            check_in_entry(checked_in),
        )
    )
    uow.respond(check_in_id, key_result_id=str(key_result_id))
    return progress


def correct_check_in(
    uow: UnitOfWork,
    catalogue: Catalogue,
    progress_id: UUID,
    *,
    check_in_id: UUID,
    value: float | None,
    confidence: int | None,
    reason: str,
    expected: int | None,
) -> KeyResultProgress:
    progress = uow.get(progress_id, KeyResultProgress, "check-in")
    require_check_in_on(catalogue, known_key_result(catalogue, progress.key_result_id))
    uow.expect_version(progress, expected)
    terms = terms_for_check_in(catalogue, progress.key_result_id)
    entry = uow.document(CHECK_IN_DOCUMENT, check_in_id)
    if entry is not None and entry["key_result_id"] != str(progress.key_result_id):
        entry = None  # another key result's check-in: not one of this aggregate's
    corrected = progress.correct(terms, entry, check_in_id, value, confidence, reason)
    assert entry is not None
    uow.put_document(
        Document(
            CHECK_IN_DOCUMENT,
            str(check_in_id),
            str(progress.id),
            entry["number"],
            corrected_entry(entry, corrected),
        )
    )
    uow.respond(check_in_id, key_result_id=str(progress.key_result_id))
    return progress


# --- meetings -----------------------------------------------------------------------------


def hold_meeting(
    uow: UnitOfWork,
    catalogue: Catalogue,
    *,
    team: str,
    cycle_id: UUID,
    held_on: date,
    today: date,
    wins: list[str],
    learnings: list[str],
    blockers: list[str],
    priorities: list[str],
    expected: int | None = None,
) -> TeamCheckIn:
    require(Permission.HOLD_MEETING, team=team)
    cycle = catalogue.cycle(cycle_id)
    if cycle is None:
        if catalogue.is_current():
            raise NotFound(f"No cycle with id {cycle_id}")
        raise _not_yet_known("cycle", cycle_id)
    # A day of slack: a team east of UTC may already be in tomorrow.
    check(
        held_on <= today + timedelta(days=1),
        InvalidValue,
        "held_on must not be in the future",
        "held_on",
    )
    _open_cycle(catalogue, cycle_id, "check-in meetings")
    check(
        catalogue.team_in_cycle(team, cycle_id),
        RuleBroken,
        f"Team {team!r} has no objectives in cycle {cycle.name!r}",
    )
    # The meeting is checked before the state: bad input is a 422 whatever exists.
    meeting = TeamCheckIn.hold(
        team=team,
        cycle_id=cycle_id,
        held_on=held_on,
        wins=wins,
        learnings=learnings,
        blockers=blockers,
        priorities=priorities,
    )
    existing = uow.find(meeting.id, TeamCheckIn)
    if existing is not None:
        uow.expect_version(existing, expected)
    else:
        uow.expect_version_absent(expected)
    check(
        existing is None,
        RuleBroken,
        f"Team {team!r} already recorded its check-in meeting of {held_on} ({meeting.id}): "
        "amend that one",
    )
    return uow.add(meeting)


def amend_meeting(
    uow: UnitOfWork,
    catalogue: Catalogue,
    meeting_id: UUID,
    *,
    changes: dict[str, list[str] | None],
    reason: str,
    expected: int | None,
) -> TeamCheckIn:
    meeting = uow.get(meeting_id, TeamCheckIn, "check-in meeting")
    require(Permission.HOLD_MEETING, team=meeting.team)
    uow.expect_version(meeting, expected)
    cycle = catalogue.cycle(meeting.cycle_id)
    check(
        cycle is None or cycle.status != "closed",
        RuleBroken,
        f"Cycle {meeting.cycle_id} is closed: its check-in meetings can no longer change",
    )
    meeting.amend(changes, reason)
    return meeting
