"""HTTP conventions shared by every service (DESIGN §6).

Problem details (RFC 9457) for every failure, bearer-token authentication, the command
context from request headers, durable idempotency keys, ETag / If-Match, a body limit, and
the `/healthz`, `/readyz` and `/metrics` endpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from eventsourcing.persistence import InterfaceError, OperationalError, PersistenceError
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, StringConstraints
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.auth import AuthError, Principal, TokenVerifier, bearer_token
from shared.domain import (
    CommandContext,
    DomainError,
    Forbidden,
    InvalidValue,
    NotFound,
    NotYetKnown,
    RuleBroken,
    VersionMismatch,
)
from shared.logs import bind
from shared.store import StoreUnreachable
from shared.telemetry import HTTP_LATENCY, HTTP_REQUESTS
from shared.writer import (
    CommandResult,
    Conflict,
    Idempotency,
    IdempotencyKeyReused,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://okr.example/problems/"
_HEADER_VALUE = re.compile(r"^[\x21-\x7e]{1,128}$")


# --- problem details ----------------------------------------------------------------------

# What routes document besides their success answer.
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {PROBLEM_JSON: {}}}
    for code, text in {
        400: "Malformed JSON, or a JSON body missing where the request needs one",
        401: "Missing or invalid bearer token",
        403: "A command the token's roles and teams do not allow (names the permission)",
        404: "Unknown id",
        409: "A rule is broken by the current state, or a referenced id is not known yet",
        412: "If-Match does not match the current version",
        413: "Body too large",
        422: "Invalid input",
        503: "The event store is unreachable; nothing was recorded (retry after Retry-After)",
    }.items()
}


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    kind: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + (kind or title.lower().replace(" ", "-")),
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = errors
    body.update(extensions)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[0] if loc else "body")


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    # FastAPI reads the body before any dependency runs: authenticate first, so a caller
    # without a valid token learns nothing about what the endpoint would accept.
    if request.url.path.startswith("/v1/"):
        try:
            token = bearer_token(request.headers.get("authorization"))
            await run_in_threadpool(_verifier(request).verify, token)
        except AuthError as e:
            return await _auth_error(request, e)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return problem(400, "Malformed JSON", "The request body is not valid JSON")
    if any(e.get("loc", ("",))[0] == "body" and len(e.get("loc", ())) == 1 for e in errors):
        # The body as a whole is missing or of the wrong type.
        if any(e.get("type") == "missing" for e in errors):
            return problem(400, "Missing body", "This request needs a JSON body")
    fields = [
        {"field": _field_path(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")}
        for e in errors
    ]
    detail = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    return problem(422, "Invalid request", detail, kind="validation", errors=fields)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
    return problem(
        exc.status_code,
        titles.get(exc.status_code, "HTTP error"),
        str(exc.detail),
        headers=dict(exc.headers or {}),
    )


async def _auth_error(request: Request, exc: AuthError) -> Response:
    return problem(
        401, "Unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer realm="okr"'}
    )


def _domain_problem(exc: DomainError) -> Response:
    errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
    if isinstance(exc, Forbidden):
        return problem(403, "Forbidden", exc.detail, kind="forbidden", permission=exc.permission)
    if isinstance(exc, NotFound):
        return problem(404, "Not found", exc.detail)
    if isinstance(exc, VersionMismatch):
        return problem(412, "Precondition failed", exc.detail, headers={"ETag": etag(exc.actual)})
    if isinstance(exc, InvalidValue | IdempotencyKeyReused):
        kind = "idempotency-key-reused" if isinstance(exc, IdempotencyKeyReused) else "validation"
        return problem(422, "Invalid request", exc.detail, kind=kind, errors=errors)
    if isinstance(exc, NotYetKnown):
        return problem(
            409, "Not yet known", exc.detail, kind="not-yet-known", headers={"Retry-After": "1"}
        )
    if isinstance(exc, Conflict):
        return problem(409, "Conflict", exc.detail, kind="conflict")
    if isinstance(exc, RuleBroken):
        return problem(409, "Rule broken", exc.detail, kind="rule-broken", errors=errors)
    return problem(400, "Bad request", exc.detail, errors=errors)


async def _domain_error(request: Request, exc: DomainError) -> Response:
    return _domain_problem(exc)


async def _store_unavailable(request: Request, exc: StoreUnavailable) -> Response:
    log.warning("store unavailable: %s", exc)
    return problem(
        503,
        "Service unavailable",
        "The event store is unreachable; nothing was recorded. Retry later.",
        headers={"Retry-After": "1"},
    )


async def _store_unreachable(request: Request, exc: PersistenceError) -> Response:
    # A read (or a check before a command) that found the database gone: the same answer as a
    # command's, since retrying is all a client can do. Bugs (ProgrammingError...) stay 500s.
    log.warning("store unreachable on %s %s: %s", request.method, request.url.path, exc)
    return problem(
        503,
        "Service unavailable",
        "The event store is unreachable; nothing was recorded. Retry later.",
        headers={"Retry-After": "1"},
    )


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal error", "An unexpected error occurred; nothing was recorded")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(AuthError, _auth_error)  # type: ignore[arg-type]
    app.add_exception_handler(DomainError, _domain_error)  # type: ignore[arg-type]
    app.add_exception_handler(StoreUnavailable, _store_unavailable)  # type: ignore[arg-type]
    for unreachable in (OperationalError, InterfaceError, StoreUnreachable):
        app.add_exception_handler(unreachable, _store_unreachable)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)


# --- middleware ---------------------------------------------------------------------------


class BodyLimitMiddleware:
    """Refuses request bodies over `limit` bytes with 413, before any route sees them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._refuse(scope, receive, send)
                    return
        # Buffer the (small) body so a chunked upload cannot exceed the limit either.
        body = await read_body(receive, self.limit)
        if body is None:
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, replaying(body, receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            "Payload too large",
            f"The request body exceeds the limit of {self.limit} bytes",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


async def read_body(receive: Receive, limit: int | None = None) -> bytes | None:
    """The whole request body, or None once it grows past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands over `body` (already read) first, then waits as `receive` does
    (for the client's disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class MetricsMiddleware:
    """Counts requests and their latency per route template (not per concrete path)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service
        # The labelled series by (method, route, status): looked up once each, not per
        # request. Bounded: routes are templates, methods and statuses are few.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            key = (scope["method"], route, status)
            series = self._series.get(key)
            if series is None:
                name = f"{scope['method']} {route}"
                series = (
                    HTTP_REQUESTS.labels(self.service, name, str(status)),
                    HTTP_LATENCY.labels(self.service, name),
                )
                self._series[key] = series
            series[0].inc()
            series[1].observe(time.perf_counter() - started)


class RequestContextMiddleware:
    """Gives every request a request id and a correlation id (the client's `X-Request-Id` and
    `X-Correlation-Id` when valid, new ones otherwise), logs inside it with both, and answers
    with them so a client can quote them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = correlation_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = _valid_id(value)
            elif name == b"x-correlation-id":
                correlation_id = _valid_id(value)
        request_id = request_id or str(uuid.uuid4())
        correlation_id = correlation_id or request_id
        scope.setdefault("state", {})["request_ids"] = (request_id, correlation_id)
        echo = [
            (b"x-request-id", request_id.encode()),
            (b"x-correlation-id", correlation_id.encode()),
        ]

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *echo]
            await send(message)

        with bind(request_id=request_id, correlation_id=correlation_id, causation_id=request_id):
            await self.app(scope, receive, send_with_ids)


def _valid_id(raw: bytes) -> str | None:
    value = raw.decode("latin-1")
    return value if _HEADER_VALUE.match(value) else None


# --- request dependencies -----------------------------------------------------------------


def _verifier(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.verifier
    return verifier


# The command dependencies read their headers from `request.headers` rather than declaring
# FastAPI `Header` parameters: FastAPI resolves and validates each declared parameter on every
# request, which was about a fifth of a check-in's CPU. `document_headers` puts the headers
# back in the OpenAPI document, exactly as FastAPI would have described them.


async def current_principal(request: Request) -> Principal:
    verifier = _verifier(request)
    token = bearer_token(request.headers.get("authorization"))
    # A shared-secret check is a few microseconds of CPU: done inline. A provider's check may
    # fetch its key set, so it goes to the thread pool.
    if getattr(verifier, "blocking", True):
        return await run_in_threadpool(verifier.verify, token)
    return verifier.verify(token)


def _header_id(value: str | None, name: str) -> str | None:
    if value is None:
        return None
    if not _HEADER_VALUE.match(value):
        raise InvalidValue(f"{name} must be 1-128 visible ASCII characters", field=name)
    return value


async def command_context_dep(
    request: Request,
    principal: Annotated[Principal, Depends(current_principal)],
) -> CommandContext:
    # The middleware has chosen both ids already; a malformed header is still refused here.
    headers = request.headers
    _header_id(headers.get("x-request-id"), "X-Request-Id")
    _header_id(headers.get("x-correlation-id"), "X-Correlation-Id")
    request_id, correlation_id = request.state.request_ids
    return CommandContext(
        actor=principal.actor,
        correlation_id=correlation_id,
        causation_id=request_id,
        roles=principal.roles,
        teams=principal.teams,
    )


async def idempotency_dep(
    request: Request,
    principal: Annotated[Principal, Depends(current_principal)],
) -> Idempotency | None:
    idempotency_key = request.headers.get("idempotency-key")
    if idempotency_key is None:
        return None
    if not _HEADER_VALUE.match(idempotency_key):
        raise InvalidValue(
            "Idempotency-Key must be 1-128 visible ASCII characters", field="Idempotency-Key"
        )
    body = await request.body()
    fingerprint = hashlib.sha256(
        b"\0".join([request.method.encode(), request.url.path.encode(), body])
    ).hexdigest()
    # Keys are scoped to the actor: one user's key can never answer another's request.
    key = hashlib.sha256(f"{principal.actor}\0{idempotency_key}".encode()).hexdigest()
    return Idempotency(key=key, fingerprint=fingerprint)


async def if_match_dep(request: Request) -> int | None:
    if_match = request.headers.get("if-match")
    if if_match is None or if_match.strip() == "*":
        return None
    value = if_match.strip()
    if value.startswith("W/"):
        value = value[2:]
    value = value.strip('"')
    if not value.isdigit() or len(value) > 12:
        raise InvalidValue('If-Match must be an ETag such as "3"', field="If-Match")
    return int(value)


def _header_parameter(name: str, description: str | None = None) -> dict[str, Any]:
    """An optional string header as FastAPI's `Header()` documents it."""
    schema: dict[str, Any] = {"anyOf": [{"type": "string"}, {"type": "null"}], "title": name}
    parameter: dict[str, Any] = {"in": "header", "name": name.lower(), "required": False}
    if description:
        schema["description"] = description
        parameter["description"] = description
    return parameter | {"schema": schema}


# The headers each dependency reads, in the order FastAPI listed them.
_DOCUMENTED_HEADERS: dict[Callable[..., Any], list[dict[str, Any]]] = {
    command_context_dep: [
        _header_parameter("X-Correlation-Id"),
        _header_parameter("X-Request-Id"),
    ],
    idempotency_dep: [
        _header_parameter(
            "Idempotency-Key",
            "Repeat a command safely: a retry with the same key answers the same and records "
            "nothing twice",
        )
    ],
    if_match_dep: [
        _header_parameter(
            "If-Match", 'Expected version as an ETag, e.g. "3": a mismatch answers 412'
        )
    ],
}


def document_headers(router: APIRouter) -> None:
    """Describe in the OpenAPI document the headers each route's dependencies read (before
    the router is included: an app keeps what it includes as it was)."""
    for route in router.routes:
        if not isinstance(route, APIRoute):
            continue
        seen: set[Callable[..., Any]] = set()
        parameters: list[dict[str, Any]] = []
        pending = list(route.dependant.dependencies)
        while pending:
            dependant = pending.pop(0)
            call = dependant.call
            if call in _DOCUMENTED_HEADERS and call not in seen:
                seen.add(call)
                parameters += _DOCUMENTED_HEADERS[call]
            pending += dependant.dependencies
        extra = dict(route.openapi_extra or {})
        listed = extra.get("parameters", [])
        # A router is a module's object: every app built from it passes here again.
        missing = [p for p in parameters if p not in listed]
        if missing:
            extra["parameters"] = [*listed, *missing]
            route.openapi_extra = extra


Position = Annotated[str, StringConstraints(pattern=r"^[a-z]{1,32}:[0-9]{1,18}$")]
MinPosition = Annotated[
    list[Position] | None,
    Query(
        max_length=8,
        description="Wait (bounded) until this service has seen the events of other services "
        "up to these positions, e.g. the `goals:42` the goals service answered (repeatable)",
    ),
]

Actor = Annotated[Principal, Depends(current_principal)]
Context = Annotated[CommandContext, Depends(command_context_dep)]
IdempotencyDep = Annotated[Idempotency | None, Depends(idempotency_dep)]
IfMatch = Annotated[int | None, Depends(if_match_dep)]


def etag(version: int) -> str:
    return f'"{version}"'


class CommandJSONResponse(JSONResponse):
    """A command's answer, rendered by orjson: the same compact UTF-8 JSON as `JSONResponse`
    for the plain values a command answers with (strings, numbers, booleans, null, lists and
    objects), in a small fraction of the standard library's time, on the busiest route of the
    system."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def command_response(result: CommandResult, location: str | None = None) -> JSONResponse:
    headers = {"ETag": etag(result.version)}
    if location and result.status == 201:
        headers["Location"] = location
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return CommandJSONResponse(result.body, status_code=result.status, headers=headers)


# --- lean command routes ------------------------------------------------------------------

# The path parameters of command routes are ids: the canonical UUID form is served lean, any
# other spelling goes to FastAPI, which decides whether it is one.
_UUID_PART = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_JSON = "application/json"

# What a lean command does once its input is known to be good: the route's work, as its
# FastAPI endpoint would do it (path ids by name, the validated body, the command's headers).
LeanHandler = Callable[
    [Request, dict[str, uuid.UUID], Any, CommandContext, Idempotency | None, int | None],
    Awaitable[Response],
]


@dataclass(frozen=True)
class LeanCommand:
    """A command route that the busiest clients call, served without FastAPI's per-request
    machinery (routing, dependency solving, exit stacks: more than the command's own work).

    Its FastAPI route stays the definition of the endpoint: the OpenAPI document, and the
    answer to every request that is not a plain, valid, authenticated command."""

    path: str  # the FastAPI route's path, e.g. "/v1/key-results/{key_result_id}/check-ins"
    body: type[BaseModel]
    handle: LeanHandler
    method: str = "POST"

    def pattern(self) -> re.Pattern[str]:
        regex = re.sub(r"\\\{(\w+)\\\}", rf"(?P<\1>{_UUID_PART})", re.escape(self.path))
        return re.compile(f"^{regex}$")


class LeanCommandMiddleware:
    """Serves the `LeanCommand`s of a FastAPI app ahead of its router (innermost middleware).

    A request is served lean only when it is a plain command that FastAPI would accept as it
    is: the route's method, canonical ids in the path, no query string, a JSON body of the
    route's model, a valid token and well-formed command headers, all checked by the same
    dependencies and model as the route's. Anything else goes on to FastAPI untouched (its
    body replayed), so refusals are FastAPI's own answers, in its own order. Once a command
    runs, its errors are answered by the app's own exception handlers."""

    def __init__(
        self, app: ASGIApp, http: FastAPI, commands: list[LeanCommand], routers: list[APIRouter]
    ) -> None:
        self.app = app
        self.http = http
        self.commands: list[tuple[re.Pattern[str], LeanCommand, APIRoute]] = []
        routes = [route for router in routers for route in router.routes]
        for command in commands:
            route = next(
                (
                    r
                    for r in routes
                    if isinstance(r, APIRoute)
                    and r.path == command.path
                    and command.method in (r.methods or ())
                ),
                None,
            )
            if route is None:
                raise RuntimeError(f"no route {command.method} {command.path} to serve lean")
            self.commands.append((command.pattern(), command, route))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["query_string"]:
            await self.app(scope, receive, send)
            return
        found = self._match(scope)
        if found is None:
            await self.app(scope, receive, send)
            return
        match, command, route = found
        body = await read_body(receive) or b""
        request = Request(scope, replaying(body, receive))
        try:
            if request.headers.get("content-type", "").lower() != _JSON:
                raise ValueError("not a plain JSON body")
            principal = await current_principal(request)
            context = await command_context_dep(request, principal)
            idempotency = await idempotency_dep(request, principal)
            expected = await if_match_dep(request)
            data = command.body.model_validate(json.loads(body))
            ids = {name: uuid.UUID(value) for name, value in match.groupdict().items()}
        except Exception:
            # Not a plain valid command (a bad token or header, JSON that does not parse, even
            # nested too deep for the parser, a body the model refuses): nothing was done yet,
            # so FastAPI answers it exactly as it would have.
            await self.app(scope, replaying(body, receive), send)
            return
        scope["route"] = route  # what the metrics label requests by, as FastAPI sets it
        try:
            response = await command.handle(request, ids, data, context, idempotency, expected)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise  # the app's outermost handler answers 500, as for any route
            response = await handler(request, exc)
        await response(scope, request.receive, send)

    def _match(self, scope: Scope) -> tuple[re.Match[str], LeanCommand, APIRoute] | None:
        for pattern, command, route in self.commands:
            if scope["method"] == command.method:
                match = pattern.match(scope["path"])
                if match is not None:
                    return match, command, route
        return None

    def _handler_for(self, exc: Exception) -> Callable[[Request, Any], Any] | None:
        handlers = self.http.exception_handlers
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if cls in handlers:
                return handlers[cls]
        return None


# --- health, readiness, metrics -----------------------------------------------------------


@dataclass
class Check:
    name: str
    run: Callable[[], Awaitable[str | None]]  # returns a problem, or None when fine


def operations_router(checks: list[Check]) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="Alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Store and NATS reachable, relay and consumers not stuck")
    async def readyz() -> Response:
        results: dict[str, str] = {}
        ok = True
        for check in checks:
            try:
                failure = await check.run()
            except Exception as e:
                failure = f"{type(e).__name__}: {e}"
            results[check.name] = failure or "ok"
            ok = ok and failure is None
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": results},
            status_code=200 if ok else 503,
        )

    @router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
