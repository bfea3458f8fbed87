"""Bad input: each kind answers a 4xx problem+json, names the wrong field where it can, and
stores nothing.

The matrix is long, so its cases share one running goals service per store (a module
fixture) instead of starting NATS and the service for every case; each case compares the
number of stored events before and after, which holds however the cases are ordered.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.http.helpers import (
    add_key_result,
    assert_problem,
    create_cycle,
    create_objective,
    cycle_body,
    error_fields,
    get_json,
    key_result_body,
    objective_body,
    stored,
)
from tests.support import RunningService
from tests.system import STORES, running, store_for


@dataclass
class World:
    goals: RunningService
    cycle: str
    objective: str
    kr: str  # number, 20 -> 50
    pct_kr: str  # percent, 10 -> 80
    bool_kr: str  # boolean, 0 -> 1

    def fill(self, text: str) -> str:
        """Put the ids in place of `{cycle}`, `{objective}`, `{kr}`, ... (raw JSON stays)."""
        for name, value in self.__dict__.items():
            if isinstance(value, str):
                text = text.replace("{" + name + "}", value)
        return text


async def _build(goals: RunningService) -> World:
    cycle = await create_cycle(goals.client)
    objective = await create_objective(goals.client, cycle)
    return World(
        goals=goals,
        cycle=cycle,
        objective=objective,
        kr=await add_key_result(goals.client, objective),
        pct_kr=await add_key_result(goals.client, objective, kind="percent", start=10, target=80),
        bool_kr=await add_key_result(goals.client, objective, kind="boolean", start=0, target=1),
    )


@pytest.fixture(scope="module", params=STORES)
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    base: Path = tmp_path_factory.mktemp("goals-validation")
    async with running(store_for(request, base), base, "goals") as s:
        yield await _build(s["goals"])


@pytest.fixture
def goals(world: World) -> RunningService:
    """The module's goals service, in place of one of its own per case."""
    return world.goals


async def send(
    goals, world: World, method: str, path: str, body: Any = None, raw: bytes | None = None
):
    path = world.fill(path)
    if isinstance(body, dict) and "cycle_id" in body and body["cycle_id"] == "{cycle}":
        body = {**body, "cycle_id": world.cycle}
    if raw is not None:
        raw = world.fill(raw.decode()).encode()
        return await goals.client.request(
            method, path, content=raw, headers={"Content-Type": "application/json"}
        )
    return await goals.client.request(method, path, json=body)


def without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != field}


KR = "/v1/objectives/{objective}/key-results"

# (method, path, body, field the problem must name or None)
MISSING = {
    "cycle name": ("POST", "/v1/cycles", without(cycle_body(), "name"), "name"),
    "cycle ends_on": ("POST", "/v1/cycles", without(cycle_body(), "ends_on"), "ends_on"),
    "objective cycle_id": (
        "POST",
        "/v1/objectives",
        without(objective_body("{cycle}"), "cycle_id"),
        "cycle_id",
    ),
    "objective title": (
        "POST",
        "/v1/objectives",
        without(objective_body("{cycle}"), "title"),
        "title",
    ),
    "objective owner": (
        "POST",
        "/v1/objectives",
        without(objective_body("{cycle}"), "owner"),
        "owner",
    ),
    "key result kind": ("POST", KR, without(key_result_body(), "kind"), "kind"),
    "key result target": ("POST", KR, without(key_result_body(), "target"), "target"),
    "key result owner": ("POST", KR, without(key_result_body(), "owner"), "owner"),
    "target adjustment reason": ("POST", "/v1/key-results/{kr}/target", {"target": 70}, "reason"),
    "target adjustment target": ("POST", "/v1/key-results/{kr}/target", {"reason": "x"}, "target"),
    "removal reason": ("POST", "/v1/key-results/{kr}/remove", {}, "reason"),
}

