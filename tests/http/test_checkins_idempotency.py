"""Idempotency-Key and If-Match on the check-in service: a retry answers the first answer and
records nothing twice (also concurrently, and across a restart); keys belong to their actor;
If-Match guards the key result's progress and the meeting."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from services.checkins.main import create_app as create_checkins
from tests.http.checkins_helpers import check_in, check_in_body, meeting_body, plan
from tests.http.helpers import (
    add_key_result,
    assert_problem,
    assert_replay,
    etag,
    stored,
    writer_paused,
)
from tests.support import RunningService, auth, serve

TODAY = datetime.now(UTC).date()


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"key-{uuid.uuid4()}"}


def meeting(cycle_id: str, days_ago: int = 0, **overrides: Any) -> dict[str, Any]:
    held_on = (TODAY - timedelta(days=days_ago)).isoformat()
    return meeting_body(cycle_id, held_on=held_on, **overrides)


async def read(svc: RunningService, path: str) -> dict[str, Any]:
    r = await svc.client.get(path)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def assert_answer(r: httpx.Response, status: int, version: int, position: int) -> dict[str, Any]:
    """A command answer of the check-in service, and its ETag."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["version"] == version, body
    assert body["position"] == f"checkins:{position}", body
    assert r.headers["etag"] == etag(version)
    return body


# --- retries ------------------------------------------------------------------------------


async def test_retried_commands_answer_the_first_answer(goals, checkins):
    p = await plan(goals, checkins)
    client = checkins.client

    # A check-in: the retry would otherwise be a second check-in.
    path = f"/v1/key-results/{p.key_result_id}/check-ins"
    headers = key()
    first = await client.post(path, json=check_in_body(), headers=headers)
    body = assert_answer(first, 201, 2, 2)
    assert "idempotent-replayed" not in first.headers
    assert first.headers["location"] == f"/v1/check-ins/{body['id']}"
    assert body["key_result_id"] == p.key_result_id
    retry = await client.post(path, json=check_in_body(), headers=headers)
    assert_replay(retry, first)
    assert await stored(checkins) == 2
    progress = await read(checkins, f"/v1/key-results/{p.key_result_id}/progress")
    assert (progress["version"], progress["check_in_count"]) == (2, 1)
    check_in_id = body["id"]

    # A correction: the retry would otherwise be refused, the value being already 35.
    path = f"/v1/check-ins/{check_in_id}/correct"
    correction = {"value": 35, "reason": "typo"}
    headers = key()
    first = await client.post(path, json=correction, headers=headers)
    assert assert_answer(first, 200, 3, 3)["id"] == check_in_id
    assert "location" not in first.headers
    retry = await client.post(path, json=correction, headers=headers)
    assert_replay(retry, first)
    assert_problem(await client.post(path, json=correction), 409)
    assert await stored(checkins) == 3
    assert len((await read(checkins, f"/v1/check-ins/{check_in_id}"))["corrections"]) == 1

    # A meeting: the retry would otherwise be refused as a second meeting on that date.
    path = "/v1/teams/platform/check-in-meetings"
    headers = key()
    first = await client.post(path, json=meeting(p.cycle_id), headers=headers)
    meeting_id = assert_answer(first, 201, 1, 4)["id"]
    assert first.headers["location"] == f"/v1/check-in-meetings/{meeting_id}"
    retry = await client.post(path, json=meeting(p.cycle_id), headers=headers)
    assert_replay(retry, first)
    assert_problem(await client.post(path, json=meeting(p.cycle_id)), 409)
    assert await stored(checkins) == 4

    # An amendment: the retry would otherwise answer "nothing changed" (position null).
    path = f"/v1/check-in-meetings/{meeting_id}"
    amendment = {"wins": ["Shipped the export too"], "reason": "forgot one"}
    headers = key()
    first = await client.patch(path, json=amendment, headers=headers)
    assert assert_answer(first, 200, 2, 5)["id"] == meeting_id
    retry = await client.patch(path, json=amendment, headers=headers)
    assert_replay(retry, first)
    assert await stored(checkins) == 5
    held = await read(checkins, path)
    assert (held["version"], held["amendments"]) == (2, 1)


