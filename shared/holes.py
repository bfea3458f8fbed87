"""What a consumer still lacks of a source: the holes in the sequences it has settled.

A service's log numbers its events with sequences that increase, with gaps allowed, so a
consumer past sequence 42 cannot tell from the numbers alone whether 41 exists and is still to
come. The relays say it: each message names the sequence of the event before it in its log
(`Okr-Previous-Sequence`). An event settled by a consumer (applied, found a duplicate, or
rejected) with predecessor `p` tells that nothing of its source lies strictly between `p` and
it. One whose predecessor is above everything settled so far opens a hole: the events after
the highest settled one up to that predecessor are still to come. That happens when the stream
holds a source's events out of order, as after a publish of the relay failed while later ones
of the same pipelined page went through: the relay publishes the failed one again, after them.

A position in a hole is not reached (`blocks`), whatever was applied after it. A hole closes
as the events in it arrive. One that stays open longer than `HOLE_WAIT_S` (its events were
lost for good, or a message without the header took their place) stops holding readers: it
expires, and is logged then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

# How long an open hole holds readers. Longer than a relay takes to publish a failed message
# again (its retries back off to 5 s, and a publish waits at most 5 s for its acknowledgement),
# and longer than NATS usually takes to come back; short enough that events lost for good do
# not hold reads with `min_position` for long.
HOLE_WAIT_S = 120.0


class Hole(NamedTuple):
    """Events of a source with sequences in `(after, through]` may still come; seen open at
    `opened` (seconds since the epoch, so that it survives a restart)."""

    after: int
    through: int
    opened: float


def settle(
    holes: Sequence[Hole], top: int, sequence: int, previous: int | None, now: float
) -> tuple[list[Hole], int]:
    """The holes and the highest settled sequence once the event at `sequence` (whose
    predecessor in its log is `previous`, None when the message did not say) is settled,
    given the holes and the highest settled sequence `top` before it."""
    result = list(holes)
    if previous is None:
        low = sequence - 1  # only the event itself is known settled
    else:
        if previous > top:
            result.append(Hole(top, previous, now))  # what lies between is still to come
        low = previous
    if result and low < sequence:
        result = _cut(result, low, sequence)
    return result, max(top, sequence)


def _cut(holes: Sequence[Hole], low: int, high: int) -> list[Hole]:
    """The holes less `(low, high]`."""
    kept: list[Hole] = []
    for hole in holes:
        if hole.through <= low or hole.after >= high:
            kept.append(hole)
            continue
        if hole.after < low:
            kept.append(Hole(hole.after, low, hole.opened))
        if hole.through > high:
            kept.append(Hole(high, hole.through, hole.opened))
    return kept


def merged(
    holes: Mapping[str, list[Hole]], changed: Mapping[str, list[Hole]]
) -> dict[str, list[Hole]]:
    """The holes per source with those of `changed` in place, sources without any left out:
    a new dict, since readers may hold the one before."""
    return {source: h for source, h in {**holes, **changed}.items() if h}


def blocks(holes: Sequence[Hole], sequence: int, now: float, wait: float = HOLE_WAIT_S) -> bool:
    """Whether an open hole (not yet expired) lies at or below `sequence`."""
    return any(h.after < sequence and now - h.opened < wait for h in holes)


def expired(
    holes: Sequence[Hole], now: float, wait: float = HOLE_WAIT_S
) -> tuple[list[Hole], list[Hole]]:
    """The holes still open, and those open longer than `wait`."""
    kept = [h for h in holes if now - h.opened < wait]
    return kept, [h for h in holes if now - h.opened >= wait]
