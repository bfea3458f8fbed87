"""Small helpers for the HTTP tests of the goals service: create the aggregates, count what is
stored, check problem details."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

from shared.domain import CommandContext, NotFound
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


# --- commands sent with placeholders, refusals, replays ----------------------------------


class Fillable(Protocol):
    def fill(self, text: str) -> str: ...


async def send(
    svc: RunningService,
    ids: Fillable,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, Any] | None = None,
) -> httpx.Response:
    """Send `body` (as JSON) or `raw` to `svc`, with `ids` filled into its placeholders."""
    content = None
    if raw is not None:
        content = ids.fill(raw.decode()).encode()
    elif body is not None:
        content = ids.fill(json.dumps(body)).encode()
    return await svc.client.request(
        method,
        ids.fill(path),
        content=content,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


async def assert_refused(
    svc: RunningService,
    ids: Fillable,
    method: str,
    path: str,
    body: Any,
    field: str | None,
    status: int = 422,
    **kw: Any,
) -> dict[str, Any]:
    """The command is refused with a problem naming `field`, and nothing is stored."""
    before = await stored(svc)
    r = await send(svc, ids, method, path, body, **kw)
    problem = assert_problem(r, status)
    if field is not None:
        assert field in error_fields(problem), problem
    assert await stored(svc) == before
    return problem


def assert_replay(retry: httpx.Response, first: httpx.Response) -> None:
    assert (retry.status_code, retry.json()) == (first.status_code, first.json()), retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["etag"] == first.headers["etag"]
    assert retry.headers.get("location") == first.headers.get("location")


@contextlib.asynccontextmanager
async def writer_paused(svc: RunningService) -> AsyncIterator[Any]:
    """Hold the service's writer thread on a command of ours, so that the commands sent
    meanwhile queue up and are then run as one batch. Yields a coroutine function that waits
    until `n` commands are queued."""
    release = threading.Event()
    running = threading.Event()
    writer = svc.runtime.writer

    def hold(uow: Any) -> Any:
        running.set()
        release.wait(10)
        raise NotFound("nothing: this command only held the writer")

    context = CommandContext(
        actor="test", correlation_id="hold", causation_id="hold", roles=frozenset({"admin"})
    )
    held = asyncio.ensure_future(writer.execute(hold, context))
    await asyncio.to_thread(running.wait, 10)

    async def queued(n: int) -> None:
        for _ in range(500):
            if writer._queue.qsize() >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"only {writer._queue.qsize()} of {n} commands reached the writer")

    try:
        yield queued
    finally:
        release.set()
        with contextlib.suppress(NotFound):
            await held
