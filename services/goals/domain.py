"""Cycles, objectives and key results: the aggregates of the goals service and their rules.

Each public method is an intent: it checks the rules, then records one event through a private
method decorated with `@event`. The decorated methods only change state, so replaying stored
events never re-runs a rule. Every change event carries the value it replaced
(`previous_<field>`) and the `reason` given, so subscribers and the audit trail see from/to
without keeping state of their own.
"""

from __future__ import annotations

import math
from datetime import date
from uuid import UUID

from eventsourcing.domain import event

from shared.domain import InvalidValue, OkrAggregate, RuleBroken, check

SCHEDULED, ACTIVE, CLOSED = "scheduled", "active", "closed"
KINDS = ("number", "percent", "currency", "boolean")
MAX_ALIGNMENT_DEPTH = 32


def _text(value: str, field: str) -> str:
    value = value.strip()
    check(bool(value), InvalidValue, f"{field} must not be blank", field)
    return value


def _finite(value: float, field: str) -> float:
    check(math.isfinite(value), InvalidValue, f"{field} must be a finite number", field)
    return float(value)


class Cycle(OkrAggregate):
    """A planning period, usually a quarter: scheduled → active → closed."""

    @classmethod
    def schedule(cls, name: str, starts_on: date, ends_on: date) -> Cycle:
        name = _text(name, "name")
        check(ends_on > starts_on, InvalidValue, "ends_on must be after starts_on", "ends_on")
        return cls(name=name, starts_on=starts_on, ends_on=ends_on)

    @event("Scheduled")
    def __init__(self, name: str, starts_on: date, ends_on: date) -> None:
        self.name = name
        self.starts_on = starts_on
        self.ends_on = ends_on
        self.status = SCHEDULED

    def start(self) -> None:
        check(
            self.status == SCHEDULED,
            RuleBroken,
            f"Only a scheduled cycle can start; this one is {self.status}",
        )
        self._started()

    @event("Started")
    def _started(self) -> None:
        self.status = ACTIVE

    def close(self, reason: str | None = None) -> None:
        check(
            self.status == ACTIVE,
            RuleBroken,
            f"Only an active cycle can close; this one is {self.status}",
        )
        self._closed(reason=reason)

    @event("Closed")
    def _closed(self, reason: str | None) -> None:
        self.status = CLOSED

    def check_open_for_changes(self) -> None:
        check(
            self.status != CLOSED,
            RuleBroken,
            f"Cycle {self.id} is closed: its objectives and key results can no longer change",
        )


