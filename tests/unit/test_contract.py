"""The published event contract: the committed documents are what the code generates, every
domain event has exactly one current public schema with the same fields, the schemas are valid
JSON Schema, the AsyncAPI document passes an independent validator, and events stored at an
older version are read back at the current one."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import random
import shutil
import subprocess
import uuid
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest
from eventsourcing.domain import AggregateCreated, CanMutateAggregate
from eventsourcing.persistence import StoredEvent

import services.checkins.domain as checkins_domain
import services.goals.domain as goals_domain
import services.reviews.domain as reviews_domain
from services.checkins.application import CheckinsApplication
from services.checkins.domain import TeamCheckIn
from services.projections.views import HANDLERS
from shared.contract import EVENT_ID_NAMESPACE, META_FIELDS, SUBSCRIPTIONS, event_id, type_for
from shared.contract.documents import DEFAULT_FOLDER, differences, json_schemas
from shared.contract.events import EVENT_TYPES, LATEST
from shared.domain import CommandContext, command_context

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
VALIDATOR = ROOT / "tools" / "asyncapi" / "validate.mjs"
CI = os.environ.get("CI", "") not in ("", "0", "false")
DOMAINS: dict[str, ModuleType] = {
    "goals": goals_domain,
    "checkins": checkins_domain,
    "reviews": reviews_domain,
}


def domain_events() -> dict[str, type]:
    """type → event class, for every event the aggregates of each service can record."""
    found = {}
    for service, module in DOMAINS.items():
        for _, aggregate in inspect.getmembers(module, inspect.isclass):
            if aggregate.__module__ != module.__name__:
                continue
            events = {
                name: cls
                for name, cls in vars(aggregate).items()
                if inspect.isclass(cls)
                and issubclass(cls, CanMutateAggregate)
                and name not in ("Event", "Snapshot")
            }
            # `Created` is the library's default creation event; it is recorded only when no
            # other creation event (e.g. `Scheduled`) takes its place.
            creations = [n for n, c in events.items() if issubclass(c, AggregateCreated)]
            if len(creations) > 1:
                events.pop("Created", None)
            for cls in events.values():
                found[type_for(service, cls)] = cls
    return found


def test_the_committed_documents_are_what_the_code_generates() -> None:
    assert differences() == [], "run `python -m shared contract` and commit docs/contract/"


def test_every_domain_event_has_its_current_public_schema_with_the_same_fields() -> None:
    events = domain_events()
    assert set(events) == {spec.type for spec in LATEST.values()}
    for event_type, cls in events.items():
        model = EVENT_TYPES[event_type].model
        public = {f.name for f in dataclasses.fields(cls)} - META_FIELDS
        published = {field.alias or name for name, field in model.model_fields.items()}
        assert public == published, event_type


def test_older_versions_stay_published_and_lift_to_the_current_one() -> None:
    older = [spec for spec in EVENT_TYPES.values() if spec is not LATEST[spec.subject]]
    assert [spec.type for spec in older] == ["okr.checkins.team_check_in.amended.v1"]
    for spec in older:
        assert spec.deprecated
        assert (DEFAULT_FOLDER / "schemas" / f"{spec.type}.json").exists()


def test_the_projections_handle_every_current_type() -> None:
    assert set(HANDLERS) == set(LATEST)


def test_every_schema_is_valid_json_schema_and_accepts_a_published_example() -> None:
    schemas = json_schemas()
    assert len(schemas) == len(EVENT_TYPES)
    for schema in schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    published = json.loads((FIXTURES / "team_check_in_v1.json").read_text())["published"]
    for envelope in published:
        schema = schemas[f"{envelope['type']}.json"]
        jsonschema.validate(envelope, schema, format_checker=jsonschema.FormatChecker())
        broken = {**envelope, "source": "okr/goals"}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_the_subscriptions_in_the_document_are_the_ones_the_services_use() -> None:
    from services.checkins.main import CATALOGUE_CONSUMER, CATALOGUE_SUBJECTS
    from services.goals.main import CARRY_OVER_CONSUMER, CARRY_OVER_SUBJECTS
    from services.reviews.main import READ_MODEL_CONSUMER, READ_MODEL_SUBJECTS

    assert SUBSCRIPTIONS["goals"] == (CARRY_OVER_CONSUMER, CARRY_OVER_SUBJECTS)
    assert SUBSCRIPTIONS["checkins"] == (CATALOGUE_CONSUMER, CATALOGUE_SUBJECTS)
    assert SUBSCRIPTIONS["reviews"] == (READ_MODEL_CONSUMER, READ_MODEL_SUBJECTS)
    document = json.loads((DEFAULT_FOLDER / "asyncapi.json").read_text())
    received = {
        channel["address"]
        for name, channel in document["channels"].items()
        if document["operations"][name]["action"] == "receive"
    }
    assert received == {s for _, subjects in SUBSCRIPTIONS.values() for s in subjects}
    sent = {
        channel["address"]
        for name, channel in document["channels"].items()
        if document["operations"][name]["action"] == "send"
    }
    assert sent == set(LATEST)


def node_with_parser() -> str:
    """Node.js, when the AsyncAPI parser is installed beside it (required in CI)."""
    node = shutil.which("node")
    if node is None or not (VALIDATOR.parent / "node_modules" / ".installed").exists():
        if CI:
            pytest.fail("CI needs node and `make asyncapi-tool` for the AsyncAPI check")
        pytest.skip("node or the AsyncAPI parser is not installed (make asyncapi-tool)")
    return node


def test_the_asyncapi_document_passes_the_asyncapi_parser() -> None:
    """An independent check: the AsyncAPI initiative's own parser (Node.js, npm)."""
    node = node_with_parser()
    for name in ("asyncapi.yaml", "asyncapi.json"):
        run = subprocess.run(
            [node, str(VALIDATOR), str(DEFAULT_FOLDER / name)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"ok: {DEFAULT_FOLDER / name}" in run.stdout and "0 warnings" in run.stdout


def test_the_validator_refuses_a_broken_document(tmp_path: Path) -> None:
    """The check above can fail: a document whose operation names a missing channel."""
    node = node_with_parser()
    document = json.loads((DEFAULT_FOLDER / "asyncapi.json").read_text())
    first = next(iter(document["operations"].values()))
    first["channel"]["$ref"] = "#/channels/nowhere"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(document))
    run = subprocess.run(
        [node, str(VALIDATOR), str(broken)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 1, run.stdout + run.stderr


def stored_v1_events() -> list[StoredEvent]:
    fixture = json.loads((FIXTURES / "team_check_in_v1.json").read_text())
    return [
        StoredEvent(
            originator_id=uuid.UUID(e["originator_id"]),
            originator_version=e["originator_version"],
            topic=e["topic"],
            state=e["state"].encode(),
        )
        for e in fixture["stored_events"]
    ]


def test_events_stored_at_version_1_are_read_at_version_2() -> None:
    app = CheckinsApplication(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.sqlite",
            "SQLITE_DBNAME": ":memory:",
            "APPLICATION_RECORDER_TOPIC": "shared.store:SQLiteStoreRecorder",
        }
    )
    stored = stored_v1_events()
    app.recorder.insert_events(stored)

    meeting = app.repository.get(stored[0].originator_id)
    assert isinstance(meeting, TeamCheckIn)
    assert meeting.wins == ["Shipped the importer", "Closed the audit finding"]
    assert meeting.learnings == ["Batch size matters"]
    assert meeting.blockers == ["Waiting on security review"]
    assert meeting.priorities == ["Cut p99", "Publish the schema"]
    assert meeting.amendments == 2

    events = [app.mapper.to_domain_event(s) for s in stored]
    first_amendment = events[1]
    assert isinstance(first_amendment, TeamCheckIn.Amended)
    assert type_for("checkins", type(first_amendment)).endswith(".amended.v2")
    assert first_amendment.changes == {
        "blockers": {"from": [], "to": ["Waiting on security review"]},
        "priorities": {"from": ["Cut p99"], "to": ["Cut p99", "Publish the schema"]},
    }
    assert first_amendment.actor == "bob" and first_amendment.reason == "Added after the stand-up"

    # What the aggregate records from now on is version 2, and reads back the same.
    with command_context(CommandContext("carol", "corr-4", "req-4")):
        meeting.amend({"learnings": []}, "moved to the retro")
    app.save(meeting)
    [stored_new] = app.recorder.select_events(meeting.id, gt=3)
    assert b'"class_version":2' in stored_new.state
    assert app.mapper.to_domain_event(stored_new).changes == {  # type: ignore[attr-defined]
        "learnings": {"from": ["Batch size matters"], "to": []}
    }


def test_event_ids_are_the_uuid5_of_the_originator_and_version() -> None:
    """The envelope's `id` (DESIGN §4): the same for every republish of an event."""
    for originator in (uuid.uuid4(), uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)):
        for version in (1, 2, 49, 10**9):
            expected = uuid.uuid5(EVENT_ID_NAMESPACE, f"{originator}:{version}")
            assert event_id(originator, version) == str(expected)
            assert event_id(str(originator), version) == str(expected)


def test_event_ids_have_uuid5s_version_and_variant_whatever_the_digest() -> None:
    """The version and variant digits are set from the SHA-1 digest's own: every digit the
    digest can have there must come out as `uuid5` makes it."""
    rng = random.Random(5)
    digits = set()
    for _ in range(2000):
        originator, version = uuid.UUID(int=rng.getrandbits(128)), rng.randrange(1, 10**12)
        expected = str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{originator}:{version}"))
        assert event_id(originator, version) == expected
        digest = hashlib.sha1(EVENT_ID_NAMESPACE.bytes + f"{originator}:{version}".encode())
        digits.add((digest.hexdigest()[12], digest.hexdigest()[16]))
    assert {v for v, _ in digits} == {a for _, a in digits} == set("0123456789abcdef")
