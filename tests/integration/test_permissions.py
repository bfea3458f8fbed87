"""Roles and teams: every command of every service by every kind of caller, allowed (2xx) or
refused with a 403 problem naming the permission, with nothing stored when refused.

Each case gets a team of its own (`t<n>`), an objective of that team and a key result owned by
`owner-t<n>`, so no case depends on another. The callers are built for that team: a lead or
member of it, a lead or member of another team, a viewer of it, the key result's owner (a
viewer of another team), and a token whose only role is one we do not know.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from tests.http.checkins_helpers import caught_up, check_in_body, meeting_body
from tests.http.helpers import (
    add_key_result,
    assert_problem,
    create_cycle,
    create_objective,
    cycle_body,
    key_result_body,
    objective_body,
    stored,
)
from tests.http.reviews_helpers import synced
from tests.support import RunningService, token
from tests.system import STORES, running, store_for

ADMIN, LEAD, LEAD_ELSEWHERE = "admin", "lead", "lead of another team"
MEMBER, MEMBER_ELSEWHERE = "member", "member of another team"
VIEWER, OWNER, UNKNOWN_ROLE = "viewer", "key result owner", "unknown role only"
CALLERS = [ADMIN, LEAD, LEAD_ELSEWHERE, MEMBER, MEMBER_ELSEWHERE, VIEWER, OWNER, UNKNOWN_ROLE]

_teams = itertools.count(1)


def caller_token(caller: str, team: str) -> str:
    """A token for `caller` in a case whose team is `team`."""
    sub = f"{caller.replace(' ', '-')}-{team}"
    roles, teams = {
        ADMIN: (["admin"], []),
        LEAD: (["lead"], [team]),
        LEAD_ELSEWHERE: (["lead"], ["elsewhere"]),
        MEMBER: (["member"], [team]),
        MEMBER_ELSEWHERE: (["member", "viewer"], ["elsewhere"]),
        VIEWER: (["viewer"], [team]),
        OWNER: (["viewer"], ["elsewhere"]),
        UNKNOWN_ROLE: (["superuser", "owner"], [team]),
    }[caller]
    if caller == OWNER:
        sub = f"owner-{team}"
    return token(sub, roles=roles, teams=teams)


@dataclass
class System:
    goals: RunningService
    checkins: RunningService
    reviews: RunningService
    cycle_id: str

    def service(self, name: str) -> RunningService:
        return {"goals": self.goals, "checkins": self.checkins, "reviews": self.reviews}[name]


@dataclass
class Case:
    """What a command needs, made by an admin: the team's objective and key result, etc."""

    team: str
    objective_id: str
    key_result_id: str
    extra: dict[str, str]


@dataclass(frozen=True)
class Command:
    name: str
    service: str
    permission: str
    allowed: frozenset[str]
    # (system, case) -> (method, path, body); may prepare more state first
    request: Callable[[System, Case], Awaitable[tuple[str, str, Any]]]
    needs: str = "goals"  # which services must have caught up with the case's set-up


async def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


# --- the commands -------------------------------------------------------------------------


async def _schedule(s: System, c: Case) -> tuple[str, str, Any]:
    return "POST", "/v1/cycles", cycle_body(name=f"Cycle of {c.team}")


async def _start(s: System, c: Case) -> tuple[str, str, Any]:
    cycle_id = await create_cycle(s.goals.client, start=False)
    return "POST", f"/v1/cycles/{cycle_id}/start", None


async def _close(s: System, c: Case) -> tuple[str, str, Any]:
    cycle_id = await create_cycle(s.goals.client, start=True)
    return "POST", f"/v1/cycles/{cycle_id}/close", {"reason": "done"}


async def _create_objective(s: System, c: Case) -> tuple[str, str, Any]:
    return "POST", "/v1/objectives", objective_body(s.cycle_id, team=c.team)


async def _revise_objective(s: System, c: Case) -> tuple[str, str, Any]:
    return "PATCH", f"/v1/objectives/{c.objective_id}", {"title": "Sharper", "reason": "focus"}


async def _archive(s: System, c: Case) -> tuple[str, str, Any]:
    return "POST", f"/v1/objectives/{c.objective_id}/archive", {"reason": "merged"}


async def _define(s: System, c: Case) -> tuple[str, str, Any]:
    return "POST", f"/v1/objectives/{c.objective_id}/key-results", key_result_body()


async def _revise_kr(s: System, c: Case) -> tuple[str, str, Any]:
    return "PATCH", f"/v1/key-results/{c.key_result_id}", {"weight": 3.5}


async def _target(s: System, c: Case) -> tuple[str, str, Any]:
    body = {"target": 150, "reason": "raise the bar"}
    return "POST", f"/v1/key-results/{c.key_result_id}/target", body


async def _remove(s: System, c: Case) -> tuple[str, str, Any]:
    return "POST", f"/v1/key-results/{c.key_result_id}/remove", {"reason": "not a result"}


async def _check_in(s: System, c: Case) -> tuple[str, str, Any]:
    return "POST", f"/v1/key-results/{c.key_result_id}/check-ins", check_in_body()


