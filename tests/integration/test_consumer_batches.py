"""A consumer's batches under a steady stream: what arrives while one batch is applied goes
into the next one whole, rather than a part of it waiting for the batch after."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from shared.consumer import Received
from shared.sql import Tx
from tests.integration.consumers import FailsOnce, goals_events, publish, running
from tests.support import NatsServer, eventually


class Gated(FailsOnce):
    """Holds the first event it applies until `gate` opens; records each committed batch's
    size."""

    def __init__(self, postgres: bool, fail_from: int = 10**9) -> None:
        super().__init__(postgres, fail_from)
        self.gate = threading.Event()
        self.holding = threading.Event()
        self.batches: list[int] = []

    def apply(self, tx: Tx, event: Received) -> None:
        if not self.gate.is_set():
            self.holding.set()
            self.gate.wait(10)
        super().apply(tx, event)

    def committed(self) -> None:
        self.batches.append(len(self._staged))
        super().committed()


async def test_what_arrives_while_a_batch_is_applied_goes_into_the_next_one_whole(
    store: dict[str, Any], nats_server: NatsServer
) -> None:
    bodies = goals_events(9)
    async with running(
        store, nats_server.url, name="batches", batch=20, projector_class=Gated
    ) as run:
        projector = run.projector
        assert isinstance(projector, Gated)
        await publish(nats_server.url, bodies[:1])
        await eventually(projector.holding.is_set, what="the first batch never came")
        # The second event is taken and checked while the first batch is held ...
        await publish(nats_server.url, bodies[1:2])
        await eventually(lambda: run.consumer.delivered >= 2, what="the second event never came")
        # ... and seven more arrive before that batch is done.
        await publish(nats_server.url, bodies[2:])
        await asyncio.sleep(0.3)
        projector.gate.set()
        await eventually(lambda: len(projector.applied) == 9, what=f"applied {projector.applied}")
        assert projector.batches == [1, 8]
        assert projector.applied == [b["id"] for b in bodies]
