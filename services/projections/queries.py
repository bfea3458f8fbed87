"""Reading the projections: the OKR tree of a cycle (now or as it was), the audit trail, and
the other views. Pure reads; each runs in one read transaction."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from services.projections.views import HISTORY_KINDS, Tables
from shared.okr import progress_of, status_of, weighted_progress
from shared.sql import Database, Tx

State = dict[str, Any]


# --- the OKR tree -------------------------------------------------------------------------


# The kinds the tree shows, as SQL: exactly those whose past the history keeps, for `as_of`.
TREE_KINDS = "(" + ", ".join(f"'{kind}'" for kind in sorted(HISTORY_KINDS)) + ")"


def okr_states(tx: Tx, t: Tables, cycle_id: str, as_of: str | None) -> dict[tuple[str, str], State]:
    """Every entity of the cycle, by (kind, id): now, or as it was at `as_of`."""
    # Only the kinds the tree shows: a cycle's check-ins outnumber everything else in it.
    if as_of is None:
        rows = tx.execute(
            f"SELECT kind, id, state FROM {t.entities} WHERE cycle_id = ? AND kind IN {TREE_KINDS}",
            (cycle_id,),
        ).fetchall()
    else:
        # Each entity's last state valid at `as_of`, if it existed then: one probe of the
        # history's time index per entity, so the cost follows the size of the tree, not of
        # its history (an entity keeps its cycle, so the current rows name them all).
        rows = tx.execute(
            f"SELECT e.kind, e.id, (SELECT h.state FROM {t.history} h"
            " WHERE h.kind = e.kind AND h.id = e.id AND h.valid_from <= ?"
            " ORDER BY h.valid_from DESC, h.pos DESC LIMIT 1) AS state"
            f" FROM {t.entities} e WHERE e.cycle_id = ? AND e.kind IN {TREE_KINDS}",
            (as_of, cycle_id),
        ).fetchall()
    return {(r["kind"], r["id"]): json.loads(r["state"]) for r in rows if r["state"] is not None}


def key_result_view(kr: State, progress: State | None) -> State:
    current = progress["current"] if progress and progress["current"] is not None else None
    value = kr["start"] if current is None else current
    confidence = progress["confidence"] if progress else None
    return {
        "id": kr["id"],
        "title": kr["title"],
        "kind": kr["kind"],
        "unit": kr.get("unit", ""),
        "owner": kr["owner"],
        "weight": kr["weight"],
        "start": kr["start"],
        "target": kr["target"],
        "current": current,
        "progress": round(progress_of(kr["kind"], kr["start"], kr["target"], value), 4),
        "confidence": confidence,
        "status": status_of(confidence),
        "last_check_in_at": progress["last_check_in_at"] if progress else None,
        "check_in_count": progress["check_in_count"] if progress else 0,
        "carried_from": kr.get("carried_from"),
    }


def okr_tree(db: Database, t: Tables, cycle_id: str, as_of: str | None = None) -> State | None:
    """The cycle's objectives with their key results, progress, confidence and rollups;
    None when the cycle is unknown (or did not exist yet at `as_of`)."""
    with db.transaction(commit=False) as tx:
        states = okr_states(tx, t, cycle_id, as_of)
    cycle = states.get(("cycle", cycle_id))
    if cycle is None:
        return None
    progress = {i: s for (k, i), s in states.items() if k == "progress"}
    key_results: dict[str, list[State]] = {}
    for (kind, _), kr in states.items():
        if kind == "key_result" and not kr.get("removed"):
            view = key_result_view(kr, progress.get(kr["id"]))
            key_results.setdefault(kr["objective_id"], []).append(view)
    objectives = {
        i: o for (k, i), o in states.items() if k == "objective" and not o.get("archived")
    }
    nodes: dict[str, State] = {}
    for objective_id, o in objectives.items():
        krs = sorted(key_results.get(objective_id, []), key=lambda k: k["title"])
        nodes[objective_id] = {
            "id": objective_id,
            "title": o["title"],
            "description": o.get("description", ""),
            "owner": o["owner"],
            "team": o["team"],
            "parent_id": o.get("parent_id"),
            "carried_from": o.get("carried_from"),
            "review_id": o.get("review_id"),
            "progress": _round(weighted_progress((k["progress"], k["weight"]) for k in krs)),
            "key_results": krs,
            "children": [],
        }
    for node in nodes.values():
        parent = node["parent_id"]
        if parent in nodes:
            nodes[parent]["children"].append(node["id"])
    for node in nodes.values():
        node["children"].sort()
        node["rollup"] = _round(rollup(node["id"], nodes, set()))
    ordered = sorted(nodes.values(), key=lambda n: (n["team"], n["title"], n["id"]))
    return {
        "cycle": {
            "id": cycle_id,
            "name": cycle["name"],
            "starts_on": cycle["starts_on"],
            "ends_on": cycle["ends_on"],
            "status": cycle["status"],
        },
        "as_of": as_of,
        "objectives": ordered,
    }


def rollup(node_id: str, nodes: dict[str, State], seen: set[str]) -> float | None:
    """An objective's own progress and each aligned child's rollup, counted equally."""
    seen.add(node_id)
    node = nodes[node_id]
    parts = [] if node["progress"] is None else [node["progress"]]
    for child in node["children"]:
        if child not in seen:
            rolled = rollup(child, nodes, seen)
            if rolled is not None:
                parts.append(rolled)
    return sum(parts) / len(parts) if parts else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def cycles(db: Database, t: Tables) -> list[State]:
    """Every cycle, the latest first (by start date), with the moment it was first recorded:
    the earliest `as_of` at which its tree exists."""
    with db.transaction(commit=False) as tx:
        rows = tx.execute(
            f"SELECT e.id, e.state, (SELECT MIN(h.valid_from) FROM {t.history} h"
            " WHERE h.kind = 'cycle' AND h.id = e.id) AS recorded_at"
            f" FROM {t.entities} e WHERE e.kind = 'cycle'"
        ).fetchall()
    found = []
    for r in rows:
        cycle = json.loads(r["state"])
        found.append(
            {
                "id": r["id"],
                "name": cycle["name"],
                "starts_on": cycle["starts_on"],
                "ends_on": cycle["ends_on"],
                "status": cycle["status"],
                "recorded_at": r["recorded_at"],
            }
        )
    found.sort(key=lambda c: (c["starts_on"], c["name"], c["id"]), reverse=True)
    return found


def reviews_of(db: Database, t: Tables, cycle_id: str) -> list[State]:
    """The reviews of a cycle, one per team that opened one, by team."""
    with db.transaction(commit=False) as tx:
        rows = tx.execute(
            f"SELECT state FROM {t.entities} WHERE cycle_id = ? AND kind = 'review'", (cycle_id,)
        ).fetchall()
    found = [json.loads(r["state"]) for r in rows]
    return sorted(
        ({"id": r["id"], "team": r["team"], "status": r["status"]} for r in found),
        key=lambda r: r["team"],
    )


# --- the audit trail ----------------------------------------------------------------------

AUDIT_COLUMNS = (
    "pos",
    "at",
    "actor",
    "service",
    "entity_type",
    "entity_id",
    "related_id",
    "event_type",
    "changes",
    "reason",
    "correlation_id",
    "causation_id",
)


def encode_cursor(pos: int) -> str:
    return base64.urlsafe_b64encode(f"audit:{pos}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The position a cursor stands for; ValueError if it is not one of ours."""
    padded = cursor + "=" * (-len(cursor) % 4)
    text = base64.urlsafe_b64decode(padded.encode()).decode()
    kind, _, pos = text.partition(":")
    if kind != "audit" or not pos.isdigit():
        raise ValueError("not an audit cursor")
    return int(pos)


