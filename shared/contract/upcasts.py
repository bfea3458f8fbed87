"""Upcasts: how an event stored or published at an older version becomes the current one.

Standard library only, so the domains can use these on the events they read back from their
stores (eventsourcing calls `upcast_vN_vN+1(state)` on the stored state) and consumers on the
`data` of an older message from the stream. Both shapes carry the same public fields, so one
function serves both. Each works in place, as eventsourcing expects.
"""

from __future__ import annotations

from typing import Any

MEETING_LISTS = ("wins", "learnings", "blockers", "priorities")


def team_check_in_amended_v1_v2(data: dict[str, Any]) -> None:
    """`okr.checkins.team_check_in.amended` v1 → v2.

    v1 carried all four lists and their previous values, with null for a list that did not
    change (eight fields, half of them usually null). v2 carries only what changed, in the
    shape the audit trail uses: `changes: {list name: {from, to}}`.
    """
    changes: dict[str, dict[str, list[str]]] = {}
    for name in MEETING_LISTS:
        after = data.pop(name, None)
        before = data.pop(f"previous_{name}", None)
        if after is not None:
            changes[name] = {"from": list(before or []), "to": list(after)}
    data["changes"] = changes


# (type without version, from version) → the function that lifts it one version.
UPCASTS: dict[tuple[str, int], Any] = {
    ("okr.checkins.team_check_in.amended", 1): team_check_in_amended_v1_v2,
}


def upcast(name: str, version: int, latest: int, data: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` lifted from `version` to `latest`; KeyError if a step is missing."""
    if version == latest:
        return data
    lifted = dict(data)
    while version < latest:
        UPCASTS[(name, version)](lifted)
        version += 1
    return lifted
