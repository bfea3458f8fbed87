"""Authentication: every command and every read needs a valid HS256 bearer token (401 else),
and a refused request stores nothing."""

from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest

from tests.http.helpers import (
    anonymous,
    assert_problem,
    create_cycle,
    create_objective,
    cycle_body,
    get_json,
    stored,
)
from tests.support import SECRET, token


def _b64url(data: dict) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def alg_none_token() -> str:
    now = int(time.time())
    header = _b64url({"alg": "none", "typ": "JWT"})
    payload = _b64url({"sub": "alice", "iat": now, "exp": now + 3600})
    return f"{header}.{payload}."


def no_sub_token() -> str:
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 3600}, SECRET, algorithm="HS256")


def no_exp_token() -> str:
    return jwt.encode({"sub": "alice", "iat": int(time.time())}, SECRET, algorithm="HS256")


def wrong_key_token() -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": "alice", "iat": now, "exp": now + 3600},
        "another-secret-that-is-long-enough-for-hs256-xyz",
        algorithm="HS256",
    )


BAD_AUTHORIZATION = {
    "malformed: Basic scheme": lambda: "Basic YWxpY2U6c2VjcmV0",
    "malformed: Bearer without token": lambda: "Bearer",
    "malformed: token alone, no scheme": lambda: token("alice"),
    "malformed: not a JWT": lambda: "Bearer not-a-jwt",
    "wrong key": lambda: f"Bearer {wrong_key_token()}",
    "alg none": lambda: f"Bearer {alg_none_token()}",
    "expired": lambda: f"Bearer {token('alice', ttl_s=-100)}",
    "no sub": lambda: f"Bearer {no_sub_token()}",
    "no exp": lambda: f"Bearer {no_exp_token()}",
    "blank sub": lambda: f"Bearer {token('   ')}",
}


def assert_unauthorized(r) -> None:
    assert_problem(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_no_token(goals):
    async with anonymous(goals) as client:
        r = await client.post("/v1/cycles", json=cycle_body())
        assert_unauthorized(r)
        assert await stored(goals) == 0


@pytest.mark.parametrize("case", list(BAD_AUTHORIZATION))
async def test_bad_token_is_refused_and_stores_nothing(goals, case):
    headers = {"Authorization": BAD_AUTHORIZATION[case]()}
    r = await goals.client.post("/v1/cycles", json=cycle_body(), headers=headers)
    assert_unauthorized(r)
    assert await stored(goals) == 0


async def test_bad_tokens_on_every_kind_of_route(goals):
    """Commands on existing aggregates and reads are protected too; nothing changes."""
    cycle_id = await create_cycle(goals.client, start=False)
    objective_id = await create_objective(goals.client, cycle_id)
    before = await stored(goals)
    requests = [
        ("POST", f"/v1/cycles/{cycle_id}/start", None),
        ("POST", f"/v1/cycles/{cycle_id}/close", {"reason": "x"}),
        ("GET", f"/v1/cycles/{cycle_id}", None),
        ("PATCH", f"/v1/objectives/{objective_id}", {"title": "Hijacked"}),
        ("POST", f"/v1/objectives/{objective_id}/archive", None),
        ("GET", f"/v1/objectives/{objective_id}", None),
        ("GET", f"/v1/key-results/{uuid.uuid4()}", None),
    ]
    async with anonymous(goals) as client:
        for method, path, body in requests:
            assert_unauthorized(await client.request(method, path, json=body))
            bad = {"Authorization": f"Bearer {alg_none_token()}"}
            assert_unauthorized(await client.request(method, path, json=body, headers=bad))
    assert await stored(goals) == before
    assert (await get_json(goals.client, f"/v1/cycles/{cycle_id}"))["status"] == "scheduled"
    assert (await get_json(goals.client, f"/v1/objectives/{objective_id}"))["version"] == 1


async def test_actor_comes_from_sub(goals):
    headers = {"Authorization": f"Bearer {token('bob')}"}
    r = await goals.client.post("/v1/cycles", json=cycle_body(), headers=headers)
    assert r.status_code == 201, r.text
    notifications = goals.runtime.app.recorder.select_notifications(1, 1)
    event = goals.runtime.app.mapper.to_domain_event(notifications[0])
    assert str(event.originator_id) == r.json()["id"]
    assert event.actor == "bob"
