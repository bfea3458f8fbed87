"""Read-your-writes holds across gaps: a position counts as reached only once every event up to
it has been applied, not when a later one has. Four ways a later event gets applied before an
earlier one, each through the real consumer, a real NATS server and both stores:

- the store fails under a batch, which is handed back to come again a second later; the
  consumer subscribes again and reads it back from the stream first;
- an event arrives before its aggregate's predecessor and is handed back (early);
- a process took messages and stopped without acknowledging them (a crash): they come again
  only after the ack wait, so the next process reads them from the stream itself and applies
  them first; when it cannot (too many), it applies what followed them and doubts meanwhile;
- messages are lost on their way to the consumer (a connection dropped under them): they too
  come again only after the ack wait, and nothing tells which they were, so the consumer
  reads back from the stream what is unacknowledged once it sees the gap; when it cannot (too
  many), it doubts every position until they are in;
- the stream holds a source's events out of order (a relay's publish failed mid-page and went
  out again after the later ones): each message names its predecessor, so the consumer knows
  what it still lacks, across a restart too, until it arrives or has waited too long.

Each test samples, while the gap is open, whether `wait_for` says the position is reached,
and checks that whenever it does, the event is in the store; and, where the gap stays open
until the messages come again, that it was seen open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import nats
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared import consumer as consumer_module
from shared.consumer import Consumer
from shared.pull import ContinuousPull, delivery
from shared.telemetry import CONSUMER_HOLES, CONSUMER_HOLES_EXPIRED
from tests.integration.consumers import (
    SOURCE,
    chain,
    early_first,
    goals_events,
    publish,
    running,
)
from tests.support import NatsServer

DURABLE = "projections-gaps"


async def test_a_position_past_a_batch_the_store_failed_under_waits_for_it(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    bodies = goals_events(60)
    await publish(nats_server.url, bodies)
    # The store fails under the batch holding 25; that one and the one checked behind it are
    # handed back, owed until they are in again.
    async with running(store, nats_server.url, fail_from=25) as run:
        await run.watch(bodies, 30, 20)
        assert run.projector.failed
        assert await run.consumer.wait_for(SOURCE, 60, 5)
        assert run.projector.applied == [b["id"] for b in bodies]  # each once, in order


async def test_a_position_past_an_early_event_waits_for_it(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    # Event 1 is early: it is handed back, and applied after 2 and 3.
    bodies = early_first()
    await publish(nats_server.url, bodies)
    async with running(store, nats_server.url) as run:
        assert await run.watch(bodies, 2, 20)


async def _crash_holding(url: str, count: int, ack_wait: float) -> None:
    """A process takes the first `count` messages and goes away without acknowledging them:
    the server hands them out again only once the ack wait is over."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        config = ConsumerConfig(
            durable_name=DURABLE,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            max_ack_pending=1000,
            filter_subject="okr.goals.>",
        )
        await js.add_consumer("OKR", config)
        taken = await (await js.pull_subscribe_bind(DURABLE, "OKR")).fetch(count, timeout=5)
        assert len(taken) == count
    finally:
        await nc.close()


async def _unacknowledged(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().consumer_info("OKR", DURABLE)).num_ack_pending
    finally:
        await nc.close()


async def _unacknowledged_once_settled(url: str, floor: int, within: float = 5.0) -> int:
    """`num_ack_pending` once it is down to `floor`, or after `within` seconds."""
    deadline = time.monotonic() + within
    while (pending := await _unacknowledged(url)) > floor and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return pending


