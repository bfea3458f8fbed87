"""HTTP entry points of the goals service: parse, run one use case, answer."""

from __future__ import annotations

import asyncio
from datetime import date
from typing import Any, Literal
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from services.goals import application as uc
from services.goals.domain import Cycle, KeyResult, Objective
from shared.domain import InvalidValue, NotFound
from shared.http import (
    PROBLEM_RESPONSES,
    Actor,
    Context,
    IdempotencyDep,
    IfMatch,
    command_response,
    etag,
)
from shared.schemas import Body, CommandAnswer, Name, Number, Reason, Text, Title, Unit
from shared.service import runtime_of

# --- request and response bodies ----------------------------------------------------------


class CycleCreate(Body):
    name: Name
    starts_on: date
    ends_on: date


class ReasonBody(Body):
    reason: Reason | None = None


class CyclePublic(BaseModel):
    id: UUID
    version: int
    name: str
    starts_on: date
    ends_on: date
    status: Literal["scheduled", "active", "closed"]


class ObjectiveCreate(Body):
    cycle_id: UUID
    title: Title
    description: Text = ""
    owner: Name
    team: Name
    parent_id: UUID | None = None


class ObjectivePatch(Body):
    title: Title | None = None
    description: Text | None = None
    owner: Name | None = None
    team: Name | None = None
    parent_id: UUID | None = Field(default=None, description="null detaches from the parent")
    reason: Reason | None = None


class ObjectivePublic(BaseModel):
    id: UUID
    version: int
    cycle_id: UUID
    title: str
    description: str
    owner: str
    team: str
    parent_id: UUID | None
    archived: bool
    carried_from: UUID | None = Field(
        description="The objective of an earlier cycle this one continues (quarter shift)"
    )
    review_id: UUID | None = Field(description="The review that decided to carry it over")
    lessons: list[dict[str, str]] = Field(
        description="The reflections of that review: {kind, text}"
    )


class KeyResultCreate(Body):
    title: Title
    kind: Literal["number", "percent", "currency", "boolean"]
    unit: Unit = ""
    start: Number
    target: Number
    weight: Number = 1.0
    owner: Name


class KeyResultPatch(Body):
    title: Title | None = None
    owner: Name | None = None
    weight: Number | None = None
    reason: Reason | None = None


class TargetAdjustment(Body):
    target: Number
    reason: Reason


class Removal(Body):
    reason: Reason


class KeyResultPublic(BaseModel):
    id: UUID
    version: int
    objective_id: UUID
    cycle_id: UUID
    title: str
    kind: str
    unit: str
    start: float
    target: float
    weight: float
    owner: str
    removed: bool
    carried_from: UUID | None = Field(
        description="The key result of an earlier cycle this one continues"
    )


# --- helpers ------------------------------------------------------------------------------


async def _read(request: Request, aggregate_id: UUID, cls: type, what: str) -> Any:
    app = runtime_of(request).app
    agg: Any
    try:
        agg = await asyncio.to_thread(app.repository.get, aggregate_id)
    except AggregateNotFoundError:
        agg = None
    if not isinstance(agg, cls):
        raise NotFound(f"No {what} with id {aggregate_id}")
    return agg


def _public(model: type[BaseModel], agg: Any) -> JSONResponse:
    fields = {name: getattr(agg, name) for name in model.model_fields if name not in ("id",)}
    body = model(id=agg.id, **fields).model_dump(mode="json")
    return JSONResponse(body, headers={"ETag": etag(agg.version)})


# --- routes -------------------------------------------------------------------------------

cycles = APIRouter(prefix="/v1/cycles", tags=["cycles"], responses=PROBLEM_RESPONSES)


@cycles.post("", status_code=201, response_model=CommandAnswer, summary="Schedule a cycle")
async def schedule_cycle(
    body: CycleCreate, request: Request, context: Context, idem: IdempotencyDep
) -> JSONResponse:
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.schedule_cycle(uow, body.name, body.starts_on, body.ends_on),
        context,
        idempotency=idem,
        status=201,
    )
    return command_response(result, f"/v1/cycles/{result.body['id']}")


@cycles.post("/{cycle_id}/start", response_model=CommandAnswer, summary="Start a cycle")
async def start_cycle(
    cycle_id: UUID, request: Request, context: Context, idem: IdempotencyDep, expected: IfMatch
) -> JSONResponse:
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.start_cycle(uow, cycle_id, expected), context, idempotency=idem
    )
    return command_response(result)


@cycles.post("/{cycle_id}/close", response_model=CommandAnswer, summary="Close a cycle")
async def close_cycle(
    cycle_id: UUID,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
    body: ReasonBody | None = None,
) -> JSONResponse:
    reason = body.reason if body else None
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.close_cycle(uow, cycle_id, reason, expected), context, idempotency=idem
    )
    return command_response(result)


@cycles.get("/{cycle_id}", response_model=CyclePublic, summary="A cycle")
async def get_cycle(cycle_id: UUID, request: Request, _: Actor) -> JSONResponse:
    return _public(CyclePublic, await _read(request, cycle_id, Cycle, "cycle"))


