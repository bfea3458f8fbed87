"""The review domain: a team's review of a cycle — scores beside suggestions, reflections, a
decision per objective, and finalisation, after which the review no longer changes.

Imports only the standard library, `eventsourcing.domain` and the shared domain base. What the
review covers (the team's objectives and key results, their latest progress) comes in as plain
values from the service's read model of the goals and checkins events.
"""

from __future__ import annotations

import math
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import event

from shared.domain import InvalidValue, NotFound, OkrAggregate, RuleBroken, check

REVIEW_NAMESPACE = uuid5(NAMESPACE_URL, "https://okr.example/reviews/cycle-review")
REFLECTION_KINDS = ("went_well", "learned", "do_differently", "do_more_of")
DECISIONS = ("carry_over", "drop", "done")
MAX_TEXT = 5000
MAX_COMMENT = 2000


def review_id_for(cycle_id: UUID, team: str) -> UUID:
    return uuid5(REVIEW_NAMESPACE, f"{cycle_id}|{team}")


def _text(value: str, field: str, limit: int) -> str:
    value = value.strip()
    check(bool(value), InvalidValue, f"{field} must not be blank", field)
    check(len(value) <= limit, InvalidValue, f"{field} takes at most {limit} characters", field)
    return value


class CycleReview(OkrAggregate):
    """One team's review of one cycle (one per cycle and team)."""

    @classmethod
    def open(
        cls,
        *,
        cycle_id: UUID,
        team: str,
        objectives: list[dict[str, Any]],
        key_results: list[dict[str, Any]],
    ) -> CycleReview:
        check(bool(objectives), RuleBroken, f"Team {team!r} has no objectives to review")
        return cls(cycle_id=cycle_id, team=team, objectives=objectives, key_results=key_results)

    @staticmethod
    def create_id(cycle_id: UUID, team: str, **_: Any) -> UUID:
        return review_id_for(cycle_id, team)

    @event("Opened")
    def __init__(
        self,
        cycle_id: UUID,
        team: str,
        objectives: list[dict[str, Any]],
        key_results: list[dict[str, Any]],
    ) -> None:
        self.cycle_id = cycle_id
        self.team = team
        # What the review covers, as it stood when the review opened.
        self.objectives: dict[str, dict[str, Any]] = {
            o["objective_id"]: {**o, "decision": None, "next_cycle_id": None} for o in objectives
        }
        self.key_results: dict[str, dict[str, Any]] = {
            k["key_result_id"]: {**k, "score": None, "comment": None} for k in key_results
        }
        self.reflections: list[dict[str, Any]] = []
        self.final = False

    # --- rules ----------------------------------------------------------------------------

    def check_open(self) -> None:
        check(
            not self.final,
            RuleBroken,
            f"Review {self.id} is final: it can no longer change",
        )

    def _key_result(self, key_result_id: UUID) -> dict[str, Any]:
        entry = self.key_results.get(str(key_result_id))
        if entry is None:
            raise NotFound(f"Key result {key_result_id} is not in this review")
        return entry

    def _objective(self, objective_id: UUID) -> dict[str, Any]:
        entry = self.objectives.get(str(objective_id))
        if entry is None:
            raise NotFound(f"Objective {objective_id} is not in this review", field="objective_id")
        return entry

    # --- scores ---------------------------------------------------------------------------

    def score(self, key_result_id: UUID, score: float, comment: str | None) -> bool:
        """Score a key result; False when it already has this score and comment."""
        self.check_open()
        entry = self._key_result(key_result_id)
        check(
            isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score),
            InvalidValue,
            "score must be a number",
            "score",
        )
        check(0.0 <= score <= 1.0, InvalidValue, "score must be from 0.0 to 1.0", "score")
        score = float(score)
        comment = comment.strip() if comment else None
        if comment is not None:
            check(
                len(comment) <= MAX_COMMENT,
                InvalidValue,
                f"comment takes at most {MAX_COMMENT} characters",
                "comment",
            )
        suggested = entry["suggested_score"]
        check(
            score == suggested or bool(comment),
            InvalidValue,
            f"A score that differs from the suggested {suggested:g} needs a comment saying why",
            "comment",
        )
        if (score, comment) == (entry["score"], entry["comment"]):
            return False
        self._scored(
            key_result_id=str(key_result_id),
            score=score,
            suggested_score=suggested,
            comment=comment,
            previous_score=entry["score"],
            previous_comment=entry["comment"],
        )
        return True

    @event("Scored")
    def _scored(
        self,
        key_result_id: str,
        score: float,
        suggested_score: float,
        comment: str | None,
        previous_score: float | None,
        previous_comment: str | None,
    ) -> None:
        entry = self.key_results[key_result_id]
        entry["score"] = score
        entry["comment"] = comment

    # --- reflections ----------------------------------------------------------------------

    def reflect(self, kind: str, text: str) -> UUID:
        self.check_open()
        check(
            kind in REFLECTION_KINDS,
            InvalidValue,
            f"kind must be one of {', '.join(REFLECTION_KINDS)}",
            "kind",
        )
        reflection_id = uuid5(self.id, f"reflection:{len(self.reflections) + 1}")
        self.trigger_event(
            self.Reflected,
            reflection_id=reflection_id,
            kind=kind,
            text=_text(text, "text", MAX_TEXT),
        )
        return reflection_id

    class Reflected(OkrAggregate.Event):
        reflection_id: UUID
        kind: str
        text: str

        def apply(self, aggregate: Any) -> None:
            aggregate.reflections.append(
                {
                    "id": str(self.reflection_id),
                    "kind": self.kind,
                    "text": self.text,
                    "actor": self.actor,
                    "at": self.timestamp.isoformat(),
                }
            )

    # --- carry-over decisions -------------------------------------------------------------

    def decide(self, objective_id: UUID, decision: str, next_cycle_id: UUID | None) -> bool:
        """Decide what becomes of an objective; False when that is already the decision."""
        self.check_open()
        entry = self._objective(objective_id)
        check(
            decision in DECISIONS,
            InvalidValue,
            f"decision must be one of {', '.join(DECISIONS)}",
            "decision",
        )
        if decision == "carry_over":
            check(
                next_cycle_id is not None,
                InvalidValue,
                "Carrying an objective over needs the next_cycle_id",
                "next_cycle_id",
            )
            check(
                next_cycle_id != self.cycle_id,
                InvalidValue,
                "An objective is carried over into another cycle",
                "next_cycle_id",
            )
        else:
            check(
                next_cycle_id is None,
                InvalidValue,
                f"next_cycle_id goes only with carry_over, not with {decision}",
                "next_cycle_id",
            )
        next_id = str(next_cycle_id) if next_cycle_id else None
        if (decision, next_id) == (entry["decision"], entry["next_cycle_id"]):
            return False
        self._decided(
            objective_id=str(objective_id),
            decision=decision,
            next_cycle_id=next_id,
            previous_decision=entry["decision"],
            previous_next_cycle_id=entry["next_cycle_id"],
        )
        return True

    @event("CarryOverDecided")
    def _decided(
        self,
        objective_id: str,
        decision: str,
        next_cycle_id: str | None,
        previous_decision: str | None,
        previous_next_cycle_id: str | None,
    ) -> None:
        entry = self.objectives[objective_id]
        entry["decision"] = decision
        entry["next_cycle_id"] = next_cycle_id

    # --- finalising -----------------------------------------------------------------------

    def finalise(self, latest_values: dict[str, float | None]) -> None:
        """Close the review. `latest_values` are the key results' last checked-in values now
        (None: never checked in): carried key results start from them."""
        self.check_open()
        undecided = [o["title"] for o in self.objectives.values() if o["decision"] is None]
        check(
            not undecided,
            RuleBroken,
            "Every objective needs a decision before the review is final; undecided: "
            + "; ".join(repr(t) for t in undecided),
        )
        decisions = []
        for objective_id, o in self.objectives.items():
            carried: list[dict[str, Any]] = []
            if o["decision"] == "carry_over":
                for key_result_id, k in self.key_results.items():
                    if k["objective_id"] != objective_id:
                        continue
                    last = latest_values.get(key_result_id)
                    carried.append(
                        {
                            "key_result_id": key_result_id,
                            "start": k["start"] if last is None else last,
                        }
                    )
            decisions.append(
                {
                    "objective_id": objective_id,
                    "decision": o["decision"],
                    "next_cycle_id": o["next_cycle_id"],
                    "key_results": carried,
                }
            )
        scores = [
            {
                "key_result_id": key_result_id,
                "score": k["suggested_score"] if k["score"] is None else k["score"],
                "suggested_score": k["suggested_score"],
            }
            for key_result_id, k in self.key_results.items()
        ]
        lessons = [{"kind": r["kind"], "text": r["text"]} for r in self.reflections]
        self._finalised(
            cycle_id=self.cycle_id,
            team=self.team,
            decisions=decisions,
            scores=scores,
            lessons=lessons,
        )

    @event("Finalised")
    def _finalised(
        self,
        cycle_id: UUID,
        team: str,
        decisions: list[dict[str, Any]],
        scores: list[dict[str, Any]],
        lessons: list[dict[str, str]],
    ) -> None:
        self.final = True
        for s in scores:
            self.key_results[s["key_result_id"]]["final_score"] = s["score"]
