"""The review domain without I/O: the progress formula, suggestions, scores beside them,
reflections, decisions, finalisation and the read-only review after it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.reviews.domain import CycleReview, review_id_for
from shared.domain import CommandContext, InvalidValue, NotFound, RuleBroken, command_context
from shared.okr import progress_of, suggested_score

CONTEXT = CommandContext(actor="lead", correlation_id="c", causation_id="r")
CYCLE = uuid.UUID(int=7)
O1, O2 = str(uuid.UUID(int=11)), str(uuid.UUID(int=12))
K1, K2, K3 = str(uuid.UUID(int=21)), str(uuid.UUID(int=22)), str(uuid.UUID(int=23))


@pytest.fixture(autouse=True)
def _context() -> Any:
    with command_context(CONTEXT):
        yield


def kr(key_result_id: str, objective_id: str, suggested: float, start: float = 0) -> dict[str, Any]:
    return {
        "key_result_id": key_result_id,
        "objective_id": objective_id,
        "title": f"KR {key_result_id[-2:]}",
        "kind": "number",
        "start": start,
        "target": 100.0,
        "last_value": None,
        "progress": suggested,
        "suggested_score": suggested,
    }


def review() -> CycleReview:
    return CycleReview.open(
        cycle_id=CYCLE,
        team="platform",
        objectives=[{"objective_id": O1, "title": "Grow"}, {"objective_id": O2, "title": "Keep"}],
        key_results=[kr(K1, O1, 0.4, start=10), kr(K2, O1, 0.7), kr(K3, O2, 1.0)],
    )


# --- the formulas -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "start", "target", "current", "expected"),
    [
        ("number", 0, 100, 40, 0.4),
        ("number", 0, 100, -5, 0.0),  # clamped below
        ("number", 0, 100, 150, 1.0),  # clamped above
        ("number", 100, 40, 70, 0.5),  # a decreasing target
        ("number", 100, 40, 10, 1.0),
        ("number", 100, 40, 120, 0.0),
        ("percent", 20, 80, 50, 0.5),
        ("boolean", 0, 1, 0, 0.0),
        ("boolean", 0, 1, 1, 1.0),
    ],
)
def test_progress(kind: str, start: float, target: float, current: float, expected: float) -> None:
    assert progress_of(kind, start, target, current) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("progress", "suggested"), [(0.0, 0.0), (0.44, 0.4), (0.45, 0.5), (0.96, 1.0), (1.0, 1.0)]
)
def test_the_suggestion_is_progress_rounded_to_one_decimal(
    progress: float, suggested: float
) -> None:
    assert suggested_score(progress) == suggested


@given(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.floats(-1e6, 1e6, allow_nan=False),
)
def test_progress_is_always_between_0_and_1(start: float, target: float, current: float) -> None:
    assert 0.0 <= progress_of("number", start, target, current) <= 1.0


# --- the review ---------------------------------------------------------------------------


def test_one_review_per_cycle_and_team() -> None:
    assert review().id == review_id_for(CYCLE, "platform") != review_id_for(CYCLE, "data")


def test_a_review_needs_objectives() -> None:
    with pytest.raises(RuleBroken):
        CycleReview.open(cycle_id=CYCLE, team="x", objectives=[], key_results=[])


def test_a_score_beside_the_suggestion() -> None:
    r = review()
    assert r.score(uuid.UUID(K1), 0.4, None)  # the suggestion: no comment needed
    with pytest.raises(InvalidValue) as e:
        r.score(uuid.UUID(K2), 0.5, None)
    assert e.value.field == "comment"
    assert r.score(uuid.UUID(K2), 0.5, "the last deal closed after the cut-off")
    assert not r.score(uuid.UUID(K2), 0.5, "the last deal closed after the cut-off")
    scored = list(r.collect_events())[-1]
    assert (scored.score, scored.suggested_score) == (0.5, 0.7)  # type: ignore[attr-defined]


@pytest.mark.parametrize("score", [-0.1, 1.1, float("nan"), float("inf"), True])
def test_scores_are_from_0_to_1(score: Any) -> None:
    with pytest.raises(InvalidValue):
        review().score(uuid.UUID(K1), score, "why")


def test_only_the_reviews_key_results_are_scored() -> None:
    with pytest.raises(NotFound):
        review().score(uuid.uuid4(), 0.5, "x")


def test_reflections() -> None:
    r = review()
    first = r.reflect("went_well", " Pairing on the importer ")
    second = r.reflect("do_more_of", "Pairing")
    assert first != second
    assert [x["text"] for x in r.reflections] == ["Pairing on the importer", "Pairing"]
    assert r.reflections[0]["actor"] == "lead"
    with pytest.raises(InvalidValue):
        r.reflect("regrets", "x")
    with pytest.raises(InvalidValue):
        r.reflect("learned", "   ")


def test_decisions() -> None:
    r = review()
    nxt = uuid.uuid4()
    with pytest.raises(InvalidValue):
        r.decide(uuid.UUID(O1), "carry_over", None)
    with pytest.raises(InvalidValue):
        r.decide(uuid.UUID(O1), "carry_over", CYCLE)
    with pytest.raises(InvalidValue):
        r.decide(uuid.UUID(O1), "drop", nxt)
    with pytest.raises(InvalidValue):
        r.decide(uuid.UUID(O1), "postpone", None)
    with pytest.raises(NotFound):
        r.decide(uuid.uuid4(), "done", None)
    assert r.decide(uuid.UUID(O1), "carry_over", nxt)
    assert not r.decide(uuid.UUID(O1), "carry_over", nxt)
    assert r.decide(uuid.UUID(O1), "drop", None)  # a change of mind is recorded
    decided = list(r.collect_events())[-1]
    assert decided.previous_decision == "carry_over"  # type: ignore[attr-defined]


def test_finalising_needs_every_decision_then_freezes_the_review() -> None:
    r = review()
    nxt = uuid.uuid4()
    r.decide(uuid.UUID(O1), "carry_over", nxt)
    with pytest.raises(RuleBroken, match="'Keep'"):
        r.finalise({})
    r.decide(uuid.UUID(O2), "done", None)
    r.score(uuid.UUID(K2), 0.6, "close")
    r.reflect("learned", "Smaller bets")
    r.finalise({K1: 55.0, K2: None, K3: 100.0})
    finalised = list(r.collect_events())[-1]
    decisions = {d["objective_id"]: d for d in finalised.decisions}  # type: ignore[attr-defined]
    assert decisions[O1]["next_cycle_id"] == str(nxt)
    # Carried key results start from their last checked-in value, or where they started.
    assert decisions[O1]["key_results"] == [
        {"key_result_id": K1, "start": 55.0},
        {"key_result_id": K2, "start": 0.0},
    ]
    assert decisions[O2]["key_results"] == []
    scores = {s["key_result_id"]: s["score"] for s in finalised.scores}  # type: ignore[attr-defined]
    assert scores == {K1: 0.4, K2: 0.6, K3: 1.0}  # unscored: the suggestion
    assert finalised.lessons == [{"kind": "learned", "text": "Smaller bets"}]  # type: ignore[attr-defined]

    for change in (
        lambda: r.score(uuid.UUID(K1), 0.4, None),
        lambda: r.reflect("learned", "late"),
        lambda: r.decide(uuid.UUID(O2), "drop", None),
        lambda: r.finalise({}),
    ):
        with pytest.raises(RuleBroken, match="final"):
            change()


def test_a_replayed_review_is_the_same() -> None:
    r = review()
    r.score(uuid.UUID(K1), 0.3, "slow start")
    r.reflect("learned", "x")
    r.decide(uuid.UUID(O1), "done", None)
    r.decide(uuid.UUID(O2), "drop", None)
    r.finalise({})
    rebuilt = None
    for e in r.collect_events():
        rebuilt = e.mutate(rebuilt)
    assert rebuilt is not None
    assert rebuilt.key_results == r.key_results
    assert rebuilt.objectives == r.objectives
    assert rebuilt.reflections == r.reflections and rebuilt.final
