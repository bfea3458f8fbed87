"""The continuous pull the consumers read JetStream with, against a real nats-server: every
message comes, in order, in batches no larger than asked; requests that expired or were lost
with the server are made again by themselves; what was received and not taken is handed back
at stop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from shared.pull import ContinuousPull
from tests.support import NatsServer, declare_stream

SUBJECT = "okr.test.thing.happened"


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url, reconnect_time_wait=0.1)
    await client.jetstream().add_consumer(
        "OKR",
        ConsumerConfig(
            durable_name="puller",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30,
            filter_subject=SUBJECT,
        ),
    )
    yield client
    await client.close()


async def publish(nc: Client, first: int, count: int) -> None:
    js = nc.jetstream()
    for i in range(first, first + count):
        await js.publish(SUBJECT, str(i).encode())


async def take(pull: ContinuousPull, count: int, timeout: float = 10) -> list[list[Msg]]:
    """Batches until `count` messages came, acknowledging each."""
    batches: list[list[Msg]] = []
    deadline = time.monotonic() + timeout
    while sum(map(len, batches)) < count:
        assert time.monotonic() < deadline, f"only {sum(map(len, batches))} of {count} came"
        msgs = await pull.next(0.5)
        for msg in msgs:
            await msg.ack()
        if msgs:
            batches.append(msgs)
    return batches


def numbers(batches: list[list[Msg]]) -> list[int]:
    return [int(m.data) for batch in batches for m in batch]


async def test_every_message_comes_in_order_in_bounded_batches(nc: Client) -> None:
    await publish(nc, 0, 100)  # a backlog, more than one request's worth
    pull = ContinuousPull(nc, "OKR", "puller", batch=16)
    await pull.start()
    try:
        batches = await take(pull, 100)
        await publish(nc, 100, 5)  # and what comes while it waits
        batches += await take(pull, 5)
    finally:
        await pull.stop()
    assert numbers(batches) == list(range(105))
    assert max(map(len, batches)) <= 16
    assert await pull.next(0) == []


async def test_a_limit_takes_fewer_and_leaves_the_rest_for_later(nc: Client) -> None:
    await publish(nc, 0, 10)
    pull = ContinuousPull(nc, "OKR", "puller", batch=16)
    await pull.start()
    try:
        # All ten arrive first: the request `next` would make, then a wait for them (`next`
        # returns as soon as one is there).
        await pull._top_up()
        deadline = time.monotonic() + 10
        while len(pull._messages) < 10:
            assert time.monotonic() < deadline, f"{len(pull._messages)} of 10 came"
            await asyncio.sleep(0.01)
        first = await pull.next(1, limit=3)
        rest = await take(pull, 7)
        for msg in first:
            await msg.ack()
    finally:
        await pull.stop()
    assert [int(m.data) for m in first] == [0, 1, 2]
    assert numbers(rest) == list(range(3, 10))


async def test_it_holds_at_most_a_batch_ahead_of_what_was_taken(nc: Client) -> None:
    # A slow reader (one message at a time, none acknowledged) does not make the server
    # deliver the whole backlog to it: what was delivered and not taken stays within a batch.
    await publish(nc, 0, 100)
    pull = ContinuousPull(nc, "OKR", "puller", batch=16)
    await pull.start()
    try:
        taken = []
        for _ in range(10):
            taken += await pull.next(5, limit=1)
            await asyncio.sleep(0.05)  # what was asked for arrives
        info = await nc.jetstream().consumer_info("OKR", "puller")
    finally:
        await pull.stop()
    assert [int(m.data) for m in taken] == list(range(10))
    assert info.num_ack_pending <= 10 + 16


async def test_what_jetstream_did_not_deliver_is_ignored(nc: Client) -> None:
    # Anyone allowed to publish to the inbox could send to it: only stream messages (with
    # their `$JS.ACK` reply) are taken, so nothing unacknowledgeable reaches the consumer.
    pull = ContinuousPull(nc, "OKR", "puller", batch=16)
    await pull.start()
    try:
        await nc.publish(pull.inbox, b"-1")
        await nc.publish(pull.inbox, b"-2", reply="_INBOX.somewhere")
        await publish(nc, 0, 1)
        batches = await take(pull, 1)
        await asyncio.sleep(0.2)
        assert await pull.next(0) == []
    finally:
        await pull.stop()
    assert numbers(batches) == [0]


async def test_waiting_with_nothing_to_take_returns_nothing_in_time(nc: Client) -> None:
    pull = ContinuousPull(nc, "OKR", "puller", batch=16)
    await pull.start()
    try:
        started = time.monotonic()
        assert await pull.next(0.3) == []
        assert 0.25 <= time.monotonic() - started < 2
    finally:
        await pull.stop()


async def test_requests_that_expired_are_made_again(nc: Client) -> None:
    # Requests held for 0.5 s: past their expiry, a message published later still comes, and
    # at once (the expiry's status wakes the puller to ask again, not its next poll).
    pull = ContinuousPull(nc, "OKR", "puller", batch=8, expires=0.5, heartbeat=0.2)
    await pull.start()
    try:
        assert await pull.next(1.5) == []
        await publish(nc, 0, 1)
        started = time.monotonic()
        batches = await take(pull, 1)
        assert time.monotonic() - started < 0.5
    finally:
        await pull.stop()
    assert numbers(batches) == [0]


async def test_messages_received_and_not_taken_come_again_at_once_after_stop(
    nc: Client,
) -> None:
    await publish(nc, 0, 6)
    pull = ContinuousPull(nc, "OKR", "puller", batch=16)
    await pull.start()
    taken = await pull.next(5, limit=2)
    for msg in taken:
        await msg.ack()
    await asyncio.sleep(0.3)  # the other four are in the puller, unacknowledged
    await pull.stop()
    again = ContinuousPull(nc, "OKR", "puller", batch=16)
    await again.start()
    try:
        # Handed back with `nak`: well before the 30 s ack wait. Redeliveries keep no order
        # among themselves (the consumers' inbox orders by aggregate version, not arrival).
        batches = await take(again, 4, timeout=5)
    finally:
        await again.stop()
    assert sorted(numbers(batches)) == [2, 3, 4, 5]


@pytest.mark.parametrize("killed", [False, True], ids=["stopped", "killed"])
async def test_requests_lost_with_a_restarted_server_are_made_again(
    tmp_path: Path, killed: bool
) -> None:
    # The server's pull requests die with it. Stopped, it says so (409, with what each still
    # held); killed, its heartbeats stop, and the puller, hearing nothing for two of them,
    # asks again once the client has reconnected.
    server = NatsServer(tmp_path / "nats")
    server.start()
    await declare_stream(server.url)
    client = await nats.connect(server.url, reconnect_time_wait=0.1, max_reconnect_attempts=-1)
    try:
        await client.jetstream().add_consumer(
            "OKR",
            ConsumerConfig(
                durable_name="puller", ack_policy=AckPolicy.EXPLICIT, filter_subject=SUBJECT
            ),
        )
        pull = ContinuousPull(client, "OKR", "puller", batch=8, expires=5, heartbeat=0.3)
        await pull.start()
        assert await pull.next(0.5) == []
        server.stop(kill=killed)
        server.start()  # same port, same store: the stream and the consumer are still there
        deadline = time.monotonic() + 10
        while True:  # until the client is back and JetStream has recovered the stream
            assert time.monotonic() < deadline, "JetStream did not come back"
            try:
                await client.jetstream().publish(SUBJECT, b"0", timeout=0.5)
                break
            except (nats.errors.Error, TimeoutError):
                await asyncio.sleep(0.1)
        batches = await take(pull, 1, timeout=5)
        await pull.stop()
    finally:
        await client.close()
        server.stop()
    assert numbers(batches) == [0]


def test_a_heartbeat_must_fit_twice_in_the_expiry() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        ContinuousPull(None, "OKR", "puller", batch=8, expires=1, heartbeat=0.5)  # type: ignore[arg-type]