objectives = APIRouter(prefix="/v1/objectives", tags=["objectives"], responses=PROBLEM_RESPONSES)


@objectives.post("", status_code=201, response_model=CommandAnswer, summary="Create an objective")
async def create_objective(
    body: ObjectiveCreate, request: Request, context: Context, idem: IdempotencyDep
) -> JSONResponse:
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.create_objective(
            uow,
            cycle_id=body.cycle_id,
            title=body.title,
            description=body.description,
            owner=body.owner,
            team=body.team,
            parent_id=body.parent_id,
        ),
        context,
        idempotency=idem,
        status=201,
    )
    return command_response(result, f"/v1/objectives/{result.body['id']}")


@objectives.patch(
    "/{objective_id}",
    response_model=CommandAnswer,
    summary="Change an objective's title, description, owner, team or parent",
)
async def revise_objective(
    objective_id: UUID,
    body: ObjectivePatch,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
) -> JSONResponse:
    given = body.model_fields_set - {"reason"}
    if not given:
        raise InvalidValue("Name at least one field to change")
    for name in given - {"parent_id"}:  # only parent_id takes null (to detach)
        if getattr(body, name) is None:
            raise InvalidValue(f"{name} cannot be null", field=name)
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.revise_objective(
            uow,
            objective_id,
            title=body.title if "title" in given else None,
            description=body.description if "description" in given else None,
            owner=body.owner if "owner" in given else None,
            team=body.team if "team" in given else None,
            realign="parent_id" in given,
            parent_id=body.parent_id,
            reason=body.reason,
            expected=expected,
        ),
        context,
        idempotency=idem,
    )
    return command_response(result)


@objectives.post(
    "/{objective_id}/archive", response_model=CommandAnswer, summary="Archive an objective"
)
async def archive_objective(
    objective_id: UUID,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
    body: ReasonBody | None = None,
) -> JSONResponse:
    reason = body.reason if body else None
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.archive_objective(uow, objective_id, reason, expected),
        context,
        idempotency=idem,
    )
    return command_response(result)


@objectives.post(
    "/{objective_id}/key-results",
    status_code=201,
    response_model=CommandAnswer,
    summary="Define a key result of an objective",
)
async def define_key_result(
    objective_id: UUID,
    body: KeyResultCreate,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
) -> JSONResponse:
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.define_key_result(
            uow,
            objective_id,
            title=body.title,
            kind=body.kind,
            unit=body.unit,
            start=body.start,
            target=body.target,
            weight=body.weight,
            owner=body.owner,
        ),
        context,
        idempotency=idem,
        status=201,
    )
    return command_response(result, f"/v1/key-results/{result.body['id']}")


@objectives.get("/{objective_id}", response_model=ObjectivePublic, summary="An objective")
async def get_objective(objective_id: UUID, request: Request, _: Actor) -> JSONResponse:
    return _public(ObjectivePublic, await _read(request, objective_id, Objective, "objective"))


key_results = APIRouter(prefix="/v1/key-results", tags=["key results"], responses=PROBLEM_RESPONSES)


@key_results.patch(
    "/{key_result_id}",
    response_model=CommandAnswer,
    summary="Change a key result's title, owner or weight",
)
async def revise_key_result(
    key_result_id: UUID,
    body: KeyResultPatch,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
) -> JSONResponse:
    given = body.model_fields_set - {"reason"}
    if not given:
        raise InvalidValue("Name at least one of title, owner or weight to change")
    for name in given:
        if getattr(body, name) is None:
            raise InvalidValue(f"{name} cannot be null", field=name)
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.revise_key_result(
            uow,
            key_result_id,
            title=body.title,
            owner=body.owner,
            weight=body.weight,
            reason=body.reason,
            expected=expected,
        ),
        context,
        idempotency=idem,
    )
    return command_response(result)


@key_results.post(
    "/{key_result_id}/target",
    response_model=CommandAnswer,
    summary="Adjust a key result's target, with a reason",
)
async def adjust_target(
    key_result_id: UUID,
    body: TargetAdjustment,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
) -> JSONResponse:
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.adjust_target(uow, key_result_id, body.target, body.reason, expected),
        context,
        idempotency=idem,
    )
    return command_response(result)


@key_results.post(
    "/{key_result_id}/remove",
    response_model=CommandAnswer,
    summary="Remove a key result, with a reason",
)
async def remove_key_result(
    key_result_id: UUID,
    body: Removal,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
) -> JSONResponse:
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.remove_key_result(uow, key_result_id, body.reason, expected),
        context,
        idempotency=idem,
    )
    return command_response(result)


@key_results.get("/{key_result_id}", response_model=KeyResultPublic, summary="A key result")
async def get_key_result(key_result_id: UUID, request: Request, _: Actor) -> JSONResponse:
    return _public(KeyResultPublic, await _read(request, key_result_id, KeyResult, "key result"))


routers = [cycles, objectives, key_results]
