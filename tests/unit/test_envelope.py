"""The consumer's check of incoming envelopes: everything the contract requires, nothing
trusted."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from shared.consumer import InvalidMessage, Received, link, parse

SUBJECT = "okr.goals.key_result.defined"
AGG = str(uuid.uuid4())
DATA = {
    "objective_id": str(uuid.uuid4()),
    "cycle_id": str(uuid.uuid4()),
    "title": "Weekly active teams",
    "kind": "number",
    "unit": "teams",
    "start": 10,
    "target": 40,
    "weight": 1,
    "owner": "alice",
}
FIXTURES = Path(__file__).parent.parent / "fixtures"


def envelope(**overrides: Any) -> dict[str, Any]:
    body = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "okr/goals",
        "type": "okr.goals.key_result.defined.v1",
        "subject": AGG,
        "time": "2027-01-04T09:00:00+00:00",
        "datacontenttype": "application/json",
        "data": DATA,
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


def test_a_parsed_event_has_every_field_and_equals_one_made_by_the_class() -> None:
    received = parse(SUBJECT, encode(envelope()), "okr/goals:7")
    fields = {f.name for f in dataclasses.fields(Received)}
    assert set(vars(received)) == fields
    assert received == Received(**{name: getattr(received, name) for name in fields})
    with pytest.raises(dataclasses.FrozenInstanceError):
        received.sequence = 8  # type: ignore[misc]


def test_a_valid_envelope_is_read() -> None:
    received = parse(SUBJECT, encode(envelope()), "okr/goals:7")
    assert received.source == "okr/goals"
    assert received.service == "goals"
    assert received.name == SUBJECT
    assert received.version == 1
    assert str(received.aggregate_id) == AGG
    # The id the inbox and the views key rows by: the canonical text, whatever spelling of
    # the UUID the envelope used.
    assert received.aggregate_key == AGG
    hex32 = uuid.UUID(AGG).hex
    for spelling in (AGG.upper(), "{" + AGG + "}", f"urn:uuid:{AGG}", hex32):
        other = parse(SUBJECT, encode(envelope(subject=spelling)), "okr/goals:7")
        assert other.aggregate_key == AGG
        assert other.aggregate_id == uuid.UUID(AGG)
    assert received.aggregate_version == 1
    assert received.sequence == 7
    assert received.actor == "alice"
    assert received.data == DATA


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
        # The data must match the published schema of its type.
        ({"data": {**DATA, "kind": "hours"}}, "data.kind"),
        ({"data": {**DATA, "start": "10"}}, "data.start"),
        ({"data": {k: v for k, v in DATA.items() if k != "owner"}}, "data.owner"),
        ({"data": {**DATA, "objective_id": "o-1"}}, "data.objective_id"),
        # A version the contract does not know.
        ({"type": "okr.goals.key_result.defined.v7"}, "unknown event type"),
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


def test_the_predecessor_a_relay_names_is_read() -> None:
    assert parse(SUBJECT, encode(envelope()), "okr/goals:7", "5").previous == 5
    assert parse(SUBJECT, encode(envelope()), "okr/goals:7", "0").previous == 0
    assert parse(SUBJECT, encode(envelope()), "okr/goals:7").previous is None


@pytest.mark.parametrize("header", ["7", "8", "-1", "", "x", "1.5", " 5", "٣", "9" * 20])
def test_a_predecessor_that_is_not_a_sequence_below_the_events_is_refused(header: str) -> None:
    with pytest.raises(InvalidMessage, match="Okr-Previous-Sequence"):
        parse(SUBJECT, encode(envelope()), "okr/goals:7", header)


def test_a_rejected_message_settles_its_place_when_its_headers_name_it() -> None:
    assert link("okr/goals:7", "5", SUBJECT) == ("okr/goals", 7, 5)
    # Not named, or not consistently: nothing is settled.
    assert link(None, "5", SUBJECT) is None
    assert link("okr/goals:7", None, SUBJECT) is None
    assert link("okr/checkins:7", "5", SUBJECT) is None
    assert link("okr/goals:7", "7", SUBJECT) is None
    assert link("okr/goals:0", "0", SUBJECT) is None
    assert link("okr/goals:x", "0", SUBJECT) is None
    assert link("okr/goals:7", "5", "okr") is None


def test_a_type_the_contract_does_not_know_is_refused() -> None:
    body = envelope(type="okr.goals.key_result.renamed.v1", data={"title": "x"})
    with pytest.raises(InvalidMessage, match="unknown event type"):
        parse("okr.goals.key_result.renamed", encode(body))


def test_fields_added_later_are_ignored_not_refused() -> None:
    """Additive changes keep the version: readers must tolerate fields they do not know."""
    received = parse(SUBJECT, encode(envelope(data={**DATA, "colour": "teal"})))
    assert received.data["colour"] == "teal"


def test_a_version_1_message_arrives_lifted_to_version_2() -> None:
    """`team_check_in.amended` v1 messages (still on the stream after the change) are read as
    v2: only the changed lists, each from → to."""
    published = json.loads((FIXTURES / "team_check_in_v1.json").read_text())["published"]
    held, first, second = published
    assert first["type"] == "okr.checkins.team_check_in.amended.v1"
    subject = "okr.checkins.team_check_in.amended"

    received = parse(subject, encode(first), f"okr/checkins:{first['sequence']}")
    assert received.type == f"{subject}.v2"
    assert received.version == 2
    assert received.data == {
        "changes": {
            "blockers": {"from": [], "to": ["Waiting on security review"]},
            "priorities": {"from": ["Cut p99"], "to": ["Cut p99", "Publish the schema"]},
        },
        "reason": "Added after the stand-up",
    }
    assert first["data"]["wins"] is None, "the message itself is left as it was"
    assert parse(subject, encode(second)).data["changes"] == {
        "wins": {
            "from": ["Shipped the importer"],
            "to": ["Shipped the importer", "Closed the audit finding"],
        }
    }
    # A held meeting is unchanged by the versioning of its amendments.
    assert parse("okr.checkins.team_check_in.held", encode(held)).type.endswith(".held.v1")


def test_a_version_1_message_with_broken_data_is_refused_before_lifting() -> None:
    first = json.loads((FIXTURES / "team_check_in_v1.json").read_text())["published"][1]
    first["data"]["blockers"] = "not a list"
    with pytest.raises(InvalidMessage, match=r"data\.blockers"):
        parse("okr.checkins.team_check_in.amended", encode(first))
