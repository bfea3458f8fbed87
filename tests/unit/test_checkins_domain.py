"""The check-in domain without I/O: value rules by kind, corrections that keep history,
meetings, and replay from events giving back the same state."""

from __future__ import annotations

import math
import uuid
from datetime import date
from typing import Any

import pytest
from eventsourcing.domain import Aggregate
from hypothesis import given, settings
from hypothesis import strategies as st

from services.checkins.domain import (
    MAX_CORRECTIONS,
    KeyResultProgress,
    KeyResultTerms,
    TeamCheckIn,
    check_in_entry,
    corrected_entry,
    meeting_id_for,
    progress_id_for,
)
from shared.domain import CommandContext, InvalidValue, RuleBroken, command_context

CONTEXT = CommandContext(actor="alice", correlation_id="c-1", causation_id="r-1")


def terms(kind: str = "number", start: float = 0, target: float = 100) -> KeyResultTerms:
    return KeyResultTerms(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), kind, start, target)


def replay(agg: Aggregate) -> Any:
    """The aggregate rebuilt from the events it recorded."""
    rebuilt = None
    for e in agg.collect_events():
        rebuilt = e.mutate(rebuilt)
    return rebuilt


@pytest.fixture(autouse=True)
def _context() -> Any:
    with command_context(CONTEXT):
        yield


# --- values by kind -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "start", "target", "good", "bad"),
    [
        ("boolean", 0, 1, [0, 1], [0.5, 2, -1]),
        ("percent", 0, 100, [0, 55.5, 100], [-0.1, 100.1]),
        ("percent", 20, 10, [0, 100], [101]),
        ("number", 10, 0, [-5, 0, 1e15], [1e16, math.nan, math.inf, -math.inf]),
        ("currency", 0, 1000, [0, 999.99, 5000], [math.nan]),
    ],
)
def test_values_are_checked_by_kind(
    kind: str, start: float, target: float, good: list[float], bad: list[float]
) -> None:
    t = terms(kind, start, target)
    for value in good:
        assert t.check_value(value) == float(value)
    for value in bad:
        with pytest.raises(InvalidValue) as e:
            t.check_value(value)
        assert e.value.field == "value"


@pytest.mark.parametrize("value", [True, "3", None])
def test_a_value_must_be_a_number(value: Any) -> None:
    with pytest.raises(InvalidValue):
        terms().check_value(value)


@pytest.mark.parametrize("confidence", [-1, 11, 7.5, True, "7"])
def test_confidence_is_a_whole_number_from_0_to_10(confidence: Any) -> None:
    t = terms()
    progress = KeyResultProgress.open(t)
    with pytest.raises(InvalidValue) as e:
        progress.check_in(t, 1, confidence, "", [])
    assert e.value.field == "confidence"


# --- check-ins and corrections ------------------------------------------------------------


def test_progress_has_one_id_per_key_result_distinct_from_it() -> None:
    t = terms()
    progress = KeyResultProgress.open(t)
    assert progress.id == progress_id_for(t.id) != t.id
    assert KeyResultProgress.open(t).id == progress.id


def test_check_ins_are_numbered_and_recorded_with_actor_and_time() -> None:
    t = terms()
    progress = KeyResultProgress.open(t)
    first = progress.check_in(t, 10, 7, " steady ", ["waiting on legal", " data "])
    second = progress.check_in(t, 20, 5, "", [])
    assert progress.count == 2 and (first.number, second.number) == (1, 2)
    entry = check_in_entry(first)
    assert (entry["number"], entry["value"], entry["confidence"]) == (1, 10.0, 7)
    assert entry["note"] == "steady" and entry["blockers"] == ["waiting on legal", "data"]
    assert entry["actor"] == "alice" and entry["at"]
    assert entry["key_result_id"] == str(t.id) and entry["corrections"] == []
    # Time-ordered ids: each sorts after the ones before it, as text too (the stores' keys).
    assert first.check_in_id.version == second.check_in_id.version == 7
    assert str(first.check_in_id) < str(second.check_in_id)


def test_check_in_ids_sort_in_the_order_the_check_ins_were_made() -> None:
    # The stores key check-ins by id: ids made in order are appended to their indexes.
    t = terms()
    progresses = [KeyResultProgress.open(t) for _ in range(3)]
    ids = [progresses[n % 3].check_in(t, n % 100, 5, "", []).check_in_id for n in range(2000)]
    assert len(set(ids)) == len(ids)
    assert [str(i) for i in ids] == sorted(str(i) for i in ids)
    assert {i.version for i in ids} == {7}


def test_the_state_does_not_grow_with_the_check_ins() -> None:
    t = terms()
    progress = KeyResultProgress.open(t)
    before = dict(vars(progress))
    for n in range(200):
        progress.check_in(t, n % 100, 5, "a note " * 20, ["a blocker"])
    after = vars(progress)
    assert set(after) == set(before) and after["count"] == 200


@pytest.mark.parametrize(
    "blockers", [[""], ["   "], ["x" * 1001], ["b"] * 51], ids=["empty", "blank", "long", "many"]
)
def test_blockers_are_bounded(blockers: list[str]) -> None:
    t = terms()
    with pytest.raises(InvalidValue):
        KeyResultProgress.open(t).check_in(t, 1, 5, "", blockers)