async def test_same_key_with_another_body_or_path_is_422(goals, checkins):
    p = await plan(goals, checkins)
    other_kr = await add_key_result(goals.client, p.objective_id, title="Other")
    client = checkins.client
    check_in_id = await check_in(client, p.key_result_id)
    r = await client.post("/v1/teams/platform/check-in-meetings", json=meeting(p.cycle_id, 1))
    meeting_id = r.json()["id"]
    kr_path = f"/v1/key-results/{p.key_result_id}/check-ins"
    # (method, path, first body, then another body or another path)
    cases = [
        ("POST", kr_path, check_in_body(), kr_path, check_in_body(value=31)),
        ("POST", kr_path, check_in_body(), kr_path, check_in_body(note="other")),
        (
            "POST",
            kr_path,
            check_in_body(),
            f"/v1/key-results/{other_kr}/check-ins",
            check_in_body(),
        ),
        (
            "POST",
            f"/v1/check-ins/{check_in_id}/correct",
            {"confidence": 3, "reason": "x"},
            f"/v1/check-ins/{check_in_id}/correct",
            {"confidence": 2, "reason": "x"},
        ),
        (
            "POST",
            "/v1/teams/platform/check-in-meetings",
            meeting(p.cycle_id, 2),
            "/v1/teams/platform/check-in-meetings",
            meeting(p.cycle_id, 3),
        ),
        (
            "PATCH",
            f"/v1/check-in-meetings/{meeting_id}",
            {"wins": ["A"], "reason": "x"},
            f"/v1/check-in-meetings/{meeting_id}",
            {"wins": ["B"], "reason": "x"},
        ),
    ]
    for method, path, body, other_path, other_body in cases:
        headers = key()
        first = await client.request(method, path, json=body, headers=headers)
        assert first.status_code in (200, 201), first.text
        before = await stored(checkins)
        r = await client.request(method, other_path, json=other_body, headers=headers)
        problem = assert_problem(r, 422)
        assert problem["type"].endswith("idempotency-key-reused"), problem
        assert "Idempotency-Key" in problem["detail"]
        assert await stored(checkins) == before
        # The first request's retry is still answered.
        retry = await client.request(method, path, json=body, headers=headers)
        assert_replay(retry, first)
    progress = await read(checkins, f"/v1/key-results/{other_kr}/progress")
    assert progress["check_in_count"] == 0


async def test_keys_belong_to_their_actor(goals, checkins):
    p = await plan(goals, checkins)
    client = checkins.client
    path = f"/v1/key-results/{p.key_result_id}/check-ins"
    headers = key()
    alice = await client.post(path, json=check_in_body(), headers=headers)
    assert_answer(alice, 201, 2, 2)
    bob = await client.post(path, json=check_in_body(), headers={**headers, **auth("bob")})
    assert_answer(bob, 201, 3, 3)
    assert "idempotent-replayed" not in bob.headers
    assert bob.json()["id"] != alice.json()["id"]
    assert await stored(checkins) == 3

    # Each one's retry answers their own first answer.
    again = await client.post(path, json=check_in_body(), headers={**headers, **auth("bob")})
    assert_replay(again, bob)
    again = await client.post(path, json=check_in_body(), headers=headers)
    assert_replay(again, alice)
    assert await stored(checkins) == 3
    page = await read(checkins, path)
    assert [(e["number"], e["actor"]) for e in page["items"]] == [(2, "bob"), (1, "alice")]


async def test_refused_command_is_not_remembered(goals, checkins):
    """A refused command stores no answer under its key: once fixed, the retry goes through."""
    p = await plan(goals, checkins)
    client = checkins.client
    path = f"/v1/key-results/{p.key_result_id}/check-ins"
    headers = key()
    r = await client.post(path, json=check_in_body(), headers={**headers, "If-Match": '"5"'})
    assert_problem(r, 412)
    r = await client.post(path, json=check_in_body(confidence=11), headers=headers)
    assert_problem(r, 422)
    assert await stored(checkins) == 0
    r = await client.post(path, json=check_in_body(), headers={**headers, "If-Match": '"0"'})
    first = r
    assert_answer(first, 201, 2, 2)
    assert "idempotent-replayed" not in first.headers
    retry = await client.post(path, json=check_in_body(), headers=headers)
    assert_replay(retry, first)
    assert await stored(checkins) == 2


# --- concurrency --------------------------------------------------------------------------


