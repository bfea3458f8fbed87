"""The check-in domain: each key result's progress (its check-ins and their corrections) and
teams' check-in meetings.

Imports only the standard library, `eventsourcing.domain` and the shared domain base. What the
check-in service knows of key results and cycles (kinds, bounds, whether they are open) comes
in as plain values from its catalogue; the rules that use them live here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from shared.contract.upcasts import MEETING_LISTS, team_check_in_amended_v1_v2
from shared.domain import InvalidValue, OkrAggregate, RuleBroken, check, time_ordered_id

# Aggregate ids here are derived, never shared with the goals service's aggregates: one id is
# one aggregate across the whole system (subscribers key their state by it).
PROGRESS_NAMESPACE = uuid5(NAMESPACE_URL, "https://okr.example/checkins/key-result-progress")
MEETING_NAMESPACE = uuid5(NAMESPACE_URL, "https://okr.example/checkins/team-check-in")

MAX_LIST_ITEMS = 50
MAX_ITEM_LENGTH = 1000
# Corrections of one check-in: each is kept, and its document carries them all.
MAX_CORRECTIONS = 100
LISTS = MEETING_LISTS


# Every check-in asks for its progress's id: a SHA-1 and a new UUID each time, some 6% of
# the writer's work, against a dictionary lookup for the key results checked in on lately.
@lru_cache(maxsize=20_000)
def progress_id_for(key_result_id: UUID) -> UUID:
    return uuid5(PROGRESS_NAMESPACE, str(key_result_id))


def meeting_id_for(team: str, cycle_id: UUID, held_on: date) -> UUID:
    return uuid5(MEETING_NAMESPACE, f"{cycle_id}|{held_on.isoformat()}|{team}")


@dataclass(frozen=True)
class KeyResultTerms:
    """What a check-in needs to know about its key result, from the catalogue."""

    id: UUID
    objective_id: UUID
    cycle_id: UUID
    kind: str
    start: float
    target: float

    def check_value(self, value: float, field: str = "value") -> float:
        check(
            isinstance(value, int | float) and not isinstance(value, bool),
            InvalidValue,
            f"{field} must be a number",
            field,
        )
        value = float(value)
        check(math.isfinite(value), InvalidValue, f"{field} must be a finite number", field)
        check(abs(value) <= 1e15, InvalidValue, f"{field} must be within ±1e15", field)
        if self.kind == "boolean":
            check(
                value in (0.0, 1.0),
                InvalidValue,
                f"{field} of a boolean key result must be 0 or 1",
                field,
            )
        elif self.kind == "percent":
            low = min(0.0, self.start, self.target)
            high = max(100.0, self.start, self.target)
            check(
                low <= value <= high,
                InvalidValue,
                f"{field} of a percent key result must be within {low:g}..{high:g}",
                field,
            )
        return value


def check_confidence(confidence: int, field: str = "confidence") -> int:
    check(
        isinstance(confidence, int) and not isinstance(confidence, bool),
        InvalidValue,
        f"{field} must be a whole number from 0 to 10",
        field,
    )
    check(0 <= confidence <= 10, InvalidValue, f"{field} must be from 0 to 10", field)
    return confidence


def _clean_list(items: list[str], field: str) -> list[str]:
    check(
        len(items) <= MAX_LIST_ITEMS,
        InvalidValue,
        f"{field} takes at most {MAX_LIST_ITEMS} items",
        field,
    )
    cleaned = []
    for item in items:
        text = item.strip()
        check(bool(text), InvalidValue, f"{field} items must not be blank", field)
        check(
            len(text) <= MAX_ITEM_LENGTH,
            InvalidValue,
            f"{field} items take at most {MAX_ITEM_LENGTH} characters",
            field,
        )
        cleaned.append(text)
    return cleaned


def _reason(reason: str) -> str:
    reason = reason.strip()
    check(bool(reason), InvalidValue, "reason must not be blank", "reason")
    return reason


def check_in_entry(event: KeyResultProgress.CheckedIn) -> dict[str, Any]:
    """A check-in as it is read: its original value and confidence, and no corrections yet."""
    return {
        "id": str(event.check_in_id),
        "key_result_id": str(event.key_result_id),
        "number": event.number,
        "value": event.value,
        "confidence": event.confidence,
        "original_value": event.value,
        "original_confidence": event.confidence,
        "note": event.note,
        "blockers": list(event.blockers),
        "at": event.timestamp.isoformat(),
        "actor": event.actor,
        "corrections": [],
    }


def corrected_entry(
    entry: dict[str, Any], event: KeyResultProgress.CheckInCorrected
) -> dict[str, Any]:
    """The check-in after `event`: current value and confidence, the correction appended."""
    return entry | {
        "value": event.value,
        "confidence": event.confidence,
        "corrections": [
            *entry["corrections"],
            {
                "value": event.value,
                "confidence": event.confidence,
                "previous_value": event.previous_value,
                "previous_confidence": event.previous_confidence,
                "reason": event.reason,
                "at": event.timestamp.isoformat(),
                "actor": event.actor,
            },
        ],
    }


class KeyResultProgress(OkrAggregate):
    """The check-ins of one key result, and the corrections made to them.

    A correction never rewrites history: the check-in keeps its original value and confidence,
    and every correction is kept with its reason.

    The aggregate's state is only what its rules need: how many check-ins there were. Each
    check-in as it is read (`check_in_entry`, `corrected_entry`) is a document written with
    its event, so the state, its snapshots and the writer's cache stay the same size however
    many check-ins a key result gets. Version 1 kept every check-in in the state; its
    snapshots are lifted by `upcast_v1_v2`.
    """

    class_version = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["count"] = len(state.pop("check_ins", {}))
        state.pop("latest", None)

    @classmethod
    def open(cls, terms: KeyResultTerms) -> KeyResultProgress:
        return cls(key_result_id=terms.id, objective_id=terms.objective_id, cycle_id=terms.cycle_id)

    @staticmethod
    def create_id(key_result_id: UUID, **_: Any) -> UUID:
        return progress_id_for(key_result_id)

    @event("Opened")
    def __init__(self, key_result_id: UUID, objective_id: UUID, cycle_id: UUID) -> None:
        self.key_result_id = key_result_id
        self.objective_id = objective_id
        self.cycle_id = cycle_id
        self.count = 0

    def check_in(
        self,
        terms: KeyResultTerms,
        value: float,
        confidence: int,
        note: str,
        blockers: list[str],
    ) -> CheckedIn:
        number = self.count + 1
        self.trigger_event(
            self.CheckedIn,
            # Time-ordered, so the stores index check-ins by appending (`time_ordered_id`).
            check_in_id=time_ordered_id(),
            key_result_id=self.key_result_id,
            number=number,
            value=terms.check_value(value),
            confidence=check_confidence(confidence),
            note=note.strip(),
            blockers=_clean_list(blockers, "blockers"),
        )
        checked_in = self.pending_events[-1]
        assert isinstance(checked_in, KeyResultProgress.CheckedIn)
        return checked_in

    class CheckedIn(OkrAggregate.Event):
        check_in_id: UUID
        key_result_id: UUID
        number: int
        value: float
        confidence: int
        note: str
        blockers: list[str]

        def apply(self, aggregate: Any) -> None:
            aggregate.count = self.number

    def correct(
        self,
        terms: KeyResultTerms,
        entry: dict[str, Any] | None,
        check_in_id: UUID,
        value: float | None,
        confidence: int | None,
        reason: str,
    ) -> CheckInCorrected:
        """Correct the check-in `entry` (its document, None when this aggregate has none)."""
        check(
            entry is not None and entry["id"] == str(check_in_id),
            InvalidValue,
            f"No check-in {check_in_id} here",
            "check_in_id",
        )
        assert entry is not None
        check(
            value is not None or confidence is not None,
            InvalidValue,
            "A correction changes value, confidence or both",
            "value",
        )
        check(
            len(entry["corrections"]) < MAX_CORRECTIONS,
            RuleBroken,
            f"Check-in {check_in_id} was corrected {MAX_CORRECTIONS} times already, the most a "
            "check-in takes: check in again with the right value instead",
        )
        new_value = entry["value"] if value is None else terms.check_value(value)
        new_confidence = entry["confidence"] if confidence is None else check_confidence(confidence)
        reason = _reason(reason)
        check(
            (new_value, new_confidence) != (entry["value"], entry["confidence"]),
            RuleBroken,
            f"Check-in {check_in_id} already has value {entry['value']:g} and confidence "
            f"{entry['confidence']}: nothing to correct",
        )
        self.trigger_event(
            self.CheckInCorrected,
            check_in_id=check_in_id,
            key_result_id=self.key_result_id,
            value=new_value,
            confidence=new_confidence,
            previous_value=entry["value"],
            previous_confidence=entry["confidence"],
            reason=reason,
        )
        corrected = self.pending_events[-1]
        assert isinstance(corrected, KeyResultProgress.CheckInCorrected)
        return corrected

    class CheckInCorrected(OkrAggregate.Event):
        check_in_id: UUID
        key_result_id: UUID
        value: float
        confidence: int
        previous_value: float
        previous_confidence: int
        reason: str

        def apply(self, aggregate: Any) -> None:
            pass  # the check-in's document carries the correction


class TeamCheckIn(OkrAggregate):
    """A team's check-in meeting in a cycle, on a date: one per team, cycle and date."""

    @classmethod
    def hold(
        cls,
        *,
        team: str,
        cycle_id: UUID,
        held_on: date,
        wins: list[str],
        learnings: list[str],
        blockers: list[str],
        priorities: list[str],
    ) -> TeamCheckIn:
        lists = {
            "wins": _clean_list(wins, "wins"),
            "learnings": _clean_list(learnings, "learnings"),
            "blockers": _clean_list(blockers, "blockers"),
            "priorities": _clean_list(priorities, "priorities"),
        }
        check(
            any(lists.values()),
            InvalidValue,
            "A meeting records at least one win, learning, blocker or priority",
            "wins",
        )
        return cls(team=team, cycle_id=cycle_id, held_on=held_on, **lists)

    @staticmethod
    def create_id(team: str, cycle_id: UUID, held_on: date, **_: Any) -> UUID:
        return meeting_id_for(team, cycle_id, held_on)

    @event("Held")
    def __init__(
        self,
        team: str,
        cycle_id: UUID,
        held_on: date,
        wins: list[str],
        learnings: list[str],
        blockers: list[str],
        priorities: list[str],
    ) -> None:
        self.team = team
        self.cycle_id = cycle_id
        self.held_on = held_on
        self.wins = list(wins)
        self.learnings = list(learnings)
        self.blockers = list(blockers)
        self.priorities = list(priorities)
        self.amendments = 0

    def amend(self, changes: dict[str, list[str] | None], reason: str) -> bool:
        """Replace any of the four lists; returns False when nothing would change."""
        unknown = set(changes) - set(LISTS)
        check(not unknown, InvalidValue, f"Unknown fields: {', '.join(sorted(unknown))}")
        new = {
            name: _clean_list(items, name) for name, items in changes.items() if items is not None
        }
        changed = {name: items for name, items in new.items() if items != getattr(self, name)}
        reason = _reason(reason)
        if not changed:
            return False
        after = {name: changed.get(name, getattr(self, name)) for name in LISTS}
        check(
            any(after.values()),
            InvalidValue,
            "A meeting records at least one win, learning, blocker or priority",
            "wins",
        )
        self.trigger_event(
            self.Amended,
            changes={
                name: {"from": list(getattr(self, name)), "to": changed[name]}
                for name in LISTS
                if name in changed
            },
            reason=reason,
        )
        return True

    class Amended(OkrAggregate.Event):
        """Only the lists that changed, each `{from, to}` (version 2; see the upcast)."""

        class_version = 2
        changes: dict[str, dict[str, list[str]]]
        reason: str

        # Version 1 carried all four lists with null for "unchanged"; stored v1 events are
        # lifted on read, the same way consumers lift v1 messages from the stream.
        upcast_v1_v2 = staticmethod(team_check_in_amended_v1_v2)

        def apply(self, aggregate: Any) -> None:
            for name, change in self.changes.items():
                setattr(aggregate, name, list(change["to"]))
            aggregate.amendments += 1
