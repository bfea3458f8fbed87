"""HTTP reads of the projections service. Every read needs a bearer token and accepts
`min_position` (repeatable) to wait until the views have applied the caller's own writes."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime, BaseModel, Field

from services.projections import queries
from services.projections.views import Tables, utc
from shared.domain import InvalidValue, NotFound
from shared.http import PROBLEM_RESPONSES, Actor, MinPosition
from shared.service import runtime_of
from shared.sql import Database

AUDIT_EXPORT_LIMIT = 100_000

# No NUL: PostgreSQL's text cannot hold one, so a filter with it is a 422, not a failed query.
NO_NUL = r"^[^\x00]*$"
Text = Annotated[str | None, Query(min_length=1, max_length=200, pattern=NO_NUL)]
Team = Annotated[str, Path(min_length=1, max_length=200, pattern=NO_NUL)]


class LiveViews:
    """The views the routes read: the store and the generation of tables that is live."""

    def __init__(self, db: Database, tables: Tables) -> None:
        self.db = db
        self.tables = tables


async def _ready(request: Request, min_position: list[str] | None) -> tuple[Database, Tables]:
    runtime = runtime_of(request)
    await runtime.wait_for_position(min_position)
    live: LiveViews = runtime.parts["views"]
    return live.db, live.tables


# --- response bodies ----------------------------------------------------------------------


class KeyResultNode(BaseModel):
    id: UUID
    title: str
    kind: str
    unit: str
    owner: str
    weight: float
    start: float
    target: float
    current: float | None = Field(description="The latest checked-in value; null before any")
    progress: float = Field(description="(current - start) / (target - start), clamped to 0..1")
    confidence: int | None
    status: str | None = Field(description="on_track (≥7), at_risk (4-6), off_track (≤3)")
    last_check_in_at: str | None
    check_in_count: int
    carried_from: UUID | None


class ObjectiveNode(BaseModel):
    id: UUID
    title: str
    description: str
    owner: str
    team: str
    parent_id: UUID | None
    children: list[UUID] = Field(description="Objectives of this cycle aligned under this one")
    carried_from: UUID | None
    review_id: UUID | None
    progress: float | None = Field(description="Weight-averaged progress of its key results")
    rollup: float | None = Field(
        description="Its own progress and each aligned child's rollup, counted equally"
    )
    key_results: list[KeyResultNode]


class CycleNode(BaseModel):
    id: UUID
    name: str
    starts_on: str
    ends_on: str
    status: str


class CycleSummary(CycleNode):
    recorded_at: str = Field(description="When the cycle was first recorded: the earliest `as_of`")


class CycleList(BaseModel):
    items: list[CycleSummary]


class ReviewSummary(BaseModel):
    id: UUID
    team: str
    status: str = Field(description="open or final")


class ReviewList(BaseModel):
    cycle_id: UUID
    items: list[ReviewSummary]


class OkrTree(BaseModel):
    cycle: CycleNode
    as_of: str | None
    objectives: list[ObjectiveNode]


class AuditEntry(BaseModel):
    pos: int
    at: str
    actor: str
    service: str
    entity_type: str
    entity_id: str
    related_id: str | None
    event_type: str
    changes: dict[str, dict[str, Any]]
    reason: str | None
    correlation_id: str
    causation_id: str


class AuditPage(BaseModel):
    items: list[AuditEntry]
    next_cursor: str | None


# --- routes -------------------------------------------------------------------------------

views = APIRouter(tags=["views"], responses=PROBLEM_RESPONSES)


@views.get(
    "/v1/cycles",
    response_model=CycleList,
    summary="Every cycle, the latest first, with when it was first recorded",
)
async def cycles(request: Request, _: Actor, min_position: MinPosition = None) -> JSONResponse:
    db, t = await _ready(request, min_position)
    return JSONResponse({"items": await asyncio.to_thread(queries.cycles, db, t)})


@views.get(
    "/v1/cycles/{cycle_id}/okrs",
    response_model=OkrTree,
    summary="The OKR tree of a cycle, now or as it was at `as_of`",
)
async def okr_tree(
    cycle_id: UUID,
    request: Request,
    _: Actor,
    as_of: Annotated[
        AwareDatetime | None,
        Query(description="A past moment (ISO 8601 with a time zone): the tree as it was then"),
    ] = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    db, t = await _ready(request, min_position)
    at = utc(as_of) if as_of is not None else None
    tree = await asyncio.to_thread(queries.okr_tree, db, t, str(cycle_id), at)
    if tree is None:
        when = f" at {at}" if at else ""
        raise NotFound(f"No cycle with id {cycle_id}{when}")
    return JSONResponse(tree)


def _filters(
    entity: str | None,
    actor: str | None,
    service: str | None,
    event_type: str | None,
    entity_type: str | None,
    since: datetime | None,
    until: datetime | None,
) -> dict[str, str | None]:
    return {
        "entity": entity,
        "actor": actor,
        "service": service,
        "event_type": event_type,
        "entity_type": entity_type,
        "since": utc(since) if since else None,
        "until": utc(until) if until else None,
    }


@views.get("/v1/audit", response_model=AuditPage, summary="The audit trail, newest first")
async def audit(
    request: Request,
    _: Actor,
    entity: Text = None,
    actor: Text = None,
    service: Text = None,
    event_type: Text = None,
    entity_type: Text = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    min_position: MinPosition = None,
) -> JSONResponse:
    db, t = await _ready(request, min_position)
    before = None
    if cursor is not None:
        try:
            before = queries.decode_cursor(cursor)
        except ValueError as e:
            raise InvalidValue("cursor is not one this service gave", field="cursor") from e
    filters = _filters(entity, actor, service, event_type, entity_type, since, until)
    items, next_pos = await asyncio.to_thread(
        queries.audit_page, db, t, filters=filters, before=before, limit=limit
    )
    return JSONResponse(
        {
            "items": items,
            "next_cursor": queries.encode_cursor(next_pos) if next_pos is not None else None,
        }
    )


@views.get(
    "/v1/audit.csv",
    summary="The audit trail as CSV, oldest first (same filters; at most 100,000 rows)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
async def audit_csv(
    request: Request,
    _: Actor,
    entity: Text = None,
    actor: Text = None,
    service: Text = None,
    event_type: Text = None,
    entity_type: Text = None,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    min_position: MinPosition = None,
) -> Response:
    db, t = await _ready(request, min_position)
    filters = _filters(entity, actor, service, event_type, entity_type, since, until)
    rows = await asyncio.to_thread(queries.audit_all, db, t, filters, AUDIT_EXPORT_LIMIT)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(queries.AUDIT_COLUMNS)
    for row in rows:
        writer.writerow(
            [
                json.dumps(row[c], sort_keys=True) if c == "changes" else _csv_safe(row[c])
                for c in queries.AUDIT_COLUMNS
            ]
        )
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="okr-audit.csv"'},
    )


def _csv_safe(value: Any) -> Any:
    """No formula injection when the file is opened in a spreadsheet."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


