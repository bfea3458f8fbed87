"""A catalogue of the goals service's cycles, objectives and key results, built from its public
events (never from its database or code), for the services that need to know them: the
check-in service (which key results take check-ins) and the review service (whose review
covers what).

It is a projector for the shared consumer: each goals event is applied once, in the same
transaction as the consumer's inbox records, to tables in the consuming service's own store; a
copy is kept in memory so that commands are checked without a query. The event data is read as
a tolerant reader would: the fields used are validated, anything else is ignored.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.consumer import InvalidMessage, Received
from shared.sql import Tx


class _Data(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CycleScheduled(_Data):
    name: str = Field(min_length=1, max_length=200)
    starts_on: date
    ends_on: date


class ObjectiveCreated(_Data):
    cycle_id: UUID
    title: str = Field(min_length=1, max_length=300)
    owner: str = Field(min_length=1, max_length=200)
    team: str = Field(min_length=1, max_length=200)


class TeamChanged(_Data):
    team: str = Field(min_length=1, max_length=200)


class ObjectiveRetitled(_Data):
    title: str = Field(min_length=1, max_length=300)


class OwnerChanged(_Data):
    owner: str = Field(min_length=1, max_length=200)


class KeyResultDefined(_Data):
    objective_id: UUID
    cycle_id: UUID
    title: str = Field(min_length=1, max_length=300)
    kind: Literal["number", "percent", "currency", "boolean"]
    unit: str = Field(default="", max_length=50)
    start: float = Field(allow_inf_nan=False)
    target: float = Field(allow_inf_nan=False)
    weight: float = Field(default=1.0, allow_inf_nan=False, gt=0)
    owner: str = Field(min_length=1, max_length=200)


class KeyResultRetitled(_Data):
    title: str = Field(min_length=1, max_length=300)


class Reweighted(_Data):
    weight: float = Field(allow_inf_nan=False, gt=0)


class TargetAdjusted(_Data):
    target: float = Field(allow_inf_nan=False)


class Removed(_Data):
    reason: str = Field(default="", max_length=2000)


@dataclass(frozen=True)
class CycleEntry:
    id: UUID
    name: str
    starts_on: date
    ends_on: date
    status: str  # scheduled | active | closed


@dataclass(frozen=True)
class ObjectiveEntry:
    id: UUID
    cycle_id: UUID
    title: str
    owner: str
    team: str
    archived: bool


@dataclass(frozen=True)
class KeyResultEntry:
    id: UUID
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
    removed_reason: str


Entry = CycleEntry | ObjectiveEntry | KeyResultEntry

TABLES = [
    "CREATE TABLE IF NOT EXISTS {t}goals_cycles (id TEXT PRIMARY KEY, name TEXT NOT NULL,"
    " starts_on TEXT NOT NULL, ends_on TEXT NOT NULL, status TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {t}goals_objectives (id TEXT PRIMARY KEY,"
    " cycle_id TEXT NOT NULL, title TEXT NOT NULL, owner TEXT NOT NULL, team TEXT NOT NULL,"
    " archived INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS {t}goals_key_results (id TEXT PRIMARY KEY,"
    " objective_id TEXT NOT NULL, cycle_id TEXT NOT NULL, title TEXT NOT NULL,"
    " kind TEXT NOT NULL, unit TEXT NOT NULL, start_value DOUBLE PRECISION NOT NULL,"
    " target_value DOUBLE PRECISION NOT NULL, weight DOUBLE PRECISION NOT NULL,"
    " owner TEXT NOT NULL, removed INTEGER NOT NULL, removed_reason TEXT NOT NULL)",
]


class Catalogue:
    """What a service knows of the goals service's cycles, objectives and key results. Read
    from any thread; written by the consumer's worker thread only."""

    def __init__(self) -> None:
        self.cycles: dict[UUID, CycleEntry] = {}
        self.objectives: dict[UUID, ObjectiveEntry] = {}
        self.key_results: dict[UUID, KeyResultEntry] = {}
        self._staged: dict[UUID, Entry] = {}
        self._lock = threading.Lock()
        # Whether the consumer has seen everything the stream holds (set by the service).
        self.is_current: Callable[[], bool] = lambda: False

    # --- reading ------------------------------------------------------------------------

    def cycle(self, cycle_id: UUID) -> CycleEntry | None:
        return self.cycles.get(cycle_id)

    def objective(self, objective_id: UUID) -> ObjectiveEntry | None:
        return self.objectives.get(objective_id)

    def key_result(self, key_result_id: UUID) -> KeyResultEntry | None:
        return self.key_results.get(key_result_id)

    def team_in_cycle(self, team: str, cycle_id: UUID) -> bool:
        return bool(self.team_objectives(team, cycle_id))

    def team_objectives(self, team: str, cycle_id: UUID) -> list[ObjectiveEntry]:
        """The team's objectives in the cycle that are not archived."""
        return [
            o
            for o in list(self.objectives.values())
            if o.team == team and o.cycle_id == cycle_id and not o.archived
        ]

    def objective_key_results(self, objective_id: UUID) -> list[KeyResultEntry]:
        """The objective's key results that are not removed."""
        return [
            k
            for k in list(self.key_results.values())
            if k.objective_id == objective_id and not k.removed
        ]

    # --- the projector ------------------------------------------------------------------

    def tables(self) -> Sequence[str]:
        return TABLES

    def load(self, tx: Tx) -> None:
        cycles = tx.execute("SELECT * FROM {t}goals_cycles").fetchall()
        objectives = tx.execute("SELECT * FROM {t}goals_objectives").fetchall()
        key_results = tx.execute("SELECT * FROM {t}goals_key_results").fetchall()
        with self._lock:
            self.cycles = {
                UUID(r["id"]): CycleEntry(
                    UUID(r["id"]),
                    r["name"],
                    date.fromisoformat(r["starts_on"]),
                    date.fromisoformat(r["ends_on"]),
                    r["status"],
                )
                for r in cycles
            }
            self.objectives = {
                UUID(r["id"]): ObjectiveEntry(
                    UUID(r["id"]),
                    UUID(r["cycle_id"]),
                    r["title"],
                    r["owner"],
                    r["team"],
                    bool(r["archived"]),
                )
                for r in objectives
            }
            self.key_results = {
                UUID(r["id"]): KeyResultEntry(
                    UUID(r["id"]),
                    UUID(r["objective_id"]),
                    UUID(r["cycle_id"]),
                    r["title"],
                    r["kind"],
                    r["unit"],
                    float(r["start_value"]),
                    float(r["target_value"]),
                    float(r["weight"]),
                    r["owner"],
                    bool(r["removed"]),
                    r["removed_reason"],
                )
                for r in key_results
            }

    def apply(self, tx: Tx, event: Received) -> None:
        if event.service != "goals":
            return
        handler = _HANDLERS.get(event.name)
        if handler is None:
            return  # an event the catalogue does not need: still tracked by the inbox
        try:
            entry = handler(self, event)
        except ValidationError as e:
            raise InvalidMessage(f"{event.type}: {e.errors()[0]['msg']}") from e
        if entry is not None:
            self._write(tx, entry)
            self._staged[entry.id] = entry

    def flush(self, tx: Tx) -> None:
        pass  # written as applied

    def committed(self) -> None:
        with self._lock:
            for entry in self._staged.values():
                if isinstance(entry, CycleEntry):
                    self.cycles[entry.id] = entry
                elif isinstance(entry, ObjectiveEntry):
                    self.objectives[entry.id] = entry
                else:
                    self.key_results[entry.id] = entry
        self._staged.clear()

    def rolled_back(self) -> None:
        self._staged.clear()

    # --- event handlers -----------------------------------------------------------------

    def _current(self, cls: type[Any], entry_id: UUID) -> Any:
        entry = self._staged.get(entry_id)
        if entry is None:
            tables: dict[type[Any], dict[UUID, Any]] = {
                CycleEntry: self.cycles,
                ObjectiveEntry: self.objectives,
                KeyResultEntry: self.key_results,
            }
            entry = tables[cls].get(entry_id)
        if not isinstance(entry, cls):
            raise InvalidMessage(f"no {cls.__name__} {entry_id} to change")
        return entry

    def _cycle_scheduled(self, e: Received) -> Entry:
        d = CycleScheduled.model_validate(e.data)
        return CycleEntry(e.aggregate_id, d.name, d.starts_on, d.ends_on, "scheduled")

    def _cycle_started(self, e: Received) -> Entry:
        return replace(self._current(CycleEntry, e.aggregate_id), status="active")

    def _cycle_closed(self, e: Received) -> Entry:
        return replace(self._current(CycleEntry, e.aggregate_id), status="closed")

    def _objective_created(self, e: Received) -> Entry:
        d = ObjectiveCreated.model_validate(e.data)
        return ObjectiveEntry(e.aggregate_id, d.cycle_id, d.title, d.owner, d.team, False)

    def _team_changed(self, e: Received) -> Entry:
        d = TeamChanged.model_validate(e.data)
        return replace(self._current(ObjectiveEntry, e.aggregate_id), team=d.team)

    def _objective_retitled(self, e: Received) -> Entry:
        d = ObjectiveRetitled.model_validate(e.data)
        return replace(self._current(ObjectiveEntry, e.aggregate_id), title=d.title)

    def _objective_owner_changed(self, e: Received) -> Entry:
        d = OwnerChanged.model_validate(e.data)
        return replace(self._current(ObjectiveEntry, e.aggregate_id), owner=d.owner)

    def _objective_archived(self, e: Received) -> Entry:
        return replace(self._current(ObjectiveEntry, e.aggregate_id), archived=True)

    def _key_result_defined(self, e: Received) -> Entry:
        d = KeyResultDefined.model_validate(e.data)
        return KeyResultEntry(
            e.aggregate_id,
            d.objective_id,
            d.cycle_id,
            d.title,
            d.kind,
            d.unit,
            d.start,
            d.target,
            d.weight,
            d.owner,
            False,
            "",
        )

    def _key_result_retitled(self, e: Received) -> Entry:
        d = KeyResultRetitled.model_validate(e.data)
        return replace(self._current(KeyResultEntry, e.aggregate_id), title=d.title)

    def _key_result_owner_changed(self, e: Received) -> Entry:
        d = OwnerChanged.model_validate(e.data)
        return replace(self._current(KeyResultEntry, e.aggregate_id), owner=d.owner)

    def _reweighted(self, e: Received) -> Entry:
        d = Reweighted.model_validate(e.data)
        return replace(self._current(KeyResultEntry, e.aggregate_id), weight=d.weight)

    def _target_adjusted(self, e: Received) -> Entry:
        d = TargetAdjusted.model_validate(e.data)
        return replace(self._current(KeyResultEntry, e.aggregate_id), target=d.target)

    def _key_result_removed(self, e: Received) -> Entry:
        d = Removed.model_validate(e.data)
        return replace(
            self._current(KeyResultEntry, e.aggregate_id), removed=True, removed_reason=d.reason
        )

    # --- writing ------------------------------------------------------------------------

    @staticmethod
    def _write(tx: Tx, entry: Entry) -> None:
        if isinstance(entry, CycleEntry):
            tx.execute(
                "INSERT INTO {t}goals_cycles VALUES (?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
                " SET name = excluded.name, starts_on = excluded.starts_on,"
                " ends_on = excluded.ends_on, status = excluded.status",
                (
                    str(entry.id),
                    entry.name,
                    entry.starts_on.isoformat(),
                    entry.ends_on.isoformat(),
                    entry.status,
                ),
            )
        elif isinstance(entry, ObjectiveEntry):
            tx.execute(
                "INSERT INTO {t}goals_objectives VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id)"
                " DO UPDATE SET cycle_id = excluded.cycle_id, title = excluded.title,"
                " owner = excluded.owner, team = excluded.team, archived = excluded.archived",
                (
                    str(entry.id),
                    str(entry.cycle_id),
                    entry.title,
                    entry.owner,
                    entry.team,
                    int(entry.archived),
                ),
            )
        else:
            tx.execute(
                "INSERT INTO {t}goals_key_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET objective_id = excluded.objective_id,"
                " cycle_id = excluded.cycle_id, title = excluded.title, kind = excluded.kind,"
                " unit = excluded.unit, start_value = excluded.start_value,"
                " target_value = excluded.target_value, weight = excluded.weight,"
                " owner = excluded.owner, removed = excluded.removed,"
                " removed_reason = excluded.removed_reason",
                (
                    str(entry.id),
                    str(entry.objective_id),
                    str(entry.cycle_id),
                    entry.title,
                    entry.kind,
                    entry.unit,
                    entry.start,
                    entry.target,
                    entry.weight,
                    entry.owner,
                    int(entry.removed),
                    entry.removed_reason,
                ),
            )


_HANDLERS: dict[str, Callable[[Catalogue, Received], Entry | None]] = {
    "okr.goals.cycle.scheduled": Catalogue._cycle_scheduled,
    "okr.goals.cycle.started": Catalogue._cycle_started,
    "okr.goals.cycle.closed": Catalogue._cycle_closed,
    "okr.goals.objective.created": Catalogue._objective_created,
    "okr.goals.objective.team_changed": Catalogue._team_changed,
    "okr.goals.objective.retitled": Catalogue._objective_retitled,
    "okr.goals.objective.owner_changed": Catalogue._objective_owner_changed,
    "okr.goals.objective.archived": Catalogue._objective_archived,
    "okr.goals.key_result.defined": Catalogue._key_result_defined,
    "okr.goals.key_result.target_adjusted": Catalogue._target_adjusted,
    "okr.goals.key_result.retitled": Catalogue._key_result_retitled,
    "okr.goals.key_result.owner_changed": Catalogue._key_result_owner_changed,
    "okr.goals.key_result.reweighted": Catalogue._reweighted,
    "okr.goals.key_result.removed": Catalogue._key_result_removed,
}
