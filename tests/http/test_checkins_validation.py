"""Bad input to the check-in service: each kind answers a 4xx problem+json, names the wrong
field where it can, and stores nothing. Values are checked against their key result's kind.

The matrix is long, so its cases share one pair of running services per store (a module
fixture) instead of starting NATS, goals and check-ins for every case; each case compares the
number of stored events before and after, which holds however the cases are ordered.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.http.checkins_helpers import caught_up, check_in, check_in_body, meeting_body, plan
from tests.http.helpers import (
    add_key_result,
    assert_problem,
    assert_refused,
    close_cycle,
    create_cycle,
    create_objective,
    error_fields,
    get_json,
    send,
    stored,
)
from tests.support import RunningService
from tests.system import STORES, running, store_for

TODAY = datetime.now(UTC).date()
NEVER_HELD = (TODAY - timedelta(days=20)).isoformat()  # a date no test records a meeting on


@dataclass
class World:
    goals: RunningService
    checkins: RunningService
    cycle: str  # started; team "platform" has an objective in it
    objective: str
    kr: str  # number, 20 -> 50
    pct_kr: str  # percent, 10 -> 80
    bool_kr: str  # boolean, 0 -> 1
    cur_kr: str  # currency, 0 -> 1000
    check_in: str  # on kr: value 30, confidence 7
    pct_check_in: str  # on pct_kr: value 30, confidence 7
    bool_check_in: str  # on bool_kr: value 0, confidence 7
    meeting: str  # platform's meeting of TODAY in cycle
    scheduled_cycle: str  # not started; platform has an objective in it
    closed_cycle: str  # closed; platform has an objective in it
    closed_kr: str  # a key result in closed_cycle
    closed_check_in: str  # a check-in on closed_kr, made before the cycle closed
    closed_meeting: str  # platform's meeting of TODAY in closed_cycle, held before it closed
    team: str = "platform"

    def fill(self, text: str) -> str:
        """Put the ids in place of `{cycle}`, `{kr}`, `{check_in}`, ... (raw JSON stays)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                text = text.replace("{" + f.name + "}", value)
        return text


async def _build(goals: RunningService, checkins: RunningService) -> World:
    p = await plan(goals, checkins)
    kr_client = goals.client
    pct_kr = await add_key_result(kr_client, p.objective_id, kind="percent", start=10, target=80)
    bool_kr = await add_key_result(kr_client, p.objective_id, kind="boolean", start=0, target=1)
    cur_kr = await add_key_result(kr_client, p.objective_id, kind="currency", start=0, target=1000)
    scheduled_cycle = await create_cycle(kr_client, start=False, name="Later")
    await create_objective(kr_client, scheduled_cycle)
    closed_cycle = await create_cycle(kr_client, name="Done")
    closed_objective = await create_objective(kr_client, closed_cycle)
    closed_kr = await add_key_result(kr_client, closed_objective)
    await caught_up(checkins, goals)

    client = checkins.client
    today = TODAY.isoformat()
    r = await client.post(
        "/v1/teams/platform/check-in-meetings", json=meeting_body(p.cycle_id, held_on=today)
    )
    assert r.status_code == 201, r.text
    meeting = r.json()["id"]
    r = await client.post(
        "/v1/teams/platform/check-in-meetings", json=meeting_body(closed_cycle, held_on=today)
    )
    assert r.status_code == 201, r.text
    closed_meeting = r.json()["id"]
    closed_check_in = await check_in(client, closed_kr)
    await close_cycle(kr_client, closed_cycle)
    await caught_up(checkins, goals)
    return World(
        goals=goals,
        checkins=checkins,
        cycle=p.cycle_id,
        objective=p.objective_id,
        kr=p.key_result_id,
        pct_kr=pct_kr,
        bool_kr=bool_kr,
        cur_kr=cur_kr,
        check_in=await check_in(client, p.key_result_id),
        pct_check_in=await check_in(client, pct_kr),
        bool_check_in=await check_in(client, bool_kr, value=0),
        meeting=meeting,
        scheduled_cycle=scheduled_cycle,
        closed_cycle=closed_cycle,
        closed_kr=closed_kr,
        closed_check_in=closed_check_in,
        closed_meeting=closed_meeting,
    )


@pytest.fixture(scope="module", params=STORES)
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    base = tmp_path_factory.mktemp("checkins-validation")
    async with running(store_for(request, base), base, "goals", "checkins") as s:
        yield await _build(s["goals"], s["checkins"])


async def read(world: World, path: str) -> dict[str, Any]:
    """GET `path` (200); a check-in has no version of its own: its ETag is its key result's."""
    r = await world.checkins.client.get(world.fill(path))
    assert r.status_code == 200, r.text
    assert r.headers["etag"].strip('"').isdigit(), r.headers
    body: dict[str, Any] = r.json()
    return body