@views.get(
    "/v1/key-results/{key_result_id}/check-ins",
    summary="A key result's check-ins, oldest first, with the confidence trend",
)
async def check_in_history(
    key_result_id: UUID, request: Request, _: Actor, min_position: MinPosition = None
) -> JSONResponse:
    db, t = await _ready(request, min_position)
    items = await asyncio.to_thread(queries.children, db, t, "check_in", str(key_result_id))
    known = await asyncio.to_thread(queries.entity, db, t, "key_result", str(key_result_id))
    if known is None and not items:
        raise NotFound(f"No key result with id {key_result_id}")
    items.sort(key=lambda c: c["number"])
    trend = [{"at": c["at"], "confidence": c["confidence"], "value": c["value"]} for c in items]
    return JSONResponse({"key_result_id": str(key_result_id), "items": items, "trend": trend})


@views.get(
    "/v1/cycles/{cycle_id}/overdue-check-ins",
    summary="Key results with no check-in for longer than the cadence",
)
async def overdue(
    cycle_id: UUID,
    request: Request,
    _: Actor,
    cadence_days: Annotated[int | None, Query(ge=1, le=365)] = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    db, t = await _ready(request, min_position)
    runtime = runtime_of(request)
    days = cadence_days or int(getattr(runtime.settings, "overdue_cadence_days", 7))
    if await asyncio.to_thread(queries.entity, db, t, "cycle", str(cycle_id)) is None:
        raise NotFound(f"No cycle with id {cycle_id}")
    items = await asyncio.to_thread(queries.overdue, db, t, str(cycle_id), days, datetime.now(UTC))
    return JSONResponse({"cycle_id": str(cycle_id), "cadence_days": days, "items": items})


@views.get(
    "/v1/teams/{team}/check-in-meetings",
    summary="A team's check-in meetings, newest first: wins up front",
)
async def meetings(
    team: Team,
    request: Request,
    _: Actor,
    cycle_id: UUID | None = None,
    min_position: MinPosition = None,
) -> JSONResponse:
    db, t = await _ready(request, min_position)
    items = await asyncio.to_thread(queries.children, db, t, "meeting", team.strip())
    if cycle_id is not None:
        items = [m for m in items if m["cycle_id"] == str(cycle_id)]
    items.sort(key=lambda m: m["held_on"], reverse=True)
    return JSONResponse({"team": team.strip(), "items": items})


@views.get(
    "/v1/cycles/{cycle_id}/reviews",
    response_model=ReviewList,
    summary="The reviews of a cycle, one per team that opened one",
)
async def cycle_reviews(
    cycle_id: UUID, request: Request, _: Actor, min_position: MinPosition = None
) -> JSONResponse:
    db, t = await _ready(request, min_position)
    if await asyncio.to_thread(queries.entity, db, t, "cycle", str(cycle_id)) is None:
        raise NotFound(f"No cycle with id {cycle_id}")
    items = await asyncio.to_thread(queries.reviews_of, db, t, str(cycle_id))
    return JSONResponse({"cycle_id": str(cycle_id), "items": items})


@views.get("/v1/reviews/{review_id}", summary="A review with its scores and reflections")
async def review(
    review_id: UUID, request: Request, _: Actor, min_position: MinPosition = None
) -> JSONResponse:
    db, t = await _ready(request, min_position)
    found = await asyncio.to_thread(queries.entity, db, t, "review", str(review_id))
    if found is None:
        raise NotFound(f"No review with id {review_id}")
    return JSONResponse(found)


@views.get(
    "/v1/search",
    summary="Wins, learnings and review reflections across cycles that contain some text",
)
async def search(
    request: Request,
    _: Actor,
    q: Annotated[str, Query(min_length=2, max_length=200, pattern=NO_NUL)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    min_position: MinPosition = None,
) -> JSONResponse:
    db, t = await _ready(request, min_position)
    items = await asyncio.to_thread(queries.search, db, t, q.strip(), limit)
    return JSONResponse({"q": q, "items": items})


routers = [views]
