"""The relay's messages built straight from stored JSON are byte for byte the messages the
contract makes from the mapper's domain event, and whatever the direct way is not sure of
goes the mapper's way (tests/faults/test_duplicates.py checks every event of a quarter)."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from eventsourcing.compressor import ZlibCompressor
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    MapperDeserialisationError,
    Notification,
    StoredEvent,
    UUIDAsHex,
)

from shared import contract
from shared.domain import CommandContext, OkrAggregate, command_context
from shared.envelopes import Envelopes
from shared.store import DateAsISO, Logged

SERVICE = "goals"


class Sample(OkrAggregate):
    class Noted(OkrAggregate.Event):
        ref: uuid.UUID
        on: date
        at: datetime
        amount: float
        count: int
        text: str
        missing: str | None
        tags: list[str]
        nested: dict[str, Any]

    class Lifted(OkrAggregate.Event):
        class_version = 2
        text: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["text"] = state.pop("old_text").upper()

    def note(self, **fields: Any) -> None:
        self.trigger_event(self.Noted, **fields)

    def lift(self, text: str) -> None:
        self.trigger_event(self.Lifted, text=text)


def mapper(**kwargs: Any) -> Mapper[Any]:
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), DateAsISO()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder, **kwargs)


def notification(stored: StoredEvent, position: int = 7) -> Notification:
    return Notification(
        id=position,
        originator_id=stored.originator_id,
        originator_version=stored.originator_version,
        topic=stored.topic,
        state=stored.state,
    )


def by_the_mapper(m: Mapper[Any], n: Notification) -> tuple[str, bytes]:
    event = m.to_domain_event(n)
    return (
        contract.subject_for(SERVICE, type(event)),
        contract.encode(contract.envelope(SERVICE, n.id, event)),
    )


def noted(**overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "ref": uuid.uuid4(),
        "on": date(2027, 1, 4),
        "at": datetime(2027, 1, 4, 9, 30, tzinfo=UTC),
        "amount": 28.9,
        "count": 3,
        "text": 'Ünïcødé, "quotes" and \\ backslashes ✓',
        "missing": None,
        "tags": ["a", "b"],
        "nested": {"ids": [uuid.uuid4(), uuid.uuid4()], "deep": {"on": date(2026, 12, 31)}},
    }
    fields.update(overrides)
    with command_context(CommandContext("alice", "corr-1", "cause-1")):
        sample = Sample()
        sample.note(**fields)
    return sample.collect_events()[-1]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"amount": 0.1 + 0.2, "count": -(2**62)},
        {"amount": -0.0, "tags": []},
        {"amount": 1e300, "count": 2**64 - 1},
        {"at": datetime(2027, 1, 4, 9, 30, 0, 1, tzinfo=timezone(timedelta(hours=5, minutes=30)))},
        {"at": datetime(2027, 1, 4, 9, 30)},  # naive
        {"nested": {"_type_": "not a transcoding", "extra": 1}},
        {"nested": {"list": [[{"on": date(2027, 2, 1)}]], "empty": {}}},
    ],
)
def test_a_message_made_directly_is_the_mappers_to_the_byte(overrides: dict[str, Any]) -> None:
    m = mapper()
    n = notification(m.to_stored_event(noted(**overrides)))
    assert Envelopes(m, SERVICE).message(n) == by_the_mapper(m, n)


def test_a_plain_event_is_not_decoded_by_the_mapper(monkeypatch: pytest.MonkeyPatch) -> None:
    m = mapper()
    n = notification(m.to_stored_event(noted()))
    expected = by_the_mapper(m, n)
    decoded: list[Notification] = []
    original = m.to_domain_event
    monkeypatch.setattr(m, "to_domain_event", lambda n: decoded.append(n) or original(n))
    assert Envelopes(m, SERVICE).message(n) == expected
    assert decoded == []
    # An event to upcast is: the class's upcasts run on the mapper's decoded state.
    with command_context(CommandContext("alice", "c", "c")):
        sample = Sample()
        sample.lift("new")
    stored = m.to_stored_event(sample.collect_events()[-1])
    old = StoredEvent(
        stored.originator_id,
        stored.originator_version,
        stored.topic,
        stored.state.replace(b',"class_version":2', b"").replace(b'"text"', b'"old_text"'),
    )
    Envelopes(m, SERVICE).message(notification(old))
    assert len(decoded) == 1


def test_the_events_time_is_the_decoded_time_in_every_spelling() -> None:
    m = mapper()
    event = noted()
    for stamp in (
        datetime(2027, 1, 4, 9, 30, tzinfo=UTC),  # no microseconds
        datetime(2027, 1, 4, 9, 30, 0, 120, tzinfo=UTC),
        datetime(2027, 1, 4, 9, 30, tzinfo=timezone(timedelta(hours=-3))),
    ):
        object.__setattr__(event, "timestamp", stamp)
        n = notification(m.to_stored_event(event))
        subject, body = Envelopes(m, SERVICE).message(n)
        assert (subject, body) == by_the_mapper(m, n)
        assert f'"time":"{stamp.isoformat()}"'.encode() in body
    # A time spelled otherwise (not by `isoformat()`) is read, then written as it would be.
    stored = m.to_stored_event(event)
    state = stored.state.replace(stamp.isoformat().encode(), b"2027-01-04T09:30:00Z")
    n = notification(
        StoredEvent(stored.originator_id, stored.originator_version, stored.topic, state)
    )
    assert Envelopes(m, SERVICE).message(n) == by_the_mapper(m, n)
    assert b'"time":"2027-01-04T09:30:00+00:00"' in Envelopes(m, SERVICE).message(n)[1]


def test_an_event_stored_at_an_older_version_is_upcast_the_mappers_way() -> None:
    m = mapper()
    with command_context(CommandContext("alice", "c", "c")):
        sample = Sample()
        sample.lift("new")
    stored = m.to_stored_event(sample.collect_events()[-1])
    old_state = stored.state.replace(b'"text":"new"', b'"old_text":"shout"').replace(
        b',"class_version":2', b""
    )
    assert old_state != stored.state
    n = notification(StoredEvent(stored.originator_id, 2, stored.topic, old_state))
    subject, body = Envelopes(m, SERVICE).message(n)
    assert (subject, body) == by_the_mapper(m, n)
    assert b'"data":{"text":"SHOUT"}' in body
    assert b'"type":"okr.goals.sample.lifted.v2"' in body


def outcome(make: Any, m: Mapper[Any], n: Notification) -> Any:
    try:
        return make(m, n)
    except Exception as e:
        return type(e)


def test_what_only_pythons_json_reads_goes_the_mappers_way() -> None:
    # Infinity and a 70-bit integer are JSON only to Python's parser: orjson refuses to read
    # them, and then either way ends as the mapper's (a null; orjson's refusal to write it).
    m = mapper()
    for overrides in (
        {"amount": math.inf},
        {"amount": math.nan},
        {"count": 2**70},
        {"nested": {"deep": [-(2**70)]}},
    ):
        n = notification(m.to_stored_event(noted(**overrides)))
        direct = outcome(lambda m, n: Envelopes(m, SERVICE).message(n), m, n)
        assert direct == outcome(by_the_mapper, m, n), overrides
    n = notification(m.to_stored_event(noted(amount=math.inf)))
    assert b'"amount":null' in Envelopes(m, SERVICE).message(n)[1]


def test_a_stored_value_of_no_known_transcoding_fails_as_the_mapper_fails() -> None:
    m = mapper()
    stored = m.to_stored_event(noted(amount=Decimal("1.5")))  # a transcoding orjson cannot write
    with pytest.raises(TypeError):
        Envelopes(m, SERVICE).message(notification(stored))
    state = stored.state.replace(b'"decimal_str"', b'"unknown_kind"')
    n = notification(
        StoredEvent(stored.originator_id, stored.originator_version, stored.topic, state)
    )
    with pytest.raises(MapperDeserialisationError):
        Envelopes(m, SERVICE).message(n)


def test_a_missing_field_goes_the_mappers_way() -> None:
    m = mapper()
    stored = m.to_stored_event(noted())
    state = stored.state.replace(b'"missing":null,', b"")
    n = notification(
        StoredEvent(stored.originator_id, stored.originator_version, stored.topic, state)
    )
    with pytest.raises(AttributeError):  # as the contract's envelope fails on the event
        by_the_mapper(m, n)
    with pytest.raises(AttributeError):
        Envelopes(m, SERVICE).message(n)


def test_a_compressed_store_goes_the_mappers_way() -> None:
    m = mapper(compressor=ZlibCompressor())
    n = notification(m.to_stored_event(noted()))
    assert Envelopes(m, SERVICE).message(n) == by_the_mapper(m, n)


def test_an_originator_id_read_as_text_gives_the_same_message() -> None:
    m = mapper()
    stored = m.to_stored_event(noted())
    n = notification(stored)
    as_text = Notification(
        id=n.id,
        originator_id=str(n.originator_id).upper(),  # type: ignore[arg-type]
        originator_version=n.originator_version,
        topic=n.topic,
        state=n.state,
    )
    assert Envelopes(m, SERVICE).message(as_text) == by_the_mapper(m, n)


@pytest.mark.parametrize("spelling", [lambda u: u.hex, str, lambda u: str(u).upper()])
@pytest.mark.parametrize("compressed", [False, True])
def test_an_event_read_from_the_log_gives_the_same_message(spelling: Any, compressed: bool) -> None:
    """The relay reads the log as plain rows (`Logged`), the originator's id as the store's
    text: 32 hex digits on SQLite, the dashed form on PostgreSQL. Either way, and the mapper's
    way too (a compressed store), the message is the one its notification makes."""
    m = mapper(compressor=ZlibCompressor()) if compressed else mapper()
    n = notification(m.to_stored_event(noted()))
    assert isinstance(n.originator_id, uuid.UUID)
    row = Logged(n.id, spelling(n.originator_id), n.originator_version, n.topic, n.state)
    assert Envelopes(m, SERVICE).message(row) == by_the_mapper(m, n)