async def catalogue_current(world: World) -> None:
    """Wait until the catalogue has applied everything the stream holds: only then is an
    unknown key result or cycle a 404 (before, it is a retryable 409 "not yet known")."""
    for _ in range(500):
        r = await world.checkins.client.get("/v1/catalogue")
        if r.status_code == 200 and r.json()["current"]:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the catalogue never became current: {r.text}")


def without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != field}


def _cases(table: dict[str, tuple]) -> list:
    return [pytest.param(*v, id=k) for k, v in table.items()]


CHECK_IN = "/v1/key-results/{kr}/check-ins"
CORRECT = "/v1/check-ins/{check_in}/correct"
MEETINGS = "/v1/teams/{team}/check-in-meetings"
MEETING = "/v1/check-in-meetings/{meeting}"
LONG_ITEM = "x" * 1001
TOO_MANY = [f"item {i}" for i in range(51)]


def meeting(**overrides: Any) -> dict[str, Any]:
    return {**meeting_body("{cycle}", held_on=TODAY.isoformat()), **overrides}


# (method, path, body, field the problem must name or None)
MISSING = {
    "check-in value": ("POST", CHECK_IN, without(check_in_body(), "value"), "value"),
    "check-in confidence": ("POST", CHECK_IN, without(check_in_body(), "confidence"), "confidence"),
    "check-in empty body": ("POST", CHECK_IN, {}, "value"),
    "correction reason": ("POST", CORRECT, {"value": 31}, "reason"),
    "correction empty body": ("POST", CORRECT, {}, "reason"),
    "meeting cycle_id": ("POST", MEETINGS, without(meeting(), "cycle_id"), "cycle_id"),
    "meeting held_on": ("POST", MEETINGS, without(meeting(), "held_on"), "held_on"),
    "amendment reason": ("PATCH", MEETING, {"wins": ["More"]}, "reason"),
    "amendment empty body": ("PATCH", MEETING, {}, "reason"),
}

WRONG_TYPE = {
    "value a word": ("POST", CHECK_IN, check_in_body(value="thirty"), "value"),
    "value null": ("POST", CHECK_IN, check_in_body(value=None), "value"),
    "value a list": ("POST", CHECK_IN, check_in_body(value=[30]), "value"),
    "value an object": ("POST", CHECK_IN, check_in_body(value={"v": 30}), "value"),
    "confidence a fraction": ("POST", CHECK_IN, check_in_body(confidence=7.5), "confidence"),
    "confidence a float": ("POST", CHECK_IN, check_in_body(confidence=7.0), "confidence"),
    "confidence a string": ("POST", CHECK_IN, check_in_body(confidence="7"), "confidence"),
    "confidence true": ("POST", CHECK_IN, check_in_body(confidence=True), "confidence"),
    "confidence null": ("POST", CHECK_IN, check_in_body(confidence=None), "confidence"),
    "note a number": ("POST", CHECK_IN, check_in_body(note=42), "note"),
    "note null": ("POST", CHECK_IN, check_in_body(note=None), "note"),
    "blockers a string": ("POST", CHECK_IN, check_in_body(blockers="flaky CI"), "blockers"),
    "blockers null": ("POST", CHECK_IN, check_in_body(blockers=None), "blockers"),
    "blocker a number": ("POST", CHECK_IN, check_in_body(blockers=[1]), "blockers.0"),
    "blocker an object": ("POST", CHECK_IN, check_in_body(blockers=[{"b": "x"}]), "blockers.0"),
    "check-in body a list": ("POST", CHECK_IN, [check_in_body()], None),
    "check-in body a number": ("POST", CHECK_IN, 30, None),
    "correction value a word": ("POST", CORRECT, {"value": "more", "reason": "x"}, "value"),
    "correction value null": ("POST", CORRECT, {"value": None, "reason": "x"}, "value"),
    "correction confidence null": (
        "POST",
        CORRECT,
        {"confidence": None, "reason": "x"},
        "confidence",
    ),
    "correction both null": (
        "POST",
        CORRECT,
        {"value": None, "confidence": None, "reason": "x"},
        None,
    ),
    "correction confidence a fraction": (
        "POST",
        CORRECT,
        {"confidence": 6.5, "reason": "x"},
        "confidence",
    ),
    "correction confidence a string": (
        "POST",
        CORRECT,
        {"confidence": "6", "reason": "x"},
        "confidence",
    ),
    "correction confidence true": (
        "POST",
        CORRECT,
        {"confidence": True, "reason": "x"},
        "confidence",
    ),
    "correction reason a number": ("POST", CORRECT, {"value": 31, "reason": 5}, "reason"),
    "meeting cycle_id not a uuid": ("POST", MEETINGS, meeting(cycle_id="Q1"), "cycle_id"),
    "meeting cycle_id a number": ("POST", MEETINGS, meeting(cycle_id=7), "cycle_id"),
    "meeting held_on a word": ("POST", MEETINGS, meeting(held_on="last monday"), "held_on"),
    "meeting held_on impossible": ("POST", MEETINGS, meeting(held_on="2027-02-30"), "held_on"),
    "meeting held_on null": ("POST", MEETINGS, meeting(held_on=None), "held_on"),
    "meeting wins a string": ("POST", MEETINGS, meeting(wins="shipped"), "wins"),
    "meeting wins null": ("POST", MEETINGS, meeting(wins=None), "wins"),
    "meeting learning a number": ("POST", MEETINGS, meeting(learnings=[3]), "learnings.0"),
    "meeting priorities an object": (
        "POST",
        MEETINGS,
        meeting(priorities={"p": "x"}),
        "priorities",
    ),
    "meeting body a list": ("POST", MEETINGS, [meeting()], None),
    "amendment wins a string": ("PATCH", MEETING, {"wins": "x", "reason": "x"}, "wins"),
    "amendment blocker a number": (
        "PATCH",
        MEETING,
        {"blockers": [1], "reason": "x"},
        "blockers.0",
    ),
    "amendment reason a list": ("PATCH", MEETING, {"wins": ["a"], "reason": ["x"]}, "reason"),
}