WRONG_TYPE = {
    "starts_on not a date": (
        "POST",
        "/v1/cycles",
        cycle_body(starts_on="next monday"),
        "starts_on",
    ),
    "ends_on impossible date": ("POST", "/v1/cycles", cycle_body(ends_on="2027-02-30"), "ends_on"),
    "name a number": ("POST", "/v1/cycles", cycle_body(name=42), "name"),
    "cycle_id not a uuid": ("POST", "/v1/objectives", objective_body("not-a-uuid"), "cycle_id"),
    "parent_id not a uuid": (
        "POST",
        "/v1/objectives",
        objective_body("{cycle}", parent_id=7),
        "parent_id",
    ),
    "title a list": ("POST", "/v1/objectives", objective_body("{cycle}", title=["a"]), "title"),
    "kind unknown": ("POST", KR, key_result_body(kind="ratio"), "kind"),
    "start a string": ("POST", KR, key_result_body(start="twenty"), "start"),
    "weight an object": ("POST", KR, key_result_body(weight={"w": 1}), "weight"),
    "target a bool-ish string": (
        "POST",
        "/v1/key-results/{kr}/target",
        {"target": "high", "reason": "x"},
        "target",
    ),
    "patch weight a string": ("PATCH", "/v1/key-results/{kr}", {"weight": "heavy"}, "weight"),
    "patch owner a number": ("PATCH", "/v1/objectives/{objective}", {"owner": 5}, "owner"),
    "body a list": ("POST", "/v1/cycles", [cycle_body()], None),
    "body a string": ("POST", "/v1/cycles", "Q1", None),
}

OUT_OF_RANGE = {
    "weight 0": ("POST", KR, key_result_body(weight=0), "weight"),
    "weight negative": ("POST", KR, key_result_body(weight=-1), "weight"),
    "weight too large": ("POST", KR, key_result_body(weight=10_000), "weight"),
    "patch weight 0": ("PATCH", "/v1/key-results/{kr}", {"weight": 0}, "weight"),
    "patch weight negative": ("PATCH", "/v1/key-results/{kr}", {"weight": -2.5}, "weight"),
    "percent target 150": (
        "POST",
        KR,
        key_result_body(kind="percent", start=0, target=150),
        "target",
    ),
    "percent start -5": ("POST", KR, key_result_body(kind="percent", start=-5, target=50), "start"),
    "boolean 0 -> 5": ("POST", KR, key_result_body(kind="boolean", start=0, target=5), "target"),
    "boolean 1 -> 0": ("POST", KR, key_result_body(kind="boolean", start=1, target=0), "target"),
    "target equals start": ("POST", KR, key_result_body(start=10, target=10), "target"),
    "number beyond 1e15": ("POST", KR, key_result_body(target=1e16), "target"),
    "adjust percent target 150": (
        "POST",
        "/v1/key-results/{pct_kr}/target",
        {"target": 150, "reason": "x"},
        "target",
    ),
    "adjust target to start": (
        "POST",
        "/v1/key-results/{kr}/target",
        {"target": 20, "reason": "x"},
        "target",
    ),
    "ends_on before starts_on": (
        "POST",
        "/v1/cycles",
        cycle_body(starts_on="2027-03-31", ends_on="2027-01-01"),
        "ends_on",
    ),
    "ends_on equal starts_on": (
        "POST",
        "/v1/cycles",
        cycle_body(starts_on="2027-03-31", ends_on="2027-03-31"),
        "ends_on",
    ),
    "name too long": ("POST", "/v1/cycles", cycle_body(name="n" * 201), "name"),
    "title too long": (
        "POST",
        "/v1/objectives",
        objective_body("{cycle}", title="t" * 301),
        "title",
    ),
    "unit too long": ("POST", KR, key_result_body(unit="u" * 51), "unit"),
}

UNKNOWN_FIELD = {
    "cycle": ("POST", "/v1/cycles", cycle_body(colour="red"), "colour"),
    "objective": ("POST", "/v1/objectives", objective_body("{cycle}", priority=1), "priority"),
    "key result": ("POST", KR, key_result_body(direction="up"), "direction"),
    "objective patch typo": ("PATCH", "/v1/objectives/{objective}", {"titel": "New"}, "titel"),
    "key result patch target": ("PATCH", "/v1/key-results/{kr}", {"target": 99}, "target"),
    "close": ("POST", "/v1/cycles/{cycle}/close", {"reason": "x", "force": True}, "force"),
    "archive": ("POST", "/v1/objectives/{objective}/archive", {"why": "x"}, "why"),
    "target adjustment": (
        "POST",
        "/v1/key-results/{kr}/target",
        {"target": 70, "reason": "x", "start": 0},
        "start",
    ),
    "removal": ("POST", "/v1/key-results/{kr}/remove", {"reason": "x", "hard": True}, "hard"),
}

