"""The consumer's loop over its pull: a partial batch waits `linger` for more and is applied
with what joined it, in one batch; without a linger (or with a full batch) it is applied at
once; a wait that brought nothing marks the consumer caught up. The pull here is scripted:
what arrives when is the point, and a real server cannot be timed that closely."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pydantic
import pytest

from services.reviews.main import ReviewsSettings
from shared.consumer import Consumer
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

    async def _subscribe(self) -> Any:
        return self.pull

    async def _handle(self, msgs: list[Any]) -> None:
        self.batches.append([m.name for m in msgs])

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


async def test_without_a_linger_each_batch_is_applied_as_it_comes() -> None:
    consumer = Recorded([[_msg("a")], [_msg("b")]], later=[_msg("x")], linger=0)
    await asyncio.wait_for(consumer._consume(), 5)
    assert consumer.batches == [["a"], ["b"]]
    assert all(timeout > 0 for timeout, _ in consumer.pull.calls)


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


def test_the_reviews_linger_is_a_bounded_setting(monkeypatch: Any) -> None:
    assert ReviewsSettings().consumer_linger_s == 0.02
    monkeypatch.setenv("OKR_REVIEWS_CONSUMER_LINGER_S", "0")
    assert ReviewsSettings().consumer_linger_s == 0
    for wrong in ("-0.1", "2", "soon"):
        monkeypatch.setenv("OKR_REVIEWS_CONSUMER_LINGER_S", wrong)
        with pytest.raises(pydantic.ValidationError, match=r"consumer_linger_s|LINGER"):
            ReviewsSettings()
