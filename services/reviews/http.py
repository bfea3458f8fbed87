"""HTTP entry points of the review service: parse, run one use case, answer."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StringConstraints

from services.reviews import application as uc
from services.reviews.application import ReviewsApplication
from services.reviews.domain import CycleReview, review_id_for
from services.reviews.progress import ProgressView
from shared.catalogue import Catalogue
from shared.contract import carried_key_result_id, carried_objective_id
from shared.domain import NotFound
from shared.http import (
    PROBLEM_RESPONSES,
    Actor,
    Context,
    IdempotencyDep,
    IfMatch,
    MinPosition,
    command_response,
    etag,
)
from shared.schemas import Body, CommandAnswer, Name
from shared.service import Runtime, runtime_of

# --- request and response bodies ----------------------------------------------------------

Score = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
Comment = Annotated[str, StringConstraints(max_length=2000, strip_whitespace=True)]
ReflectionText = Annotated[
    str, StringConstraints(min_length=1, max_length=5000, strip_whitespace=True)
]
Team = Annotated[str, Path(min_length=1, max_length=200)]


class ReviewCreate(Body):
    cycle_id: UUID
    team: Name


class ScoreBody(Body):
    score: Score
    comment: Comment | None = Field(
        default=None, description="Needed when the score differs from the suggested one"
    )


class ReflectionCreate(Body):
    kind: Literal["went_well", "learned", "do_differently", "do_more_of"]
    text: ReflectionText


class CarryOverBody(Body):
    objective_id: UUID
    decision: Literal["carry_over", "drop", "done"]
    next_cycle_id: UUID | None = None


class ReflectionAnswer(CommandAnswer):
    reflection_id: str


class ObjectiveInReview(BaseModel):
    objective_id: UUID
    title: str
    decision: Literal["carry_over", "drop", "done"] | None
    next_cycle_id: UUID | None
    carried_objective_id: UUID | None = Field(
        description="Once final: the objective the goals service creates in the next cycle"
    )


class KeyResultInReview(BaseModel):
    key_result_id: UUID
    objective_id: UUID
    title: str
    kind: str
    start: float
    target: float
    last_value: float | None = Field(description="Last checked-in value when the review opened")
    progress: float
    suggested_score: float
    score: float | None
    comment: str | None
    carried_key_result_id: UUID | None


class Reflection(BaseModel):
    id: UUID
    kind: str
    text: str
    actor: str
    at: str


class ReviewPublic(BaseModel):
    id: UUID
    version: int
    cycle_id: UUID
    team: str
    status: Literal["open", "final"]
    objectives: list[ObjectiveInReview]
    key_results: list[KeyResultInReview]
    reflections: list[Reflection]


# --- helpers ------------------------------------------------------------------------------


def _parts(runtime: Runtime) -> tuple[Catalogue, ProgressView]:
    return runtime.parts["catalogue"], runtime.parts["progress"]


def _public(review: CycleReview) -> dict[str, Any]:
    carried: dict[str, UUID] = {}
    if review.final:
        carried = {
            oid: carried_objective_id(review.id, oid)
            for oid, o in review.objectives.items()
            if o["decision"] == "carry_over"
        }
    objectives = [
        ObjectiveInReview(
            objective_id=o["objective_id"],
            title=o["title"],
            decision=o["decision"],
            next_cycle_id=o["next_cycle_id"],
            carried_objective_id=carried.get(oid),
        )
        for oid, o in review.objectives.items()
    ]
    key_results = [
        KeyResultInReview(
            **{k: v for k, v in kr.items() if k in KeyResultInReview.model_fields},
            carried_key_result_id=(
                carried_key_result_id(carried[kr["objective_id"]], kid)
                if kr["objective_id"] in carried
                else None
            ),
        )
        for kid, kr in review.key_results.items()
    ]
    return ReviewPublic(
        id=review.id,
        version=review.version,
        cycle_id=review.cycle_id,
        team=review.team,
        status="final" if review.final else "open",
        objectives=objectives,
        key_results=key_results,
        reflections=[Reflection(**r) for r in review.reflections],
    ).model_dump(mode="json")


async def _read(request: Request, review_id: UUID) -> JSONResponse:
    app = runtime_of(request).app
    assert isinstance(app, ReviewsApplication)
    review = await asyncio.to_thread(app.review, review_id)
    if review is None:
        raise NotFound(f"No review with id {review_id}")
    return JSONResponse(_public(review), headers={"ETag": etag(review.version)})


# --- routes -------------------------------------------------------------------------------

reviews = APIRouter(tags=["reviews"], responses=PROBLEM_RESPONSES)


@reviews.post(
    "/v1/reviews",
    status_code=201,
    response_model=CommandAnswer,
    summary="Open a team's review of a cycle, with a suggested score per key result",
)
async def open_review(
    body: ReviewCreate,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
    min_position: MinPosition = None,
) -> JSONResponse:
    runtime = runtime_of(request)
    await runtime.wait_for_position(min_position)
    catalogue, progress = _parts(runtime)
    result = await runtime.writer.execute(
        lambda uow: uc.open_review(
            uow, catalogue, progress, cycle_id=body.cycle_id, team=body.team, expected=expected
        ),
        context,
        idempotency=idem,
        status=201,
    )
    return command_response(result, f"/v1/reviews/{result.body['id']}")


@reviews.get("/v1/reviews/{review_id}", response_model=ReviewPublic, summary="A review")
async def get_review(review_id: UUID, request: Request, _: Actor) -> JSONResponse:
    return await _read(request, review_id)


@reviews.get(
    "/v1/cycles/{cycle_id}/teams/{team}/review",
    response_model=ReviewPublic,
    summary="A team's review of a cycle",
)
async def get_team_review(cycle_id: UUID, team: Team, request: Request, _: Actor) -> JSONResponse:
    return await _read(request, review_id_for(cycle_id, team.strip()))


@reviews.put(
    "/v1/reviews/{review_id}/scores/{key_result_id}",
    response_model=CommandAnswer,
    summary="Score a key result (0.0-1.0); a score other than the suggestion needs a comment",
)
async def put_score(
    review_id: UUID,
    key_result_id: UUID,
    body: ScoreBody,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
) -> JSONResponse:
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.score(
            uow,
            review_id,
            key_result_id=key_result_id,
            score=body.score,
            comment=body.comment,
            expected=expected,
        ),
        context,
        idempotency=idem,
    )
    return command_response(result)


@reviews.post(
    "/v1/reviews/{review_id}/reflections",
    response_model=ReflectionAnswer,
    summary="Add a reflection: went_well, learned, do_differently or do_more_of",
)
async def add_reflection(
    review_id: UUID,
    body: ReflectionCreate,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
) -> JSONResponse:
    result = await runtime_of(request).writer.execute(
        lambda uow: uc.reflect(uow, review_id, kind=body.kind, text=body.text, expected=expected),
        context,
        idempotency=idem,
    )
    return command_response(result)


@reviews.post(
    "/v1/reviews/{review_id}/carry-over",
    response_model=CommandAnswer,
    summary="Decide an objective's fate: carry_over (into next_cycle_id), drop or done",
)
async def carry_over(
    review_id: UUID,
    body: CarryOverBody,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
    min_position: MinPosition = None,
) -> JSONResponse:
    runtime = runtime_of(request)
    await runtime.wait_for_position(min_position)
    catalogue, _ = _parts(runtime)
    result = await runtime.writer.execute(
        lambda uow: uc.decide(
            uow,
            catalogue,
            review_id,
            objective_id=body.objective_id,
            decision=body.decision,
            next_cycle_id=body.next_cycle_id,
            expected=expected,
        ),
        context,
        idempotency=idem,
    )
    return command_response(result)


@reviews.post(
    "/v1/reviews/{review_id}/finalise",
    response_model=CommandAnswer,
    summary="Finalise the review (every objective decided); it is read-only afterwards",
)
async def finalise(
    review_id: UUID,
    request: Request,
    context: Context,
    idem: IdempotencyDep,
    expected: IfMatch,
) -> JSONResponse:
    runtime = runtime_of(request)
    catalogue, progress = _parts(runtime)
    result = await runtime.writer.execute(
        lambda uow: uc.finalise(uow, catalogue, progress, review_id, expected=expected),
        context,
        idempotency=idem,
    )
    return command_response(result)


routers = [reviews]
