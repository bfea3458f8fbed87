"""The projections: every service's events folded into entity states, their history, and an
audit trail — in one transaction per batch with the consumer's inbox records.

Each event changes the state of one entity of the view (a cycle, objective, key result, a key
result's progress, a check-in, a meeting, a review). The view keeps:

- `view_entities`: each entity's current state (JSON), by kind and id, with its cycle;
- `view_history`: every state each entity of the OKR tree (cycle, objective, key result,
  progress) has had, from the time of the event that made it (`valid_from`, never before the
  state it replaces): the past as it was, for `as_of`;
- `view_audit`: one entry per event — when, who, which service and entity, the event type, the
  changes (field → from/to), the reason, correlation and causation ids.

Entities are split by source so that each one changes in one service's order: a key result's
definition comes from the goals events, its progress from the checkins events. A read joins
them. `pos` numbers the applied events in order: history rows and audit entries share it, and
audit pages are cut by it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from shared.consumer import InvalidMessage, Received
from shared.sql import Tx


class Tables:
    """The table names of one generation of the views. A rebuild fills a new generation while
    the live one keeps serving, then switches (`services/projections/rebuild.py`)."""

    def __init__(self, generation: int) -> None:
        self.generation = generation
        base = "view" if generation == 1 else f"view{generation}"
        self.entities = "{t}" + f"{base}_entities"
        self.history = "{t}" + f"{base}_history"
        self.audit = "{t}" + f"{base}_audit"
        self.base = base

    @property
    def consumer(self) -> str:
        """The inbox and durable-consumer name of this generation."""
        return "views" if self.generation == 1 else f"views-g{self.generation}"

    def create(self, *, indexed: bool = True) -> list[str]:
        """The tables, and their secondary indexes unless `indexed` is false (a rebuild
        creates those once its tables are filled: see `indexes`)."""
        b = self.base
        tables = [
            f"CREATE TABLE IF NOT EXISTS {self.entities} (kind TEXT NOT NULL, id TEXT NOT NULL,"
            " cycle_id TEXT, parent_id TEXT, state TEXT NOT NULL, pos BIGINT NOT NULL,"
            " PRIMARY KEY (kind, id))",
            f"CREATE TABLE IF NOT EXISTS {self.history} (kind TEXT NOT NULL, id TEXT NOT NULL,"
            " cycle_id TEXT, valid_from TEXT NOT NULL, pos BIGINT NOT NULL, state TEXT NOT NULL,"
            " PRIMARY KEY (kind, id, pos))",
            # Replaced by `_history_time` (it made `as_of` read every earlier state).
            f"DROP INDEX IF EXISTS {{t}}{b}_history_cycle",
            f"CREATE TABLE IF NOT EXISTS {self.audit} (pos BIGINT PRIMARY KEY, at TEXT NOT NULL,"
            " actor TEXT NOT NULL, service TEXT NOT NULL, entity_type TEXT NOT NULL,"
            " entity_id TEXT NOT NULL, related_id TEXT, event_type TEXT NOT NULL,"
            " changes TEXT NOT NULL, reason TEXT, correlation_id TEXT NOT NULL,"
            " causation_id TEXT NOT NULL, source TEXT NOT NULL, sequence BIGINT NOT NULL)",
        ]
        return tables + self.indexes() if indexed else tables

    def indexes(self) -> list[str]:
        """The indexes the reads need and applying events does not (it reads by primary key
        only). Built after a rebuild's bulk load, one sort each, they cost a fraction of
        keeping them up to date through a million inserts at random places."""
        b = self.base
        return [
            f"CREATE INDEX IF NOT EXISTS {b}_entities_cycle ON {self.entities} (cycle_id, kind)",
            f"CREATE INDEX IF NOT EXISTS {b}_entities_parent ON {self.entities} (parent_id, kind)",
            # `as_of` seeks each entity's last state at a time: one index probe per entity,
            # however long its history (valid_from never goes back within an entity).
            f"CREATE INDEX IF NOT EXISTS {b}_history_time ON {self.history}"
            " (kind, id, valid_from, pos)",
            f"CREATE INDEX IF NOT EXISTS {b}_audit_entity ON {self.audit} (entity_id, pos)",
            f"CREATE INDEX IF NOT EXISTS {b}_audit_related ON {self.audit} (related_id, pos)",
            f"CREATE INDEX IF NOT EXISTS {b}_audit_at ON {self.audit} (at)",
        ]

    def drop(self) -> list[str]:
        return [f"DROP TABLE IF EXISTS {t}" for t in (self.entities, self.history, self.audit)]


State = dict[str, Any]

# Entity states kept in memory between batches (some 30 MB at most): enough for the key
# results, progresses and objectives of 20,000 key results. Check-ins are not kept: each is
# written once and read again only if corrected, and a million of them would push out the
# states every event reads.
RECENT_STATES = 50_000
NOT_KEPT = frozenset({"check_in"})

# The kinds whose past states are kept in the history: those the OKR tree shows, which is all
# that `as_of` reads. Check-ins, meetings and reviews are read only as they are now; a history
# row for each check-in would be the history's largest part, written and never read.
HISTORY_KINDS = frozenset({"cycle", "objective", "key_result", "progress"})


def utc(at: datetime) -> str:
    """One fixed, sortable text form for every time in the view."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    # "…T12:00:00.000000Z": isoformat()'s digits, formatted for half its time (twice per event).
    return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (  # noqa: UP031
        at.year,
        at.month,
        at.day,
        at.hour,
        at.minute,
        at.second,
        at.microsecond,
    )


