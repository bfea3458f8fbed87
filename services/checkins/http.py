"""HTTP entry points of the check-in service: parse, run one use case, answer."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from services.checkins import application as uc
from services.checkins.application import CheckinsApplication
from services.checkins.domain import MAX_ITEM_LENGTH, MAX_LIST_ITEMS, KeyResultProgress
from shared.catalogue import Catalogue
from shared.domain import CommandContext, InvalidValue, NotFound
from shared.http import (
    PROBLEM_RESPONSES,
    Actor,
    Context,
    IdempotencyDep,
    IfMatch,
    LeanCommand,
    MinPosition,
    command_response,
    etag,
)
from shared.okr import status_of
from shared.schemas import Body, CommandAnswer, Number, Reason, Text
from shared.service import Runtime, runtime_of
from shared.telemetry import CHECKINS
from shared.writer import Idempotency

# --- request and response bodies ----------------------------------------------------------

Confidence = Annotated[int, Field(strict=True, ge=0, le=10, description="0 (no chance) to 10")]
Item = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ITEM_LENGTH, strip_whitespace=True)
]
Items = Annotated[list[Item], Field(max_length=MAX_LIST_ITEMS)]
Team = Annotated[
    str,
    Path(min_length=1, max_length=200, description="The team's name, as on its objectives"),
]


class CheckInCreate(Body):
    value: Number
    confidence: Confidence
    note: Text = ""
    blockers: Items = Field(default_factory=list)


class Correction(Body):
    value: Number | None = None
    confidence: Confidence | None = None
    reason: Reason


class CheckInAnswer(CommandAnswer):
    key_result_id: str


class MeetingCreate(Body):
    cycle_id: UUID
    held_on: date
    wins: Items = Field(default_factory=list, description="What got done, and why it worked")
    learnings: Items = Field(default_factory=list)
    blockers: Items = Field(default_factory=list)
    priorities: Items = Field(default_factory=list)


class MeetingPatch(Body):
    wins: Items | None = None
    learnings: Items | None = None
    blockers: Items | None = None
    priorities: Items | None = None
    reason: Reason


class CorrectionPublic(BaseModel):
    value: float
    confidence: int
    previous_value: float
    previous_confidence: int
    reason: str
    at: datetime
    actor: str


class CheckInPublic(BaseModel):
    id: UUID
    key_result_id: UUID
    number: int = Field(description="1 for the key result's first check-in, and so on")
    value: float = Field(description="Current value, after any correction")
    confidence: int
    original_value: float
    original_confidence: int
    note: str
    blockers: list[str]
    at: datetime
    actor: str
    corrections: list[CorrectionPublic]


class CheckInPage(BaseModel):
    items: list[CheckInPublic]
    next_cursor: str | None = Field(description="Pass as `before` for the next (older) page")


class ProgressPublic(BaseModel):
    id: UUID | None = Field(description="The KeyResultProgress aggregate; null before any check-in")
    key_result_id: UUID
    version: int
    check_in_count: int
    latest: CheckInPublic | None


class MeetingPublic(BaseModel):
    id: UUID
    version: int
    team: str
    cycle_id: UUID
    held_on: date
    wins: list[str]
    learnings: list[str]
    blockers: list[str]
    priorities: list[str]
    amendments: int


class CatalogueStatus(BaseModel):
    current: bool = Field(description="True when every goals event in the stream was applied")
    positions: dict[str, int]
    pending: int
    cycles: int
    objectives: int
    key_results: int


# --- helpers ------------------------------------------------------------------------------


def _app(request: Request) -> CheckinsApplication:
    app = runtime_of(request).app
    assert isinstance(app, CheckinsApplication)
    return app


def catalogue_of(runtime: Runtime) -> Catalogue:
    catalogue: Catalogue = runtime.parts["catalogue"]
    return catalogue


def _check_in_public(progress: KeyResultProgress, entry: dict[str, Any]) -> dict[str, Any]:
    return CheckInPublic(**entry | {"key_result_id": progress.key_result_id}).model_dump(
        mode="json"
    )


# --- check-ins ----------------------------------------------------------------------------

check_ins = APIRouter(tags=["check-ins"], responses=PROBLEM_RESPONSES)


@check_ins.post(
    "/v1/key-results/{key_result_id}/check-ins",
    status_code=201,
    response_model=CheckInAnswer,
    summary="Check in on a key result: its value now, and how confident the team is",
)
async def create_check_in(
    key_result_id: UUID,
    body: CheckInCreate,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
    min_position: MinPosition = None,
) -> JSONResponse:
    await runtime_of(request).wait_for_position(min_position)
    return await check_in(request, key_result_id, body, context, idem, expected)


async def check_in(
    request: Request,
    key_result_id: UUID,
    body: CheckInCreate,
    context: CommandContext,
    idem: Idempotency | None,
    expected: int | None,
) -> JSONResponse:
    runtime = runtime_of(request)
    catalogue = catalogue_of(runtime)
    result = await runtime.writer.execute(
        lambda uow: uc.check_in(
            uow,
            catalogue,
            key_result_id=key_result_id,
            value=body.value,
            confidence=body.confidence,
            note=body.note,
            blockers=body.blockers,
            expected=expected,
        ),
        context,
        idempotency=idem,
        status=201,
    )
    if not result.replayed:  # committed now, not the answer to a retry
        CHECKINS.labels(status_of(body.confidence) or "unknown").inc()
    return command_response(result, f"/v1/check-ins/{result.body['id']}")


@check_ins.get(
    "/v1/key-results/{key_result_id}/check-ins",
    response_model=CheckInPage,
    summary="A key result's check-ins, newest first, a page at a time",
)
async def list_check_ins(
    key_result_id: UUID,
    request: Request,
    _: Actor,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=10**12, description="The `next_cursor` of the previous page")
    ] = None,
) -> JSONResponse:
    app = _app(request)
    progress = await asyncio.to_thread(app.progress, key_result_id)
    if progress is None:
        uc.known_key_result(catalogue_of(runtime_of(request)), key_result_id)
        return JSONResponse({"items": [], "next_cursor": None}, headers={"ETag": etag(0)})
    entries = await asyncio.to_thread(app.check_ins, progress, before=before, limit=limit)
    page = [_check_in_public(progress, e) for e in entries]
    oldest = entries[-1]["number"] if entries else 1
    next_cursor = str(oldest) if oldest > 1 else None
    return JSONResponse(
        {"items": page, "next_cursor": next_cursor}, headers={"ETag": etag(progress.version)}
    )


@check_ins.get(
    "/v1/key-results/{key_result_id}/progress",
    response_model=ProgressPublic,
    summary="A key result's latest check-in and how many it has had",
)
async def get_progress(key_result_id: UUID, request: Request, _: Actor) -> JSONResponse:
    progress = await asyncio.to_thread(_app(request).progress, key_result_id)
    if progress is None:
        uc.known_key_result(catalogue_of(runtime_of(request)), key_result_id)
        body: dict[str, Any] = {
            "id": None,
            "key_result_id": str(key_result_id),
            "version": 0,
            "check_in_count": 0,
            "latest": None,
        }
        return JSONResponse(body, headers={"ETag": etag(0)})
    newest = await asyncio.to_thread(_app(request).check_ins, progress, limit=1)
    latest = newest[0] if newest else None
    body = {
        "id": str(progress.id),
        "key_result_id": str(progress.key_result_id),
        "version": progress.version,
        "check_in_count": progress.count,
        "latest": _check_in_public(progress, latest) if latest else None,
    }
    return JSONResponse(body, headers={"ETag": etag(progress.version)})


@check_ins.get(
    "/v1/check-ins/{check_in_id}",
    response_model=CheckInPublic,
    summary="A check-in, with its corrections",
)
async def get_check_in(check_in_id: UUID, request: Request, _: Actor) -> JSONResponse:
    found = await asyncio.to_thread(_app(request).check_in, check_in_id)
    if found is None:
        raise NotFound(f"No check-in with id {check_in_id}")
    progress, entry = found
    return JSONResponse(_check_in_public(progress, entry), headers={"ETag": etag(progress.version)})


@check_ins.post(
    "/v1/check-ins/{check_in_id}/correct",
    response_model=CheckInAnswer,
    summary="Correct a check-in's value or confidence, with a reason; the original is kept",
)
async def correct_check_in(
    check_in_id: UUID,
    body: Correction,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
) -> JSONResponse:
    for name in body.model_fields_set & {"value", "confidence"}:
        if getattr(body, name) is None:
            raise InvalidValue(f"{name} cannot be null", field=name)
    runtime = runtime_of(request)
    found = await asyncio.to_thread(runtime.app.find_lookup, uc.CHECK_IN_LOOKUP, str(check_in_id))
    if found is None:
        raise NotFound(f"No check-in with id {check_in_id}")
    catalogue = catalogue_of(runtime)
    result = await runtime.writer.execute(
        lambda uow: uc.correct_check_in(
            uow,
            catalogue,
            UUID(found),
            check_in_id=check_in_id,
            value=body.value,
            confidence=body.confidence,
            reason=body.reason,
            expected=expected,
        ),
        context,
        idempotency=idem,
    )
    return command_response(result)


# --- team check-in meetings ---------------------------------------------------------------

meetings = APIRouter(tags=["check-in meetings"], responses=PROBLEM_RESPONSES)


@meetings.post(
    "/v1/teams/{team}/check-in-meetings",
    status_code=201,
    response_model=CommandAnswer,
    summary="Record a team's check-in meeting: wins, learnings, blockers, priorities",
)
async def hold_meeting(
    team: Team,
    body: MeetingCreate,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
    min_position: MinPosition = None,
) -> JSONResponse:
    team = team.strip()
    if not team:
        raise InvalidValue("team must not be blank", field="team")
    runtime = runtime_of(request)
    await runtime.wait_for_position(min_position)
    catalogue = catalogue_of(runtime)
    today = datetime.now(UTC).date()
    result = await runtime.writer.execute(
        lambda uow: uc.hold_meeting(
            uow,
            catalogue,
            team=team,
            cycle_id=body.cycle_id,
            held_on=body.held_on,
            today=today,
            wins=body.wins,
            learnings=body.learnings,
            blockers=body.blockers,
            priorities=body.priorities,
            expected=expected,
        ),
        context,
        idempotency=idem,
        status=201,
    )
    return command_response(result, f"/v1/check-in-meetings/{result.body['id']}")


@meetings.get(
    "/v1/check-in-meetings/{meeting_id}",
    response_model=MeetingPublic,
    summary="A team's check-in meeting",
)
async def get_meeting(meeting_id: UUID, request: Request, _: Actor) -> JSONResponse:
    meeting = await asyncio.to_thread(_app(request).meeting, meeting_id)
    if meeting is None:
        raise NotFound(f"No check-in meeting with id {meeting_id}")
    body = MeetingPublic(
        id=meeting.id,
        version=meeting.version,
        team=meeting.team,
        cycle_id=meeting.cycle_id,
        held_on=meeting.held_on,
        wins=meeting.wins,
        learnings=meeting.learnings,
        blockers=meeting.blockers,
        priorities=meeting.priorities,
        amendments=meeting.amendments,
    ).model_dump(mode="json")
    return JSONResponse(body, headers={"ETag": etag(meeting.version)})


@meetings.patch(
    "/v1/check-in-meetings/{meeting_id}",
    response_model=CommandAnswer,
    summary="Amend a meeting's wins, learnings, blockers or priorities, with a reason",
)
async def amend_meeting(
    meeting_id: UUID,
    body: MeetingPatch,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
) -> JSONResponse:
    given = body.model_fields_set - {"reason"}
    if not given:
        raise InvalidValue("Name at least one of wins, learnings, blockers or priorities")
    for name in given:
        if getattr(body, name) is None:
            raise InvalidValue(f"{name} cannot be null", field=name)
    runtime = runtime_of(request)
    catalogue = catalogue_of(runtime)
    changes = {name: getattr(body, name) for name in given}
    result = await runtime.writer.execute(
        lambda uow: uc.amend_meeting(
            uow, catalogue, meeting_id, changes=changes, reason=body.reason, expected=expected
        ),
        context,
        idempotency=idem,
    )
    return command_response(result)


# --- the catalogue ------------------------------------------------------------------------

catalogue_router = APIRouter(
    prefix="/v1/catalogue", tags=["catalogue"], responses=PROBLEM_RESPONSES
)


@catalogue_router.get(
    "",
    response_model=CatalogueStatus,
    summary="How far this service's catalogue of the goals events has got",
)
async def catalogue_status(
    request: Request, _: Actor, min_position: MinPosition = None
) -> CatalogueStatus:
    runtime = runtime_of(request)
    await runtime.wait_for_position(min_position)
    catalogue = catalogue_of(runtime)
    consumer = runtime.consumers[0]
    return CatalogueStatus(
        current=catalogue.is_current(),
        positions=dict(consumer.positions),
        pending=consumer.pending,
        cycles=len(catalogue.cycles),
        objectives=len(catalogue.objectives),
        key_results=len(catalogue.key_results),
    )


routers = [check_ins, meetings, catalogue_router]

# Check-ins are the command clients send most: served without FastAPI's per-request machinery
# (`LeanCommand`), with the route above as their definition and the answer to anything else.
lean_commands = [
    LeanCommand(
        "/v1/key-results/{key_result_id}/check-ins",
        CheckInCreate,
        lambda request, ids, body, context, idem, expected: check_in(
            request, ids["key_result_id"], body, context, idem, expected
        ),
    )
]