BLANK = {
    "cycle name": ("POST", "/v1/cycles", cycle_body(name="   "), "name"),
    "objective title": ("POST", "/v1/objectives", objective_body("{cycle}", title="   "), "title"),
    "objective owner": ("POST", "/v1/objectives", objective_body("{cycle}", owner="  "), "owner"),
    "objective team": ("POST", "/v1/objectives", objective_body("{cycle}", team=" \t "), "team"),
    "key result title": ("POST", KR, key_result_body(title="   "), "title"),
    "objective patch title": ("PATCH", "/v1/objectives/{objective}", {"title": "   "}, "title"),
    "key result patch title": ("PATCH", "/v1/key-results/{kr}", {"title": "   "}, "title"),
    "target adjustment reason": (
        "POST",
        "/v1/key-results/{kr}/target",
        {"target": 70, "reason": "   "},
        "reason",
    ),
    "removal reason": ("POST", "/v1/key-results/{kr}/remove", {"reason": "   "}, "reason"),
}

NO_FIELDS = {
    "objective empty": ("PATCH", "/v1/objectives/{objective}", {}, None),
    "objective reason only": ("PATCH", "/v1/objectives/{objective}", {"reason": "because"}, None),
    "key result empty": ("PATCH", "/v1/key-results/{kr}", {}, None),
    "key result reason only": ("PATCH", "/v1/key-results/{kr}", {"reason": "because"}, None),
    "key result title null": ("PATCH", "/v1/key-results/{kr}", {"title": None}, None),
}


def _cases(table: dict[str, tuple]) -> list:
    return [pytest.param(*v, id=k) for k, v in table.items()]


async def _assert_refused(goals, world, method, path, body, field, status=422):
    before = await stored(goals)
    r = await send(goals, world, method, path, body)
    problem = assert_problem(r, status)
    if field is not None:
        assert field in error_fields(problem), problem
    assert await stored(goals) == before
    return problem


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(MISSING))
async def test_missing_field(goals, world, method, path, body, field):
    await _assert_refused(goals, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(WRONG_TYPE))
async def test_wrong_type(goals, world, method, path, body, field):
    await _assert_refused(goals, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(OUT_OF_RANGE))
async def test_out_of_range(goals, world, method, path, body, field):
    await _assert_refused(goals, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(UNKNOWN_FIELD))
async def test_unknown_field(goals, world, method, path, body, field):
    await _assert_refused(goals, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(BLANK))
async def test_blank_text(goals, world, method, path, body, field):
    await _assert_refused(goals, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(NO_FIELDS))
async def test_patch_without_fields(goals, world, method, path, body, field):
    await _assert_refused(goals, world, method, path, body, field)


async def test_refused_values_leave_aggregates_unchanged(goals, world):
    """After all kinds of refused changes, the GETs show the original state."""
    for method, path, body, _ in [*OUT_OF_RANGE.values(), *BLANK.values(), *NO_FIELDS.values()]:
        r = await send(goals, world, method, path, body)
        assert 400 <= r.status_code < 500, r.text
    kr = await get_json(goals.client, f"/v1/key-results/{world.kr}")
    assert (kr["version"], kr["title"], kr["weight"], kr["target"]) == (1, "Raise NPS", 2.0, 50.0)
    objective = await get_json(goals.client, f"/v1/objectives/{world.objective}")
    assert (objective["version"], objective["title"]) == (1, "Delight our customers")


MALFORMED = {
    "truncated": b'{"name": "Q1", "starts_on": ',
    "single quotes": b"{'name': 'Q1'}",
    "trailing comma": b'{"name": "Q1", "starts_on": "2027-01-01", "ends_on": "2027-03-31",}',
    "not json at all": b"name=Q1&starts_on=2027-01-01",
}


@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_json(goals, world, raw):
    before = await stored(goals)
    r = await send(goals, world, "POST", "/v1/cycles", raw=raw)
    assert_problem(r, 400)
    r = await send(goals, world, "PATCH", "/v1/objectives/{objective}", raw=raw)
    assert_problem(r, 400)
    assert await stored(goals) == before


