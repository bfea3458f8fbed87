"""Who may run which command: the roles and teams of the token against the team that owns
what the command changes.

| permission            | admin | lead of T | member of T | the key result's owner |
|-----------------------|-------|-----------|-------------|------------------------|
| `cycles:manage`       | yes   |           |             |                        |
| `okrs:plan` (T)       | yes   | yes       |             |                        |
| `reviews:lead` (T)    | yes   | yes       |             |                        |
| `check-ins:write` (T) | yes   | yes       | yes         | yes                    |
| `meetings:write` (T)  | yes   | yes       | yes         |                        |
| `reviews:reflect` (T) | yes   | yes       | yes         |                        |

"Lead of T" is the role `lead` with T among the token's `teams`; a lead is also a member of
the teams they lead. Owners are matched on the token's `sub`. Reading needs only a valid
token. The use cases call `require` inside the writer, after loading what tells them the
team and before any other rule, so a refusal never depends on the state of a cycle and never
leaves an event behind.

Imports only the standard library and `shared.domain`, like the domains.
"""

from __future__ import annotations

from enum import StrEnum

from shared.domain import CommandContext, Forbidden, current_context


class Permission(StrEnum):
    MANAGE_CYCLES = "cycles:manage"
    PLAN = "okrs:plan"
    LEAD_REVIEW = "reviews:lead"
    CHECK_IN = "check-ins:write"
    HOLD_MEETING = "meetings:write"
    REFLECT = "reviews:reflect"


# The roles that grant a permission within a team (admin holds every permission everywhere).
_TEAM_ROLES: dict[Permission, frozenset[str]] = {
    Permission.MANAGE_CYCLES: frozenset(),
    Permission.PLAN: frozenset({"lead"}),
    Permission.LEAD_REVIEW: frozenset({"lead"}),
    Permission.CHECK_IN: frozenset({"lead", "member"}),
    Permission.HOLD_MEETING: frozenset({"lead", "member"}),
    Permission.REFLECT: frozenset({"lead", "member"}),
}

_OWNER_MAY = frozenset({Permission.CHECK_IN})

_DOING = {
    Permission.MANAGE_CYCLES: "schedule, start or close cycles",
    Permission.PLAN: "create or change the objectives and key results of",
    Permission.LEAD_REVIEW: "open, score, decide on or finalise the review of",
    Permission.CHECK_IN: "check in or correct check-ins on the key results of",
    Permission.HOLD_MEETING: "record or amend the check-in meetings of",
    Permission.REFLECT: "add reflections to the review of",
}


def allowed(
    context: CommandContext,
    permission: Permission,
    *,
    team: str | None = None,
    owner: str | None = None,
) -> bool:
    if "admin" in context.roles:
        return True
    if permission in _OWNER_MAY and owner is not None and owner == context.actor:
        return True
    roles = _TEAM_ROLES[permission]
    return team is not None and team in context.teams and bool(roles & context.roles)


def _needs(permission: Permission, team: str | None) -> str:
    roles = sorted(_TEAM_ROLES[permission])
    if not roles:
        return "the admin role"
    wanted = " or ".join(roles)
    where = f"team {team!r}" if team is not None else "the team"
    extra = ", or being the key result's owner" if permission in _OWNER_MAY else ""
    return f"the role {wanted} in {where}, or admin{extra}"


def require(permission: Permission, *, team: str | None = None, owner: str | None = None) -> None:
    """Refuse the command in progress unless its actor holds `permission` (for `team`)."""
    context = current_context()
    if allowed(context, permission, team=team, owner=owner):
        return
    what = _DOING[permission] + (
        f" team {team!r}" if permission is not Permission.MANAGE_CYCLES else ""
    )
    raise Forbidden(
        str(permission),
        f"{context.actor!r} may not {what}: that takes {_needs(permission, team)} "
        f"(missing permission {permission})",
    )
