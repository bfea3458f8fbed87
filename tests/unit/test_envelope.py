"""The consumer's check of incoming envelopes: everything the contract requires, nothing
trusted."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from shared.consumer import InvalidMessage, parse

SUBJECT = "okr.goals.key_result.defined"
AGG = str(uuid.uuid4())


def envelope(**overrides: Any) -> dict[str, Any]:
    body = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "okr/goals",
        "type": "okr.goals.key_result.defined.v1",
        "subject": AGG,
        "time": "2027-01-04T09:00:00+00:00",
        "datacontenttype": "application/json",
        "data": {"kind": "number"},
        "sequence": 7,
        "aggregateversion": 1,
        "actor": "alice",
        "correlationid": "c-1",
        "causationid": "r-1",
    }
    body.update(overrides)
    return body


def encode(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def test_a_valid_envelope_is_read() -> None:
    received = parse(SUBJECT, encode(envelope()), "okr/goals:7")
    assert received.source == "okr/goals"
    assert received.service == "goals"
    assert received.name == SUBJECT
    assert received.version == 1
    assert str(received.aggregate_id) == AGG
    assert received.aggregate_version == 1
    assert received.sequence == 7
    assert received.actor == "alice"
    assert received.data == {"kind": "number"}


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"specversion": "0.3"}, "specversion"),
        ({"source": "okr/checkins"}, "does not match subject"),
        ({"source": ""}, "source"),
        ({"type": "okr.goals.key_result.removed.v1"}, "does not match subject"),
        ({"type": "okr.goals.key_result.defined"}, "does not match subject"),
        ({"type": "okr.goals.key_result.defined.vX"}, "does not match subject"),
        ({"subject": "not-a-uuid"}, "UUID"),
        ({"time": "yesterday"}, "ISO 8601"),
        ({"time": "2027-01-04T09:00:00"}, "time zone"),
        ({"data": [1, 2]}, "data"),
        ({"data": None}, "data"),
        ({"datacontenttype": "text/plain"}, "datacontenttype"),
        ({"sequence": 0}, "sequence"),
        ({"sequence": "7"}, "sequence"),
        ({"sequence": True}, "sequence"),
        ({"aggregateversion": -1}, "aggregateversion"),
        ({"actor": ""}, "actor"),
        ({"actor": "x" * 201}, "actor"),
        ({"correlationid": None}, "correlationid"),
        ({"id": 5}, "id"),
    ],
)
def test_an_envelope_that_breaks_the_contract_is_refused(
    overrides: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidMessage, match=reason):
        parse(SUBJECT, encode(envelope(**overrides)))


@pytest.mark.parametrize(
    ("subject", "payload"),
    [
        ("okr.goals.key_result", b"{}"),
        ("elsewhere.goals.key_result.defined", b"{}"),
        ("okr..key_result.defined", b"{}"),
        (SUBJECT, b"not json"),
        (SUBJECT, b"[1, 2, 3]"),
        (SUBJECT, b"{" + b'"a":' * 10 + b"1" + b"}" * 10),
        (SUBJECT, b" " * (1024 * 1024 + 1)),
    ],
)
def test_what_is_not_an_envelope_is_refused(subject: str, payload: bytes) -> None:
    with pytest.raises(InvalidMessage):
        parse(subject, payload)


def test_a_message_id_naming_another_event_is_refused() -> None:
    with pytest.raises(InvalidMessage, match="Nats-Msg-Id"):
        parse(SUBJECT, encode(envelope()), "okr/goals:8")
