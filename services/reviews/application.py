"""The review use cases. Each takes a unit of work, the read models it needs, ids and
primitives, and returns the review it changed; it knows nothing of HTTP or NATS."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from services.reviews.domain import CycleReview, review_id_for
from services.reviews.progress import ProgressView
from shared.catalogue import Catalogue, CycleEntry
from shared.domain import NotFound, NotYetKnown, RuleBroken, check
from shared.okr import progress_of, suggested_score
from shared.permissions import Permission, require
from shared.store import ServiceApplication
from shared.writer import UnitOfWork


class ReviewsApplication(ServiceApplication):
    name = "reviews"

    def review(self, review_id: UUID) -> CycleReview | None:
        try:
            agg: Any = self.repository.get(review_id)
        except AggregateNotFoundError:
            return None
        return agg if isinstance(agg, CycleReview) else None


def _cycle(catalogue: Catalogue, cycle_id: UUID, field: str | None = None) -> CycleEntry:
    cycle = catalogue.cycle(cycle_id)
    if cycle is None:
        if catalogue.is_current():
            raise NotFound(f"No cycle with id {cycle_id}", field=field)
        raise NotYetKnown(
            f"No cycle {cycle_id} is known to the review service yet. It learns of cycles "
            "from the goals service's events, usually within a second: retry shortly, or send "
            "`min_position` with the position the goals service answered."
        )
    return cycle


def open_review(
    uow: UnitOfWork,
    catalogue: Catalogue,
    progress: ProgressView,
    *,
    cycle_id: UUID,
    team: str,
    expected: int | None = None,
) -> CycleReview:
    require(Permission.LEAD_REVIEW, team=team)
    cycle = _cycle(catalogue, cycle_id)
    check(
        cycle.status != "scheduled",
        RuleBroken,
        f"Cycle {cycle.name!r} has not started: there is nothing to review yet",
    )
    existing = uow.find(review_id_for(cycle_id, team), CycleReview)
    if existing is not None:
        uow.expect_version(existing, expected)
    else:
        uow.expect_version_absent(expected)
    check(
        existing is None,
        RuleBroken,
        f"Team {team!r} already has a review of cycle {cycle.name!r} "
        f"({review_id_for(cycle_id, team)})",
    )
    objectives = catalogue.team_objectives(team, cycle_id)
    check(bool(objectives), RuleBroken, f"Team {team!r} has no objectives in cycle {cycle.name!r}")
    scope_objectives = [{"objective_id": str(o.id), "title": o.title} for o in objectives]
    scope_key_results = []
    for o in objectives:
        for k in catalogue.objective_key_results(o.id):
            last = progress.value(k.id)
            current = k.start if last is None else last
            p = progress_of(k.kind, k.start, k.target, current)
            scope_key_results.append(
                {
                    "key_result_id": str(k.id),
                    "objective_id": str(o.id),
                    "title": k.title,
                    "kind": k.kind,
                    "start": k.start,
                    "target": k.target,
                    "last_value": last,
                    "progress": p,
                    "suggested_score": suggested_score(p),
                }
            )
    return uow.add(
        CycleReview.open(
            cycle_id=cycle_id,
            team=team,
            objectives=scope_objectives,
            key_results=scope_key_results,
        )
    )


def _review(
    uow: UnitOfWork,
    review_id: UUID,
    expected: int | None,
    permission: Permission = Permission.LEAD_REVIEW,
) -> CycleReview:
    review = uow.get(review_id, CycleReview, "review")
    require(permission, team=review.team)
    uow.expect_version(review, expected)
    return review


def score(
    uow: UnitOfWork,
    review_id: UUID,
    *,
    key_result_id: UUID,
    score: float,
    comment: str | None,
    expected: int | None,
) -> CycleReview:
    review = _review(uow, review_id, expected)
    review.score(key_result_id, score, comment)
    return review


def reflect(
    uow: UnitOfWork, review_id: UUID, *, kind: str, text: str, expected: int | None
) -> CycleReview:
    review = _review(uow, review_id, expected, Permission.REFLECT)
    reflection_id = review.reflect(kind, text)
    uow.respond(review.id, reflection_id=str(reflection_id))
    return review


def decide(
    uow: UnitOfWork,
    catalogue: Catalogue,
    review_id: UUID,
    *,
    objective_id: UUID,
    decision: str,
    next_cycle_id: UUID | None,
    expected: int | None,
) -> CycleReview:
    review = _review(uow, review_id, expected)
    review.check_open()
    if decision == "carry_over" and next_cycle_id is not None and next_cycle_id != review.cycle_id:
        nxt = _cycle(catalogue, next_cycle_id, "next_cycle_id")
        check(
            nxt.status != "closed",
            RuleBroken,
            f"Cycle {nxt.name!r} is closed: nothing can be carried into it",
            "next_cycle_id",
        )
    review.decide(objective_id, decision, next_cycle_id)
    return review


def finalise(
    uow: UnitOfWork,
    catalogue: Catalogue,
    progress: ProgressView,
    review_id: UUID,
    *,
    expected: int | None,
) -> CycleReview:
    review = _review(uow, review_id, expected)
    review.check_open()
    for o in review.objectives.values():
        if o["decision"] == "carry_over":
            nxt = catalogue.cycle(UUID(o["next_cycle_id"]))
            check(
                nxt is None or nxt.status != "closed",
                RuleBroken,
                f"Objective {o['title']!r} is to be carried into a cycle that has closed "
                "since: decide again",
            )
    latest = {key: progress.value(UUID(key)) for key in review.key_results}
    review.finalise(latest)
    return review
