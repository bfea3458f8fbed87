"""Rules of the goals aggregates, and replay giving back the state commands produced."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.goals.application import GoalsApplication
from services.goals.domain import Cycle, KeyResult, Objective
from shared.domain import CommandContext, InvalidValue, RuleBroken, command_context

CTX = CommandContext(actor="alice", correlation_id="corr-1", causation_id="req-1")


@pytest.fixture(autouse=True)
def context():
    with command_context(CTX):
        yield


def cycle(status: str = "scheduled") -> Cycle:
    c = Cycle.schedule("Q1", date(2027, 1, 1), date(2027, 3, 31))
    if status in ("active", "closed"):
        c.start()
    if status == "closed":
        c.close("done")
    return c


def objective(c: Cycle | None = None, parent: Objective | None = None) -> Objective:
    return Objective.create(
        cycle=c or cycle(), title="Grow", description="", owner="bob", team="sales", parent=parent
    )


def key_result(kind: str = "number", start: float = 0, target: float = 10, **kw) -> KeyResult:
    c = kw.pop("cycle", None) or cycle("active")
    o = kw.pop("objective", None) or objective(c)
    args = dict(
        title="Revenue", kind=kind, unit="", start=start, target=target, weight=1.0, owner="bob"
    )
    args.update(kw)
    return KeyResult.define(objective=o, cycle=c, **args)


# --- cycle --------------------------------------------------------------------------------


def test_cycle_must_end_after_it_starts():
    with pytest.raises(InvalidValue) as e:
        Cycle.schedule("Q1", date(2027, 3, 1), date(2027, 3, 1))
    assert e.value.field == "ends_on"


def test_cycle_name_must_not_be_blank():
    with pytest.raises(InvalidValue):
        Cycle.schedule("  ", date(2027, 1, 1), date(2027, 2, 1))


def test_cycle_goes_scheduled_active_closed_only():
    c = cycle()
    assert c.status == "scheduled"
    with pytest.raises(RuleBroken):
        c.close(None)
    c.start()
    assert c.status == "active"
    with pytest.raises(RuleBroken):
        c.start()
    c.close("end of quarter")
    assert c.status == "closed"
    with pytest.raises(RuleBroken):
        c.close(None)
    with pytest.raises(RuleBroken):
        c.start()


# --- objective ----------------------------------------------------------------------------


def test_no_objective_in_a_closed_cycle():
    with pytest.raises(RuleBroken):
        objective(cycle("closed"))


def test_objective_changes_record_previous_value_and_reason():
    o = objective()
    o.collect_events()
    o.retitle("Grow faster", "sharper")
    o.change_owner("carol", None)
    events = o.collect_events()
    assert [type(e).__name__ for e in events] == ["Retitled", "OwnerChanged"]
    assert (events[0].title, events[0].previous_title, events[0].reason) == (
        "Grow faster",
        "Grow",
        "sharper",
    )
    assert events[1].previous_owner == "bob"


def test_unchanged_values_record_nothing():
    o = objective()
    o.collect_events()
    o.revise(title="Grow", owner="bob", team="sales", reason="no-op")
    assert o.collect_events() == []


def test_every_event_carries_the_command_context():
    o = objective()
    for e in o.collect_events():
        assert (e.actor, e.correlation_id, e.causation_id) == ("alice", "corr-1", "req-1")


def test_events_need_a_command_context():
    with command_context(CTX):
        o = objective()
    import contextvars

    # A fresh context has no command context at all.
    def outside():
        o.retitle("x", None)

    with pytest.raises(RuntimeError):
        contextvars.Context().run(outside)


def test_archived_objective_cannot_change_or_be_a_parent():
    c = cycle()
    o = objective(c)
    o.archive("obsolete")
    with pytest.raises(RuleBroken):
        o.retitle("New", None)
    with pytest.raises(RuleBroken):
        o.archive(None)
    with pytest.raises(RuleBroken):
        objective(c, parent=o)


def test_objective_can_never_become_its_own_ancestor():
    c = cycle()
    top = objective(c)
    middle = objective(c, parent=top)
    bottom = objective(c, parent=middle)
    with pytest.raises(RuleBroken):
        top.realign(top, [], None)
    with pytest.raises(RuleBroken):
        # bottom's ancestry is [middle, top]: top under bottom would be a cycle.
        top.realign(bottom, [middle.id, top.id], None)
    bottom.realign(top, [], "flatter")
    assert bottom.parent_id == top.id
    bottom.realign(None, [], "standalone")
    assert bottom.parent_id is None


def test_revise_checks_every_field_before_recording_any():
    o = objective()
    o.collect_events()
    with pytest.raises(InvalidValue):
        o.revise(title="New title", owner="   ")
    assert o.collect_events() == []
    assert o.title == "Grow"


# --- key result ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "start", "target"),
    [
        ("number", 5, 5),
        ("percent", 0, 150),
        ("percent", -1, 50),
        ("boolean", 0, 5),
        ("boolean", 1, 0),
        ("number", 0, float("nan")),
        ("number", float("inf"), 1),
        ("rating", 0, 1),
    ],
)
def test_key_result_values_are_checked(kind, start, target):
    with pytest.raises(InvalidValue):
        key_result(kind, start, target)


@pytest.mark.parametrize("weight", [0, -1, float("nan"), 1001])
def test_weight_must_be_positive_and_bounded(weight):
    with pytest.raises(InvalidValue):
        key_result(weight=weight)
    kr = key_result()
    with pytest.raises(InvalidValue):
        kr.reweight(weight, None)


def test_decreasing_and_boolean_key_results_are_fine():
    assert key_result("number", 100, 20).target == 20
    assert key_result("boolean", 0, 1).kind == "boolean"


def test_no_key_results_on_archived_objective_or_closed_cycle():
    c = cycle("active")
    o = objective(c)
    o.archive(None)
    with pytest.raises(RuleBroken):
        key_result(cycle=c, objective=o)
    closed = cycle("closed")
    with pytest.raises(RuleBroken):
        key_result(cycle=closed, objective=objective(cycle("active")))


def test_target_adjustment_needs_a_reason_and_a_change():
    kr = key_result()
    with pytest.raises(InvalidValue):
        kr.adjust_target(20, "  ")
    with pytest.raises(RuleBroken):
        kr.adjust_target(10, "same")
    with pytest.raises(InvalidValue):
        kr.adjust_target(0, "equals start")
    kr.adjust_target(20, "we can do more")
    event = kr.collect_events()[-1]
    assert (event.target, event.previous_target, event.reason) == (20, 10, "we can do more")


def test_boolean_target_cannot_be_adjusted():
    with pytest.raises(RuleBroken):
        key_result("boolean", 0, 1).adjust_target(2, "more")


def test_removed_key_result_cannot_change():
    kr = key_result()
    kr.remove("not measurable")
    for change in (
        lambda: kr.adjust_target(5, "x"),
        lambda: kr.retitle("x", None),
        lambda: kr.reweight(2, None),
        lambda: kr.change_owner("x", None),
        lambda: kr.remove("again"),
    ):
        with pytest.raises(RuleBroken):
            change()


# --- replay -------------------------------------------------------------------------------

MAPPER = GoalsApplication(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}).mapper


def replay(events):
    """Rebuild from events after a round trip through the store's serialisation."""
    agg = None
    for e in events:
        agg = MAPPER.to_domain_event(MAPPER.to_stored_event(e)).mutate(agg)
    return agg


