"""How the goals service reacts to other services' events.

The quarter shift: when a team's cycle review is finalised, each objective it decided to carry
over is created in the next cycle, linked to its origin and to the review, with the lessons the
review recorded; its key results start from their last checked-in value. The ids of what is
created are derived from the review and the origin (`shared.contract`), and the objective, its
key results and the inbox record of the review's event are saved in one transaction: whatever
is redelivered or restarted, each decision yields exactly one carried objective.
"""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from eventsourcing.domain import Aggregate
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from services.goals.application import GoalsApplication
from services.goals.domain import Cycle, KeyResult, Objective
from shared.consumer import InvalidMessage, Received
from shared.contract import carried_key_result_id, carried_objective_id
from shared.domain import NotFound, RuleBroken, check

FINALISED = "okr.reviews.cycle_review.finalised"


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CarriedKeyResult(_Data):
    key_result_id: UUID
    start: float = Field(allow_inf_nan=False)


class Decision(_Data):
    objective_id: UUID
    decision: Literal["carry_over", "drop", "done"]
    next_cycle_id: UUID | None = None
    key_results: list[CarriedKeyResult] = Field(default_factory=list, max_length=100)


class Lesson(_Data):
    kind: str = Field(max_length=50)
    text: str = Field(max_length=5000)


class Finalised(_Data):
    cycle_id: UUID
    team: str = Field(min_length=1, max_length=200)
    decisions: list[Decision] = Field(max_length=500)
    lessons: list[Lesson] = Field(default_factory=list, max_length=1000)


class CarryOver:
    """The policy: a finalised review → its carried objectives in their next cycles."""

    def __init__(self, app: GoalsApplication) -> None:
        self.app = app

    def _get(self, aggregate_id: UUID, cls: type[Any], what: str) -> Any:
        try:
            agg: Any = self.app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            agg = None
        if not isinstance(agg, cls):
            raise NotFound(f"No {what} {aggregate_id}")
        return agg

    def _exists(self, aggregate_id: UUID) -> bool:
        try:
            self.app.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return False
        return True

    def react(self, event: Received) -> list[Aggregate]:
        if event.name != FINALISED:
            return []
        try:
            data = Finalised.model_validate(event.data)
        except ValidationError as e:
            raise InvalidMessage(f"{event.type}: {e.errors()[0]['msg']}") from e
        review_id = event.aggregate_id
        lessons = [{"kind": lesson.kind, "text": lesson.text} for lesson in data.lessons]
        created: list[Aggregate] = []
        for decision in data.decisions:
            if decision.decision != "carry_over":
                continue
            created.extend(self._carry(review_id, decision, lessons))
        return created

    def _carry(
        self, review_id: UUID, decision: Decision, lessons: list[dict[str, str]]
    ) -> list[Aggregate]:
        new_id = carried_objective_id(review_id, decision.objective_id)
        if self._exists(new_id):
            return []  # carried already (the inbox normally says so first)
        check(
            decision.next_cycle_id is not None,
            RuleBroken,
            f"Objective {decision.objective_id} is carried over without a next cycle",
        )
        assert decision.next_cycle_id is not None
        origin: Objective = self._get(decision.objective_id, Objective, "objective")
        cycle: Cycle = self._get(decision.next_cycle_id, Cycle, "cycle")
        parent: Objective | None = None
        if origin.parent_id is not None:
            parent = self._get(origin.parent_id, Objective, "parent objective")
        objective = Objective.carry_over(
            origin=origin,
            cycle=cycle,
            parent=parent,
            review_id=review_id,
            lessons=lessons,
            id=new_id,
        )
        created: list[Aggregate] = [objective]
        for carried in decision.key_results:
            origin_kr: KeyResult = self._get(carried.key_result_id, KeyResult, "key result")
            if origin_kr.objective_id != origin.id or origin_kr.removed:
                continue
            if origin_kr.kind != "boolean" and carried.start == origin_kr.target:
                continue  # reached: nothing left to carry
            created.append(
                KeyResult.carry_over(
                    origin=origin_kr,
                    objective=objective,
                    cycle=cycle,
                    start=carried.start,
                    id=carried_key_result_id(new_id, origin_kr.id),
                )
            )
        return created
