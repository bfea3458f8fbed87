"""Authentication on the review service: every command and every read needs a valid HS256
bearer token (401 with `WWW-Authenticate` else), a refused request stores nothing, and the
actor recorded on a reflection is the token's `sub`.

The route x token matrix shares one set of running services per store (a module fixture).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.http.checkins_helpers import caught_up, check_in, plan
from tests.http.forged import BAD_AUTHORIZATION
from tests.http.helpers import anonymous, assert_problem, create_cycle, create_objective, stored
from tests.http.reviews_helpers import open_review, synced
from tests.support import RunningService, auth, token
from tests.system import STORES, running, store_for


@dataclass
class World:
    goals: RunningService
    checkins: RunningService
    reviews: RunningService
    cycle: str  # started; platform, data and design have objectives in it
    next_cycle: str
    objective: str  # platform's
    kr: str  # platform's: 0 -> 100, checked in at 40 (suggested 0.4)
    review: str  # platform's review, open, nothing decided
    ready: str  # data's review: its objective decided, ready to be finalised

    def fill(self, text: str) -> str:
        for name in ("cycle", "next_cycle", "objective", "kr", "review", "ready"):
            text = text.replace("{" + name + "}", getattr(self, name))
        return text


async def _build(goals: RunningService, checkins: RunningService, reviews: RunningService) -> World:
    p = await plan(goals, checkins, start=0, target=100)
    data_objective = await create_objective(goals.client, p.cycle_id, team="data")
    await create_objective(goals.client, p.cycle_id, team="design")
    next_cycle = await create_cycle(goals.client, name="Next")
    await caught_up(checkins, goals)
    await check_in(checkins.client, p.key_result_id, value=40)
    await synced(reviews, goals, checkins)
    r = await open_review(reviews, p.cycle_id)
    assert r.status_code == 201, r.text
    review = r.json()["id"]
    r = await open_review(reviews, p.cycle_id, "data")
    assert r.status_code == 201, r.text
    ready = r.json()["id"]
    r = await reviews.client.post(
        f"/v1/reviews/{ready}/carry-over", json={"objective_id": data_objective, "decision": "done"}
    )
    assert r.status_code == 200, r.text
    return World(
        goals=goals,
        checkins=checkins,
        reviews=reviews,
        cycle=p.cycle_id,
        next_cycle=next_cycle,
        objective=p.objective_id,
        kr=p.key_result_id,
        review=review,
        ready=ready,
    )


@pytest.fixture(scope="module", params=STORES)
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    base = tmp_path_factory.mktemp("reviews-auth")
    async with running(store_for(request, base), base, "goals", "checkins", "reviews") as s:
        yield await _build(s["goals"], s["checkins"], s["reviews"])


# --- tokens -------------------------------------------------------------------------------


UNKNOWN = str(uuid.uuid4())

# (method, path, body): each command would be accepted with a valid token.
ROUTES = {
    "open": ("POST", "/v1/reviews", {"cycle_id": "{cycle}", "team": "design"}),
    "open, invalid body": ("POST", "/v1/reviews", {"cycle_id": "Q1", "team": 5}),
    "open, unknown cycle": ("POST", "/v1/reviews", {"cycle_id": UNKNOWN, "team": "design"}),
    "score": ("PUT", "/v1/reviews/{review}/scores/{kr}", {"score": 0.9, "comment": "hijacked"}),
    "score, not a uuid": ("PUT", "/v1/reviews/{review}/scores/kr-1", {"score": 0.4}),
    "reflect": (
        "POST",
        "/v1/reviews/{review}/reflections",
        {"kind": "learned", "text": "Hijacked"},
    ),
    "reflect, unknown review": (
        "POST",
        f"/v1/reviews/{UNKNOWN}/reflections",
        {"kind": "learned", "text": "Hijacked"},
    ),
    "carry over": (
        "POST",
        "/v1/reviews/{review}/carry-over",
        {"objective_id": "{objective}", "decision": "carry_over", "next_cycle_id": "{next_cycle}"},
    ),
    "finalise": ("POST", "/v1/reviews/{ready}/finalise", None),
    "GET review": ("GET", "/v1/reviews/{review}", None),
    "GET unknown review": ("GET", f"/v1/reviews/{UNKNOWN}", None),
    "GET team review": ("GET", "/v1/cycles/{cycle}/teams/platform/review", None),
    "GET team review, not a uuid": ("GET", "/v1/cycles/Q1/teams/platform/review", None),
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
    before = await stored(world.reviews)
    async with anonymous(world.reviews) as client:
        for name, (method, path, body) in ROUTES.items():
            r = await request(client, world, method, path, body, headers=headers)
            try:
                assert_unauthorized(r)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None
    assert await stored(world.reviews) == before


async def test_idempotency_and_if_match_headers_do_not_stand_in_for_a_token(world):
    """A key or an ETag is no credential: refused with 401, whatever else is sent."""
    before = await stored(world.reviews)
    headers = {"Idempotency-Key": "k-1", "If-Match": '"1"', "X-Correlation-Id": "c-1"}
    async with anonymous(world.reviews) as client:
        for name, (method, path, body) in ROUTES.items():
            r = await request(client, world, method, path, body, headers=headers)
            try:
                assert_unauthorized(r)
            except AssertionError as e:
                raise AssertionError(f"{name}: {e}") from None
    assert await stored(world.reviews) == before


async def test_refused_requests_changed_nothing(world):
    """After the whole matrix, the reviews are as they were."""
    client = world.reviews.client
    r = await client.get(f"/v1/reviews/{world.review}")
    assert r.status_code == 200, r.text
    review = r.json()
    assert (review["version"], review["status"], review["reflections"]) == (1, "open", [])
    assert [(k["score"], k["comment"]) for k in review["key_results"]] == [(None, None)]
    assert [o["decision"] for o in review["objectives"]] == [None]
    r = await client.get(f"/v1/reviews/{world.ready}")
    assert (r.json()["version"], r.json()["status"]) == (2, "open")
    r = await client.get(f"/v1/cycles/{world.cycle}/teams/design/review")
    assert_problem(r, 404)


async def test_a_valid_token_passes_on_every_read(world):
    for name, (method, path, _) in ROUTES.items():
        if method == "GET" and "unknown" not in name and "not a uuid" not in name:
            r = await request(world.reviews.client, world, method, path, None)
            assert r.status_code == 200, (name, r.text)


async def test_a_token_just_expired_within_the_leeway_passes(world):
    headers = {"Authorization": f"Bearer {token('alice', ttl_s=-5)}"}
    r = await world.reviews.client.get(f"/v1/reviews/{world.review}", headers=headers)
    assert r.status_code == 200, r.text


async def test_actor_is_the_tokens_sub(world):
    """Each reflection records who wrote it: the token's sub, never a body field."""
    client = world.reviews.client
    path = f"/v1/reviews/{world.review}/reflections"
    r = await client.post(path, json={"kind": "went_well", "text": "Pairing"}, headers=auth("bob"))
    assert r.status_code == 200, r.text
    bobs = r.json()["reflection_id"]
    r = await client.post(
        path, json={"kind": "learned", "text": "Smaller PRs"}, headers=auth("carol")
    )
    assert r.status_code == 200, r.text
    carols = r.json()["reflection_id"]
    r = await client.post(
        path, json={"kind": "learned", "text": "x", "actor": "mallory"}, headers=auth("dave")
    )
    assert "actor" in [e["field"] for e in assert_problem(r, 422)["errors"]]

    r = await client.get(f"/v1/reviews/{world.review}")  # read as alice
    assert r.status_code == 200, r.text
    assert [(x["id"], x["actor"], x["kind"], x["text"]) for x in r.json()["reflections"]] == [
        (bobs, "bob", "went_well", "Pairing"),
        (carols, "carol", "learned", "Smaller PRs"),
    ]
    r = await client.get(f"/v1/cycles/{world.cycle}/teams/platform/review", headers=auth("erin"))
    assert [x["actor"] for x in r.json()["reflections"]] == ["bob", "carol"]