OUT_OF_RANGE = {
    "confidence -1": ("POST", CHECK_IN, check_in_body(confidence=-1), "confidence"),
    "confidence 11": ("POST", CHECK_IN, check_in_body(confidence=11), "confidence"),
    "value beyond 1e15": ("POST", CHECK_IN, check_in_body(value=1.0000001e15), "value"),
    "value below -1e15": ("POST", CHECK_IN, check_in_body(value=-1e16), "value"),
    "currency beyond 1e15": (
        "POST",
        "/v1/key-results/{cur_kr}/check-ins",
        check_in_body(value=2e15),
        "value",
    ),
    "note 5001 characters": ("POST", CHECK_IN, check_in_body(note="n" * 5001), "note"),
    "51 blockers": ("POST", CHECK_IN, check_in_body(blockers=TOO_MANY), "blockers"),
    "blocker 1001 characters": (
        "POST",
        CHECK_IN,
        check_in_body(blockers=[LONG_ITEM]),
        "blockers.0",
    ),
    "boolean 0.5": (
        "POST",
        "/v1/key-results/{bool_kr}/check-ins",
        check_in_body(value=0.5),
        "value",
    ),
    "boolean 2": ("POST", "/v1/key-results/{bool_kr}/check-ins", check_in_body(value=2), "value"),
    "boolean -1": ("POST", "/v1/key-results/{bool_kr}/check-ins", check_in_body(value=-1), "value"),
    "percent 101": (
        "POST",
        "/v1/key-results/{pct_kr}/check-ins",
        check_in_body(value=101),
        "value",
    ),
    "percent 100.5": (
        "POST",
        "/v1/key-results/{pct_kr}/check-ins",
        check_in_body(value=100.5),
        "value",
    ),
    "percent -1": ("POST", "/v1/key-results/{pct_kr}/check-ins", check_in_body(value=-1), "value"),
    "correction confidence 11": (
        "POST",
        CORRECT,
        {"confidence": 11, "reason": "x"},
        "confidence",
    ),
    "correction confidence -1": (
        "POST",
        CORRECT,
        {"confidence": -1, "reason": "x"},
        "confidence",
    ),
    "correction value beyond 1e15": ("POST", CORRECT, {"value": 1e16, "reason": "x"}, "value"),
    "correction reason 2001 characters": (
        "POST",
        CORRECT,
        {"value": 31, "reason": "r" * 2001},
        "reason",
    ),
    "correction boolean 0.5": (
        "POST",
        "/v1/check-ins/{bool_check_in}/correct",
        {"value": 0.5, "reason": "x"},
        "value",
    ),
    "correction percent 101": (
        "POST",
        "/v1/check-ins/{pct_check_in}/correct",
        {"value": 101, "reason": "x"},
        "value",
    ),
    "correction percent -1": (
        "POST",
        "/v1/check-ins/{pct_check_in}/correct",
        {"value": -1, "reason": "x"},
        "value",
    ),
    "meeting held_on the day after tomorrow": (
        "POST",
        MEETINGS,
        meeting(held_on=(TODAY + timedelta(days=2)).isoformat()),
        "held_on",
    ),
    "meeting 51 wins": ("POST", MEETINGS, meeting(wins=TOO_MANY), "wins"),
    "meeting 51 priorities": ("POST", MEETINGS, meeting(priorities=TOO_MANY), "priorities"),
    "meeting learning 1001 characters": (
        "POST",
        MEETINGS,
        meeting(learnings=["ok", LONG_ITEM]),
        "learnings.1",
    ),
    "meeting team 201 characters": (
        "POST",
        "/v1/teams/" + "t" * 201 + "/check-in-meetings",
        meeting(),
        "team",
    ),
    "amendment 51 blockers": ("PATCH", MEETING, {"blockers": TOO_MANY, "reason": "x"}, "blockers"),
    "amendment win 1001 characters": (
        "PATCH",
        MEETING,
        {"wins": [LONG_ITEM], "reason": "x"},
        "wins.0",
    ),
    "amendment reason 2001 characters": (
        "PATCH",
        MEETING,
        {"wins": ["a"], "reason": "r" * 2001},
        "reason",
    ),
}

