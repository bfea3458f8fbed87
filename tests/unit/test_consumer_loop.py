"""The consumer's fetch loop: while messages are waiting it fetches the next batch during the
apply, and a fetch made ahead that fails (nothing came after all) leaves the loop fetching
afresh, never stuck on the failed one (a loop stuck on it spins without yielding, and this test
then never ends). The subscription here is scripted: what it returns in which order is the
point, and a real server cannot be made to time out on cue."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from shared.consumer import Consumer
from shared.nats import NatsLink


def _msg(pending: int) -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(num_pending=pending))


class ScriptedSubscription:
    def __init__(self, consumer: Consumer, script: list[Any]) -> None:
        self.consumer = consumer
        self.script = script
        self.fetches = 0

    async def fetch(self, batch: int, timeout: float) -> list[Any]:
        self.fetches += 1
        await asyncio.sleep(0)
        step = self.script.pop(0) if self.script else "stop"
        if step == "stop":
            self.consumer._stopping = True
        if step in ("stop", "timeout"):
            raise TimeoutError
        return list(step)

    async def unsubscribe(self) -> None:
        pass


class Recorded(Consumer):
    def __init__(self, script: list[Any]) -> None:
        inbox: Any = None
        super().__init__(
            "test",
            "loop",
            NatsLink("nats://127.0.0.1:1", "test"),
            inbox,
            stream="S",
            subjects=["a"],
        )
        self.sub = ScriptedSubscription(self, script)
        self.batches: list[list[Any]] = []

    async def _subscribe(self) -> Any:
        return self.sub

    async def _handle(self, msgs: list[Any]) -> None:
        self.batches.append(msgs)

    async def _measure_lag(self) -> None:
        pass


async def test_a_fetch_ahead_that_times_out_is_followed_by_a_fresh_fetch() -> None:
    first, last = _msg(pending=3), _msg(pending=0)
    consumer = Recorded([[first], "timeout", [last], "stop"])
    await asyncio.wait_for(consumer._consume(), 5)
    assert consumer.batches == [[first], [last]]
    assert consumer.sub.fetches == 4


async def test_batches_are_fetched_ahead_only_while_more_are_waiting() -> None:
    a, b, c = _msg(pending=2), _msg(pending=1), _msg(pending=0)
    consumer = Recorded([[a], [b], [c], "stop"])
    await asyncio.wait_for(consumer._consume(), 5)
    assert consumer.batches == [[a], [b], [c]]
    assert consumer.sub.fetches == 4
