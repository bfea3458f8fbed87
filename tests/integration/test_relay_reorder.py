"""A real relay whose publish fails in the middle of a pipelined page, while the later messages
of the page reach the stream: it publishes the failed one again after them, so the stream holds
the source out of order. A real consumer of that source must not count a position past the
failed event as reached until the event is applied, on both stores."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shared.envelopes import Envelopes
from shared.nats import JetStreamPublisher
from tests.integration.consumers import running
from tests.integration.test_relay import running_relay, store_events
from tests.support import NatsServer, bodies, read_stream

COUNT = 600
LATE = 300  # the event whose first publishes go astray


async def test_a_position_past_an_event_published_again_after_later_ones_waits_for_it(
    store: dict[str, Any],
    goals_settings: Any,
    nats_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = store_events(goals_settings, COUNT)
    envelopes = Envelopes(app.mapper, "goals")
    stored = app.recorder.select_notifications(None, COUNT)
    expected = [orjson.loads(envelopes.message(n)[1]) for n in stored]
    late = expected[LATE - 1]["sequence"]

    # The first three publishes of that event go to a subject no stream takes: JetStream
    # answers that no stream is there, and the relay's round fails at it while the messages
    # after it in the page are stored. It retries (after 0.1, 0.2 and 0.4 s).
    original = JetStreamPublisher.command
    diverted: list[int] = []

    def command(self: JetStreamPublisher, subject: str, token: int, msg_id: str, *rest: Any):
        if msg_id == f"okr/goals:{late}" and len(diverted) < 3:
            diverted.append(token)
            subject = "elsewhere.goals"
        return original(self, subject, token, msg_id, *rest)

    monkeypatch.setattr(JetStreamPublisher, "command", command)
    views = dict(store)
    if "database_schema" in views:
        views["database_schema"] += "_views"
    async with (
        running(views, nats_server.url, batch=50) as run,
        running_relay(app, nats_server.url),
    ):
        # Never reached while the event is missing; the consumer was seen past it meanwhile.
        assert await run.watch(expected, late + 100, 30)
    assert len(diverted) == 3
    order = [b["sequence"] for b in bodies(await read_stream(nats_server.url, COUNT))]
    assert sorted(order) == [b["sequence"] for b in expected]
    assert order.index(late) > order.index(late + 100)  # the stream holds it after them
    app.close()