def audit_page(
    db: Database,
    t: Tables,
    *,
    filters: dict[str, str | None],
    before: int | None,
    limit: int,
) -> tuple[list[State], int | None]:
    """Entries newest first. The cursor is a position: entries that arrive later have higher
    positions, so a page never shifts while the trail grows."""
    where, params = _audit_where(filters)
    if before is not None:
        where.append("pos < ?")
        params.append(before)
    sql = f"SELECT * FROM {t.audit}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY pos DESC LIMIT ?"
    with db.transaction(commit=False) as tx:
        rows = tx.execute(sql, (*params, limit + 1)).fetchall()
    entries = [_entry(r) for r in rows[:limit]]
    next_pos = entries[-1]["pos"] if len(rows) > limit else None
    return entries, next_pos


def audit_all(db: Database, t: Tables, filters: dict[str, str | None], limit: int) -> list[State]:
    """Entries oldest first, for export."""
    where, params = _audit_where(filters)
    sql = f"SELECT * FROM {t.audit}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY pos LIMIT ?"
    with db.transaction(commit=False) as tx:
        rows = tx.execute(sql, (*params, limit)).fetchall()
    return [_entry(r) for r in rows]


def _audit_where(filters: dict[str, str | None]) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if filters.get("entity"):
        where.append("(entity_id = ? OR related_id = ?)")
        params += [filters["entity"], filters["entity"]]
    for name, column in (
        ("actor", "actor"),
        ("service", "service"),
        ("event_type", "event_type"),
        ("entity_type", "entity_type"),
    ):
        if filters.get(name):
            where.append(f"{column} = ?")
            params.append(filters[name])
    if filters.get("since"):
        where.append("at >= ?")
        params.append(filters["since"])
    if filters.get("until"):
        where.append("at <= ?")
        params.append(filters["until"])
    return where, params


