"""Small helpers for the HTTP tests of the goals service: create the aggregates, count what is
stored, check problem details."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.support import RunningService

PROBLEM_JSON = "application/problem+json"


# --- what is stored -----------------------------------------------------------------------


async def stored(svc: RunningService) -> int:
    """How many events the service has stored (the highest notification id)."""
    n = await asyncio.to_thread(svc.runtime.app.recorder.max_notification_id)
    return int(n or 0)


def position(n: int) -> str:
    return f"goals:{n}"


def etag(version: int) -> str:
    return f'"{version}"'


# --- answers ------------------------------------------------------------------------------


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    """`r` is an RFC 9457 problem with `status`; returns its body."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].split(";")[0].strip() == PROBLEM_JSON, r.headers
    body = r.json()
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def error_fields(problem: dict[str, Any]) -> list[str]:
    return [e["field"] for e in problem.get("errors", [])]


def assert_answer(r: httpx.Response, status: int, version: int) -> dict[str, Any]:
    """A command answer: {id, version, position "goals:N"} and ETag equal to the version."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"id", "version", "position"}, body
    uuid.UUID(body["id"])
    assert body["version"] == version, body
    assert isinstance(body["position"], str) and body["position"].startswith("goals:"), body
    assert int(body["position"].removeprefix("goals:")) >= 1
    assert r.headers["etag"] == etag(version)
    return body


# --- creating things ----------------------------------------------------------------------


def cycle_body(**overrides: Any) -> dict[str, Any]:
    return {"name": "Q1 2027", "starts_on": "2027-01-01", "ends_on": "2027-03-31", **overrides}


def objective_body(cycle_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "cycle_id": cycle_id,
        "title": "Delight our customers",
        "description": "Make the product a joy to use",
        "owner": "alice",
        "team": "platform",
        **overrides,
    }


def key_result_body(**overrides: Any) -> dict[str, Any]:
    return {
        "title": "Raise NPS",
        "kind": "number",
        "unit": "points",
        "start": 20,
        "target": 50,
        "weight": 2,
        "owner": "bob",
        **overrides,
    }


async def create_cycle(client: httpx.AsyncClient, *, start: bool = True, **overrides: Any) -> str:
    r = await client.post("/v1/cycles", json=cycle_body(**overrides))
    assert r.status_code == 201, r.text
    cycle_id: str = r.json()["id"]
    if start:
        r = await client.post(f"/v1/cycles/{cycle_id}/start")
        assert r.status_code == 200, r.text
    return cycle_id


async def close_cycle(client: httpx.AsyncClient, cycle_id: str) -> None:
    r = await client.post(f"/v1/cycles/{cycle_id}/close", json={"reason": "quarter over"})
    assert r.status_code == 200, r.text


async def create_objective(client: httpx.AsyncClient, cycle_id: str, **overrides: Any) -> str:
    r = await client.post("/v1/objectives", json=objective_body(cycle_id, **overrides))
    assert r.status_code == 201, r.text
    objective_id: str = r.json()["id"]
    return objective_id


async def add_key_result(client: httpx.AsyncClient, objective_id: str, **overrides: Any) -> str:
    r = await client.post(
        f"/v1/objectives/{objective_id}/key-results", json=key_result_body(**overrides)
    )
    assert r.status_code == 201, r.text
    key_result_id: str = r.json()["id"]
    return key_result_id


async def archive_objective(client: httpx.AsyncClient, objective_id: str) -> None:
    r = await client.post(f"/v1/objectives/{objective_id}/archive", json={"reason": "dropped"})
    assert r.status_code == 200, r.text


async def remove_key_result(client: httpx.AsyncClient, key_result_id: str) -> None:
    r = await client.post(f"/v1/key-results/{key_result_id}/remove", json={"reason": "no data"})
    assert r.status_code == 200, r.text


async def get_json(client: httpx.AsyncClient, path: str) -> dict[str, Any]:
    r = await client.get(path)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert r.headers["etag"] == etag(body["version"])
    return body


def anonymous(svc: RunningService) -> httpx.AsyncClient:
    """A client for `svc` that sends no Authorization header."""
    return httpx.AsyncClient(base_url=svc.base_url, timeout=20)