def state(agg):
    return {k: v for k, v in agg.__dict__.items() if k != "_pending_events"}


texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
numbers = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
kr_commands = st.lists(
    st.one_of(
        st.tuples(st.just("adjust_target"), numbers, texts),
        st.tuples(st.just("retitle"), texts, st.none() | texts),
        st.tuples(st.just("change_owner"), texts, st.none() | texts),
        st.tuples(st.just("reweight"), st.floats(min_value=-5, max_value=2000), st.none()),
        st.tuples(st.just("remove"), texts, st.none()),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(commands=kr_commands, start=numbers, target=numbers)
def test_replaying_key_result_events_gives_the_same_state(commands, start, target):
    with command_context(CTX):
        try:
            kr = key_result("number", start, target)
        except InvalidValue:
            return
        for name, a, b in commands:
            try:
                if name == "remove":
                    kr.remove(a)
                else:
                    getattr(kr, name)(a, b)
            except (InvalidValue, RuleBroken):
                pass  # refused commands record nothing
    events = kr.collect_events()
    assert events[0].originator_version == 1
    assert [e.originator_version for e in events] == list(range(1, len(events) + 1))
    assert state(replay(events)) == state(kr)


obj_commands = st.lists(
    st.one_of(
        st.tuples(st.just("retitle"), texts),
        st.tuples(st.just("describe"), texts),
        st.tuples(st.just("change_owner"), texts),
        st.tuples(st.just("change_team"), texts),
        st.tuples(st.just("archive"), texts),
    ),
    max_size=20,
)


@settings(max_examples=100, deadline=None)
@given(commands=obj_commands, days=st.integers(min_value=1, max_value=400))
def test_replaying_objective_and_cycle_events_gives_the_same_state(commands, days):
    with command_context(CTX):
        c = Cycle.schedule("Q", date(2027, 1, 1), date(2027, 1, 1) + timedelta(days=days))
        c.start()
        o = objective(c)
        for name, value in commands:
            try:
                if name == "archive":
                    o.archive(value or None)
                else:
                    getattr(o, name)(value, "because")
            except (InvalidValue, RuleBroken):
                pass
    assert state(replay(c.collect_events())) == state(c)
    assert state(replay(o.collect_events())) == state(o)