async def _correct(s: System, c: Case) -> tuple[str, str, Any]:
    r = await s.checkins.client.post(
        f"/v1/key-results/{c.key_result_id}/check-ins", json=check_in_body()
    )
    check_in_id = (await _ok(r))["id"]
    return "POST", f"/v1/check-ins/{check_in_id}/correct", {"value": 31, "reason": "typo"}


def _meeting(s: System, c: Case) -> dict[str, Any]:
    return meeting_body(s.cycle_id, held_on=date.today().isoformat())


async def _hold(s: System, c: Case) -> tuple[str, str, Any]:
    return "POST", f"/v1/teams/{c.team}/check-in-meetings", _meeting(s, c)


async def _amend(s: System, c: Case) -> tuple[str, str, Any]:
    r = await s.checkins.client.post(f"/v1/teams/{c.team}/check-in-meetings", json=_meeting(s, c))
    meeting_id = (await _ok(r))["id"]
    body = {"wins": ["Shipped it, because we paired"], "reason": "forgot a win"}
    return "PATCH", f"/v1/check-in-meetings/{meeting_id}", body


async def _open_review(s: System, c: Case) -> tuple[str, str, Any]:
    return "POST", "/v1/reviews", {"cycle_id": s.cycle_id, "team": c.team}


async def _review(s: System, c: Case) -> str:
    r = await s.reviews.client.post("/v1/reviews", json={"cycle_id": s.cycle_id, "team": c.team})
    review_id: str = (await _ok(r))["id"]
    return review_id


async def _score(s: System, c: Case) -> tuple[str, str, Any]:
    review_id = await _review(s, c)
    body = {"score": 0.7, "comment": "better than the numbers say"}
    return "PUT", f"/v1/reviews/{review_id}/scores/{c.key_result_id}", body


async def _reflect(s: System, c: Case) -> tuple[str, str, Any]:
    review_id = await _review(s, c)
    body = {"kind": "learned", "text": "Weekly check-ins caught the slip early"}
    return "POST", f"/v1/reviews/{review_id}/reflections", body


async def _decide(s: System, c: Case) -> tuple[str, str, Any]:
    review_id = await _review(s, c)
    body = {"objective_id": c.objective_id, "decision": "done"}
    return "POST", f"/v1/reviews/{review_id}/carry-over", body


async def _finalise(s: System, c: Case) -> tuple[str, str, Any]:
    review_id = await _review(s, c)
    decision = {"objective_id": c.objective_id, "decision": "done"}
    await _ok(await s.reviews.client.post(f"/v1/reviews/{review_id}/carry-over", json=decision))
    return "POST", f"/v1/reviews/{review_id}/finalise", None


def _set(*callers: str) -> frozenset[str]:
    return frozenset(callers)


CYCLES = _set(ADMIN)
PLAN = _set(ADMIN, LEAD)
CHECK_IN = _set(ADMIN, LEAD, MEMBER, OWNER)
TEAM_WORK = _set(ADMIN, LEAD, MEMBER)

COMMANDS = [
    Command("schedule cycle", "goals", "cycles:manage", CYCLES, _schedule),
    Command("start cycle", "goals", "cycles:manage", CYCLES, _start),
    Command("close cycle", "goals", "cycles:manage", CYCLES, _close),
    Command("create objective", "goals", "okrs:plan", PLAN, _create_objective),
    Command("change objective", "goals", "okrs:plan", PLAN, _revise_objective),
    Command("archive objective", "goals", "okrs:plan", PLAN, _archive),
    Command("define key result", "goals", "okrs:plan", PLAN, _define),
    Command("change key result", "goals", "okrs:plan", PLAN, _revise_kr),
    Command("adjust target", "goals", "okrs:plan", PLAN, _target),
    Command("remove key result", "goals", "okrs:plan", PLAN, _remove),
    Command("check in", "checkins", "check-ins:write", CHECK_IN, _check_in, "checkins"),
    Command("correct check-in", "checkins", "check-ins:write", CHECK_IN, _correct, "checkins"),
    Command("hold meeting", "checkins", "meetings:write", TEAM_WORK, _hold, "checkins"),
    Command("amend meeting", "checkins", "meetings:write", TEAM_WORK, _amend, "checkins"),
    Command("open review", "reviews", "reviews:lead", PLAN, _open_review, "reviews"),
    Command("score", "reviews", "reviews:lead", PLAN, _score, "reviews"),
    Command("reflect", "reviews", "reviews:reflect", TEAM_WORK, _reflect, "reviews"),
    Command("decide carry-over", "reviews", "reviews:lead", PLAN, _decide, "reviews"),
    Command("finalise review", "reviews", "reviews:lead", PLAN, _finalise, "reviews"),
]


@pytest.fixture(scope="module", params=STORES)
async def system(request: pytest.FixtureRequest, tmp_path_factory: Any) -> AsyncIterator[System]:
    base: Path = tmp_path_factory.mktemp("permissions")
    store = store_for(request, base)
    async with running(store, base, "goals", "checkins", "reviews") as services:
        goals = services["goals"]
        cycle_id = await create_cycle(goals.client, start=True)
        yield System(goals, services["checkins"], services["reviews"], cycle_id)