def test_a_correction_keeps_the_original_and_every_correction() -> None:
    t = terms()
    progress = KeyResultProgress.open(t)
    checked_in = progress.check_in(t, 10, 7, "", [])
    entry = check_in_entry(checked_in)
    cid = checked_in.check_in_id
    entry = corrected_entry(entry, progress.correct(t, entry, cid, 12, None, "typo"))
    entry = corrected_entry(entry, progress.correct(t, entry, cid, None, 4, "the vendor slipped"))
    assert (entry["value"], entry["confidence"]) == (12.0, 4)
    assert (entry["original_value"], entry["original_confidence"]) == (10.0, 7)
    assert [c["reason"] for c in entry["corrections"]] == ["typo", "the vendor slipped"]
    assert entry["corrections"][1]["previous_confidence"] == 7
    assert entry["corrections"][1]["previous_value"] == 12.0


def test_corrections_are_checked() -> None:
    t = terms("boolean", 0, 1)
    progress = KeyResultProgress.open(t)
    checked_in = progress.check_in(t, 0, 5, "", [])
    entry = check_in_entry(checked_in)
    cid = checked_in.check_in_id
    with pytest.raises(InvalidValue):
        progress.correct(t, entry, cid, None, None, "nothing")
    with pytest.raises(InvalidValue):
        progress.correct(t, entry, cid, 0.5, None, "half done")
    with pytest.raises(InvalidValue):
        progress.correct(t, entry, cid, 1, None, "   ")
    with pytest.raises(InvalidValue):
        progress.correct(t, None, uuid.uuid4(), 1, None, "which one?")
    with pytest.raises(InvalidValue):
        progress.correct(t, entry, uuid.uuid4(), 1, None, "another check-in's document")
    with pytest.raises(RuleBroken):
        progress.correct(t, entry, cid, 0, 5, "same again")
    assert len(list(progress.collect_events())) == 2  # opened and checked in: nothing else


def test_a_check_in_takes_a_bounded_number_of_corrections() -> None:
    t = terms()
    progress = KeyResultProgress.open(t)
    checked_in = progress.check_in(t, 0, 5, "", [])
    entry = check_in_entry(checked_in)
    cid = checked_in.check_in_id
    for n in range(1, MAX_CORRECTIONS + 1):
        entry = corrected_entry(entry, progress.correct(t, entry, cid, n, None, f"fix {n}"))
    assert len(entry["corrections"]) == MAX_CORRECTIONS
    with pytest.raises(RuleBroken, match="corrected 100 times"):
        progress.correct(t, entry, cid, 0, None, "once more")
    assert progress.count == 1 and len(progress.pending_events) == 2 + MAX_CORRECTIONS


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=100, allow_nan=False),
            st.integers(min_value=0, max_value=10),
            st.one_of(st.none(), st.floats(min_value=0, max_value=100, allow_nan=False)),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_replaying_the_events_gives_back_the_same_state(
    steps: list[tuple[float, int, float | None]],
) -> None:
    with command_context(CONTEXT):
        t = terms("percent")
        progress = KeyResultProgress.open(t)
        for value, confidence, corrected in steps:
            checked_in = progress.check_in(t, value, confidence, "", [])
            if corrected is not None and corrected != value:
                entry = check_in_entry(checked_in)
                progress.correct(t, entry, checked_in.check_in_id, corrected, None, "fix")
        rebuilt = replay(progress)
    assert vars(rebuilt) == vars(progress)
    assert rebuilt.count == len(steps)


def test_a_version_1_snapshot_is_lifted_to_the_small_state() -> None:
    state = {
        "key_result_id": uuid.uuid4(),
        "check_ins": {str(uuid.uuid4()): {"number": n} for n in range(1, 4)},
        "latest": "x",
    }
    KeyResultProgress.upcast_v1_v2(state)
    assert state["count"] == 3 and "check_ins" not in state and "latest" not in state


# --- meetings -----------------------------------------------------------------------------


def hold(**overrides: Any) -> TeamCheckIn:
    fields: dict[str, Any] = {
        "team": "platform",
        "cycle_id": uuid.UUID(int=1),
        "held_on": date(2027, 1, 11),
        "wins": ["Shipped the importer"],
        "learnings": [],
        "blockers": [],
        "priorities": ["Export"],
        **overrides,
    }
    return TeamCheckIn.hold(**fields)


def test_one_meeting_per_team_cycle_and_date() -> None:
    meeting = hold()
    assert meeting.id == meeting_id_for("platform", uuid.UUID(int=1), date(2027, 1, 11))
    assert hold(team="data").id != meeting.id
    assert hold(held_on=date(2027, 1, 18)).id != meeting.id


def test_a_meeting_records_something() -> None:
    with pytest.raises(InvalidValue):
        hold(wins=[], priorities=[])


def test_amending_replaces_lists_and_keeps_what_was_there() -> None:
    meeting = hold()
    assert meeting.amend({"wins": ["Shipped the importer", "Closed 12 tickets"]}, "forgot one")
    assert not meeting.amend({"wins": ["Shipped the importer", "Closed 12 tickets"]}, "again")
    events = list(meeting.collect_events())
    amended = events[-1]
    assert amended.changes == {  # type: ignore[attr-defined]
        "wins": {
            "from": ["Shipped the importer"],
            "to": ["Shipped the importer", "Closed 12 tickets"],
        }
    }
    assert meeting.amendments == 1
    with pytest.raises(InvalidValue):
        meeting.amend({"wins": [], "priorities": []}, "empty it")
    with pytest.raises(InvalidValue):
        meeting.amend({"wins": ["x"]}, " ")


def test_a_replayed_meeting_is_the_same() -> None:
    meeting = hold()
    meeting.amend({"learnings": ["Pair more"]}, "added")
    rebuilt = replay(meeting)
    assert (rebuilt.wins, rebuilt.learnings, rebuilt.priorities) == (
        meeting.wins,
        meeting.learnings,
        meeting.priorities,
    )
    assert rebuilt.amendments == 1
