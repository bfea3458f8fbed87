"""The goals use cases. Each takes a unit of work, ids and primitives, and returns the
aggregate the command is about; it knows nothing of HTTP or NATS. The writer runs them and
saves everything they changed in one transaction.
"""

from __future__ import annotations

from datetime import date
from uuid import UUID

from services.goals.domain import MAX_ALIGNMENT_DEPTH, Cycle, KeyResult, Objective
from shared.domain import InvalidValue, check
from shared.permissions import Permission, require
from shared.store import ServiceApplication
from shared.writer import UnitOfWork


class GoalsApplication(ServiceApplication):
    name = "goals"


# --- cycles -------------------------------------------------------------------------------


def schedule_cycle(uow: UnitOfWork, name: str, starts_on: date, ends_on: date) -> Cycle:
    require(Permission.MANAGE_CYCLES)
    return uow.add(Cycle.schedule(name, starts_on, ends_on))


def start_cycle(uow: UnitOfWork, cycle_id: UUID, expected: int | None) -> Cycle:
    require(Permission.MANAGE_CYCLES)
    cycle = uow.get(cycle_id, Cycle)
    uow.expect_version(cycle, expected)
    cycle.start()
    return cycle


def close_cycle(uow: UnitOfWork, cycle_id: UUID, reason: str | None, expected: int | None) -> Cycle:
    require(Permission.MANAGE_CYCLES)
    cycle = uow.get(cycle_id, Cycle)
    uow.expect_version(cycle, expected)
    cycle.close(reason)
    return cycle


# --- objectives ---------------------------------------------------------------------------


def _parent(uow: UnitOfWork, parent_id: UUID | None) -> Objective | None:
    if parent_id is None:
        return None
    return uow.get(parent_id, Objective, "parent objective")


def _ancestry(uow: UnitOfWork, objective: Objective) -> list[UUID]:
    """The ids above `objective`, nearest first."""
    chain: list[UUID] = []
    current = objective
    while current.parent_id is not None:
        check(
            len(chain) < MAX_ALIGNMENT_DEPTH,
            InvalidValue,
            f"Alignment chains are limited to {MAX_ALIGNMENT_DEPTH} levels",
            "parent_id",
        )
        chain.append(current.parent_id)
        current = uow.get(current.parent_id, Objective)
    return chain


def create_objective(
    uow: UnitOfWork,
    *,
    cycle_id: UUID,
    title: str,
    description: str,
    owner: str,
    team: str,
    parent_id: UUID | None,
) -> Objective:
    require(Permission.PLAN, team=team)
    cycle = uow.get(cycle_id, Cycle)
    parent = _parent(uow, parent_id)
    if parent is not None:
        _ancestry(uow, parent)  # enforces the depth bound
    return uow.add(
        Objective.create(
            cycle=cycle,
            title=title,
            description=description,
            owner=owner,
            team=team,
            parent=parent,
        )
    )


def revise_objective(
    uow: UnitOfWork,
    objective_id: UUID,
    *,
    title: str | None = None,
    description: str | None = None,
    owner: str | None = None,
    team: str | None = None,
    realign: bool = False,
    parent_id: UUID | None = None,
    reason: str | None = None,
    expected: int | None = None,
) -> Objective:
    """A PATCH: `realign` says whether `parent_id` was given (None detaches)."""
    objective = uow.get(objective_id, Objective)
    require(Permission.PLAN, team=objective.team)
    if team is not None and team != objective.team:
        require(Permission.PLAN, team=team)  # handing it over takes a say in both teams
    uow.expect_version(objective, expected)
    uow.get(objective.cycle_id, Cycle).check_open_for_changes()
    realign_to: tuple[Objective | None, list[UUID]] | None = None
    if realign:
        parent = _parent(uow, parent_id)
        realign_to = (parent, _ancestry(uow, parent) if parent is not None else [])
    objective.revise(
        title=title,
        description=description,
        owner=owner,
        team=team,
        realign_to=realign_to,
        reason=reason,
    )
    return objective


def archive_objective(
    uow: UnitOfWork, objective_id: UUID, reason: str | None, expected: int | None
) -> Objective:
    objective = uow.get(objective_id, Objective)
    require(Permission.PLAN, team=objective.team)
    uow.expect_version(objective, expected)
    uow.get(objective.cycle_id, Cycle).check_open_for_changes()
    objective.archive(reason)
    return objective


# --- key results --------------------------------------------------------------------------


def define_key_result(
    uow: UnitOfWork,
    objective_id: UUID,
    *,
    title: str,
    kind: str,
    unit: str,
    start: float,
    target: float,
    weight: float,
    owner: str,
) -> KeyResult:
    objective = uow.get(objective_id, Objective)
    require(Permission.PLAN, team=objective.team)
    cycle = uow.get(objective.cycle_id, Cycle)
    return uow.add(
        KeyResult.define(
            objective=objective,
            cycle=cycle,
            title=title,
            kind=kind,
            unit=unit,
            start=start,
            target=target,
            weight=weight,
            owner=owner,
        )
    )


def _open_key_result(uow: UnitOfWork, key_result_id: UUID, expected: int | None) -> KeyResult:
    key_result = uow.get(key_result_id, KeyResult, "key result")
    objective = uow.get(key_result.objective_id, Objective)
    require(Permission.PLAN, team=objective.team)
    uow.expect_version(key_result, expected)
    uow.get(key_result.cycle_id, Cycle).check_open_for_changes()
    key_result.check_not_removed()
    objective.check_not_archived()
    return key_result


def revise_key_result(
    uow: UnitOfWork,
    key_result_id: UUID,
    *,
    title: str | None = None,
    owner: str | None = None,
    weight: float | None = None,
    reason: str | None = None,
    expected: int | None = None,
) -> KeyResult:
    key_result = _open_key_result(uow, key_result_id, expected)
    key_result.revise(title=title, owner=owner, weight=weight, reason=reason)
    return key_result


def adjust_target(
    uow: UnitOfWork, key_result_id: UUID, target: float, reason: str, expected: int | None
) -> KeyResult:
    key_result = _open_key_result(uow, key_result_id, expected)
    key_result.adjust_target(target, reason)
    return key_result


def remove_key_result(
    uow: UnitOfWork, key_result_id: UUID, reason: str, expected: int | None
) -> KeyResult:
    key_result = _open_key_result(uow, key_result_id, expected)
    key_result.remove(reason)
    return key_result