async def test_concurrent_identical_requests_store_once(goals, checkins):
    p = await plan(goals, checkins)
    client = checkins.client
    requests = [
        (
            "POST",
            f"/v1/key-results/{p.key_result_id}/check-ins",
            check_in_body(),
            2,  # the key result's progress is opened, then checked in on
        ),
        ("POST", "/v1/teams/platform/check-in-meetings", meeting(p.cycle_id), 1),
    ]
    for method, path, body, events in requests:
        headers = key()
        before = await stored(checkins)
        answers = await asyncio.gather(
            *(client.request(method, path, json=body, headers=headers) for _ in range(10))
        )
        assert [a.status_code for a in answers] == [201] * 10, [a.text for a in answers]
        assert all(a.json() == answers[0].json() for a in answers)
        assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 9
        assert answers[0].json()["position"] == f"checkins:{before + events}"
        assert await stored(checkins) == before + events
    progress = await read(checkins, f"/v1/key-results/{p.key_result_id}/progress")
    assert progress["check_in_count"] == 1


async def test_identical_requests_in_one_writer_batch_store_once(goals, checkins):
    """The same, with every request made to wait in one batch of the writer: the first runs,
    the others repeat its answer."""
    p = await plan(goals, checkins)
    client = checkins.client
    path = f"/v1/key-results/{p.key_result_id}/check-ins"
    headers = key()
    async with writer_paused(checkins) as queued:
        sent = [
            asyncio.ensure_future(client.post(path, json=check_in_body(), headers=headers))
            for _ in range(5)
        ]
        await queued(5)
    answers = await asyncio.gather(*sent)
    assert [a.status_code for a in answers] == [201] * 5, [a.text for a in answers]
    assert len({a.text for a in answers}) == 1
    assert sum(a.headers.get("idempotent-replayed") == "true" for a in answers) == 4
    assert await stored(checkins) == 2