class Objective(OkrAggregate):
    """A qualitative goal of a team in a cycle, optionally aligned to a parent objective."""

    @classmethod
    def create(
        cls,
        *,
        cycle: Cycle,
        title: str,
        description: str,
        owner: str,
        team: str,
        parent: Objective | None,
        id: UUID | None = None,
    ) -> Objective:
        cycle.check_open_for_changes()
        if parent is not None:
            parent.check_usable_as_parent()
        return cls._create(  # type: ignore[no-any-return]
            cls.Created,
            id=id,
            cycle_id=cycle.id,
            title=_text(title, "title"),
            description=description.strip(),
            owner=_text(owner, "owner"),
            team=_text(team, "team"),
            parent_id=parent.id if parent is not None else None,
        )

    @event("Created")
    def __init__(
        self,
        cycle_id: UUID,
        title: str,
        description: str,
        owner: str,
        team: str,
        parent_id: UUID | None,
    ) -> None:
        self.cycle_id = cycle_id
        self.title = title
        self.description = description
        self.owner = owner
        self.team = team
        self.parent_id = parent_id
        self.archived = False
        self.carried_from: UUID | None = None
        self.review_id: UUID | None = None
        self.lessons: list[dict[str, str]] = []

    @classmethod
    def carry_over(
        cls,
        *,
        origin: Objective,
        cycle: Cycle,
        parent: Objective | None,
        review_id: UUID,
        lessons: list[dict[str, str]],
        id: UUID,
    ) -> Objective:
        """The objective `origin` continued in the next `cycle`, with the lessons of the review
        that decided it."""
        check(cycle.id != origin.cycle_id, RuleBroken, "An objective is carried into another cycle")
        carried = cls.create(
            cycle=cycle,
            title=origin.title,
            description=origin.description,
            owner=origin.owner,
            team=origin.team,
            parent=parent if parent is not None and not parent.archived else None,
            id=id,
        )
        carried._carried_over(
            origin_objective_id=origin.id,
            origin_cycle_id=origin.cycle_id,
            review_id=review_id,
            lessons=lessons,
        )
        return carried

    @event("CarriedOver")
    def _carried_over(
        self,
        origin_objective_id: UUID,
        origin_cycle_id: UUID,
        review_id: UUID,
        lessons: list[dict[str, str]],
    ) -> None:
        self.carried_from = origin_objective_id
        self.review_id = review_id
        self.lessons = list(lessons)

    def check_not_archived(self) -> None:
        check(not self.archived, RuleBroken, f"Objective {self.id} is archived")

    def check_usable_as_parent(self) -> None:
        check(
            not self.archived,
            RuleBroken,
            f"Objective {self.id} is archived and cannot be a parent",
            "parent_id",
        )

    def revise(
        self,
        *,
        title: str | None = None,
        description: str | None = None,
        owner: str | None = None,
        team: str | None = None,
        realign_to: tuple[Objective | None, list[UUID]] | None = None,
        reason: str | None = None,
    ) -> None:
        """Several changes at once (a PATCH): all are checked before any is recorded."""
        self.check_not_archived()
        if title is not None:
            _text(title, "title")
        if owner is not None:
            _text(owner, "owner")
        if team is not None:
            _text(team, "team")
        if realign_to is not None:
            self._check_alignment(*realign_to)
        if title is not None:
            self.retitle(title, reason)
        if description is not None:
            self.describe(description, reason)
        if owner is not None:
            self.change_owner(owner, reason)
        if team is not None:
            self.change_team(team, reason)
        if realign_to is not None:
            self.realign(realign_to[0], realign_to[1], reason)

    # Each change below is a no-op when the value is unchanged, so a PATCH that repeats
    # the current state records nothing.

    def retitle(self, title: str, reason: str | None) -> None:
        self.check_not_archived()
        title = _text(title, "title")
        if title != self.title:
            self._retitled(title=title, previous_title=self.title, reason=reason)

    @event("Retitled")
    def _retitled(self, title: str, previous_title: str, reason: str | None) -> None:
        self.title = title

    def describe(self, description: str, reason: str | None) -> None:
        self.check_not_archived()
        description = description.strip()
        if description != self.description:
            self._described(
                description=description, previous_description=self.description, reason=reason
            )

    @event("Described")
    def _described(self, description: str, previous_description: str, reason: str | None) -> None:
        self.description = description

    def change_owner(self, owner: str, reason: str | None) -> None:
        self.check_not_archived()
        owner = _text(owner, "owner")
        if owner != self.owner:
            self._owner_changed(owner=owner, previous_owner=self.owner, reason=reason)

    @event("OwnerChanged")
    def _owner_changed(self, owner: str, previous_owner: str, reason: str | None) -> None:
        self.owner = owner

    def change_team(self, team: str, reason: str | None) -> None:
        self.check_not_archived()
        team = _text(team, "team")
        if team != self.team:
            self._team_changed(team=team, previous_team=self.team, reason=reason)

    @event("TeamChanged")
    def _team_changed(self, team: str, previous_team: str, reason: str | None) -> None:
        self.team = team

    def realign(self, parent: Objective | None, ancestry: list[UUID], reason: str | None) -> None:
        """Align to `parent` (or to none). `ancestry` is the parent's chain of ancestors."""
        self.check_not_archived()
        self._check_alignment(parent, ancestry)
        parent_id = parent.id if parent is not None else None
        if parent_id != self.parent_id:
            self._realigned(parent_id=parent_id, previous_parent_id=self.parent_id, reason=reason)

    def _check_alignment(self, parent: Objective | None, ancestry: list[UUID]) -> None:
        if parent is not None:
            parent.check_usable_as_parent()
            check(
                parent.id != self.id and self.id not in ancestry,
                RuleBroken,
                "An objective cannot be aligned under itself or one of its own descendants",
                "parent_id",
            )

    @event("Realigned")
    def _realigned(
        self, parent_id: UUID | None, previous_parent_id: UUID | None, reason: str | None
    ) -> None:
        self.parent_id = parent_id

    def archive(self, reason: str | None) -> None:
        self.check_not_archived()
        self._archived(reason=reason)

    @event("Archived")
    def _archived(self, reason: str | None) -> None:
        self.archived = True