def _dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# Fields an event carries that are about the change, not the entity's state.
NOT_STATE = frozenset({"reason"})


def generic_changes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`x` with `previous_x` in the data is a change of `x` from the one to the other (unless
    they are equal: a correction of the confidence alone keeps its value)."""
    changes = {}
    for key, value in data.items():
        previous_key = f"previous_{key}"
        if previous_key in data and value != data[previous_key]:
            changes[key] = {"from": data[previous_key], "to": value}
    return changes


def created_changes(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A creation: every field it sets, from nothing."""
    return {
        k: {"from": None, "to": v}
        for k, v in data.items()
        if k not in NOT_STATE and v is not None and v != [] and v != ""
    }


class Effect:
    """What one event does to the view: the entity's new state and the audit entry."""

    def __init__(
        self,
        kind: str,
        entity_id: str,
        state: State,
        changes: dict[str, dict[str, Any]],
        *,
        cycle_id: str | None = None,
        parent_id: str | None = None,
        related_id: str | None = None,
        extra: Sequence[tuple[str, str, State, str | None, str | None]] = (),
    ) -> None:
        self.kind = kind
        self.entity_id = entity_id
        self.state = state
        self.changes = changes
        self.cycle_id = cycle_id
        self.parent_id = parent_id
        self.related_id = related_id
        # Further entities the same event changes: (kind, id, state, cycle, parent).
        self.extra = list(extra)


Handler = Callable[["Views", Tx, Received], Effect]