BODY_COMMANDS = {
    "open": ("POST", "/v1/reviews"),
    "score": ("PUT", "/v1/reviews/{review}/scores/{kr}"),
    "reflect": ("POST", "/v1/reviews/{review}/reflections"),
    "carry over": ("POST", "/v1/reviews/{review}/carry-over"),
}


@pytest.mark.parametrize(
    ("method", "path"), [pytest.param(*v, id=k) for k, v in BODY_COMMANDS.items()]
)
async def test_malformed_json_without_a_token_is_401(world, method, path):
    before = await stored(world.reviews)
    async with anonymous(world.reviews) as client:
        r = await client.request(
            method,
            world.fill(path),
            content=b'{"kind": ',
            headers={"Content-Type": "application/json"},
        )
    assert await stored(world.reviews) == before
    assert_unauthorized(r)


@pytest.mark.parametrize(
    ("method", "path"), [pytest.param(*v, id=k) for k, v in BODY_COMMANDS.items()]
)
async def test_a_body_over_the_limit_is_413_before_authentication(world, method, path):
    """The body limit is the outermost check: no token needed to be told the body is too big,
    and nothing is stored."""
    before = await stored(world.reviews)
    async with anonymous(world.reviews) as client:
        r = await client.request(
            method,
            world.fill(path),
            content=b"x" * (65 * 1024),
            headers={"Content-Type": "application/json"},
        )
    assert_problem(r, 413)
    assert await stored(world.reviews) == before