UNKNOWN_FIELD = {
    "check-in mood": ("POST", CHECK_IN, check_in_body(mood="great"), "mood"),
    "check-in key_result_id": (
        "POST",
        CHECK_IN,
        check_in_body(key_result_id="{kr}"),
        "key_result_id",
    ),
    "check-in actor": ("POST", CHECK_IN, check_in_body(actor="mallory"), "actor"),
    "correction note": ("POST", CORRECT, {"value": 31, "reason": "x", "note": "n"}, "note"),
    "correction blockers": (
        "POST",
        CORRECT,
        {"value": 31, "reason": "x", "blockers": []},
        "blockers",
    ),
    "meeting team": ("POST", MEETINGS, meeting(team="platform"), "team"),
    "meeting win singular": ("POST", MEETINGS, meeting(win=["x"]), "win"),
    "amendment held_on": (
        "PATCH",
        MEETING,
        {"wins": ["a"], "reason": "x", "held_on": TODAY.isoformat()},
        "held_on",
    ),
    "amendment cycle_id": ("PATCH", MEETING, {"cycle_id": "{cycle}", "reason": "x"}, "cycle_id"),
}

BLANK = {
    "empty blocker": ("POST", CHECK_IN, check_in_body(blockers=[""]), "blockers.0"),
    "blank blocker": ("POST", CHECK_IN, check_in_body(blockers=["ok", " \t "]), "blockers.1"),
    "correction reason blank": ("POST", CORRECT, {"value": 31, "reason": "   "}, "reason"),
    "correction reason empty": ("POST", CORRECT, {"value": 31, "reason": ""}, "reason"),
    "meeting blank win": ("POST", MEETINGS, meeting(wins=["   "]), "wins.0"),
    "meeting empty priority": ("POST", MEETINGS, meeting(priorities=[""]), "priorities.0"),
    "meeting blank team": ("POST", "/v1/teams/%20%20/check-in-meetings", meeting(), "team"),
    "amendment blank learning": (
        "PATCH",
        MEETING,
        {"learnings": ["  "], "reason": "x"},
        "learnings.0",
    ),
    "amendment reason blank": ("PATCH", MEETING, {"wins": ["a"], "reason": " "}, "reason"),
}

NOTHING_TO_DO = {
    "correction reason only": ("POST", CORRECT, {"reason": "because"}, "value"),
    "meeting with no items at all": (
        "POST",
        MEETINGS,
        meeting(held_on=NEVER_HELD, wins=[], learnings=[], blockers=[], priorities=[]),
        "wins",
    ),
    "meeting without any list": (
        "POST",
        MEETINGS,
        {"cycle_id": "{cycle}", "held_on": NEVER_HELD},
        "wins",
    ),
    "amendment reason only": ("PATCH", MEETING, {"reason": "because"}, None),
    "amendment a list null": ("PATCH", MEETING, {"wins": None, "reason": "x"}, "wins"),
    "amendment emptying every list": (
        "PATCH",
        MEETING,
        {"wins": [], "learnings": [], "blockers": [], "priorities": [], "reason": "x"},
        "wins",
    ),
}


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(MISSING))
async def test_missing_field(world, method, path, body, field):
    await assert_refused(world.checkins, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(WRONG_TYPE))
async def test_wrong_type(world, method, path, body, field):
    await assert_refused(world.checkins, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(OUT_OF_RANGE))
async def test_out_of_range(world, method, path, body, field):
    await assert_refused(world.checkins, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(UNKNOWN_FIELD))
async def test_unknown_field(world, method, path, body, field):
    await assert_refused(world.checkins, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(BLANK))
