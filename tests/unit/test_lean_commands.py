"""Lean command routes (`shared.http.LeanCommand`): a plain, valid, authenticated command is
served without FastAPI's per-request machinery, and every other request gets exactly the answer
the FastAPI route gives. Each request is sent to two apps that differ only in the lean path."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from services.checkins.http import CheckInCreate
from shared.auth import SharedSecret, mint_token
from shared.domain import CommandContext, NotFound, RuleBroken
from shared.http import (
    BodyLimitMiddleware,
    Context,
    IdempotencyDep,
    IfMatch,
    LeanCommand,
    LeanCommandMiddleware,
    MinPosition,
    RequestContextMiddleware,
    command_response,
    install_error_handlers,
)
from shared.writer import CommandResult, Idempotency, StoreUnavailable

SECRET = "s" * 32
KR = "0b7d1e7a-1111-4a4a-8a8a-0123456789ab"
PATH = "/v1/key-results/{key_result_id}/check-ins"
TOKEN = mint_token(SECRET, "alice", roles=["admin"])
GOOD = {"value": 3, "confidence": 7, "note": "fine"}


def _work(
    calls: list[str],
    path: str,
    key_result_id: UUID,
    body: CheckInCreate,
    context: CommandContext,
    idem: Idempotency | None,
    expected: int | None,
) -> JSONResponse:
    calls.append(path)
    # Notes steer the outcome, so both paths' error handling is compared too.
    if body.note == "unknown":
        raise NotFound(f"No key result with id {key_result_id}")
    if body.note == "closed":
        raise RuleBroken("The cycle is closed", field="key_result_id")
    if body.note == "store down":
        raise StoreUnavailable("gone")
    if body.note == "bug":
        raise RuntimeError("a bug")
    answer = {
        "key_result_id": str(key_result_id),
        "value": body.value,
        "confidence": body.confidence,
        "blockers": body.blockers,
        "actor": context.actor,
        "correlation_id": context.correlation_id,
        "idempotency": idem.fingerprint if idem else None,
        "expected": expected,
    }
    return JSONResponse(answer, status_code=201, headers={"ETag": '"1"'})


def _app(lean: bool) -> tuple[FastAPI, list[str]]:
    calls: list[str] = []
    router = APIRouter()

    @router.post(PATH, status_code=201)
    async def create(
        key_result_id: UUID,
        body: CheckInCreate,
        context: Context,
        idem: IdempotencyDep,
        expected: IfMatch,
        min_position: MinPosition = None,
    ) -> JSONResponse:
        return _work(calls, "framework", key_result_id, body, context, idem, expected)

    async def handle(
        request: Request,
        ids: dict[str, UUID],
        body: Any,
        context: CommandContext,
        idem: Idempotency | None,
        expected: int | None,
    ) -> JSONResponse:
        return _work(calls, "lean", ids["key_result_id"], body, context, idem, expected)

    app = FastAPI()
    app.state.verifier = SharedSecret(SECRET)
    install_error_handlers(app)
    app.include_router(router)
    if lean:
        app.add_middleware(
            LeanCommandMiddleware,
            http=app,
            commands=[LeanCommand(PATH, CheckInCreate, handle)],
            routers=[router],
        )
    app.add_middleware(BodyLimitMiddleware, limit=65536)
    app.add_middleware(RequestContextMiddleware)
    return app, calls


async def _send(app: FastAPI, request: dict[str, Any]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        # Fixed request ids: otherwise each answer would carry new ones.
        headers = {
            "authorization": f"Bearer {TOKEN}",
            "content-type": "application/json",
            "x-request-id": "r-0",
            "x-correlation-id": "c-0",
        }
        headers.update(request.get("headers", {}))
        headers = {k: v for k, v in headers.items() if v is not None}
        body = request.get("content")
        if body is None:
            body = json.dumps(request.get("json", GOOD)).encode()
        return await client.request(
            request.get("method", "POST"),
            request.get("path", f"/v1/key-results/{KR}/check-ins"),
            content=body,
            headers=headers,
            params=request.get("params"),
        )


def _comparable(r: httpx.Response) -> tuple[int, str | None, Any, dict[str, str]]:
    kept = {"etag", "www-authenticate", "retry-after"}
    headers = {k: v for k, v in r.headers.items() if k in kept}
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return r.status_code, r.headers.get("content-type"), body, headers


LEAN_CASES = {
    "plain": {},
    "upper-case id": {"path": f"/v1/key-results/{KR.upper()}/check-ins"},
    "blockers": {"json": GOOD | {"blockers": ["  one ", "two"]}},
    "if-match": {"headers": {"if-match": '"3"'}},
    "weak if-match": {"headers": {"if-match": 'W/"4"'}},
    "idempotency key": {"headers": {"idempotency-key": "k-1"}},
    "request ids": {"headers": {"x-request-id": "r-1", "x-correlation-id": "c-1"}},
    "content-type in capitals": {"headers": {"content-type": "Application/JSON"}},
    "rule broken": {"json": GOOD | {"note": "closed"}},
    "not found": {"json": GOOD | {"note": "unknown"}},
    "store down": {"json": GOOD | {"note": "store down"}},
    "a bug": {"json": GOOD | {"note": "bug"}},
}

FRAMEWORK_CASES = {
    "no token": {"headers": {"authorization": None}},
    "bad token": {"headers": {"authorization": "Bearer nope"}},
    "token of another secret": {
        "headers": {"authorization": f"Bearer {mint_token('t' * 32, 'eve')}"}
    },
    "not bearer": {"headers": {"authorization": "Basic YTpi"}},
    "malformed json": {"content": b'{"value": 3,'},
    "malformed json, no token": {"content": b"{", "headers": {"authorization": None}},
    "empty body": {"content": b""},
    "not utf-8": {"content": b'{"value": "\xff"}'},
    "a list": {"json": [1, 2]},
    "missing field": {"json": {"value": 3}},
    "unknown field": {"json": GOOD | {"colour": "red"}},
    "confidence too high": {"json": GOOD | {"confidence": 11}},
    "confidence a float": {"json": GOOD | {"confidence": 7.0}},
    "value a string": {"json": GOOD | {"value": "3"}},
    "value NaN": {"content": b'{"value": NaN, "confidence": 1}'},
    "value too large": {"json": GOOD | {"value": 1e16}},
    "NUL in note": {"json": GOOD | {"note": "a\x00b"}},
    "note too long": {"json": GOOD | {"note": "x" * 5001}},
    "too many blockers": {"json": GOOD | {"blockers": ["b"] * 1000}},
    "no content-type": {"headers": {"content-type": None}},
    "text content-type": {"headers": {"content-type": "text/plain"}},
    "json with charset": {"headers": {"content-type": "application/json; charset=utf-8"}},
    "vendor json": {"headers": {"content-type": "application/vnd.okr+json"}},
    "id not a uuid": {"path": "/v1/key-results/42/check-ins"},
    "id without hyphens": {"path": f"/v1/key-results/{KR.replace('-', '')}/check-ins"},
    "trailing slash": {"path": f"/v1/key-results/{KR}/check-ins/"},
    "min_position": {"params": {"min_position": "goals:1"}},
    "bad min_position": {"params": {"min_position": "nowhere"}},
    "bad request id": {"headers": {"x-request-id": "has space"}},
    "bad idempotency key": {"headers": {"idempotency-key": "k" * 200}},
    "bad if-match": {"headers": {"if-match": "three"}},
    "bad if-match, bad body": {"headers": {"if-match": "x"}, "json": {"value": "x"}},
    "GET": {"method": "GET"},
    "PUT": {"method": "PUT"},
    "nested too deep to parse": {"content": b"[" * 10_000 + b"]" * 10_000},
    "a field nested too deep": {
        "content": b'{"value": 1, "confidence": 1, "note": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    },
    "too large": {"content": b'{"note": "' + b"x" * 70_000 + b'"}'},
}


@pytest.mark.parametrize("case", list(LEAN_CASES), ids=list(LEAN_CASES))
async def test_a_plain_command_is_served_lean_with_the_same_answer(case: str) -> None:
    lean, lean_calls = _app(lean=True)
    framework, framework_calls = _app(lean=False)
    request = LEAN_CASES[case]
    answer = await _send(lean, request)
    assert lean_calls == ["lean"]
    assert _comparable(answer) == _comparable(await _send(framework, request))
    assert framework_calls == ["framework"]


@pytest.mark.parametrize("case", list(FRAMEWORK_CASES), ids=list(FRAMEWORK_CASES))
async def test_anything_else_is_answered_by_the_framework(case: str) -> None:
    lean, lean_calls = _app(lean=True)
    framework, _ = _app(lean=False)
    request = FRAMEWORK_CASES[case]
    answer = await _send(lean, request)
    assert "lean" not in lean_calls
    assert _comparable(answer) == _comparable(await _send(framework, request))


async def test_the_lean_answer_carries_the_request_ids() -> None:
    lean, _ = _app(lean=True)
    answer = await _send(lean, {"headers": {"x-request-id": "r-9", "x-correlation-id": "c-9"}})
    assert answer.status_code == 201
    assert answer.headers["x-request-id"] == "r-9"
    assert answer.headers["x-correlation-id"] == "c-9"
    assert answer.json()["correlation_id"] == "c-9"


def test_a_lean_command_needs_its_route() -> None:
    app = FastAPI()

    async def handle(*_: Any) -> JSONResponse:
        return JSONResponse({})

    with pytest.raises(RuntimeError, match="no route POST"):
        LeanCommandMiddleware(app, app, [LeanCommand(PATH, CheckInCreate, handle)], [])


@pytest.mark.parametrize("replayed", [False, True])
def test_a_command_answers_the_same_json_and_headers_as_the_framework_would(
    replayed: bool,
) -> None:
    # `command_response` renders with orjson: byte for byte what `JSONResponse` renders for
    # the values a command answers with, non-ASCII text and fractions included.
    body = {
        "id": "0193a1b2-3c4d-7e5f-8a9b-0c1d2e3f4a5b",
        "key_result_id": KR,
        "number": 12,
        "value": 42.125,
        "confidence": 7,
        "note": "Umsatz über Plan, 🚀",
        "blockers": ["vendor", "hiring"],
        "status": None,
        "done": False,
        "version": 13,
        "position": "checkins:12345",
    }
    result = CommandResult(201, body, replayed=replayed)

    answer = command_response(result, "/v1/check-ins/x")
    framework = JSONResponse(body, status_code=201)

    assert answer.body == framework.body
    assert answer.status_code == 201
    headers = dict(answer.headers)
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(framework.body))
    assert headers["etag"] == '"13"'
    assert headers["location"] == "/v1/check-ins/x"
    assert ("idempotent-replayed" in headers) is replayed