class Views:
    """The projector (see the module docstring). Runs on the consumer's worker thread."""

    def __init__(self, tables: Tables | None = None, *, indexed: bool = True) -> None:
        self.t = tables or Tables(1)
        self.indexed = indexed
        self.pos = 0
        self._committed_pos = 0
        self._lock = threading.Lock()
        # What the batch's events wrote, held until `flush` writes it in a few statements:
        # entity states by (kind, id) with the time each is valid from (the batch's later
        # events read them from here), and the history rows and audit entries in order.
        self._states: dict[tuple[str, str], tuple[str | None, str | None, str, int, str]] = {}
        self._history: list[tuple[str, str, str | None, str, int, str]] = []
        self._audit: list[tuple[Any, ...]] = []
        # Committed entity states, the most recently written first out of the store: this
        # projector is the only writer of its generation's tables, so they stay true, and
        # applying an event rarely needs to read the store at all.
        self._recent: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()  # state, since
        # When the states this batch read from the store became valid.
        self._read_since: dict[tuple[str, str], str] = {}

    # --- the projector protocol ---------------------------------------------------------

    def tables(self) -> Sequence[str]:
        return self.t.create(indexed=self.indexed)

    def load(self, tx: Tx) -> None:
        row = tx.execute(f"SELECT MAX(pos) AS pos FROM {self.t.audit}").fetchone()
        self.pos = self._committed_pos = int(row["pos"] or 0)
        self._recent.clear()  # read again from the store as they are needed
        self._forget()

    def flush(self, tx: Tx) -> None:
        tx.upsert(
            self.t.entities,
            [(k, i, c, p, text, pos) for (k, i), (c, p, text, pos, _) in self._states.items()],
            " ON CONFLICT (kind, id) DO UPDATE SET cycle_id = excluded.cycle_id,"
            " parent_id = excluded.parent_id, state = excluded.state, pos = excluded.pos",
        )
        tx.append(self.t.history, self._history)
        tx.append(self.t.audit, self._audit)

    def committed(self) -> None:
        self._committed_pos = self.pos
        recent = self._recent
        for key, staged in self._states.items():
            if key[0] in NOT_KEPT:
                continue
            recent[key] = (staged[2], staged[4])
            recent.move_to_end(key)
        while len(recent) > RECENT_STATES:
            recent.popitem(last=False)
        self._forget()

    def rolled_back(self) -> None:
        self.pos = self._committed_pos
        self._forget()

    def _forget(self) -> None:
        self._states.clear()
        self._history.clear()
        self._audit.clear()
        self._read_since.clear()

    def apply(self, tx: Tx, event: Received) -> None:
        # parse() let only types of the contract through, and HANDLERS covers all of them.
        handler = HANDLERS[event.name]
        try:
            effect = handler(self, tx, event)
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidMessage(f"{event.type}: {type(e).__name__}: {e}") from e
        self.pos += 1
        at = utc(event.time)
        self._write(
            effect.kind, effect.entity_id, effect.state, effect.cycle_id, effect.parent_id, at
        )
        for kind, entity_id, state, cycle_id, parent_id in effect.extra:
            self._write(kind, entity_id, state, cycle_id, parent_id, at)
        self._audit.append(
            (
                self.pos,
                at,
                event.actor,
                event.service,
                event.name.split(".")[2],
                event.aggregate_key,
                effect.related_id,
                event.name,
                _dump(effect.changes),
                event.data.get("reason"),
                event.correlation_id,
                event.causation_id,
                event.source,
                event.sequence,
            )
        )

    # --- reading and writing states -----------------------------------------------------

    def current(self, tx: Tx, kind: str, entity_id: str) -> State | None:
        key = (kind, entity_id)
        staged = self._states.get(key)
        if staged is not None:  # written by an earlier event of this batch
            return dict(orjson.loads(staged[2]))
        recent = self._recent.get(key)
        if recent is not None:
            return dict(orjson.loads(recent[0]))
        row = tx.execute(
            f"SELECT e.state, h.valid_from FROM {self.t.entities} e LEFT JOIN {self.t.history} h"
            " ON h.kind = e.kind AND h.id = e.id AND h.pos = e.pos WHERE e.kind = ? AND e.id = ?",
            (kind, entity_id),
        ).fetchone()
        if row is None:
            return None
        if row["valid_from"] is not None:
            self._read_since[key] = row["valid_from"]
        return dict(orjson.loads(row["state"]))

    def _since(self, key: tuple[str, str], at: str) -> str:
        """When a new state of the entity becomes valid: at its event's time, but never before
        the state it replaces (read by `current` first), so that each entity's history stays
        in time order even if a service's clock stepped back, and `as_of` can seek it."""
        staged = self._states.get(key)
        if staged is not None:
            before: str | None = staged[4]
        else:
            recent = self._recent.get(key)
            before = recent[1] if recent is not None else self._read_since.get(key)
        return at if before is None or at >= before else before

    def _write(
        self,
        kind: str,
        entity_id: str,
        state: State,
        cycle_id: str | None,
        parent_id: str | None,
        at: str,
    ) -> None:
        text = _dump(state)
        key = (kind, entity_id)
        since = self._since(key, at)
        self._states[key] = (cycle_id, parent_id, text, self.pos, since)
        if kind in HISTORY_KINDS:
            self._history.append((kind, entity_id, cycle_id, since, self.pos, text))

    # --- goals ----------------------------------------------------------------------------

    def goals_entity(self, tx: Tx, kind: str, event: Received) -> Effect:
        entity_id = event.aggregate_key
        data = event.data
        before = self.current(tx, kind, entity_id)
        created = before is None
        state: State = dict(before or {"id": entity_id})
        name = event.name.rsplit(".", 1)[1]
        if created:
            state.update({k: v for k, v in data.items() if k not in NOT_STATE})
            changes = created_changes(data)
            if kind == "cycle":
                state["status"] = "scheduled"
            if kind == "objective":
                state.setdefault("archived", False)
            if kind == "key_result":
                state.setdefault("removed", False)
        else:
            changes = generic_changes(data)
            for field, change in changes.items():
                state[field] = change["to"]
            flag = {
                "started": ("status", "active"),
                "closed": ("status", "closed"),
                "archived": ("archived", True),
                "removed": ("removed", True),
            }.get(name)
            if flag is not None:
                field, value = flag
                changes[field] = {"from": state.get(field), "to": value}
                state[field] = value
            if name == "carried_over":
                changes.update(created_changes(data))
                state["carried_from"] = data.get("origin_objective_id") or data.get(
                    "origin_key_result_id"
                )
                if "review_id" in data:
                    state["review_id"] = data["review_id"]
                    state["lessons"] = data.get("lessons", [])
        cycle_id = entity_id if kind == "cycle" else state.get("cycle_id")
        parent_id = state.get("objective_id") if kind == "key_result" else state.get("parent_id")
        return Effect(kind, entity_id, state, changes, cycle_id=cycle_id, parent_id=parent_id)

    # --- checkins -------------------------------------------------------------------------

    def progress_opened(self, tx: Tx, event: Received) -> Effect:
        d = event.data
        key_result_id = str(d["key_result_id"])
        cycle_id = str(d["cycle_id"])
        state: State = {
            "key_result_id": key_result_id,
            "cycle_id": cycle_id,
            "current": None,
            "confidence": None,
            "last_check_in_at": None,
            "check_in_count": 0,
            "latest_check_in_id": None,
        }
        created = created_changes(d)
        return Effect(
            "progress",
            key_result_id,
            state,
            created,
            cycle_id=cycle_id,
            parent_id=key_result_id,
            related_id=key_result_id,
        )

    def checked_in(self, tx: Tx, event: Received) -> Effect:
        d = event.data
        key_result_id = str(d["key_result_id"])
        progress = self.current(tx, "progress", key_result_id)
        if progress is None:
            raise ValueError(f"no progress opened for key result {key_result_id}")
        value, confidence = float(d["value"]), int(d["confidence"])
        changes = {
            "value": {"from": progress["current"], "to": value},
            "confidence": {"from": progress["confidence"], "to": confidence},
        }
        check_in_id = str(d["check_in_id"])
        at = utc(event.time)
        progress.update(
            current=value,
            confidence=confidence,
            last_check_in_at=at,
            check_in_count=int(progress["check_in_count"]) + 1,
            latest_check_in_id=check_in_id,
        )
        check_in = {
            "id": check_in_id,
            "key_result_id": key_result_id,
            "number": int(d["number"]),
            "value": value,
            "confidence": confidence,
            "note": d.get("note", ""),
            "blockers": list(d.get("blockers", [])),
            "at": at,
            "actor": event.actor,
            "corrections": [],
        }
        cycle_id = progress["cycle_id"]
        return Effect(
            "progress",
            key_result_id,
            progress,
            changes,
            cycle_id=cycle_id,
            parent_id=key_result_id,
            related_id=key_result_id,
            extra=[("check_in", check_in_id, check_in, cycle_id, key_result_id)],
        )

    def check_in_corrected(self, tx: Tx, event: Received) -> Effect:
        d = event.data
        key_result_id, check_in_id = str(d["key_result_id"]), str(d["check_in_id"])
        progress = self.current(tx, "progress", key_result_id)
        check_in = self.current(tx, "check_in", check_in_id)
        if progress is None or check_in is None:
            raise ValueError(f"no check-in {check_in_id} to correct")
        changes = generic_changes(d)
        check_in.update(value=float(d["value"]), confidence=int(d["confidence"]))
        check_in["corrections"] = [
            *check_in["corrections"],
            {
                "value": float(d["value"]),
                "confidence": int(d["confidence"]),
                "reason": d.get("reason"),
                "at": utc(event.time),
                "actor": event.actor,
            },
        ]
        cycle_id = progress["cycle_id"]
        extra: list[tuple[str, str, State, str | None, str | None]] = [
            ("check_in", check_in_id, check_in, cycle_id, key_result_id)
        ]
        if progress["latest_check_in_id"] == check_in_id:
            progress.update(current=check_in["value"], confidence=check_in["confidence"])
        return Effect(
            "progress",
            key_result_id,
            progress,
            changes,
            cycle_id=cycle_id,
            parent_id=key_result_id,
            related_id=key_result_id,
            extra=extra,
        )

    def meeting(self, tx: Tx, event: Received) -> Effect:
        entity_id = event.aggregate_key
        before = self.current(tx, "meeting", entity_id)
        data = event.data
        if before is None:
            state = {"id": entity_id, **{k: v for k, v in data.items() if k not in NOT_STATE}}
            changes = created_changes(data)
        else:
            state = before
            # v2 (consumers lift v1 on receipt): only the lists that changed, each {from, to}.
            changes = {name: dict(change) for name, change in data["changes"].items()}
            for field, change in changes.items():
                state[field] = change["to"]
        return Effect(
            "meeting",
            entity_id,
            state,
            changes,
            cycle_id=state["cycle_id"],
            parent_id=state["team"],
        )

    # --- reviews --------------------------------------------------------------------------

    def review(self, tx: Tx, event: Received) -> Effect:
        entity_id = event.aggregate_key
        data = event.data
        name = event.name.rsplit(".", 1)[1]
        before = self.current(tx, "review", entity_id)
        if before is None:
            state: State = {
                "id": entity_id,
                "cycle_id": str(data["cycle_id"]),
                "team": data["team"],
                "status": "open",
                "objectives": {o["objective_id"]: dict(o) for o in data["objectives"]},
                "key_results": {k["key_result_id"]: dict(k) for k in data["key_results"]},
                "reflections": [],
            }
            changes = {"status": {"from": None, "to": "open"}}
        else:
            state = before
            changes = generic_changes(data)
            if name == "scored":
                kr = state["key_results"][data["key_result_id"]]
                kr.update(score=data["score"], comment=data.get("comment"))
            elif name == "reflected":
                state["reflections"].append(
                    {
                        "kind": data["kind"],
                        "text": data["text"],
                        "actor": event.actor,
                        "at": utc(event.time),
                    }
                )
                reflection: Any = {"kind": data["kind"], "text": data["text"]}
                changes = {"reflection": {"from": None, "to": reflection}}
            elif name == "carry_over_decided":
                o = state["objectives"][data["objective_id"]]
                o.update(decision=data["decision"], next_cycle_id=data.get("next_cycle_id"))
            elif name == "finalised":
                changes = {"status": {"from": "open", "to": "final"}}
                state["status"] = "final"
                for s in data.get("scores", []):
                    state["key_results"][s["key_result_id"]]["final_score"] = s["score"]
        return Effect(
            "review", entity_id, state, changes, cycle_id=state["cycle_id"], parent_id=state["team"]
        )