class KeyResult(OkrAggregate):
    """A measurable result of an objective: from `start` towards `target`."""

    @classmethod
    def define(
        cls,
        *,
        objective: Objective,
        cycle: Cycle,
        title: str,
        kind: str,
        unit: str,
        start: float,
        target: float,
        weight: float,
        owner: str,
        id: UUID | None = None,
    ) -> KeyResult:
        cycle.check_open_for_changes()
        check(
            not objective.archived,
            RuleBroken,
            f"Objective {objective.id} is archived: it takes no new key results",
        )
        check(kind in KINDS, InvalidValue, f"kind must be one of {', '.join(KINDS)}", "kind")
        start = _finite(start, "start")
        target = _finite(target, "target")
        if kind == "boolean":
            check(
                (start, target) == (0.0, 1.0),
                InvalidValue,
                "a boolean key result goes from 0 to 1",
                "target",
            )
        else:
            check_value_for_kind(kind, start, "start")
            check_value_for_kind(kind, target, "target")
            check(target != start, InvalidValue, "target must differ from start", "target")
        return cls._create(  # type: ignore[no-any-return]
            cls.Defined,  # type: ignore[attr-defined]
            id=id,
            objective_id=objective.id,
            cycle_id=cycle.id,
            title=_text(title, "title"),
            kind=kind,
            unit=unit.strip(),
            start=start,
            target=target,
            weight=check_weight(weight),
            owner=_text(owner, "owner"),
        )

    @event("Defined")
    def __init__(
        self,
        objective_id: UUID,
        cycle_id: UUID,
        title: str,
        kind: str,
        unit: str,
        start: float,
        target: float,
        weight: float,
        owner: str,
    ) -> None:
        self.objective_id = objective_id
        self.cycle_id = cycle_id
        self.title = title
        self.kind = kind
        self.unit = unit
        self.start = start
        self.target = target
        self.weight = weight
        self.owner = owner
        self.removed = False
        self.carried_from: UUID | None = None

    @classmethod
    def carry_over(
        cls, *, origin: KeyResult, objective: Objective, cycle: Cycle, start: float, id: UUID
    ) -> KeyResult:
        """`origin` continued under the carried `objective`, starting where it got to."""
        carried = cls.define(
            objective=objective,
            cycle=cycle,
            title=origin.title,
            kind=origin.kind,
            unit=origin.unit,
            start=0.0 if origin.kind == "boolean" else start,
            target=origin.target,
            weight=origin.weight,
            owner=origin.owner,
            id=id,
        )
        carried._carried_over(origin_key_result_id=origin.id, origin_start=origin.start)
        return carried

    @event("CarriedOver")
    def _carried_over(self, origin_key_result_id: UUID, origin_start: float) -> None:
        self.carried_from = origin_key_result_id

    def check_not_removed(self) -> None:
        check(not self.removed, RuleBroken, f"Key result {self.id} has been removed")

    def revise(
        self,
        *,
        title: str | None = None,
        owner: str | None = None,
        weight: float | None = None,
        reason: str | None = None,
    ) -> None:
        """Several changes at once (a PATCH): all are checked before any is recorded."""
        self.check_not_removed()
        if title is not None:
            _text(title, "title")
        if owner is not None:
            _text(owner, "owner")
        if weight is not None:
            check_weight(weight)
        if title is not None:
            self.retitle(title, reason)
        if owner is not None:
            self.change_owner(owner, reason)
        if weight is not None:
            self.reweight(weight, reason)

    def adjust_target(self, target: float, reason: str) -> None:
        self.check_not_removed()
        check(
            self.kind != "boolean",
            RuleBroken,
            "The target of a boolean key result is always 1",
            "target",
        )
        target = _finite(target, "target")
        check_value_for_kind(self.kind, target, "target")
        check(target != self.start, InvalidValue, "target must differ from start", "target")
        check(target != self.target, RuleBroken, f"The target is already {target}", "target")
        self._target_adjusted(
            target=target, previous_target=self.target, reason=_text(reason, "reason")
        )

    @event("TargetAdjusted")
    def _target_adjusted(self, target: float, previous_target: float, reason: str) -> None:
        self.target = target

    def retitle(self, title: str, reason: str | None) -> None:
        self.check_not_removed()
        title = _text(title, "title")
        if title != self.title:
            self._retitled(title=title, previous_title=self.title, reason=reason)

    @event("Retitled")
    def _retitled(self, title: str, previous_title: str, reason: str | None) -> None:
        self.title = title

    def change_owner(self, owner: str, reason: str | None) -> None:
        self.check_not_removed()
        owner = _text(owner, "owner")
        if owner != self.owner:
            self._owner_changed(owner=owner, previous_owner=self.owner, reason=reason)

    @event("OwnerChanged")
    def _owner_changed(self, owner: str, previous_owner: str, reason: str | None) -> None:
        self.owner = owner

    def reweight(self, weight: float, reason: str | None) -> None:
        self.check_not_removed()
        weight = check_weight(weight)
        if weight != self.weight:
            self._reweighted(weight=weight, previous_weight=self.weight, reason=reason)

    @event("Reweighted")
    def _reweighted(self, weight: float, previous_weight: float, reason: str | None) -> None:
        self.weight = weight

    def remove(self, reason: str) -> None:
        self.check_not_removed()
        self._removed(reason=_text(reason, "reason"))

    @event("Removed")
    def _removed(self, reason: str) -> None:
        self.removed = True


def check_weight(weight: float) -> float:
    weight = _finite(weight, "weight")
    check(weight > 0, InvalidValue, "weight must be greater than 0", "weight")
    check(weight <= 1000, InvalidValue, "weight must be at most 1000", "weight")
    return weight


def check_value_for_kind(kind: str, value: float, field: str) -> None:
    if kind == "percent":
        check(0 <= value <= 100, InvalidValue, f"{field} of a percent must be 0..100", field)