async def test_blank_text(world, method, path, body, field):
    await assert_refused(world.checkins, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(NOTHING_TO_DO))
async def test_command_that_says_nothing(world, method, path, body, field):
    await assert_refused(world.checkins, world, method, path, body, field)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(CHECK_IN, check_in_body(value=True), id="check-in true"),
        pytest.param(
            "/v1/key-results/{bool_kr}/check-ins", check_in_body(value=False), id="boolean false"
        ),
        pytest.param(
            "/v1/check-ins/{bool_check_in}/correct",
            {"value": True, "reason": "x"},
            id="correction true",
        ),
        pytest.param(CHECK_IN, check_in_body(value="30"), id="check-in numeric string"),
        pytest.param(
            "/v1/check-ins/{pct_check_in}/correct",
            {"value": "40", "reason": "x"},
            id="correction numeric string",
        ),
    ],
)
async def test_non_number_value_is_refused(world, path, body):
    await assert_refused(world.checkins, world, "POST", path, body, "value")


# --- rules of the state: 404 and 409 ------------------------------------------------------

UNKNOWN = str(uuid.uuid4())

# (method, path, body, status)
STATE = {
    "check-in on an unknown key result": (
        "POST",
        f"/v1/key-results/{UNKNOWN}/check-ins",
        None,
        404,
    ),
    "check-in on a check-in's id": ("POST", "/v1/key-results/{check_in}/check-ins", None, 404),
    "check-in in a closed cycle": ("POST", "/v1/key-results/{closed_kr}/check-ins", None, 409),
    "correction of an unknown check-in": (
        "POST",
        f"/v1/check-ins/{UNKNOWN}/correct",
        {"value": 31, "reason": "x"},
        404,
    ),
    "correction of a key result's id": (
        "POST",
        "/v1/check-ins/{kr}/correct",
        {"value": 31, "reason": "x"},
        404,
    ),
    "correction to the same value and confidence": (
        "POST",
        CORRECT,
        {"value": 30, "confidence": 7, "reason": "x"},
        409,
    ),
    "correction to the same value": ("POST", CORRECT, {"value": 30.0, "reason": "x"}, 409),
    "correction to the same confidence": ("POST", CORRECT, {"confidence": 7, "reason": "x"}, 409),
    "correction in a closed cycle": (
        "POST",
        "/v1/check-ins/{closed_check_in}/correct",
        {"value": 31, "reason": "x"},
        409,
    ),
    "meeting in an unknown cycle": ("POST", MEETINGS, meeting(cycle_id=UNKNOWN), 404),
    "meeting again on the same date": ("POST", MEETINGS, meeting(), 409),
    "meeting of a team without objectives": (
        "POST",
        "/v1/teams/nobody/check-in-meetings",
        meeting(held_on=(TODAY - timedelta(days=1)).isoformat()),
        409,
    ),
    "meeting in a cycle not started": (
        "POST",
        MEETINGS,
        meeting(cycle_id="{scheduled_cycle}", held_on=(TODAY - timedelta(days=2)).isoformat()),
        409,
    ),
    "meeting in a closed cycle": (
        "POST",
        MEETINGS,
        meeting(cycle_id="{closed_cycle}", held_on=(TODAY - timedelta(days=3)).isoformat()),
        409,
    ),
    "amendment of an unknown meeting": (
        "PATCH",
        f"/v1/check-in-meetings/{UNKNOWN}",
        {"wins": ["a"], "reason": "x"},
        404,
    ),
    "amendment of a check-in's id": (
        "PATCH",
        "/v1/check-in-meetings/{check_in}",
        {"wins": ["a"], "reason": "x"},
        404,
    ),
    "amendment in a closed cycle": (
        "PATCH",
        "/v1/check-in-meetings/{closed_meeting}",
        {"wins": ["a"], "reason": "x"},
        409,
    ),
}


@pytest.mark.parametrize(("method", "path", "body", "status"), _cases(STATE))
async def test_refused_by_the_state(world, method, path, body, status):
    if body is None:
        body = check_in_body()
    if status == 404:
        await catalogue_current(world)
    await assert_refused(world.checkins, world, method, path, body, None, status)