def _entry(row: Any) -> State:
    entry = {c: row[c] for c in AUDIT_COLUMNS}
    entry["pos"] = int(entry["pos"])
    entry["changes"] = json.loads(entry["changes"])
    return entry


# --- other views --------------------------------------------------------------------------


def children(db: Database, t: Tables, kind: str, parent_id: str) -> list[State]:
    with db.transaction(commit=False) as tx:
        rows = tx.execute(
            f"SELECT state FROM {t.entities} WHERE kind = ? AND parent_id = ?", (kind, parent_id)
        ).fetchall()
    return [json.loads(r["state"]) for r in rows]


def entity(db: Database, t: Tables, kind: str, entity_id: str) -> State | None:
    with db.transaction(commit=False) as tx:
        row = tx.execute(
            f"SELECT state FROM {t.entities} WHERE kind = ? AND id = ?", (kind, entity_id)
        ).fetchone()
    return None if row is None else dict(json.loads(row["state"]))


def overdue(
    db: Database, t: Tables, cycle_id: str, cadence_days: int, now: datetime
) -> list[State]:
    """Live key results of the cycle with no check-in for longer than the cadence."""
    tree = okr_tree(db, t, cycle_id)
    if tree is None:
        return []
    limit = (now - timedelta(days=cadence_days)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    found = []
    for o in tree["objectives"]:
        for k in o["key_results"]:
            last = k["last_check_in_at"]
            if last is None or last < limit:
                found.append(
                    {
                        "key_result_id": k["id"],
                        "title": k["title"],
                        "owner": k["owner"],
                        "objective_id": o["id"],
                        "team": o["team"],
                        "last_check_in_at": last,
                    }
                )
    return found


KEY_RESULT_STATUSES = ("on_track", "at_risk", "off_track", "no_check_in")


def key_result_statuses(db: Database, t: Tables) -> dict[str, int]:
    """How many live key results of the started (active) cycles are on track, at risk, off
    track (by their latest confidence), or have no check-in yet. Scheduled and closed cycles,
    removed key results and those of archived objectives are left out."""
    counts = dict.fromkeys(KEY_RESULT_STATUSES, 0)
    with db.transaction(commit=False) as tx:
        cycles = tx.execute(f"SELECT id, state FROM {t.entities} WHERE kind = 'cycle'").fetchall()
        for cycle in cycles:
            if json.loads(cycle["state"]).get("status") != "active":
                continue
            rows = tx.execute(
                f"SELECT kind, id, state FROM {t.entities} WHERE cycle_id = ?"
                " AND kind IN ('objective', 'key_result', 'progress')",
                (cycle["id"],),
            ).fetchall()
            states = {(r["kind"], r["id"]): json.loads(r["state"]) for r in rows}
            for (kind, kr_id), kr in states.items():
                if kind != "key_result" or kr.get("removed"):
                    continue
                objective = states.get(("objective", kr.get("objective_id")))
                if objective is not None and objective.get("archived"):
                    continue
                progress = states.get(("progress", kr_id))
                status = status_of(progress.get("confidence") if progress else None)
                counts[status or "no_check_in"] += 1
    return counts


def search(db: Database, t: Tables, text: str, limit: int) -> list[State]:
    """Wins, learnings and reflections across cycles that contain `text` (any case)."""
    needle = text.casefold()
    with db.transaction(commit=False) as tx:
        rows = tx.execute(
            f"SELECT kind, id, state FROM {t.entities} WHERE kind IN ('meeting', 'review')"
            " ORDER BY pos DESC"
        ).fetchall()
    found: list[State] = []
    for r in rows:
        state = json.loads(r["state"])
        if r["kind"] == "meeting":
            for field in ("wins", "learnings"):
                for item in state.get(field, []):
                    if needle in item.casefold():
                        found.append(_hit("meeting", state, field, item, state["held_on"]))
        else:
            for reflection in state.get("reflections", []):
                if needle in reflection["text"].casefold():
                    found.append(
                        _hit(
                            "review",
                            state,
                            reflection["kind"],
                            reflection["text"],
                            reflection["at"],
                        )
                    )
        if len(found) >= limit:
            break
    return found[:limit]


def _hit(source: str, state: State, kind: str, text: str, at: str) -> State:
    return {
        "source": source,
        "id": state["id"],
        "cycle_id": state["cycle_id"],
        "team": state["team"],
        "kind": kind,
        "text": text,
        "at": at,
    }
