"""Authentication on the check-in service: every command and every read needs a valid HS256
bearer token (401 with `WWW-Authenticate` else), a refused request stores nothing, and the
actor recorded on a check-in is the token's `sub`.

The route x token matrix shares one pair of running services per store (a module fixture).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.http.checkins_helpers import check_in, check_in_body, meeting_body, plan
from tests.http.forged import BAD_AUTHORIZATION
from tests.http.helpers import anonymous, assert_problem, stored
from tests.support import RunningService, auth
from tests.system import STORES, running, store_for

TODAY = datetime.now(UTC).date()


@dataclass
class World:
    goals: RunningService
    checkins: RunningService
    cycle: str
    kr: str
    check_in: str  # by alice: value 30, confidence 7
    meeting: str  # platform's meeting of TODAY

    def fill(self, text: str) -> str:
        for name in ("cycle", "kr", "check_in", "meeting"):
            text = text.replace("{" + name + "}", getattr(self, name))
        return text


@pytest.fixture(scope="module", params=STORES)
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    base = tmp_path_factory.mktemp("checkins-auth")
    async with running(store_for(request, base), base, "goals", "checkins") as s:
        goals, checkins = s["goals"], s["checkins"]
        p = await plan(goals, checkins)
        r = await checkins.client.post(
            "/v1/teams/platform/check-in-meetings",
            json=meeting_body(p.cycle_id, held_on=TODAY.isoformat()),
        )
        assert r.status_code == 201, r.text
        yield World(
            goals=goals,
            checkins=checkins,
            cycle=p.cycle_id,
            kr=p.key_result_id,
            check_in=await check_in(checkins.client, p.key_result_id),
            meeting=r.json()["id"],
        )


# --- tokens -------------------------------------------------------------------------------


UNKNOWN = str(uuid.uuid4())

# (method, path, body)
ROUTES = {
    "check in": ("POST", "/v1/key-results/{kr}/check-ins", check_in_body()),
    "check in, invalid body": ("POST", "/v1/key-results/{kr}/check-ins", {"value": "x"}),
    "check in, unknown key result": ("POST", f"/v1/key-results/{UNKNOWN}/check-ins", {}),
    "correct": ("POST", "/v1/check-ins/{check_in}/correct", {"value": 99, "reason": "x"}),
    "hold meeting": (
        "POST",
        "/v1/teams/platform/check-in-meetings",
        meeting_body("{cycle}", held_on=(TODAY - timedelta(days=1)).isoformat()),
    ),
    "amend meeting": (
        "PATCH",
        "/v1/check-in-meetings/{meeting}",
        {"wins": ["Hijacked"], "reason": "x"},
    ),
    "GET check-in": ("GET", "/v1/check-ins/{check_in}", None),
    "GET unknown check-in": ("GET", f"/v1/check-ins/{UNKNOWN}", None),
    "list check-ins": ("GET", "/v1/key-results/{kr}/check-ins", None),
    "progress": ("GET", "/v1/key-results/{kr}/progress", None),
    "GET meeting": ("GET", "/v1/check-in-meetings/{meeting}", None),
    "catalogue": ("GET", "/v1/catalogue", None),
}


def assert_unauthorized(r: httpx.Response) -> None:
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer"), r.headers


async def request(
    client: httpx.AsyncClient, world: World, method: str, path: str, body: Any, **kw: Any
) -> httpx.Response:
    content = None if body is None else world.fill(json.dumps(body)).encode()
    headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
    return await client.request(method, world.fill(path), content=content, headers=headers, **kw)


@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
async def test_bad_token_is_401_on_every_route_and_stores_nothing(world, case):
    authorization = BAD_AUTHORIZATION[case]()
    headers = {} if authorization is None else {"Authorization": authorization}
    before = await stored(world.checkins)
    async with anonymous(world.checkins) as client:
        for name, (method, path, body) in ROUTES.items():
            r = await request(client, world, method, path, body, headers=headers)
            try:
                assert_unauthorized(r)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None
    assert await stored(world.checkins) == before


async def test_refused_requests_changed_nothing(world):
    """After the whole matrix, the check-in and the meeting are as they were."""
    client = world.checkins.client
    r = await client.get(f"/v1/check-ins/{world.check_in}")
    assert r.status_code == 200, r.text
    entry = r.json()
    assert (entry["value"], entry["corrections"], entry["actor"]) == (30.0, [], "alice")
    r = await client.get(f"/v1/key-results/{world.kr}/progress")
    assert (r.json()["version"], r.json()["check_in_count"]) == (2, 1)
    r = await client.get(f"/v1/check-in-meetings/{world.meeting}")
    assert (r.json()["version"], r.json()["amendments"]) == (1, 0)
    assert "Hijacked" not in r.json()["wins"]


async def test_a_valid_token_passes_on_every_read(world):
    for name, (method, path, _) in ROUTES.items():
        if method == "GET" and "unknown" not in name:
            r = await request(world.checkins.client, world, method, path, None)
            assert r.status_code == 200, (name, r.text)


async def test_actor_is_the_tokens_sub(world):
    """The check-in records bob, the correction carol: the token's sub, never a body field."""
    client = world.checkins.client
    r = await client.post(
        f"/v1/key-results/{world.kr}/check-ins",
        json=check_in_body(value=35),
        headers=auth("bob"),
    )
    assert r.status_code == 201, r.text
    check_in_id = r.json()["id"]
    r = await client.post(
        f"/v1/check-ins/{check_in_id}/correct",
        json={"confidence": 4, "reason": "too optimistic"},
        headers=auth("carol"),
    )
    assert r.status_code == 200, r.text

    r = await client.get(f"/v1/check-ins/{check_in_id}")  # read as alice
    assert r.status_code == 200, r.text
    entry = r.json()
    assert entry["actor"] == "bob"
    assert [
        (c["actor"], c["confidence"], c["previous_confidence"]) for c in entry["corrections"]
    ] == [("carol", 4, 7)]
    r = await client.get(f"/v1/key-results/{world.kr}/check-ins", headers=auth("dave"))
    assert [(e["id"], e["actor"]) for e in r.json()["items"][:2]] == [
        (check_in_id, "bob"),
        (world.check_in, "alice"),
    ]