async def test_missing_body(goals, world):
    before = await stored(goals)
    r = await goals.client.post("/v1/cycles")
    assert r.status_code in (400, 422)
    assert_problem(r, r.status_code)
    r = await goals.client.post(f"/v1/key-results/{world.kr}/target")
    assert r.status_code in (400, 422)
    assert_problem(r, r.status_code)
    assert await stored(goals) == before


NON_FINITE = {
    "key result start NaN": (
        KR,
        b'{"title": "t", "kind": "number", "start": NaN, "target": 5, "owner": "o"}',
        "start",
    ),
    "key result target Infinity": (
        KR,
        b'{"title": "t", "kind": "number", "start": 0, "target": Infinity, "owner": "o"}',
        "target",
    ),
    "key result weight -Infinity": (
        KR,
        b'{"title": "t", "kind": "number", "start": 0, "target": 5, "weight": -Infinity, '
        b'"owner": "o"}',
        "weight",
    ),
    "adjust target NaN": (
        "/v1/key-results/{kr}/target",
        b'{"target": NaN, "reason": "x"}',
        "target",
    ),
}


@pytest.mark.parametrize(
    ("path", "raw", "field"), [pytest.param(*v, id=k) for k, v in NON_FINITE.items()]
)
async def test_nan_and_infinity(goals, world, path, raw, field):
    before = await stored(goals)
    r = await send(goals, world, "POST", path, raw=raw)
    problem = assert_problem(r, 422)
    assert field in error_fields(problem)
    assert await stored(goals) == before


async def test_nan_in_patch_weight(goals, world):
    before = await stored(goals)
    r = await send(goals, world, "PATCH", "/v1/key-results/{kr}", raw=b'{"weight": NaN}')
    assert "weight" in error_fields(assert_problem(r, 422))
    assert await stored(goals) == before


async def test_body_over_64_kib(goals, world):
    before = await stored(goals)
    huge = objective_body(world.cycle, description="x" * (65 * 1024))
    r = await goals.client.post("/v1/objectives", json=huge)
    assert_problem(r, 413)
    assert await stored(goals) == before


async def test_chunked_body_over_64_kib(goals, world):
    """No Content-Length: the limit still holds while the body streams in."""
    before = await stored(goals)

    async def chunks():
        yield b'{"cycle_id": "' + world.cycle.encode() + b'", "title": "t", "owner": "o", '
        yield b'"team": "x", "description": "'
        # Just over the limit, so the server has read (almost) everything when it refuses.
        for _ in range(64):
            yield b"y" * 1024
        yield b'"}'

    r = await goals.client.post(
        "/v1/objectives", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(r, 413)
    assert await stored(goals) == before


async def test_body_just_under_limit_is_not_413(goals, world):
    # 60 KiB of description: over the 5000-character field limit (422), but not too large.
    body = objective_body(world.cycle, description="x" * (60 * 1024))
    r = await goals.client.post("/v1/objectives", json=body)
    assert "description" in error_fields(assert_problem(r, 422))


# --- unknown ids and bad ids in the path --------------------------------------------------

UNKNOWN = str(uuid.uuid4())

ROUTES = {
    "GET cycle": ("GET", "/v1/cycles/{id}", None),
    "start cycle": ("POST", "/v1/cycles/{id}/start", None),
    "close cycle": ("POST", "/v1/cycles/{id}/close", {"reason": "x"}),
    "GET objective": ("GET", "/v1/objectives/{id}", None),
    "revise objective": ("PATCH", "/v1/objectives/{id}", {"title": "New"}),
    "archive objective": ("POST", "/v1/objectives/{id}/archive", None),
    "define key result": ("POST", "/v1/objectives/{id}/key-results", key_result_body()),
    "GET key result": ("GET", "/v1/key-results/{id}", None),
    "revise key result": ("PATCH", "/v1/key-results/{id}", {"title": "New"}),
    "adjust target": ("POST", "/v1/key-results/{id}/target", {"target": 70, "reason": "x"}),
    "remove key result": ("POST", "/v1/key-results/{id}/remove", {"reason": "x"}),
}


@pytest.mark.parametrize(("method", "path", "body"), _cases(ROUTES))
async def test_unknown_id_is_404(goals, world, method, path, body):
    before = await stored(goals)
    r = await goals.client.request(method, path.format(id=UNKNOWN), json=body)
    problem = assert_problem(r, 404)
    assert UNKNOWN in problem["detail"]
    assert await stored(goals) == before


@pytest.mark.parametrize(("method", "path", "body"), _cases(ROUTES))
async def test_id_of_another_kind_is_404(goals, world, method, path, body):
    """An objective's id on a key-result route (and so on) is unknown there, not a 500."""
    other = world.kr if "/cycles/" in path or "/objectives/" in path else world.objective
    before = await stored(goals)
    r = await goals.client.request(method, path.format(id=other), json=body)
    assert_problem(r, 404)
    assert await stored(goals) == before


@pytest.mark.parametrize(("method", "path", "body"), _cases(ROUTES))
async def test_non_uuid_id_is_422(goals, world, method, path, body):
    before = await stored(goals)
    r = await goals.client.request(method, path.format(id="not-a-uuid"), json=body)
    problem = assert_problem(r, 422)
    assert any("id" in f for f in error_fields(problem)), problem
    assert await stored(goals) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(objective_body(UNKNOWN), "cycle_id", id="unknown cycle"),
        pytest.param({"parent_id": UNKNOWN}, "parent_id", id="unknown parent"),
    ],
)
async def test_unknown_referenced_id_is_404(goals, world, body, field):
    before = await stored(goals)
    if field == "cycle_id":
        r = await goals.client.post("/v1/objectives", json=body)
    else:
        r = await goals.client.patch(f"/v1/objectives/{world.objective}", json=body)
    assert UNKNOWN in assert_problem(r, 404)["detail"]
    assert await stored(goals) == before


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Request-Id", "x" * 200),
        ("X-Correlation-Id", "has space"),
        ("Idempotency-Key", "k" * 129),
    ],
)
async def test_bad_context_headers_are_422(goals, world, header, value):
    before = await stored(goals)
    r = await goals.client.post("/v1/cycles", json=cycle_body(), headers={header: value})
    assert header in error_fields(assert_problem(r, 422))
    assert await stored(goals) == before


