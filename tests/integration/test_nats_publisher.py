"""`JetStreamPublisher` and `acknowledge_all` against a real nats-server: the relay's
messages and a consumer's acknowledgements, written into the connection many at a time, are the
bytes nats-py's `publish` and `Msg.ack` write for them, reach the server, and anything the
protocol cannot carry is refused before a byte is sent."""

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
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from shared.contract import PREVIOUS_HEADER
from shared.nats import JetStreamPublisher, acknowledge_all
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


async def _published_by_nats_py(
    nc: Client, body: bytes, reply: str, headers: dict[str, str]
) -> list[bytes]:
    """The bytes nats-py's `publish` hands the connection for one message."""
    written: list[bytes] = []

    async def record(cmd: bytes, priority: bool = False) -> None:
        written.append(cmd)

    original = nc._send_command
    nc._send_command = record  # type: ignore[method-assign]
    try:
        await nc.publish(SUBJECT, body, reply=reply, headers=headers)
    finally:
        nc._send_command = original  # type: ignore[method-assign]
    return written


async def test_a_message_is_the_bytes_nats_py_publishes(nc: Client) -> None:
    prefix = nc.new_inbox() + "."
    publisher = JetStreamPublisher(nc, "OKR", prefix)
    body = b'{"id":"x","data":{"name":"Q1 \xc3\xa9"}}'
    headers = {"Nats-Msg-Id": "okr/goals:17", "Nats-Expected-Stream": "OKR"}
    written = await _published_by_nats_py(nc, body, prefix + "17", headers)
    assert written == [publisher.command(SUBJECT, 17, "okr/goals:17", body)]


async def test_a_message_naming_its_predecessor_is_the_bytes_nats_py_publishes(
    nc: Client,
) -> None:
    prefix = nc.new_inbox() + "."
    publisher = JetStreamPublisher(nc, "OKR", prefix)
    body = b'{"id":"x"}'
    headers = {
        "Nats-Msg-Id": "okr/goals:42",
        PREVIOUS_HEADER: "40",
        "Nats-Expected-Stream": "OKR",
    }
    written = await _published_by_nats_py(nc, body, prefix + "3", headers)
    assert written == [publisher.command(SUBJECT, 3, "okr/goals:42", body, 40)]


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


# --- acknowledgements ------------------------------------------------------------------------


async def _delivered(nc: Client, count: int) -> list[Msg]:
    """`count` messages published to the stream and delivered, unacknowledged, to a durable."""
    js = nc.jetstream()
    for n in range(count):
        await js.publish(SUBJECT, orjson.dumps({"n": n}))
    sub = await js.pull_subscribe(
        "okr.>", durable="acks", stream="OKR", config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT)
    )
    return await sub.fetch(count, timeout=5)


async def test_an_acknowledgement_is_the_bytes_msg_ack_writes(nc: Client) -> None:
    written: list[bytes] = []

    async def record(cmd: bytes, priority: bool = False) -> None:
        written.append(cmd)

    reply = "$JS.ACK.OKR.views.1.7.7.1765093841617281000.0"
    by_ack, by_us = Msg(nc, SUBJECT, reply, b"{}"), Msg(nc, SUBJECT, reply, b"{}")
    original = nc._send_command
    nc._send_command = record  # type: ignore[method-assign]
    try:
        await by_ack.ack()
        await acknowledge_all(nc, [by_us, by_us])
    finally:
        nc._send_command = original  # type: ignore[method-assign]
    assert written[1] == written[0] * 2
    assert by_us._ackd


async def test_acknowledged_together_the_messages_are_settled_on_the_server(nc: Client) -> None:
    msgs = await _delivered(nc, 5)
    assert len(msgs) == 5
    await acknowledge_all(nc, msgs[:4])
    await nc.flush()
    info = await nc.jetstream().consumer_info("OKR", "acks")
    assert info.ack_floor.stream_seq == 4
    assert info.num_ack_pending == 1
    assert nc.stats["out_msgs"] >= 4
    # Settled once: `ack` refuses them now, as it refuses a message it acknowledged itself.
    with pytest.raises(nats_errors.MsgAlreadyAckdError):
        await msgs[0].ack()


@pytest.mark.parametrize(
    ("reply", "acked", "error"),
    [
        (None, False, nats_errors.NotJSMessageError),
        ("", False, nats_errors.NotJSMessageError),
        ("$JS.ACK.OKR.views.1.2.2.0.0", True, nats_errors.MsgAlreadyAckdError),
        ("$JS.ACK.OKR.views.1.2.2.0.0 x", False, nats_errors.BadSubjectError),
        ("$JS.ACK.OKR.views.1.2.2.0.0\r\nPUB okr.x 1", False, nats_errors.BadSubjectError),
    ],
)
async def test_an_acknowledgement_that_cannot_be_sent_refuses_the_whole_list(
    nc: Client, reply: str | None, acked: bool, error: type[Exception]
) -> None:
    good = Msg(nc, SUBJECT, "$JS.ACK.OKR.views.1.1.1.0.0", b"{}")
    bad = Msg(nc, SUBJECT, reply, b"{}")  # type: ignore[arg-type]
    bad._ackd = acked
    pending = nc._pending_data_size
    with pytest.raises(error):
        await acknowledge_all(nc, [good, bad])
    assert nc._pending_data_size == pending
    assert nc.stats["out_msgs"] == 0
    assert not good._ackd


async def test_no_acknowledgement_goes_to_a_closed_connection(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    msg = Msg(nc, SUBJECT, "$JS.ACK.OKR.views.1.1.1.0.0", b"{}")
    await nc.close()
    with pytest.raises(nats_errors.ConnectionClosedError):
        await acknowledge_all(nc, [msg])
    assert not msg._ackd