async def test_concurrent_requests_with_one_key_and_different_bodies(goals, checkins):
    p = await plan(goals, checkins)
    headers = key()
    path = f"/v1/key-results/{p.key_result_id}/check-ins"
    answers = await asyncio.gather(
        *(
            checkins.client.post(path, json=check_in_body(value=30 + i), headers=headers)
            for i in range(6)
        )
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [201] + [422] * 5, [a.text for a in answers]
    assert await stored(checkins) == 2


async def test_concurrent_check_ins_with_distinct_keys_all_apply(goals, checkins):
    p = await plan(goals, checkins)
    path = f"/v1/key-results/{p.key_result_id}/check-ins"
    answers = await asyncio.gather(
        *(checkins.client.post(path, json=check_in_body(value=i), headers=key()) for i in range(10))
    )
    assert [a.status_code for a in answers] == [201] * 10, [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 10
    assert sorted(a.json()["version"] for a in answers) == list(range(2, 12))
    assert await stored(checkins) == 11
    page = await read(checkins, f"{path}?limit=200")
    assert [e["number"] for e in page["items"]] == list(range(10, 0, -1))
    assert sorted(e["value"] for e in page["items"]) == [float(i) for i in range(10)]


def _stuck_in_the_writer(task: asyncio.Task[Any]) -> bool:
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        code = coro.cr_code
        if code.co_name == "execute" and code.co_filename.endswith("writer.py"):
            return True
        coro = coro.cr_await
    return False


async def cancel_requests_stuck_in_the_writer() -> None:
    """Cancel the server-side request tasks still awaiting `CommandWriter.execute`, so that the
    service can stop."""
    for _ in range(100):
        stuck = [t for t in asyncio.all_tasks() if not t.done() and _stuck_in_the_writer(t)]
        if not stuck:
            return
        for task in stuck:
            task.cancel()
        await asyncio.sleep(0.02)


async def test_refused_request_repeated_in_one_writer_batch_answers_every_copy(goals, checkins):
    p = await plan(goals, checkins)
    client = checkins.client
    path = f"/v1/key-results/{p.key_result_id}/check-ins"
    headers = {**key(), "If-Match": '"7"'}  # refused: the key result has no check-in yet
    try:
        async with writer_paused(checkins) as queued:
            sent = [
                asyncio.ensure_future(client.post(path, json=check_in_body(), headers=headers))
                for _ in range(3)
            ]
            await queued(3)
        done, pending = await asyncio.wait(sent, timeout=1)
        for task in pending:
            task.cancel()
        assert not pending, f"{len(pending)} of 3 identical refused requests were never answered"
        for task in done:
            assert_problem(task.result(), 412)
    finally:
        await cancel_requests_stuck_in_the_writer()
    assert await stored(checkins) == 0


# --- If-Match -----------------------------------------------------------------------------


async def test_if_match_guards_the_progress_and_the_meeting(goals, checkins):
    p = await plan(goals, checkins)
    client = checkins.client
    path = f"/v1/key-results/{p.key_result_id}/check-ins"

    async def refused(method: str, url: str, body: Any, if_match: str, current: int) -> None:
        before = await stored(checkins)
        r = await client.request(method, url, json=body, headers={"If-Match": if_match})
        problem = assert_problem(r, 412)
        assert r.headers["etag"] == etag(current), r.headers
        assert str(current) in problem["detail"], problem
        assert await stored(checkins) == before

    # Before the first check-in there is no progress: only "0" matches.
    await refused("POST", path, check_in_body(), '"1"', 0)
    first = await client.post(path, json=check_in_body(), headers={"If-Match": '"0"'})
    check_in_id = assert_answer(first, 201, 2, 2)["id"]
    await refused("POST", path, check_in_body(), '"0"', 2)
    await refused("POST", path, check_in_body(), '"3"', 2)
    r = await client.post(path, json=check_in_body(value=33), headers={"If-Match": '"2"'})
    assert_answer(r, 201, 3, 3)

    correct = f"/v1/check-ins/{check_in_id}/correct"
    await refused("POST", correct, {"value": 31, "reason": "x"}, '"2"', 3)
    r = await client.post(correct, json={"value": 31, "reason": "x"}, headers={"If-Match": '"3"'})
    assert_answer(r, 200, 4, 4)
    r = await client.post(correct, json={"value": 32, "reason": "x"}, headers={"If-Match": 'W/"4"'})
    assert_answer(r, 200, 5, 5)
    r = await client.post(correct, json={"value": 33, "reason": "x"}, headers={"If-Match": "*"})
    assert_answer(r, 200, 6, 6)
    r = await client.get(f"/v1/key-results/{p.key_result_id}/progress")
    assert r.headers["etag"] == etag(6)
    r = await client.get(f"/v1/check-ins/{check_in_id}")
    assert r.headers["etag"] == etag(6)
    assert [c["value"] for c in r.json()["corrections"]] == [31.0, 32.0, 33.0]

    r = await client.post("/v1/teams/platform/check-in-meetings", json=meeting(p.cycle_id))
    meeting_id = assert_answer(r, 201, 1, 7)["id"]
    amend = f"/v1/check-in-meetings/{meeting_id}"
    await refused("PATCH", amend, {"wins": ["A"], "reason": "x"}, '"0"', 1)
    await refused("PATCH", amend, {"wins": ["A"], "reason": "x"}, '"2"', 1)
    r = await client.patch(amend, json={"wins": ["A"], "reason": "x"}, headers={"If-Match": '"1"'})
    assert_answer(r, 200, 2, 8)
    await refused("PATCH", amend, {"wins": ["B"], "reason": "x"}, '"1"', 2)
    held = await read(checkins, amend)
    assert (held["version"], held["wins"]) == (2, ["A"])
    assert await stored(checkins) == 8


# --- across a restart ---------------------------------------------------------------------


async def test_retry_after_restart_answers_the_same(goals, checkins_settings):
    check_in_key, meeting_key = key(), key()
    async with serve(create_checkins(checkins_settings)) as svc:
        p = await plan(goals, svc)
        path = f"/v1/key-results/{p.key_result_id}/check-ins"
        first = await svc.client.post(path, json=check_in_body(), headers=check_in_key)
        assert_answer(first, 201, 2, 2)
        held = await svc.client.post(
            "/v1/teams/platform/check-in-meetings", json=meeting(p.cycle_id), headers=meeting_key
        )
        assert_answer(held, 201, 1, 3)

    async with serve(create_checkins(checkins_settings)) as svc:
        retry = await svc.client.post(path, json=check_in_body(), headers=check_in_key)
        assert_replay(retry, first)
        retry = await svc.client.post(
            "/v1/teams/platform/check-in-meetings", json=meeting(p.cycle_id), headers=meeting_key
        )
        assert_replay(retry, held)
        other = await svc.client.post(path, json=check_in_body(value=1), headers=check_in_key)
        assert_problem(other, 422)
        assert await stored(svc) == 3
        progress = await read(svc, f"/v1/key-results/{p.key_result_id}/progress")
        assert progress["check_in_count"] == 1