def _goals(kind: str) -> Handler:
    def handle(views: Views, tx: Tx, event: Received) -> Effect:
        return views.goals_entity(tx, kind, event)

    return handle


HANDLERS: dict[str, Handler] = {
    **{f"okr.goals.cycle.{e}": _goals("cycle") for e in ("scheduled", "started", "closed")},
    **{
        f"okr.goals.objective.{e}": _goals("objective")
        for e in (
            "created",
            "retitled",
            "described",
            "owner_changed",
            "team_changed",
            "realigned",
            "archived",
            "carried_over",
        )
    },
    **{
        f"okr.goals.key_result.{e}": _goals("key_result")
        for e in (
            "defined",
            "target_adjusted",
            "retitled",
            "owner_changed",
            "reweighted",
            "removed",
            "carried_over",
        )
    },
    "okr.checkins.key_result_progress.opened": Views.progress_opened,
    "okr.checkins.key_result_progress.checked_in": Views.checked_in,
    "okr.checkins.key_result_progress.check_in_corrected": Views.check_in_corrected,
    "okr.checkins.team_check_in.held": Views.meeting,
    "okr.checkins.team_check_in.amended": Views.meeting,
    **{
        f"okr.reviews.cycle_review.{e}": Views.review
        for e in ("opened", "scored", "reflected", "carry_over_decided", "finalised")
    },
}