async def test_refused_values_leave_aggregates_unchanged(world):
    """After every kind of refused change, the GETs show the original state."""
    before = await get_json(world.checkins.client, f"/v1/key-results/{world.kr}/progress")
    tables = [MISSING, WRONG_TYPE, OUT_OF_RANGE, UNKNOWN_FIELD, BLANK, NOTHING_TO_DO]
    for method, path, body, _ in [case for table in tables for case in table.values()]:
        r = await send(world.checkins, world, method, path, body)
        assert 400 <= r.status_code < 500, r.text
    for method, path, body, _ in STATE.values():
        r = await send(world.checkins, world, method, path, body or check_in_body())
        assert 400 <= r.status_code < 500, r.text
    client = world.checkins.client
    entry = await read(world, f"/v1/check-ins/{world.check_in}")
    assert (entry["value"], entry["confidence"], entry["corrections"]) == (30.0, 7, [])
    progress = await get_json(client, f"/v1/key-results/{world.kr}/progress")
    assert progress["version"] == before["version"]
    assert progress["check_in_count"] == before["check_in_count"]
    held = await get_json(client, f"/v1/check-in-meetings/{world.meeting}")
    assert (held["version"], held["amendments"]) == (1, 0)
    assert held["wins"] == meeting()["wins"]


# --- raw bodies: NaN and Infinity, malformed JSON, size ------------------------------------

NON_FINITE = {
    "value NaN": (CHECK_IN, b'{"value": NaN, "confidence": 7}', "value"),
    "value Infinity": (CHECK_IN, b'{"value": Infinity, "confidence": 7}', "value"),
    "value -Infinity": (CHECK_IN, b'{"value": -Infinity, "confidence": 7}', "value"),
    "value 1e400": (CHECK_IN, b'{"value": 1e400, "confidence": 7}', "value"),
    "confidence NaN": (CHECK_IN, b'{"value": 30, "confidence": NaN}', "confidence"),
    "percent NaN": (
        "/v1/key-results/{pct_kr}/check-ins",
        b'{"value": NaN, "confidence": 7}',
        "value",
    ),
    "boolean Infinity": (
        "/v1/key-results/{bool_kr}/check-ins",
        b'{"value": Infinity, "confidence": 7}',
        "value",
    ),
    "correction value NaN": (CORRECT, b'{"value": NaN, "reason": "x"}', "value"),
    "correction value Infinity": (CORRECT, b'{"value": Infinity, "reason": "x"}', "value"),
    "correction confidence Infinity": (
        CORRECT,
        b'{"confidence": Infinity, "reason": "x"}',
        "confidence",
    ),
}


@pytest.mark.parametrize(("path", "raw", "field"), _cases(NON_FINITE))
async def test_nan_and_infinity(world, path, raw, field):
    await assert_refused(world.checkins, world, "POST", path, None, field, raw=raw)


COMMANDS = {
    "check-in": ("POST", CHECK_IN),
    "correction": ("POST", CORRECT),
    "meeting": ("POST", MEETINGS),
    "amendment": ("PATCH", MEETING),
}

MALFORMED = {
    "truncated": b'{"value": 30, "confidence": ',
    "single quotes": b"{'value': 30}",
    "trailing comma": b'{"value": 30, "confidence": 7,}',
    "not json at all": b"value=30&confidence=7",
}


@pytest.mark.parametrize(("method", "path"), _cases(COMMANDS))
@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_json_is_400(world, method, path, raw):
    await assert_refused(world.checkins, world, method, path, None, None, 400, raw=raw)


@pytest.mark.parametrize(("method", "path"), _cases(COMMANDS))
async def test_missing_body(world, method, path):
    before = await stored(world.checkins)
    r = await world.checkins.client.request(method, world.fill(path))
    assert r.status_code in (400, 422), r.text
    assert_problem(r, r.status_code)
    assert await stored(world.checkins) == before


@pytest.mark.parametrize(("method", "path"), _cases(COMMANDS))
async def test_body_over_64_kib_is_413(world, method, path):
    huge = {"note": "x" * (65 * 1024)}
    await assert_refused(world.checkins, world, method, path, huge, None, 413)


async def test_body_just_under_the_limit_is_not_413(world):
    # 60 KiB of note: over the 5000-character field limit (422), but not too large.
    await assert_refused(
        world.checkins, world, "POST", CHECK_IN, check_in_body(note="x" * (60 * 1024)), "note"
    )


