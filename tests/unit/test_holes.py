"""What a consumer still lacks of a source, from the predecessor each message names: holes open
when an event comes before one it follows, close as those arrive, whatever the order, and
expire when they never do."""

from __future__ import annotations

import itertools

from shared.holes import Hole, blocks, expired, settle

NOW = 1_000_000.0


def run(links: list[tuple[int, int | None]], top: int = 0) -> tuple[list[Hole], int]:
    holes: list[Hole] = []
    for sequence, previous in links:
        holes, top = settle(holes, top, sequence, previous, NOW)
    return holes, top


def test_in_order_nothing_is_missing() -> None:
    assert run([(1, 0), (2, 1), (5, 2), (9, 5)]) == ([], 9)


def test_an_event_before_the_one_it_follows_opens_a_hole_up_to_that_one() -> None:
    holes, top = run([(1, 0), (2, 1), (6, 4)])
    assert top == 6
    assert holes == [Hole(2, 4, NOW)]  # 3 and 4 may exist, still to come
    assert not blocks(holes, 2, NOW)
    assert blocks(holes, 3, NOW)
    assert blocks(holes, 6, NOW)


def test_a_hole_closes_as_what_it_lacks_arrives() -> None:
    holes, top = run([(1, 0), (6, 4), (4, 2)])
    assert holes == [Hole(1, 2, NOW)]  # 4 said that nothing lies between 2 and it
    holes, top = settle(holes, top, 2, 1, NOW)
    assert (holes, top) == ([], 6)


def test_a_hole_partly_filled_keeps_the_rest_open() -> None:
    holes, _ = run([(1, 0), (10, 8), (5, 4)])
    assert holes == [Hole(1, 4, NOW), Hole(5, 8, NOW)]


def test_any_order_of_the_same_events_ends_with_nothing_missing() -> None:
    chain = [(1, 0), (3, 1), (4, 3), (8, 4), (9, 8), (12, 9)]
    for order in itertools.permutations(chain):
        holes, top = run(list(order))
        assert (holes, top) == ([], 12), order


def test_messages_without_a_predecessor_open_nothing_and_fill_only_themselves() -> None:
    assert run([(1, None), (7, None)]) == ([], 7)
    holes, _ = run([(1, 0), (6, 4), (3, None)])
    assert holes == [Hole(1, 2, NOW), Hole(3, 4, NOW)]


def test_a_duplicate_or_a_late_settle_changes_nothing() -> None:
    holes, top = run([(1, 0), (2, 1), (3, 2)])
    assert settle(holes, top, 2, 1, NOW) == ([], 3)


def test_a_hole_stops_holding_readers_once_it_has_waited_long_enough() -> None:
    hole = Hole(2, 4, NOW - 50)
    assert blocks([hole], 5, NOW, wait=60)
    assert not blocks([hole], 5, NOW, wait=40)
    assert expired([hole, Hole(5, 6, NOW)], NOW, wait=40) == ([Hole(5, 6, NOW)], [hole])


def test_one_event_twice_in_a_batch_with_and_without_its_predecessor_is_settled() -> None:
    from shared.consumer import _settle_all

    settled = _settle_all(
        "c", [("okr/goals", 3, None), ("okr/goals", 3, 2), ("okr/goals", 2, 1)], {}, {}, 60
    )
    assert settled.tops == {"okr/goals": 3}
    [hole] = settled.holes["okr/goals"]
    assert (hole.after, hole.through) == (0, 1)  # 1 is still to come
