"""`JetStreamPublisher` against a real nats-server: the relay's messages, written into the
connection many at a time, are the bytes nats-py's `publish` writes for them, reach the
stream with their ids, and anything the protocol cannot carry is refused before a byte is
sent."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import nats
import orjson
import pytest
from nats import errors as nats_errors
from nats.aio.client import Client

from shared.nats import JetStreamPublisher
from tests.support import NatsServer, read_stream

SUBJECT = "okr.goals.cycle.scheduled.v1"


class Answers:
    """JetStream's answers to publishes replying under `prefix`, by token."""

    def __init__(self, prefix: str, count: int) -> None:
        self.prefix = prefix
        self.count = count
        self.by_token: dict[str, dict[str, Any]] = {}
        self.done = asyncio.Event()

    async def start(self, nc: Client) -> Answers:
        await nc.subscribe(self.prefix + "*", cb=self._answer)
        return self

    async def _answer(self, msg: Any) -> None:
        self.by_token[msg.subject[len(self.prefix) :]] = orjson.loads(msg.data)
        if len(self.by_token) >= self.count:
            self.done.set()

    async def wait(self) -> dict[str, dict[str, Any]]:
        await asyncio.wait_for(self.done.wait(), 10)
        return self.by_token


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


async def test_a_message_is_the_bytes_nats_py_publishes(nc: Client) -> None:
    written: list[bytes] = []

    async def record(cmd: bytes, priority: bool = False) -> None:
        written.append(cmd)

    prefix = nc.new_inbox() + "."
    publisher = JetStreamPublisher(nc, "OKR", prefix)
    body = b'{"id":"x","data":{"name":"Q1 \xc3\xa9"}}'
    original = nc._send_command
    nc._send_command = record  # type: ignore[method-assign]
    try:
        await nc.publish(
            SUBJECT,
            body,
            reply=prefix + "17",
            headers={"Nats-Msg-Id": "okr/goals:17", "Nats-Expected-Stream": "OKR"},
        )
    finally:
        nc._send_command = original  # type: ignore[method-assign]
    assert written == [publisher.command(SUBJECT, 17, "okr/goals:17", body)]


async def test_a_page_reaches_the_stream_in_order_with_its_ids(
    nc: Client, nats_server: NatsServer
) -> None:
    prefix = nc.new_inbox() + "."
    answers = await Answers(prefix, 4).start(nc)
    publisher = JetStreamPublisher(nc, "OKR", prefix)
    bodies = [orjson.dumps({"n": n}) for n in range(3)]
    commands = [publisher.command(SUBJECT, n, f"okr/goals:{n}", b) for n, b in enumerate(bodies)]
    # The same id again: JetStream takes it for a duplicate.
    commands.append(publisher.command(SUBJECT, 3, "okr/goals:1", b"again"))
    await publisher.send(commands)
    answered = await answers.wait()
    assert [answered[str(n)].get("seq") for n in range(3)] == [1, 2, 3]
    assert answered["3"] == {"stream": "OKR", "seq": 2, "duplicate": True}
    assert nc.stats["out_msgs"] == 4
    messages = await read_stream(nats_server.url, 3)
    assert [m.data for m in messages] == bodies
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [f"okr/goals:{n}" for n in range(3)]
    assert [m.subject for m in messages] == [SUBJECT] * 3


async def test_the_expected_stream_is_enforced(nc: Client) -> None:
    prefix = nc.new_inbox() + "."
    answers = await Answers(prefix, 1).start(nc)
    publisher = JetStreamPublisher(nc, "ELSEWHERE", prefix)
    await publisher.send([publisher.command(SUBJECT, 1, "okr/goals:1", b"{}")])
    answered = await answers.wait()
    assert answered["1"]["error"]["err_code"] == 10060  # expected stream does not match
    info = await nc.jetstream().stream_info("OKR")
    assert info.state.messages == 0


@pytest.mark.parametrize(
    ("subject", "msg_id", "size", "error"),
    [
        ("okr.goals bad", "okr/goals:1", 10, nats_errors.BadSubjectError),
        ("", "okr/goals:1", 10, nats_errors.BadSubjectError),
        ("okr.goals\r\nPUB x 1", "okr/goals:1", 10, nats_errors.BadSubjectError),
        (SUBJECT, "okr/goals:1\r\nNats-Expected-Stream: X", 10, nats_errors.BadHeaderError),
        (SUBJECT, "okr/goals:1\n", 10, nats_errors.BadHeaderError),
        (SUBJECT, " okr/goals:1", 10, nats_errors.BadHeaderError),
        (SUBJECT, "okr/goals:1", 2 * 1024 * 1024, nats_errors.MaxPayloadError),
    ],
)
async def test_what_the_protocol_cannot_carry_is_refused_and_nothing_is_sent(
    nc: Client, subject: str, msg_id: str, size: int, error: type[Exception]
) -> None:
    publisher = JetStreamPublisher(nc, "OKR", nc.new_inbox() + ".")
    pending = nc._pending_data_size
    with pytest.raises(error):
        publisher.command(subject, 1, msg_id, b"x" * size)
    assert nc._pending_data_size == pending
    assert nc.stats["out_msgs"] == 0


@pytest.mark.parametrize(("stream", "prefix"), [("O K R", "_INBOX.x."), ("OKR", "_INBOX x.")])
async def test_a_stream_or_reply_prefix_that_cannot_be_written_is_refused(
    nc: Client, stream: str, prefix: str
) -> None:
    with pytest.raises((ValueError, nats_errors.BadSubjectError)):
        JetStreamPublisher(nc, stream, prefix)


async def test_a_closed_connection_takes_nothing(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    publisher = JetStreamPublisher(nc, "OKR", nc.new_inbox() + ".")
    command = publisher.command(SUBJECT, 1, "okr/goals:1", b"{}")
    await nc.close()
    with pytest.raises(nats_errors.ConnectionClosedError):
        await publisher.send([command])
    assert nc.stats["out_msgs"] == 0


async def test_while_reconnecting_a_page_beyond_the_buffer_is_refused_whole(
    tmp_path: Any,
) -> None:
    server = NatsServer(tmp_path / "nats")
    server.start()
    nc = await nats.connect(
        server.url, pending_size=4096, max_reconnect_attempts=-1, reconnect_time_wait=0.2
    )
    try:
        publisher = JetStreamPublisher(nc, "OKR", nc.new_inbox() + ".")
        server.stop()
        for _ in range(100):
            if not nc.is_connected:
                break
            await asyncio.sleep(0.05)
        assert not nc.is_connected
        small = [publisher.command(SUBJECT, 1, "okr/goals:1", b"{}")]
        large = [publisher.command(SUBJECT, n, f"okr/goals:{n}", b"x" * 1000) for n in range(5)]
        await publisher.send(small)  # buffered for the reconnect, as `publish` would
        buffered = nc._pending_data_size
        assert buffered >= len(small[0])
        with pytest.raises(nats_errors.OutboundBufferLimitError):
            await publisher.send(large)
        assert nc._pending_data_size == buffered
    finally:
        with contextlib.suppress(Exception):  # closing without a server may fail to flush
            await nc.close()
