"""The OKR arithmetic (DESIGN §6) and the projections' rollup, without I/O."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.projections.queries import rollup
from shared.okr import progress_of, status_of, weighted_progress


@pytest.mark.parametrize(
    ("kind", "start", "target", "current", "expected"),
    [
        ("number", 0, 200, 50, 0.25),
        ("currency", 1000, 0, 250, 0.75),  # decreasing: spend down from 1000 to 0
        ("number", 0, 10, -3, 0.0),
        ("number", 0, 10, 12, 1.0),
        ("percent", 40, 20, 45, 0.0),  # worse than the start of a decreasing target
        ("boolean", 0, 1, 0.0, 0.0),
        ("boolean", 0, 1, 1.0, 1.0),
    ],
)
def test_progress(kind: str, start: float, target: float, current: float, expected: float) -> None:
    assert progress_of(kind, start, target, current) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("confidence", "status"),
    [
        (None, None),
        (0, "off_track"),
        (3, "off_track"),
        (4, "at_risk"),
        (6, "at_risk"),
        (7, "on_track"),
        (10, "on_track"),
    ],
)
def test_status_from_confidence(confidence: int | None, status: str | None) -> None:
    assert status_of(confidence) == status


def test_weighted_progress() -> None:
    assert weighted_progress([]) is None
    assert weighted_progress([(1.0, 3), (0.0, 1)]) == 0.75
    assert weighted_progress([(0.5, 2)]) == 0.5


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0.01, 1000)), min_size=1, max_size=20))
def test_weighted_progress_stays_within_its_parts(parts: list[tuple[float, float]]) -> None:
    result = weighted_progress(parts)
    assert result is not None
    assert min(p for p, _ in parts) - 1e-9 <= result <= max(p for p, _ in parts) + 1e-9


def node(progress: float | None, *children: str) -> dict[str, Any]:
    return {"progress": progress, "children": list(children)}


def test_rollup_counts_own_progress_and_each_child_equally() -> None:
    nodes = {
        "company": node(None, "team-a", "team-b"),
        "team-a": node(0.5, "person"),
        "team-b": node(1.0),
        "person": node(0.0),
    }
    assert rollup("person", nodes, set()) == 0.0
    assert rollup("team-a", nodes, set()) == 0.25  # (0.5 + 0.0) / 2
    assert rollup("company", nodes, set()) == 0.625  # no own key results: (0.25 + 1.0) / 2
    assert rollup("lonely", {"lonely": node(None)}, set()) is None


def test_rollup_survives_a_cycle_in_the_data() -> None:
    nodes = {"a": node(0.2, "b"), "b": node(0.4, "a")}
    assert rollup("a", nodes, set()) == pytest.approx(0.3)