async def test_messages_a_crashed_process_held_are_read_from_the_stream_at_start(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    bodies = goals_events(20)
    await publish(nats_server.url, bodies)
    await _crash_holding(nats_server.url, 5, ack_wait=30)
    async with running(store, nats_server.url, ack_wait=30) as run:
        # Applied in order well before the ack wait is over, each once: the five while the
        # server still holds them for the process that crashed.
        assert not await run.watch(bodies, 20, 5)
        assert run.projector.applied == [b["id"] for b in bodies]
        # Acknowledged once synced (at most `sync_every` after the commit): all but those five.
        assert await _unacknowledged_once_settled(nats_server.url, 5) == 5


async def test_held_messages_among_many_of_other_subjects_are_read_back_one_by_one(
    store: dict[str, Any], nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Five goals events, each behind three messages the consumer does not take (a busy
    # stream, a sparse filter): 20 sequences to cover, more than it reads by sequence, but
    # only five messages of its own.
    monkeypatch.setattr(consumer_module, "RECOVER_AT_MOST", 8)
    bodies = goals_events(5)
    await publish(nats_server.url, bodies, others=3)
    await _crash_holding(nats_server.url, 5, ack_wait=30)
    async with running(store, nats_server.url, ack_wait=30) as run:
        assert await run.consumer.wait_for(SOURCE, 5, 5)
        assert run.projector.applied == [b["id"] for b in bodies]


async def test_an_early_event_a_crashed_process_held_is_applied_once_its_predecessor_is_read(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    # As in the early-event case, but all three are held by a process that crashed: read back
    # from the stream, the early one is applied after its predecessor, not after the ack wait.
    bodies = early_first()
    await publish(nats_server.url, bodies)
    await _crash_holding(nats_server.url, 3, ack_wait=30)
    async with running(store, nats_server.url, ack_wait=30) as run:
        assert await run.consumer.wait_for(SOURCE, 3, 5)
        assert run.projector.applied == [bodies[i]["id"] for i in (1, 2, 0)]
        assert not run.consumer._owed


async def test_messages_applied_but_not_acknowledged_before_a_crash_change_nothing_twice(
    store: dict[str, Any], nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = goals_events(20)
    await publish(nats_server.url, bodies)

    async def crashes_before_acknowledging(consumer: Consumer, msgs: Sequence[Msg]) -> None:
        pass

    with monkeypatch.context() as m:
        m.setattr(Consumer, "acknowledge", crashes_before_acknowledging)
        async with running(store, nats_server.url, ack_wait=30) as run:
            assert await run.consumer.wait_for(SOURCE, 20, 5)
    assert await _unacknowledged(nats_server.url) == 20
    async with running(store, nats_server.url, ack_wait=30) as run:
        # Every one read again from the stream is a duplicate: nothing applied, and once
        # subscribed, all reached (not only after the ack wait).
        for _ in range(500):
            if run.consumer.caught_up:
                break
            await asyncio.sleep(0.01)
        assert run.consumer.caught_up
        assert run.consumer.reached(SOURCE, 20)
        assert run.projector.applied == []
        assert {b["id"] for b in bodies} == await asyncio.to_thread(run.seen)


async def test_too_many_messages_a_crashed_process_held_hold_positions_until_they_come_again(
    store: dict[str, Any], nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "RECOVER_AT_MOST", 4)
    bodies = goals_events(20)
    await publish(nats_server.url, bodies)
    await _crash_holding(nats_server.url, 5, ack_wait=2)
    async with running(store, nats_server.url) as run:
        assert await run.watch(bodies, 20, 20)


def _losing_some(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Messages 4 to 6 are lost on their first way to the consumer, as if the connection had
    dropped under them; the list collects them."""
    arrived = ContinuousPull._arrived
    lost: list[int] = []

    async def loses_some(pull: ContinuousPull, msg: Msg) -> None:
        d = delivery(msg.reply)
        if d is not None and d.delivered == 1 and 4 <= d.stream <= 6:
            lost.append(d.stream)
            return
        await arrived(pull, msg)

    monkeypatch.setattr(ContinuousPull, "_arrived", loses_some)
    return lost


async def test_messages_lost_on_their_way_are_read_back_from_the_stream(
    store: dict[str, Any], nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    bodies = goals_events(20)
    lost = _losing_some(monkeypatch)
    async with running(store, nats_server.url, ack_wait=30) as run:
        await asyncio.sleep(0.3)  # subscribed, with a pull request waiting
        await publish(nats_server.url, bodies)
        # Read back once the gap shows, before the batch that showed it is applied; not
        # after the ack wait.
        assert not await run.watch(bodies, 20, 5)
        assert lost == [4, 5, 6]
        assert run.projector.applied == [b["id"] for b in bodies]


async def test_too_many_messages_lost_on_their_way_hold_positions_until_they_come_again(
    store: dict[str, Any], nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "RECOVER_AT_MOST", 2)
    bodies = goals_events(20)
    lost = _losing_some(monkeypatch)
    async with running(store, nats_server.url) as run:
        await asyncio.sleep(0.3)  # subscribed, with a pull request waiting
        await publish(nats_server.url, bodies)
        assert await run.watch(bodies, 20, 20)
        assert lost == [4, 5, 6]


async def test_without_gaps_positions_are_reached_as_they_are_applied(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    bodies = goals_events(30)
    await publish(nats_server.url, bodies)
    async with running(store, nats_server.url) as run:
        assert await run.consumer.wait_for(SOURCE, 30, 5)
        assert {b["id"] for b in bodies} <= await asyncio.to_thread(run.seen)


async def test_after_a_clean_restart_positions_already_applied_are_reached_at_once(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    bodies = goals_events(20)
    await publish(nats_server.url, bodies)
    async with running(store, nats_server.url) as run:
        assert await run.consumer.wait_for(SOURCE, 20, 5)
    async with running(store, nats_server.url) as run:
        # Asked before the consumer has subscribed: answered once it has, nothing arriving.
        assert not run.consumer.reached(SOURCE, 20)
        assert await run.consumer.wait_for(SOURCE, 20, 2)


def _held_back(count: int, late: set[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Goals events 1 to `count` as a relay names their predecessors, split into those the
    stream holds first and the `late` ones it holds after them."""
    bodies = goals_events(count)
    return [b for b in bodies if b["sequence"] not in late], [
        b for b in bodies if b["sequence"] in late
    ]


async def _applied_through(run: Any, sequence: int) -> None:
    deadline = time.monotonic() + 10
    while run.consumer.positions.get(SOURCE, 0) < sequence or run.consumer._doubtful:
        assert time.monotonic() < deadline, "not applied in time"
        await asyncio.sleep(0.02)


async def test_a_position_past_events_the_stream_holds_later_waits_for_them(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    first, late = _held_back(30, {10, 11})
    previous = chain(first + late)
    await publish(nats_server.url, first, previous=previous)
    async with running(store, nats_server.url) as run:
        await _applied_through(run, 30)
        # Applied up to 30, but 12 named 11 as its predecessor: 10 and 11 are still to come.
        assert run.consumer.reached(SOURCE, 9)
        assert not run.consumer.reached(SOURCE, 10)
        assert not await run.consumer.wait_for(SOURCE, 20, 0.3)
        assert _missing() == 2  # what operators see
        await publish(nats_server.url, late, previous=previous)
        assert await run.consumer.wait_for(SOURCE, 30, 5)
        assert {b["id"] for b in first + late} <= await asyncio.to_thread(run.seen)
        assert run.consumer.inbox.holes == {}
        deadline = time.monotonic() + 5
        while _missing():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)


def _missing() -> float:
    return CONSUMER_HOLES.labels("projections", "gaps", SOURCE)._value.get()


async def test_events_still_to_come_are_still_awaited_after_a_restart(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    first, late = _held_back(30, {10})
    previous = chain(first + late)
    await publish(nats_server.url, first, previous=previous)
    async with running(store, nats_server.url) as run:
        await _applied_through(run, 30)
    async with running(store, nats_server.url) as run:
        await _applied_through(run, 30)  # subscribed, nothing outstanding
        assert run.consumer.reached(SOURCE, 9)
        assert not await run.consumer.wait_for(SOURCE, 20, 0.3)
        await publish(nats_server.url, late, previous=previous)
        assert await run.consumer.wait_for(SOURCE, 30, 5)
        assert {b["id"] for b in first + late} <= await asyncio.to_thread(run.seen)


async def test_events_that_never_come_hold_positions_only_for_a_while(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    first, late = _held_back(31, {10})
    previous = chain(first + late)
    await publish(nats_server.url, first[:-1], previous=previous)
    given_up = CONSUMER_HOLES_EXPIRED.labels("projections", "gaps")
    before = given_up._value.get()
    async with running(store, nats_server.url, hole_wait=1.5) as run:
        await _applied_through(run, 30)
        assert not run.consumer.reached(SOURCE, 20)
        assert await run.consumer.wait_for(SOURCE, 20, 5)  # by waiting out the hole
        assert not run.consumer.reached(SOURCE, 31)
        # The next batch forgets the hole, and counts it for operators.
        await publish(nats_server.url, first[-1:], previous=previous)
        assert await run.consumer.wait_for(SOURCE, 31, 5)
        assert run.consumer.inbox.holes == {}
        assert given_up._value.get() == before + 1


async def test_a_rejected_event_does_not_hold_the_positions_after_it(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    bodies = goals_events(30)
    bodies[9]["type"] = "okr.goals.cycle.renamed.v1"  # refused by the contract
    await publish(nats_server.url, bodies, previous=chain(bodies))
    async with running(store, nats_server.url) as run:
        assert await run.consumer.wait_for(SOURCE, 30, 5)
        assert bodies[9]["id"] not in await asyncio.to_thread(run.seen)
        assert run.consumer.inbox.holes == {}
