"""The consumer's loop over its pull: a partial batch waits `linger` for more and is applied
with what joined it, in one batch; without a linger, with a full batch, or for a reader
waiting for a position, it is applied at once; the next batch is checked while the one before is
applied, and applied after it; a failed batch takes the next one back with it; what arrived
while a batch was applied joins the next one; a wait that brought nothing marks the consumer
caught up, once the last batch is in; settling a batch again settles only what the first
time left unsettled. The pull here is scripted: what arrives when is the point, and a real
server cannot be timed that closely."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pydantic
import pytest
from eventsourcing.persistence import PersistenceError
from nats.aio.msg import Msg

from services.reviews.main import ReviewsSettings
from shared.consumer import Consumer, Outcome, _Batch
from shared.nats import NatsLink


def _msg(name: str) -> Any:
    return SimpleNamespace(name=name, metadata=SimpleNamespace(num_pending=0))


class ScriptedPull:
    """`next` hands out the script's steps in order; a step is a list of messages, "nothing",
    or "stop". Messages listed under `later` arrive while the consumer lingers."""

    def __init__(self, consumer: Consumer, script: list[Any], later: list[Any]) -> None:
        self.consumer = consumer
        self.script = script
        self.later = later
        self.calls: list[tuple[float, int | None]] = []
        self.stopped = False

    async def next(self, timeout: float, limit: int | None = None) -> list[Any]:
        self.calls.append((timeout, limit))
        await asyncio.sleep(0)
        if timeout == 0:  # taking what arrived while lingering
            taken, self.later = self.later[:limit], self.later[limit:]
            return taken
        step = self.script.pop(0) if self.script else "stop"
        if step == "stop":
            self.consumer._stopping = True
            return []
        return [] if step == "nothing" else list(step)

    async def stop(self) -> None:
        self.stopped = True


class Recorded(Consumer):
    def __init__(
        self, script: list[Any], later: list[Any], linger: float, batch_size: int = 8
    ) -> None:
        inbox: Any = None
        super().__init__(
            "test",
            "loop",
            NatsLink("nats://127.0.0.1:1", "test"),
            inbox,
            stream="S",
            subjects=["a"],
            linger=linger,
            batch_size=batch_size,
        )
        self.pull = ScriptedPull(self, script, later)
        self.batches: list[list[str]] = []
        self.idle = 0
        self.log: list[str] = []  # what happened, in order
        self.gate: asyncio.Event | None = None  # when set up, an apply waits for it
        self.fail: set[str] = set()  # batches (by first message) whose apply fails
        self.given_back: list[str] = []

    async def _subscribe(self) -> Any:
        self._doubtful = False  # as subscribing with nothing outstanding
        return self.pull

    async def _check(self, msgs: list[Any]) -> _Batch:
        self.log.append(f"check {msgs[0].name}")
        return _Batch(msgs, carriers=list(msgs))

    async def _apply(self, batch: _Batch) -> None:
        name = batch.msgs[0].name
        self.log.append(f"apply {name}")
        if self.gate is not None:
            await self.gate.wait()
        if name in self.fail:
            self.log.append(f"failed {name}")
            raise PersistenceError("the store is away")
        self.batches.append([m.name for m in batch.msgs])
        self.log.append(f"applied {name}")

    async def _give_back(self, batch: _Batch) -> None:
        self.given_back += [m.name for m in batch.carriers]

    async def _measure_lag(self) -> None:
        pass

    def _idle(self) -> None:
        self.idle += 1


async def test_a_partial_batch_lingers_and_takes_what_arrived_meanwhile() -> None:
    consumer = Recorded([[_msg("a")]], later=[_msg("b"), _msg("c")], linger=0.01)
    await asyncio.wait_for(consumer._consume(), 5)
    assert consumer.batches == [["a", "b", "c"]]
    assert consumer.pull.calls[1] == (0, 7)  # no more than the batch size in all
    assert consumer.pull.stopped


async def test_a_reader_waiting_for_a_position_is_not_kept_waiting_by_the_linger() -> None:
    consumer = Recorded([[_msg("a")]], later=[_msg("b")], linger=5)
    # Reading its own write: waiting for a position before the batch comes.
    reader = asyncio.create_task(consumer.wait_for("okr/goals", 1, timeout=10))
    await asyncio.sleep(0)
    await asyncio.wait_for(consumer._consume(), 1)  # a 5 s linger would time this out
    assert consumer.batches == [["a"]]
    reader.cancel()


async def test_a_reader_that_comes_while_a_batch_lingers_ends_the_linger() -> None:
    consumer = Recorded([[_msg("a")]], later=[_msg("b")], linger=5)
    consume = asyncio.create_task(consumer._consume())
    await asyncio.sleep(0.05)
    assert consumer.batches == []  # lingering
    reader = asyncio.create_task(consumer.wait_for("okr/goals", 1, timeout=10))
    await asyncio.wait_for(consume, 1)
    assert consumer.batches == [["a", "b"]]  # with what arrived until then
    reader.cancel()


async def test_without_a_linger_each_batch_is_applied_as_it_comes() -> None:
    consumer = Recorded([[_msg("a")], [_msg("b")]], later=[], linger=0)
    await asyncio.wait_for(consumer._consume(), 5)
    assert consumer.batches == [["a"], ["b"]]
    # No wait for more: the one look that does not wait is for what arrived while "a" was
    # applied, to join "b" (nothing here).
    assert [limit for timeout, limit in consumer.pull.calls if timeout == 0] == [7]


async def test_what_arrived_while_a_batch_was_applied_joins_the_next_one() -> None:
    consumer = Recorded([[_msg("a")], [_msg("b")]], later=[_msg("x")], linger=0)
    await asyncio.wait_for(consumer._consume(), 5)
    assert consumer.batches == [["a"], ["b", "x"]]
    # "x" is taken and checked once "a" is done, and applied with "b".
    log = consumer.log
    assert log.index("applied a") < log.index("check x") < log.index("apply b")


async def test_a_full_batch_does_not_linger() -> None:
    full = [_msg(str(i)) for i in range(4)]
    consumer = Recorded([full], later=[_msg("x")], linger=5, batch_size=4)
    await asyncio.wait_for(consumer._consume(), 1)  # a 5 s linger would time this out
    assert consumer.batches == [["0", "1", "2", "3"]]


async def test_a_wait_that_brought_nothing_marks_the_consumer_idle() -> None:
    consumer = Recorded(["nothing", [_msg("a")], "nothing"], later=[], linger=0)
    consumer.link.nc = SimpleNamespace(is_connected=True)  # type: ignore[assignment]
    await asyncio.wait_for(consumer._consume(), 5)
    assert consumer.batches == [["a"]]
    assert consumer.idle == 3  # the two empty waits, and the last one, which stops


async def test_the_next_batch_is_checked_while_one_is_applied_and_applied_after_it() -> None:
    consumer = Recorded([[_msg("a")], [_msg("b")], [_msg("c")]], later=[], linger=0)
    consumer.gate = asyncio.Event()
    run = asyncio.create_task(consumer._consume())
    for _ in range(20):
        await asyncio.sleep(0)
    # "a" is being applied; "b" was checked meanwhile and waits for it.
    assert consumer.log == ["check a", "apply a", "check b"]
    consumer.gate.set()
    await asyncio.wait_for(run, 5)
    assert consumer.batches == [["a"], ["b"], ["c"]]
    assert consumer.log.index("applied a") < consumer.log.index("apply b")
    assert consumer.log.index("applied b") < consumer.log.index("apply c")


async def test_a_failed_batch_takes_the_one_checked_behind_it_back_with_it() -> None:
    consumer = Recorded([[_msg("a")], [_msg("b"), _msg("b2")]], later=[], linger=0)
    consumer.fail = {"a"}
    with pytest.raises(PersistenceError):
        await asyncio.wait_for(consumer._consume(), 5)
    assert consumer.batches == []
    assert consumer.given_back == ["b", "b2"]  # "a" gave itself back where it failed
    assert "apply b" not in consumer.log
    assert consumer.pull.stopped


async def test_caught_up_only_once_the_last_batch_is_applied() -> None:
    consumer = Recorded([[_msg("a")], "nothing"], later=[], linger=0)
    consumer.link.nc = SimpleNamespace(is_connected=True)  # type: ignore[assignment]
    consumer.gate = asyncio.Event()
    seen: list[int] = []

    def idle() -> None:
        seen.append(len(consumer.batches))

    consumer._idle = idle  # type: ignore[method-assign]
    run = asyncio.create_task(consumer._consume())
    for _ in range(20):
        await asyncio.sleep(0)
    assert seen == []  # the wait brought nothing, but "a" is still being applied
    consumer.gate.set()
    await asyncio.wait_for(run, 5)
    assert seen[0] == 1


async def test_a_stop_while_a_batch_is_applied_cancels_it_and_stops_the_pull() -> None:
    consumer = Recorded([[_msg("a")]], later=[], linger=0)
    consumer.gate = asyncio.Event()  # never set: the apply hangs
    run = asyncio.create_task(consumer._consume())
    for _ in range(20):
        await asyncio.sleep(0)
    consumer.pull.script = ["nothing"] * 1000
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 5)
    assert consumer.pull.stopped
    assert consumer.batches == []


def test_the_reviews_linger_is_a_bounded_setting(monkeypatch: Any) -> None:
    assert ReviewsSettings().consumer_linger_s == 0.02
    monkeypatch.setenv("OKR_REVIEWS_CONSUMER_LINGER_S", "0")
    assert ReviewsSettings().consumer_linger_s == 0
    for wrong in ("-0.1", "2", "soon"):
        monkeypatch.setenv("OKR_REVIEWS_CONSUMER_LINGER_S", wrong)
        with pytest.raises(pydantic.ValidationError, match=r"consumer_linger_s|LINGER"):
            ReviewsSettings()


# --- settling -------------------------------------------------------------------------------


class _Connection:
    """What a message's settling writes: the commands handed to the connection in one piece,
    and each `publish` (a hand-back or a rejection)."""

    is_closed = False
    is_draining_pubs = False
    is_connected = True
    _flush_queue = None

    def __init__(self) -> None:
        self.stats = {"out_msgs": 0, "out_bytes": 0}
        self.written: list[bytes] = []

    async def _send_command(self, data: bytes, priority: bool = False) -> None:
        self.written.append(data)

    async def publish(self, subject: str, payload: bytes = b"", **_: Any) -> None:
        self.written.append(b"PUB " + subject.encode() + b" " + payload)


async def test_each_message_is_settled_once_however_often_its_batch_is_settled() -> None:
    nc = _Connection()
    consumer = Recorded([], [], linger=0)
    applied, duplicate, early, invalid = (
        Msg(nc, "okr.goals.a.b", f"$JS.ACK.S.test-loop.1.{n}.{n}.0.0", b"{}")  # type: ignore[arg-type]
        for n in range(1, 5)
    )
    settled = [
        (applied, Outcome.APPLIED, None),
        (duplicate, Outcome.DUPLICATE, None),
        (early, Outcome.EARLY, None),
        (invalid, Outcome.INVALID, "bad"),
    ]
    await consumer._settle(settled)
    # A stop cancelled the first call after some of it: the last call settles the rest only.
    await consumer._settle(settled)
    assert nc.written[0] == (
        b"PUB $JS.ACK.S.test-loop.1.1.1.0.0  0\r\n\r\nPUB $JS.ACK.S.test-loop.1.2.2.0.0  0\r\n\r\n"
    )
    assert [w.split(b" ")[2] for w in nc.written[1:]] == [b"-NAK", b"+TERM"]
    assert len(nc.written) == 3
    assert all(m._ackd for m in (applied, duplicate, early, invalid))