@pytest.mark.parametrize(("method", "path"), _cases(COMMANDS))
async def test_non_json_content_type_is_refused(world, method, path):
    before = await stored(world.checkins)
    r = await world.checkins.client.request(
        method,
        world.fill(path),
        content=json.dumps(check_in_body()).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert 400 <= r.status_code < 500, r.text
    assert_problem(r, r.status_code)
    assert await stored(world.checkins) == before


# --- headers and query parameters ---------------------------------------------------------

VALID = {
    "check-in": ("POST", CHECK_IN, check_in_body()),
    "correction": ("POST", CORRECT, {"value": 31, "reason": "x"}),
    "meeting": (
        "POST",
        MEETINGS,
        meeting(held_on=(TODAY - timedelta(days=10)).isoformat()),
    ),
    "amendment": ("PATCH", MEETING, {"wins": ["Other"], "reason": "x"}),
}

BAD_IF_MATCH = {
    "not an etag": "abc",
    "negative": '"-1"',
    "fraction": '"1.5"',
    "13 digits": '"1234567890123"',
    "empty etag": '""',
    "a list": '"1", "2"',
}


@pytest.mark.parametrize(
    ("method", "path", "body"), [pytest.param(*VALID[c], id=c) for c in VALID if c != "meeting"]
)
@pytest.mark.parametrize("value", list(BAD_IF_MATCH.values()), ids=list(BAD_IF_MATCH))
async def test_bad_if_match_is_422(world, method, path, body, value):
    await assert_refused(
        world.checkins, world, method, path, body, "If-Match", headers={"If-Match": value}
    )


BAD_HEADERS = {
    "Idempotency-Key too long": ("Idempotency-Key", "k" * 129),
    "Idempotency-Key with a space": ("Idempotency-Key", "two words"),
    "Idempotency-Key empty": ("Idempotency-Key", ""),
    "Idempotency-Key not ASCII": ("Idempotency-Key", "clé".encode()),
    "X-Correlation-Id with a space": ("X-Correlation-Id", "has space"),
    "X-Request-Id too long": ("X-Request-Id", "r" * 200),
}


@pytest.mark.parametrize(("method", "path", "body"), _cases(VALID))
@pytest.mark.parametrize(("header", "value"), _cases(BAD_HEADERS))
async def test_bad_context_headers_are_422(world, method, path, body, header, value):
    await assert_refused(world.checkins, world, method, path, body, header, headers={header: value})


BAD_MIN_POSITION = {
    "no sequence": "goals",
    "no service": ":3",
    "sequence a word": "goals:abc",
    "upper case": "GOALS:3",
    "negative": "goals:-1",
    "19 digits": "goals:" + "9" * 19,
    "spaces": "goals: 3",
    "a service not consumed": "reviews:3",
}


@pytest.mark.parametrize(
    ("method", "path", "body"), [pytest.param(*VALID[c], id=c) for c in ("check-in", "meeting")]
)
@pytest.mark.parametrize("value", list(BAD_MIN_POSITION.values()), ids=list(BAD_MIN_POSITION))
async def test_bad_min_position_is_422(world, method, path, body, value):
    query = httpx.QueryParams({"min_position": value})
    problem = await assert_refused(world.checkins, world, method, f"{path}?{query}", body, None)
    # "min_position", or "min_position.0" where the parameter may be repeated.
    fields_named = [f.split(".")[0] for f in error_fields(problem)]
    assert "min_position" in fields_named, problem


BAD_QUERY = {
    "limit 0": ("limit=0", "limit"),
    "limit 201": ("limit=201", "limit"),
    "limit a word": ("limit=ten", "limit"),
    "limit a fraction": ("limit=1.5", "limit"),
    "before 0": ("before=0", "before"),
    "before a word": ("before=latest", "before"),
}


@pytest.mark.parametrize(("query", "field"), _cases(BAD_QUERY))
async def test_bad_page_query_is_422(world, query, field):
    r = await send(world.checkins, world, "GET", f"{CHECK_IN}?{query}")
    assert field in error_fields(assert_problem(r, 422))


# --- ids in the path ----------------------------------------------------------------------

ROUTES = {
    "check in": ("POST", "/v1/key-results/{id}/check-ins", check_in_body()),
    "list check-ins": ("GET", "/v1/key-results/{id}/check-ins", None),
    "progress": ("GET", "/v1/key-results/{id}/progress", None),
    "GET check-in": ("GET", "/v1/check-ins/{id}", None),
    "correct": ("POST", "/v1/check-ins/{id}/correct", {"value": 31, "reason": "x"}),
    "GET meeting": ("GET", "/v1/check-in-meetings/{id}", None),
    "amend": ("PATCH", "/v1/check-in-meetings/{id}", {"wins": ["a"], "reason": "x"}),
}


@pytest.mark.parametrize(("method", "path", "body"), _cases(ROUTES))
async def test_non_uuid_id_is_422(world, method, path, body):
    problem = await assert_refused(
        world.checkins, world, method, path.format(id="not-a-uuid"), body, None
    )
    assert any("id" in f for f in error_fields(problem)), problem


@pytest.mark.parametrize(("method", "path", "body"), _cases(ROUTES))
async def test_unknown_id_is_404(world, method, path, body):
    await catalogue_current(world)
    problem = await assert_refused(
        world.checkins, world, method, path.format(id=UNKNOWN), body, None, 404
    )
    assert UNKNOWN in problem["detail"]


async def test_unknown_route_and_method_are_problems(world):
    client = world.checkins.client
    assert_problem(await client.get("/v1/nothing-here"), 404)
    assert_problem(await client.delete(world.fill("/v1/check-ins/{check_in}")), 405)
    assert_problem(await client.put(world.fill(MEETING), json={}), 405)


# --- values by kind: what is accepted -----------------------------------------------------

ACCEPTED = {
    "boolean 0": ("bool_kr", 0, 0.0),
    "boolean 1": ("bool_kr", 1, 1.0),
    "boolean 1.0": ("bool_kr", 1.0, 1.0),
    "percent 0": ("pct_kr", 0, 0.0),
    "percent 100": ("pct_kr", 100, 100.0),
    "percent 55.5": ("pct_kr", 55.5, 55.5),
    "number negative": ("kr", -12.5, -12.5),
    "number 0": ("kr", 0, 0.0),
    "number beyond the target": ("kr", 500, 500.0),
    "number 1e15": ("kr", 1e15, 1e15),
    "currency -1e15": ("cur_kr", -1e15, -1e15),
    "currency cents": ("cur_kr", 12.34, 12.34),
}


@pytest.mark.parametrize(("kr", "value", "expected"), _cases(ACCEPTED))
async def test_value_accepted_by_kind(world, kr, value, expected):
    client = world.checkins.client
    key_result_id = getattr(world, kr)
    progress = await get_json(client, f"/v1/key-results/{key_result_id}/progress")
    opened = progress["version"] > 0
    before = await stored(world.checkins)
    r = await client.post(
        f"/v1/key-results/{key_result_id}/check-ins", json=check_in_body(value=value)
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "version", "position", "key_result_id"}
    assert body["key_result_id"] == key_result_id
    assert r.headers["location"] == f"/v1/check-ins/{body['id']}"
    assert r.headers["etag"] == f'"{body["version"]}"'
    events = 1 if opened else 2  # the first check-in also opens the key result's progress
    assert body["position"] == f"checkins:{before + events}"
    assert body["version"] == progress["version"] + events
    assert await stored(world.checkins) == before + events
    entry = await read(world, f"/v1/check-ins/{body['id']}")
    assert entry["value"] == entry["original_value"] == expected


@pytest.mark.parametrize(
    ("overrides", "note", "blockers"),
    [
        pytest.param({"confidence": 0}, "good week", [], id="confidence 0"),
        pytest.param({"confidence": 10}, "good week", [], id="confidence 10"),
        pytest.param({"note": "n" * 5000}, "n" * 5000, [], id="note 5000 characters"),
        pytest.param({"note": ""}, "", [], id="note empty"),
        pytest.param(
            {"blockers": [f"  b{i} " for i in range(50)]},
            "good week",
            [f"b{i}" for i in range(50)],
            id="50 blockers, trimmed",
        ),
        pytest.param({"blockers": ["x" * 1000]}, "good week", ["x" * 1000], id="blocker 1000"),
    ],
)
async def test_bounds_accepted(world, overrides, note, blockers):
    client = world.checkins.client
    check_in_id = await check_in(client, world.kr, **overrides)
    entry = await read(world, f"/v1/check-ins/{check_in_id}")
    assert (entry["note"], entry["blockers"]) == (note, blockers)
    assert entry["confidence"] == overrides.get("confidence", 7)


async def test_meeting_of_tomorrow_is_accepted(world):
    """A day of slack for teams east of UTC; the items are trimmed."""
    client = world.checkins.client
    r = await client.post(
        "/v1/teams/platform/check-in-meetings",
        json=meeting_body(
            world.cycle,
            held_on=(TODAY + timedelta(days=1)).isoformat(),
            wins=["  trimmed  "],
            learnings=[],
            priorities=[],
        ),
    )
    assert r.status_code == 201, r.text
    held = await read(world, r.headers["location"])
    assert (held["wins"], held["learnings"], held["priorities"]) == (["trimmed"], [], [])


async def test_amendment_that_changes_nothing_stores_nothing(world):
    client = world.checkins.client
    held = await get_json(client, f"/v1/check-in-meetings/{world.meeting}")
    before = await stored(world.checkins)
    r = await client.patch(
        f"/v1/check-in-meetings/{world.meeting}", json={"wins": held["wins"], "reason": "same"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["position"] is None
    assert r.json()["version"] == held["version"]
    assert await stored(world.checkins) == before


async def test_min_position_already_reached_is_accepted(world):
    position = await stored(world.goals)
    r = await world.checkins.client.post(
        f"/v1/key-results/{world.kr}/check-ins",
        params={"min_position": f"goals:{position}"},
        json=check_in_body(),
    )
    assert r.status_code == 201, r.text
