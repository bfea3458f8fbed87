"""When a consumer counts a position as reached, and how its doubts end, against a scripted
server answer (`consumer_info`): the states between are the point, and a real server cannot
be held in them. The real server's side is in tests/integration/test_read_your_writes_gaps.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from nats.js.api import SequenceInfo

from shared.consumer import Consumer, subject_matches

SOURCE = "okr/goals"


class Server:
    """Answers `consumer_info` with what the test sets."""

    def __init__(self) -> None:
        self.floor = 0
        self.delivered = 0
        self.pending = 0
        self.asked = 0

    async def consumer_info(self, stream: str, durable: str) -> Any:
        self.asked += 1
        return SimpleNamespace(
            ack_floor=SequenceInfo(0, self.floor),
            delivered=SequenceInfo(0, self.delivered),
            num_ack_pending=self.pending,
        )


def _consumer(server: Server) -> Consumer:
    async def wait() -> Server:
        return server

    link: Any = SimpleNamespace(connected=True, wait=wait)
    inbox: Any = None
    consumer = Consumer("test", "ryw", link, inbox, stream="OKR", subjects=["okr.goals.>"])
    consumer._released = {SOURCE: 50}
    consumer._doubtful = False  # as after subscribing with nothing outstanding
    return consumer


def test_nothing_is_reached_before_the_first_subscription_shows_what_is_outstanding() -> None:
    link: Any = SimpleNamespace(connected=True)
    consumer = Consumer("test", "ryw", link, None, stream="OKR", subjects=["okr.goals.>"])  # type: ignore[arg-type]
    consumer._released = {SOURCE: 50}  # as the store has it
    assert not consumer.reached(SOURCE, 1)


def test_subjects_match_filters_as_nats_does() -> None:
    assert subject_matches("okr.goals.cycle.scheduled", "okr.goals.>")
    assert subject_matches("okr.goals.cycle.scheduled", "okr.>")
    assert subject_matches("okr.goals.cycle.scheduled", "okr.*.cycle.scheduled")
    assert subject_matches("okr.goals.cycle.scheduled", "okr.goals.cycle.scheduled")
    assert not subject_matches("okr.goals", "okr.goals.>")  # `>` takes one token at least
    assert not subject_matches("okr.checkins.check_in.recorded", "okr.goals.>")
    assert not subject_matches("okr.goals.cycle", "okr.goals.cycle.scheduled")
    assert not subject_matches("okr.goals.cycle.scheduled.x", "okr.goals.cycle.scheduled")
    assert not subject_matches("okr.goals.cycle.scheduled", "okr.*.cycle")


async def _ask(consumer: Consumer) -> None:
    consumer._doubts_checked = 0.0  # past the pause between two questions
    await consumer._settle_doubts()


def test_a_position_is_reached_up_to_the_first_event_owed() -> None:
    consumer = _consumer(Server())
    assert consumer.reached(SOURCE, 50)
    assert not consumer.reached(SOURCE, 51)
    consumer._owed = {SOURCE: {30: 130, 40: 140}}
    assert consumer.reached(SOURCE, 29)
    assert not consumer.reached(SOURCE, 30)
    assert not consumer.reached(SOURCE, 45)
    assert consumer.reached("okr/checkins", 0)


async def test_owed_events_the_floor_passed_are_owed_no_more() -> None:
    server = Server()
    consumer = _consumer(server)
    consumer._owed = {SOURCE: {30: 130, 40: 140}}
    server.floor, server.delivered, server.pending = 135, 150, 3
    await _ask(consumer)
    assert consumer._owed == {SOURCE: {40: 140}}
    assert consumer.reached(SOURCE, 39)
    assert not consumer.reached(SOURCE, 40)
    server.floor = 140
    await _ask(consumer)
    assert consumer._owed == {}
    assert consumer.reached(SOURCE, 50)


async def test_a_doubt_ends_when_the_floor_passes_what_was_delivered_when_it_was_asked() -> None:
    server = Server()
    consumer = _consumer(server)
    consumer._doubt(None)  # a gap in the delivery sequence
    assert not consumer.reached(SOURCE, 1)
    server.floor, server.delivered, server.pending = 90, 120, 7
    await _ask(consumer)
    assert consumer._doubt_mark == 120  # what the server had delivered by then
    assert not consumer.reached(SOURCE, 1)
    server.floor, server.delivered = 119, 160  # later deliveries do not move the mark
    await _ask(consumer)
    assert not consumer.reached(SOURCE, 1)
    server.floor = 120
    await _ask(consumer)
    assert consumer.reached(SOURCE, 50)
    assert not consumer._doubtful


async def test_a_doubt_ends_when_nothing_is_outstanding() -> None:
    server = Server()
    consumer = _consumer(server)
    consumer._doubt(200)
    server.floor, server.delivered, server.pending = 10, 200, 0
    await _ask(consumer)
    assert consumer.reached(SOURCE, 50)


async def test_a_second_doubt_keeps_the_later_mark_and_the_server_is_asked_at_a_pace() -> None:
    server = Server()
    consumer = _consumer(server)
    consumer._doubt(100)
    consumer._doubt(80)
    assert consumer._doubt_mark == 100
    server.floor, server.pending = 100, 1
    await consumer._settle_doubts()
    await consumer._settle_doubts()  # within the pause: not asked again
    assert server.asked == 1
    assert consumer.reached(SOURCE, 50)
    await consumer._settle_doubts()  # nothing owed, no doubt: nothing to ask
    assert server.asked == 1


async def test_nothing_is_asked_while_disconnected() -> None:
    server = Server()
    consumer = _consumer(server)
    consumer._doubt(None)
    consumer.link.connected = False  # type: ignore[misc]
    await _ask(consumer)
    assert server.asked == 0
    assert not consumer.reached(SOURCE, 1)


async def test_a_server_that_does_not_say_is_a_warning_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = Server()
    consumer = _consumer(server)

    async def refused(stream: str, durable: str) -> Any:
        raise TimeoutError("nats: timeout")  # a request the permissions drop gets no answer

    server.consumer_info = refused  # type: ignore[method-assign]
    consumer._doubt(None)
    with caplog.at_level(logging.DEBUG, logger="shared.consumer"):
        await _ask(consumer)
        await _ask(consumer)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "no consumer info" in warnings[0].getMessage()
    assert "min_position" in warnings[0].getMessage()
    assert not consumer.reached(SOURCE, 1)