@pytest.mark.parametrize("field", ["title", "owner", "team", "description"])
async def test_objective_patch_null_for_a_required_field_is_422(goals, world, field):
    """Only parent_id takes null (it detaches). A null title, owner, team or description
    cannot be applied; like PATCH /v1/key-results/{id} it must be refused with 422, not
    answered 200 as if it had been applied."""
    before = await stored(goals)
    r = await goals.client.patch(f"/v1/objectives/{world.objective}", json={field: None})
    problem = assert_problem(r, 422)
    assert field in error_fields(problem) or field in problem["detail"]
    assert await stored(goals) == before


# --- odd requests never become a 500 ------------------------------------------------------


async def test_deeply_nested_json_is_400(goals, world):
    raw = b"[" * 30000 + b"]" * 30000
    r = await send(goals, world, "POST", "/v1/cycles", raw=raw)
    assert_problem(r, 400)


async def test_invalid_utf8_is_400(goals, world):
    r = await goals.client.post(
        "/v1/cycles", content=b'\xff\xfe{"name": "x"}', headers={"Content-Type": "application/json"}
    )
    assert_problem(r, 400)


async def test_huge_integer_is_422(goals, world):
    raw = b'{"target": 1' + b"0" * 400 + b', "reason": "x"}'
    r = await send(goals, world, "POST", "/v1/key-results/{kr}/target", raw=raw)
    assert "target" in error_fields(assert_problem(r, 422))


async def test_non_json_content_type_is_refused(goals, world):
    before = await stored(goals)
    r = await goals.client.post(
        "/v1/cycles",
        content=b'{"name": "Q1", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}',
        headers={"Content-Type": "text/plain"},
    )
    assert 400 <= r.status_code < 500
    assert_problem(r, r.status_code)
    assert await stored(goals) == before


async def test_unknown_route_and_method_are_problems(goals, world):
    assert_problem(await goals.client.get("/v1/nothing-here"), 404)
    assert_problem(await goals.client.delete(f"/v1/cycles/{world.cycle}"), 405)
    assert_problem(await goals.client.put(f"/v1/key-results/{world.kr}", json={}), 405)