async def _case(s: System, needs: str) -> Case:
    team = f"t{next(_teams)}"
    objective_id = await create_objective(s.goals.client, s.cycle_id, team=team)
    key_result_id = await add_key_result(s.goals.client, objective_id, owner=f"owner-{team}")
    if needs == "checkins":
        await caught_up(s.checkins, s.goals)
    elif needs == "reviews":
        await synced(s.reviews, s.goals, s.checkins)
    return Case(team, objective_id, key_result_id, {})


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
async def test_permission_matrix(system: System, command: Command, caller: str) -> None:
    case = await _case(system, command.needs)
    method, path, body = await command.request(system, case)
    svc = system.service(command.service)
    before = await stored(svc)
    headers = {"Authorization": f"Bearer {caller_token(caller, case.team)}"}
    r = await svc.client.request(method, path, json=body, headers=headers)
    if caller in command.allowed:
        assert r.status_code in (200, 201), f"{caller} should be allowed: {r.text}"
        assert await stored(svc) > before
    else:
        problem = assert_problem(r, 403)
        assert problem["permission"] == command.permission
        assert command.permission in problem["detail"]
        assert problem["type"].endswith("/forbidden")
        assert await stored(svc) == before, f"a refused {command.name} stored something"


# --- around the matrix --------------------------------------------------------------------


def _forbidden_count(service: str, permission: str) -> float:
    value = REGISTRY.get_sample_value(
        "okr_commands_forbidden_total", {"service": service, "permission": permission}
    )
    return value or 0.0


async def test_refusal_is_counted_and_logged_with_the_actor_not_the_token(
    system: System, caplog: pytest.LogCaptureFixture
) -> None:
    case = await _case(system, "goals")
    bearer = caller_token(VIEWER, case.team)
    before = _forbidden_count("goals", "okrs:plan")
    with caplog.at_level(logging.WARNING, logger="shared.writer"):
        r = await system.goals.client.post(
            f"/v1/objectives/{case.objective_id}/archive",
            json={"reason": "tidy"},
            headers={"Authorization": f"Bearer {bearer}"},
        )
    assert_problem(r, 403)
    assert _forbidden_count("goals", "okrs:plan") == before + 1
    refusals = [rec for rec in caplog.records if "missing permission okrs:plan" in rec.message]
    assert len(refusals) == 1
    assert getattr(refusals[0], "actor", None) == f"viewer-{case.team}"
    assert all(bearer not in rec.getMessage() for rec in caplog.records)


async def test_handing_an_objective_to_another_team_takes_a_lead_of_both(system: System) -> None:
    case = await _case(system, "goals")
    path = f"/v1/objectives/{case.objective_id}"
    move = {"team": "elsewhere", "reason": "reorganised"}
    lead_here = token("lead-here", roles=["lead"], teams=[case.team])
    r = await system.goals.client.patch(
        path, json=move, headers={"Authorization": f"Bearer {lead_here}"}
    )
    problem = assert_problem(r, 403)
    assert "'elsewhere'" in problem["detail"]
    lead_both = token("lead-both", roles=["lead"], teams=[case.team, "elsewhere"])
    r = await system.goals.client.patch(
        path, json=move, headers={"Authorization": f"Bearer {lead_both}"}
    )
    assert r.status_code == 200, r.text
    # Now the objective belongs to `elsewhere`: its old team's lead has no say any more.
    r = await system.goals.client.patch(
        path, json={"title": "Back?"}, headers={"Authorization": f"Bearer {lead_here}"}
    )
    assert_problem(r, 403)


async def test_a_member_checks_in_on_a_key_result_of_a_team_they_joined_after_it_moved(
    system: System,
) -> None:
    """The check-in service decides from its catalogue, which follows the objective's team."""
    case = await _case(system, "checkins")
    r = await system.goals.client.patch(
        f"/v1/objectives/{case.objective_id}", json={"team": "newteam", "reason": "moved"}
    )
    await _ok(r)
    await caught_up(system.checkins, system.goals)
    path = f"/v1/key-results/{case.key_result_id}/check-ins"
    old = token("old-member", roles=["member"], teams=[case.team])
    new = token("new-member", roles=["member"], teams=["newteam"])
    r = await system.checkins.client.post(
        path, json=check_in_body(), headers={"Authorization": f"Bearer {old}"}
    )
    assert_problem(r, 403)
    r = await system.checkins.client.post(
        path, json=check_in_body(), headers={"Authorization": f"Bearer {new}"}
    )
    assert r.status_code == 201, r.text


async def test_reading_needs_a_token_but_no_role(system: System) -> None:
    case = await _case(system, "goals")
    nobody = token("nobody", roles=[], teams=[])
    r = await system.goals.client.get(
        f"/v1/objectives/{case.objective_id}", headers={"Authorization": f"Bearer {nobody}"}
    )
    assert r.status_code == 200, r.text
    async with httpx.AsyncClient(base_url=system.goals.base_url) as anonymous:
        r = await anonymous.get(f"/v1/objectives/{case.objective_id}")
    assert_problem(r, 401)
