"""The events of an HTTP scenario reach NATS as CloudEvents 1.0 envelopes (DESIGN §4, §6)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tests.http.helpers import assert_answer, cycle_body, key_result_body, objective_body, stored
from tests.support import read_stream

ENVELOPE_KEYS = {
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "data",
    "sequence",
    "aggregateversion",
    "actor",
    "correlationid",
    "causationid",
}


async def test_scenario_events_on_nats(goals, nats_server):
    client = goals.client
    trace = {"X-Correlation-Id": "corr-okr-1"}

    r = await client.post(
        "/v1/cycles", json=cycle_body(), headers={**trace, "X-Request-Id": "req-1"}
    )
    cycle_id = assert_answer(r, 201, 1)["id"]
    r = await client.post(
        f"/v1/cycles/{cycle_id}/start", headers={**trace, "X-Request-Id": "req-2"}
    )
    assert_answer(r, 200, 2)
    r = await client.post(
        "/v1/objectives", json=objective_body(cycle_id), headers={"X-Request-Id": "req-3"}
    )
    objective_id = assert_answer(r, 201, 1)["id"]
    r = await client.post(f"/v1/objectives/{objective_id}/key-results", json=key_result_body())
    key_result_id = assert_answer(r, 201, 1)["id"]
    r = await client.post(
        f"/v1/key-results/{key_result_id}/target", json={"target": 65, "reason": "stretch"}
    )
    assert_answer(r, 200, 2)
    assert r.json()["position"] == "goals:5"
    assert await stored(goals) == 5

    messages = await read_stream(nats_server.url, 5)
    assert len(messages) == 5
    envelopes = [json.loads(m.data) for m in messages]

    expected = [
        ("okr.goals.cycle.scheduled.v1", cycle_id, 1),
        ("okr.goals.cycle.started.v1", cycle_id, 2),
        ("okr.goals.objective.created.v1", objective_id, 1),
        ("okr.goals.key_result.defined.v1", key_result_id, 1),
        ("okr.goals.key_result.target_adjusted.v1", key_result_id, 2),
    ]
    assert [(e["type"], e["subject"], e["aggregateversion"]) for e in envelopes] == expected

    sequences = [e["sequence"] for e in envelopes]
    assert all(type(s) is int for s in sequences)
    assert sequences == sorted(sequences) == [1, 2, 3, 4, 5]  # the store's positions

    ids = set()
    for message, envelope in zip(messages, envelopes, strict=True):
        assert set(envelope) == ENVELOPE_KEYS, envelope
        assert envelope["specversion"] == "1.0"
        assert envelope["source"] == "okr/goals"
        assert envelope["datacontenttype"] == "application/json"
        assert envelope["actor"] == "alice"
        assert isinstance(envelope["id"], str) and envelope["id"]
        ids.add(envelope["id"])
        assert datetime.fromisoformat(envelope["time"]).tzinfo is not None
        assert isinstance(envelope["data"], dict)
        assert isinstance(envelope["correlationid"], str) and envelope["correlationid"]
        assert isinstance(envelope["causationid"], str) and envelope["causationid"]
        assert type(envelope["aggregateversion"]) is int
        # The NATS subject is the type without its version; the message id is source:sequence.
        assert message.subject == envelope["type"].removesuffix(".v1")
        assert message.headers["Nats-Msg-Id"] == f"okr/goals:{envelope['sequence']}"
        # No command context or identity leaks into the data.
        assert not {"actor", "originator_id", "timestamp", "correlation_id"} & set(envelope["data"])
    assert len(ids) == 5

    scheduled, started, created, defined, adjusted = envelopes
    # The command context from the request headers.
    assert (scheduled["correlationid"], scheduled["causationid"]) == ("corr-okr-1", "req-1")
    assert (started["correlationid"], started["causationid"]) == ("corr-okr-1", "req-2")
    assert created["correlationid"] == created["causationid"] == "req-3"
    assert defined["correlationid"] == defined["causationid"]  # a generated request id
    uuid.UUID(defined["causationid"])

    assert scheduled["data"] == {
        "name": "Q1 2027",
        "starts_on": "2027-01-01",
        "ends_on": "2027-03-31",
    }
    assert created["data"]["cycle_id"] == cycle_id
    assert created["data"]["title"] == "Delight our customers"
    assert defined["data"]["objective_id"] == objective_id
    assert (defined["data"]["start"], defined["data"]["target"]) == (20.0, 50.0)
    assert adjusted["data"] == {"target": 65.0, "previous_target": 50.0, "reason": "stretch"}

    # An independent check: the CloudEvents SDK accepts every envelope as a v1.0 event.
    for message, envelope in zip(messages, envelopes, strict=True):
        event = JSONFormat().read(CloudEvent, message.data)
        assert event.get_specversion() == "1.0"
        assert event.get_id() == envelope["id"]
        assert event.get_source() == "okr/goals"
        assert event.get_type() == envelope["type"]
        assert event.get_subject() == envelope["subject"]
        assert event.get_time() == datetime.fromisoformat(envelope["time"])
        assert event.get_datacontenttype() == "application/json"
        assert event.get_data() == envelope["data"]
        for name in ("sequence", "aggregateversion", "actor", "correlationid", "causationid"):
            assert event.get_extension(name) == envelope[name]


async def test_refused_commands_publish_nothing(goals, nats_server):
    r = await goals.client.post("/v1/cycles", json=cycle_body())
    cycle_id = assert_answer(r, 201, 1)["id"]
    assert (await goals.client.post(f"/v1/cycles/{cycle_id}/close")).status_code == 409
    assert (await goals.client.post("/v1/cycles", json=cycle_body(name=" "))).status_code == 422
    r = await goals.client.post(f"/v1/cycles/{cycle_id}/start")
    assert_answer(r, 200, 2)
    messages = await read_stream(nats_server.url, 2)
    assert [m.subject for m in messages] == ["okr.goals.cycle.scheduled", "okr.goals.cycle.started"]
