"""The event contract at work on a real nats-server and real stores: events stored at an old
version go out at the current one, old messages still on the stream are applied as the
current version, and forged or malformed messages on `okr.>` change no view and are counted."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import orjson

from services.checkins.application import CheckinsApplication
from services.checkins.main import CheckinsSettings
from shared.store import store_env
from shared.telemetry import CONSUMER_APPLIED, CONSUMER_REJECTED
from tests.http.helpers import create_cycle
from tests.integration.test_catalogue import publish
from tests.support import RunningService, bodies, eventually, read_stream, serve
from tests.system import app_for
from tests.unit.test_contract import stored_v1_events

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "contract" / "schemas"
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "team_check_in_v1.json").read_text())
MEETING = "f255d061-2b27-5d29-81da-7f293bbc7751"


def schema_of(envelope: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / f"{envelope['type']}.json").read_text())
    return schema


async def test_events_stored_at_version_1_are_published_at_version_2(
    checkins_settings: CheckinsSettings,
) -> None:
    # A store written before `amended` became v2 (SQLite, or PostgreSQL by the store param).
    old = CheckinsApplication(store_env(checkins_settings))
    old.recorder.insert_events(stored_v1_events())
    old.close()

    async with serve(app_for("checkins", checkins_settings)) as checkins:
        envelopes = bodies(await read_stream(checkins_settings.nats_url, 3))
        assert [e["type"] for e in envelopes] == [
            "okr.checkins.team_check_in.held.v1",
            "okr.checkins.team_check_in.amended.v2",
            "okr.checkins.team_check_in.amended.v2",
        ]
        for envelope in envelopes:
            jsonschema.validate(
                envelope, schema_of(envelope), format_checker=jsonschema.FormatChecker()
            )
        assert envelopes[1]["data"] == {
            "changes": {
                "blockers": {"from": [], "to": ["Waiting on security review"]},
                "priorities": {"from": ["Cut p99"], "to": ["Cut p99", "Publish the schema"]},
            },
            "reason": "Added after the stand-up",
        }
        # The same ids as before the change: a subscriber that saw the v1 messages dedupes.
        assert [e["id"] for e in envelopes] == [e["id"] for e in FIXTURE["published"]]

        r = await checkins.client.get(f"/v1/check-in-meetings/{MEETING}")
        assert r.status_code == 200, r.text
        meeting = r.json()
        assert meeting["wins"] == ["Shipped the importer", "Closed the audit finding"]
        assert meeting["blockers"] == ["Waiting on security review"]
        assert meeting["version"] == 3


def counted(metric: Any, consumer: str = "views") -> float:
    return float(metric.labels("projections", consumer)._value.get())


async def test_version_1_messages_on_the_stream_are_applied_as_version_2(
    projections: RunningService, projections_settings: Any
) -> None:
    """Messages published before the change stay on the stream; a consumer replaying them
    (a new subscriber, a rebuild) reads them at the current version."""
    old = []
    for envelope in FIXTURE["published"]:
        body = {**envelope, "sequence": 100_000 + envelope["sequence"]}
        old.append(
            (
                envelope["type"].rsplit(".", 1)[0],
                orjson.dumps(body),
                {"Nats-Msg-Id": f"okr/checkins:{body['sequence']}"},
            )
        )
    rejected = counted(CONSUMER_REJECTED)
    await publish(projections_settings.nats_url, *old)

    found: dict[str, Any] = {}

    async def amended() -> bool:
        r = await projections.client.get("/v1/teams/platform/check-in-meetings")
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        if items and len(items[0]["wins"]) == 2:
            found.update(items[0])
        return bool(found)

    await eventually_async(amended)
    assert found["wins"] == ["Shipped the importer", "Closed the audit finding"]
    assert found["blockers"] == ["Waiting on security review"]
    assert found["priorities"] == ["Cut p99", "Publish the schema"]
    r = await projections.client.get("/v1/audit", params={"entity": MEETING})
    changes = [e["changes"] for e in r.json()["items"] if e["event_type"].endswith("amended")]
    assert {
        "blockers": {"from": [], "to": ["Waiting on security review"]},
        "priorities": {"from": ["Cut p99"], "to": ["Cut p99", "Publish the schema"]},
    } in changes
    assert counted(CONSUMER_REJECTED) == rejected


async def eventually_async(condition: Any, timeout: float = 15.0) -> None:
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.05)


def envelope(subject: str, data: dict[str, Any], sequence: int, **overrides: Any) -> dict[str, Any]:
    service = subject.split(".")[1]
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": f"okr/{service}",
        "type": f"{subject}.v1",
        "subject": str(uuid.uuid4()),
        "time": "2027-01-04T09:00:00+00:00",
        "datacontenttype": "application/json",
        "data": data,
        "sequence": sequence,
        "aggregateversion": 1,
        "actor": "mallory",
        "correlationid": "c",
        "causationid": "c",
        **overrides,
    }


SCHEDULED = {"name": "Forged", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}


def hostile() -> list[tuple[str, bytes, dict[str, str]]]:
    """Messages that break the contract, one way each."""
    cases: list[tuple[str, Any]] = [
        ("okr.goals.cycle.scheduled", b"{not json"),
        ("okr.goals.cycle.scheduled", b"[1, 2, 3]"),
        # A type the contract does not know, and a version it does not know.
        ("okr.goals.cycle.renamed", envelope("okr.goals.cycle.renamed", {"name": "x"}, 900_001)),
        (
            "okr.goals.cycle.scheduled",
            envelope(
                "okr.goals.cycle.scheduled", SCHEDULED, 900_002, type="okr.goals.cycle.scheduled.v9"
            ),
        ),
        # Data that breaks the published schema.
        (
            "okr.goals.cycle.scheduled",
            envelope("okr.goals.cycle.scheduled", {**SCHEDULED, "starts_on": "soon"}, 900_003),
        ),
        (
            "okr.goals.cycle.scheduled",
            envelope("okr.goals.cycle.scheduled", {"name": "No dates"}, 900_004),
        ),
        (
            "okr.checkins.key_result_progress.checked_in",
            envelope(
                "okr.checkins.key_result_progress.checked_in",
                {
                    "check_in_id": str(uuid.uuid4()),
                    "key_result_id": str(uuid.uuid4()),
                    "number": 1,
                    "value": "lots",
                    "confidence": 11,
                    "note": "",
                    "blockers": [],
                },
                900_005,
            ),
        ),
        # A goals event that claims to come from the checkins service.
        (
            "okr.goals.cycle.scheduled",
            envelope("okr.goals.cycle.scheduled", SCHEDULED, 900_006, source="okr/checkins"),
        ),
        # A type that names another subject.
        (
            "okr.goals.cycle.scheduled",
            envelope("okr.goals.cycle.scheduled", {}, 900_007, type="okr.goals.cycle.started.v1"),
        ),
    ]
    messages = []
    for i, (subject, body) in enumerate(cases):
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        messages.append((subject, payload, {"Nats-Msg-Id": f"hostile-{i}-{uuid.uuid4()}"}))
    return messages


async def test_forged_and_malformed_messages_change_no_view_and_are_counted(
    goals: RunningService, projections: RunningService
) -> None:
    first = await create_cycle(goals.client, name="Before")
    r = await projections.client.get("/v1/audit", params={"limit": 200, "min_position": "goals:2"})
    before = r.json()["items"]
    assert {e["entity_id"] for e in before} == {first}
    rejected, applied = counted(CONSUMER_REJECTED), counted(CONSUMER_APPLIED)

    messages = hostile()
    await publish(goals.runtime.settings.nats_url, *messages)
    # A real event after them: once it is applied, every hostile message has been handled.
    r = await goals.client.post(
        "/v1/cycles", json={"name": "After", "starts_on": "2027-04-01", "ends_on": "2027-06-30"}
    )
    after_position = r.json()["position"]
    r = await projections.client.get(
        "/v1/audit", params={"limit": 200, "min_position": after_position}
    )
    assert r.status_code == 200, r.text
    entries = r.json()["items"]
    assert len(entries) == len(before) + 1
    assert entries[0]["entity_id"] == r.json()["items"][0]["entity_id"] != first
    assert "mallory" not in {e["actor"] for e in entries}

    await eventually(lambda: counted(CONSUMER_REJECTED) - rejected == len(messages))
    assert counted(CONSUMER_APPLIED) - applied == 1
    r = await projections.client.get("/v1/search", params={"q": "Forged"})
    assert r.status_code == 200 and r.json()["items"] == []
    metrics = (await projections.client.get("/metrics")).text
    assert 'okr_consumer_rejected_total{consumer="views",service="projections"}' in metrics
