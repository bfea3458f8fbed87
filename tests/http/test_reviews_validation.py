"""Bad input to the review service: each kind answers a 4xx problem+json, names the wrong
field where it can, and stores nothing. (The rules of the review itself — suggestions,
decisions, finalising — are in test_reviews_rules.py.)

The matrix is long, so its cases share one set of running services per store (a module
fixture) instead of starting NATS, goals, check-ins and reviews for every case; each case
compares the number of stored events before and after, which holds however the cases are
ordered.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from typing import Any

import httpx
import pytest

from tests.http.checkins_helpers import caught_up, check_in, plan
from tests.http.helpers import (
    add_key_result,
    assert_problem,
    assert_refused,
    create_cycle,
    create_objective,
    error_fields,
    get_json,
    send,
    stored,
)
from tests.http.reviews_helpers import open_review, synced
from tests.support import RunningService
from tests.system import STORES, running, store_for


@dataclass
class World:
    goals: RunningService
    checkins: RunningService
    reviews: RunningService
    cycle: str  # started; platform, data and design have objectives in it
    next_cycle: str  # started: where objectives can be carried over to
    objective: str  # platform's first objective
    undecided: str  # platform's second objective, never decided: the review never finalises
    kr: str  # in objective: number 0 -> 100, checked in at 40: suggested score 0.4
    spare_kr: str  # in objective: number 0 -> 10, never checked in: suggested score 0.0
    review: str  # platform's open review of cycle
    team: str = "platform"

    def fill(self, text: str) -> str:
        """Put the ids in place of `{cycle}`, `{kr}`, `{review}`, ... (raw JSON stays)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                text = text.replace("{" + f.name + "}", value)
        return text


async def _build(goals: RunningService, checkins: RunningService, reviews: RunningService) -> World:
    p = await plan(goals, checkins, start=0, target=100)
    client = goals.client
    spare_kr = await add_key_result(client, p.objective_id, title="Spare", start=0, target=10)
    undecided = await create_objective(client, p.cycle_id, title="Undecided")
    await create_objective(client, p.cycle_id, team="data")
    await create_objective(client, p.cycle_id, team="design")
    next_cycle = await create_cycle(client, name="Next")
    await caught_up(checkins, goals)
    await check_in(checkins.client, p.key_result_id, value=40)
    await synced(reviews, goals, checkins)
    r = await open_review(reviews, p.cycle_id)
    assert r.status_code == 201, r.text
    return World(
        goals=goals,
        checkins=checkins,
        reviews=reviews,
        cycle=p.cycle_id,
        next_cycle=next_cycle,
        objective=p.objective_id,
        undecided=undecided,
        kr=p.key_result_id,
        spare_kr=spare_kr,
        review=r.json()["id"],
    )


@pytest.fixture(scope="module", params=STORES)
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    base = tmp_path_factory.mktemp("reviews-validation")
    async with running(store_for(request, base), base, "goals", "checkins", "reviews") as s:
        yield await _build(s["goals"], s["checkins"], s["reviews"])


async def catalogue_current(world: World) -> None:
    """Wait until the review service's catalogue has applied everything the stream holds:
    only then is an unknown cycle a 404 (before, it is a retryable 409 "not yet known")."""
    consumer = world.reviews.runtime.consumers[0]
    for _ in range(500):
        if consumer.current:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the review service's catalogue never became current")


def without(body: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != field}


def _cases(table: dict[str, tuple]) -> list:
    return [pytest.param(*v, id=k) for k, v in table.items()]


OPEN = "/v1/reviews"
SCORE = "/v1/reviews/{review}/scores/{kr}"
REFLECT = "/v1/reviews/{review}/reflections"
DECIDE = "/v1/reviews/{review}/carry-over"
FINALISE = "/v1/reviews/{review}/finalise"
UNKNOWN = str(uuid.uuid4())


def opening(**overrides: Any) -> dict[str, Any]:
    return {"cycle_id": "{cycle}", "team": "platform", **overrides}


def scoring(**overrides: Any) -> dict[str, Any]:
    return {"score": 0.4, **overrides}


def reflection(**overrides: Any) -> dict[str, Any]:
    return {"kind": "went_well", "text": "Pairing with support", **overrides}


def decision(**overrides: Any) -> dict[str, Any]:
    return {
        "objective_id": "{objective}",
        "decision": "carry_over",
        "next_cycle_id": "{next_cycle}",
        **overrides,
    }


# (method, path, body, field the problem must name or None)
MISSING = {
    "open cycle_id": ("POST", OPEN, without(opening(), "cycle_id"), "cycle_id"),
    "open team": ("POST", OPEN, without(opening(), "team"), "team"),
    "open empty body": ("POST", OPEN, {}, "cycle_id"),
    "score score": ("PUT", SCORE, {"comment": "why"}, "score"),
    "score empty body": ("PUT", SCORE, {}, "score"),
    "reflection kind": ("POST", REFLECT, without(reflection(), "kind"), "kind"),
    "reflection text": ("POST", REFLECT, without(reflection(), "text"), "text"),
    "reflection empty body": ("POST", REFLECT, {}, "kind"),
    "decision objective_id": ("POST", DECIDE, without(decision(), "objective_id"), "objective_id"),
    "decision decision": ("POST", DECIDE, without(decision(), "decision"), "decision"),
    "decision empty body": ("POST", DECIDE, {}, "objective_id"),
}

WRONG_TYPE = {
    "open cycle_id not a uuid": ("POST", OPEN, opening(cycle_id="Q1"), "cycle_id"),
    "open cycle_id a number": ("POST", OPEN, opening(cycle_id=7), "cycle_id"),
    "open cycle_id null": ("POST", OPEN, opening(cycle_id=None), "cycle_id"),
    "open cycle_id a uuid too short": ("POST", OPEN, opening(cycle_id=UNKNOWN[:-1]), "cycle_id"),
    "open team a number": ("POST", OPEN, opening(team=5), "team"),
    "open team null": ("POST", OPEN, opening(team=None), "team"),
    "open team a list": ("POST", OPEN, opening(team=["platform"]), "team"),
    "open team true": ("POST", OPEN, opening(team=True), "team"),
    "open body a list": ("POST", OPEN, [opening()], None),
    "open body a string": ("POST", OPEN, "platform", None),
    "score a word": ("PUT", SCORE, scoring(score="high"), "score"),
    "score null": ("PUT", SCORE, scoring(score=None), "score"),
    "score a list": ("PUT", SCORE, scoring(score=[0.4]), "score"),
    "score an object": ("PUT", SCORE, scoring(score={"value": 0.4}), "score"),
    "score an empty string": ("PUT", SCORE, scoring(score=""), "score"),
    "comment a number": ("PUT", SCORE, scoring(comment=5), "comment"),
    "comment a list": ("PUT", SCORE, scoring(comment=["why"]), "comment"),
    "comment true": ("PUT", SCORE, scoring(comment=True), "comment"),
    "score body a list": ("PUT", SCORE, [scoring()], None),
    "score body a number": ("PUT", SCORE, 0.4, None),
    "reflection kind a number": ("POST", REFLECT, reflection(kind=1), "kind"),
    "reflection kind null": ("POST", REFLECT, reflection(kind=None), "kind"),
    "reflection kind a list": ("POST", REFLECT, reflection(kind=["went_well"]), "kind"),
    "reflection text a number": ("POST", REFLECT, reflection(text=42), "text"),
    "reflection text null": ("POST", REFLECT, reflection(text=None), "text"),
    "reflection text a list": ("POST", REFLECT, reflection(text=["a", "b"]), "text"),
    "reflection body a list": ("POST", REFLECT, [reflection()], None),
    "decision objective_id not a uuid": (
        "POST",
        DECIDE,
        decision(objective_id="first"),
        "objective_id",
    ),
    "decision objective_id a number": ("POST", DECIDE, decision(objective_id=1), "objective_id"),
    "decision objective_id null": ("POST", DECIDE, decision(objective_id=None), "objective_id"),
    "decision decision a number": ("POST", DECIDE, decision(decision=1), "decision"),
    "decision decision null": ("POST", DECIDE, decision(decision=None), "decision"),
    "decision decision true": ("POST", DECIDE, decision(decision=True), "decision"),
    "decision next_cycle_id not a uuid": (
        "POST",
        DECIDE,
        decision(next_cycle_id="next quarter"),
        "next_cycle_id",
    ),
    "decision next_cycle_id a number": (
        "POST",
        DECIDE,
        decision(next_cycle_id=2),
        "next_cycle_id",
    ),
    "decision next_cycle_id a list": (
        "POST",
        DECIDE,
        decision(next_cycle_id=["{next_cycle}"]),
        "next_cycle_id",
    ),
    "decision body a list": ("POST", DECIDE, [decision()], None),
}

OUT_OF_RANGE = {
    "score -0.1": ("PUT", SCORE, scoring(score=-0.1, comment="x"), "score"),
    "score -1e-9": ("PUT", SCORE, scoring(score=-1e-9, comment="x"), "score"),
    "score 1.0000001": ("PUT", SCORE, scoring(score=1.0000001, comment="x"), "score"),
    "score 1.1": ("PUT", SCORE, scoring(score=1.1, comment="x"), "score"),
    "score 2": ("PUT", SCORE, scoring(score=2, comment="x"), "score"),
    "score -1": ("PUT", SCORE, scoring(score=-1, comment="x"), "score"),
    "score 40 (a percentage)": ("PUT", SCORE, scoring(score=40, comment="x"), "score"),
    "score 1e308": ("PUT", SCORE, scoring(score=1e308, comment="x"), "score"),
    "comment 2001 characters": ("PUT", SCORE, scoring(comment="c" * 2001), "comment"),
    "comment 2001 characters, other score": (
        "PUT",
        SCORE,
        scoring(score=0.9, comment="c" * 2001),
        "comment",
    ),
    "reflection text 5001 characters": ("POST", REFLECT, reflection(text="t" * 5001), "text"),
    "open team 201 characters": ("POST", OPEN, opening(team="t" * 201), "team"),
}

UNKNOWN_FIELD = {
    "open status": ("POST", OPEN, opening(status="open"), "status"),
    "open objectives": ("POST", OPEN, opening(objectives=["{objective}"]), "objectives"),
    "open actor": ("POST", OPEN, opening(actor="mallory"), "actor"),
    "open id": ("POST", OPEN, opening(id=UNKNOWN), "id"),
    "score key_result_id": ("PUT", SCORE, scoring(key_result_id="{kr}"), "key_result_id"),
    "score suggested_score": ("PUT", SCORE, scoring(suggested_score=0.9), "suggested_score"),
    "score actor": ("PUT", SCORE, scoring(actor="mallory"), "actor"),
    "score reason (not comment)": ("PUT", SCORE, {"score": 0.9, "reason": "why"}, "reason"),
    "reflection actor": ("POST", REFLECT, reflection(actor="mallory"), "actor"),
    "reflection id": ("POST", REFLECT, reflection(id=UNKNOWN), "id"),
    "reflection at": ("POST", REFLECT, reflection(at="2027-01-01T00:00:00Z"), "at"),
    "decision key_results": ("POST", DECIDE, decision(key_results=[]), "key_results"),
    "decision previous_decision": (
        "POST",
        DECIDE,
        decision(previous_decision="drop"),
        "previous_decision",
    ),
    "decision review_id": ("POST", DECIDE, decision(review_id="{review}"), "review_id"),
}

BLANK = {
    "open team empty": ("POST", OPEN, opening(team=""), "team"),
    "open team blank": ("POST", OPEN, opening(team="   "), "team"),
    "reflection text empty": ("POST", REFLECT, reflection(text=""), "text"),
    "reflection text blank": ("POST", REFLECT, reflection(text="   "), "text"),
    "reflection text tabs and newlines": ("POST", REFLECT, reflection(text="\n\t \n"), "text"),
    # A score other than the suggestion needs a comment; a blank one says nothing.
    "other score, comment empty": ("PUT", SCORE, scoring(score=0.9, comment=""), "comment"),
    "other score, comment blank": ("PUT", SCORE, scoring(score=0.9, comment="  \t "), "comment"),
    "other score, comment null": ("PUT", SCORE, scoring(score=0.9, comment=None), "comment"),
}

BAD_CHOICE = {
    "kind upper case": ("POST", REFLECT, reflection(kind="WENT_WELL"), "kind"),
    "kind with a space": ("POST", REFLECT, reflection(kind="went well"), "kind"),
    "kind with a dash": ("POST", REFLECT, reflection(kind="do-differently"), "kind"),
    "kind padded": ("POST", REFLECT, reflection(kind=" learned "), "kind"),
    "kind unknown": ("POST", REFLECT, reflection(kind="lesson"), "kind"),
    "kind empty": ("POST", REFLECT, reflection(kind=""), "kind"),
    "decision with a dash": ("POST", DECIDE, decision(decision="carry-over"), "decision"),
    "decision upper case": ("POST", DECIDE, decision(decision="CARRY_OVER"), "decision"),
    "decision unknown": ("POST", DECIDE, decision(decision="keep"), "decision"),
    "decision archive": (
        "POST",
        DECIDE,
        decision(decision="archive", next_cycle_id=None),
        "decision",
    ),
    "decision empty": ("POST", DECIDE, decision(decision=""), "decision"),
    # Values the domain refuses (not state: no review could ever take them).
    "carry over into the reviewed cycle": (
        "POST",
        DECIDE,
        decision(next_cycle_id="{cycle}"),
        "next_cycle_id",
    ),
    "drop with a next cycle": ("POST", DECIDE, decision(decision="drop"), "next_cycle_id"),
    "done with a next cycle": ("POST", DECIDE, decision(decision="done"), "next_cycle_id"),
}


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(MISSING))
async def test_missing_field(world, method, path, body, field):
    await assert_refused(world.reviews, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(WRONG_TYPE))
async def test_wrong_type(world, method, path, body, field):
    await assert_refused(world.reviews, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(OUT_OF_RANGE))
async def test_out_of_range(world, method, path, body, field):
    await assert_refused(world.reviews, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(UNKNOWN_FIELD))
async def test_unknown_field(world, method, path, body, field):
    await assert_refused(world.reviews, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(BLANK))
async def test_blank_text(world, method, path, body, field):
    await assert_refused(world.reviews, world, method, path, body, field)


@pytest.mark.parametrize(("method", "path", "body", "field"), _cases(BAD_CHOICE))
async def test_bad_kind_or_decision(world, method, path, body, field):
    await assert_refused(world.reviews, world, method, path, body, field)


# On spare_kr, whose suggested score is 0.0: false would pass as "the suggestion".
NOT_A_NUMBER = {
    "true, with a comment": {"score": True, "comment": "we did it"},
    "false (the suggestion's value)": {"score": False},
    "numeric string": {"score": "0.5", "comment": "half"},
    "numeric string of the suggestion": {"score": "0"},
    "numeric string with spaces": {"score": " 0.25 ", "comment": "a quarter"},
}


@pytest.mark.parametrize("body", list(NOT_A_NUMBER.values()), ids=list(NOT_A_NUMBER))
async def test_score_that_is_not_a_json_number_is_refused(world, body):
    await assert_refused(
        world.reviews, world, "PUT", "/v1/reviews/{review}/scores/{spare_kr}", body, "score"
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"score": True}, id="true"),
        pytest.param({"score": "0.9"}, id="numeric string"),
    ],
)
async def test_score_that_is_not_a_number_never_passes_silently(world, body):
    """Without a comment, on kr (suggested 0.4), a boolean or a string that isn't the
    suggestion is at least refused — today on `comment` rather than on `score`."""
    await assert_refused(world.reviews, world, "PUT", SCORE, body, None)


# --- rules of the state that the rules tests leave out: unknown reviews, ids mixed up ---------

# (method, path, body, status)
STATE = {
    "score in an unknown review": ("PUT", f"/v1/reviews/{UNKNOWN}/scores/{{kr}}", scoring(), 404),
    "score an objective's id": ("PUT", "/v1/reviews/{review}/scores/{objective}", scoring(), 404),
    "score the review's id": ("PUT", "/v1/reviews/{review}/scores/{review}", scoring(), 404),
    "reflect on an unknown review": (
        "POST",
        f"/v1/reviews/{UNKNOWN}/reflections",
        reflection(),
        404,
    ),
    "reflect on a cycle's id": ("POST", "/v1/reviews/{cycle}/reflections", reflection(), 404),
    "decide in an unknown review": ("POST", f"/v1/reviews/{UNKNOWN}/carry-over", decision(), 404),
    "decide on a key result's id": (
        "POST",
        DECIDE,
        decision(objective_id="{kr}", decision="done", next_cycle_id=None),
        404,
    ),
    "finalise an unknown review": ("POST", f"/v1/reviews/{UNKNOWN}/finalise", None, 404),
    "finalise an objective's id": ("POST", "/v1/reviews/{objective}/finalise", None, 404),
    "open a review of a cycle id that is a key result's": (
        "POST",
        OPEN,
        opening(cycle_id="{kr}"),
        404,
    ),
    "open the team's review again, team padded": (
        "POST",
        OPEN,
        opening(team="  platform "),
        409,
    ),
}


@pytest.mark.parametrize(("method", "path", "body", "status"), _cases(STATE))
async def test_refused_by_the_state(world, method, path, body, status):
    if status == 404:
        await catalogue_current(world)
    await assert_refused(world.reviews, world, method, path, body, None, status)


async def test_refused_values_leave_the_review_unchanged(world):
    """After every kind of refused change, the review reads exactly as before."""
    before = await get_json(world.reviews.client, f"/v1/reviews/{world.review}")
    tables = [MISSING, WRONG_TYPE, OUT_OF_RANGE, UNKNOWN_FIELD, BLANK, BAD_CHOICE]
    await catalogue_current(world)
    for method, path, body, _ in [case for table in tables for case in table.values()]:
        r = await send(world.reviews, world, method, path, body)
        assert 400 <= r.status_code < 500, r.text
    for method, path, body, _ in STATE.values():
        r = await send(world.reviews, world, method, path, body)
        assert 400 <= r.status_code < 500, r.text
    after = await get_json(world.reviews.client, f"/v1/reviews/{world.review}")
    assert after == before


# --- raw bodies: NaN and Infinity, malformed JSON, size ------------------------------------

NON_FINITE = {
    "score NaN": ("PUT", SCORE, b'{"score": NaN}', "score"),
    "score NaN with a comment": ("PUT", SCORE, b'{"score": NaN, "comment": "why"}', "score"),
    "score Infinity": ("PUT", SCORE, b'{"score": Infinity, "comment": "why"}', "score"),
    "score -Infinity": ("PUT", SCORE, b'{"score": -Infinity, "comment": "why"}', "score"),
    "score 1e400": ("PUT", SCORE, b'{"score": 1e400, "comment": "why"}', "score"),
    "score -1e400": ("PUT", SCORE, b'{"score": -1e400, "comment": "why"}', "score"),
    "comment NaN": ("PUT", SCORE, b'{"score": 0.4, "comment": NaN}', "comment"),
    "reflection text Infinity": (
        "POST",
        REFLECT,
        b'{"kind": "learned", "text": Infinity}',
        "text",
    ),
    "open team NaN": ("POST", OPEN, b'{"cycle_id": "{cycle}", "team": NaN}', "team"),
}


@pytest.mark.parametrize(("method", "path", "raw", "field"), _cases(NON_FINITE))
async def test_nan_and_infinity(world, method, path, raw, field):
    await assert_refused(world.reviews, world, method, path, None, field, raw=raw)


# Commands that read a body.
COMMANDS = {
    "open": ("POST", OPEN),
    "score": ("PUT", SCORE),
    "reflection": ("POST", REFLECT),
    "decision": ("POST", DECIDE),
}

MALFORMED = {
    "truncated": b'{"score": 0.4, "comment": ',
    "single quotes": b"{'score': 0.4}",
    "trailing comma": b'{"score": 0.4,}',
    "not json at all": b"score=0.4&comment=why",
    "two documents": b'{"score": 0.4} {"score": 0.5}',
}


@pytest.mark.parametrize(("method", "path"), _cases(COMMANDS))
@pytest.mark.parametrize("raw", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_json_is_400(world, method, path, raw):
    await assert_refused(world.reviews, world, method, path, None, None, 400, raw=raw)


@pytest.mark.parametrize(("method", "path"), _cases(COMMANDS))
async def test_missing_body(world, method, path):
    before = await stored(world.reviews)
    r = await world.reviews.client.request(method, world.fill(path))
    assert r.status_code in (400, 422), r.text
    assert_problem(r, r.status_code)
    assert await stored(world.reviews) == before


ALL_COMMANDS = {**COMMANDS, "finalise": ("POST", FINALISE)}


@pytest.mark.parametrize(("method", "path"), _cases(ALL_COMMANDS))
async def test_body_over_64_kib_is_413(world, method, path):
    huge = {"text": "x" * (65 * 1024)}
    await assert_refused(world.reviews, world, method, path, huge, None, 413)


async def test_body_just_under_the_limit_is_not_413(world):
    # 60 KiB of text: over the 5000-character field limit (422), but not too large.
    await assert_refused(
        world.reviews, world, "POST", REFLECT, reflection(text="x" * (60 * 1024)), "text"
    )


@pytest.mark.parametrize(("method", "path"), _cases(COMMANDS))
async def test_non_json_content_type_is_refused(world, method, path):
    before = await stored(world.reviews)
    r = await world.reviews.client.request(
        method,
        world.fill(path),
        content=world.fill(json.dumps(reflection())).encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert 400 <= r.status_code < 500, r.text
    assert_problem(r, r.status_code)
    assert await stored(world.reviews) == before


# --- headers and query parameters ---------------------------------------------------------

# Each would be accepted (or refused by a rule after its headers) were its headers good.
VALID = {
    "open": ("POST", OPEN, opening(team="design")),
    "score": ("PUT", SCORE, scoring(score=0.5, comment="a little more")),
    "reflection": ("POST", REFLECT, reflection()),
    "decision": ("POST", DECIDE, decision()),
    "finalise": ("POST", FINALISE, None),
}

BAD_IF_MATCH = {
    "not an etag": "abc",
    "negative": '"-1"',
    "fraction": '"1.5"',
    "13 digits": '"1234567890123"',
    "empty etag": '""',
    "a list": '"1", "2"',
    "weak, not a number": 'W/"x"',
    "hex": '"0x1"',
}


@pytest.mark.parametrize(
    ("method", "path", "body"), [pytest.param(*VALID[c], id=c) for c in VALID if c != "open"]
)
@pytest.mark.parametrize("value", list(BAD_IF_MATCH.values()), ids=list(BAD_IF_MATCH))
async def test_bad_if_match_is_422(world, method, path, body, value):
    await assert_refused(
        world.reviews, world, method, path, body, "If-Match", headers={"If-Match": value}
    )


async def test_bad_if_match_on_opening_is_422(world):
    await assert_refused(
        world.reviews,
        world,
        "POST",
        OPEN,
        opening(team="data"),
        "If-Match",
        headers={"If-Match": "abc"},
    )


BAD_HEADERS = {
    "Idempotency-Key too long": ("Idempotency-Key", "k" * 129),
    "Idempotency-Key with a space": ("Idempotency-Key", "two words"),
    "Idempotency-Key empty": ("Idempotency-Key", ""),
    "Idempotency-Key not ASCII": ("Idempotency-Key", "clé".encode()),
    "Idempotency-Key with a tab": ("Idempotency-Key", "a\tb"),
    "X-Correlation-Id with a space": ("X-Correlation-Id", "has space"),
    "X-Correlation-Id too long": ("X-Correlation-Id", "c" * 129),
    "X-Request-Id too long": ("X-Request-Id", "r" * 200),
}


@pytest.mark.parametrize(("method", "path", "body"), _cases(VALID))
@pytest.mark.parametrize(("header", "value"), _cases(BAD_HEADERS))
async def test_bad_context_headers_are_422(world, method, path, body, header, value):
    await assert_refused(world.reviews, world, method, path, body, header, headers={header: value})


BAD_MIN_POSITION = {
    "no sequence": ["goals"],
    "no service": [":3"],
    "sequence a word": ["goals:abc"],
    "upper case": ["GOALS:3"],
    "negative": ["goals:-1"],
    "19 digits": ["goals:" + "9" * 19],
    "spaces": ["goals: 3"],
    "empty": [""],
    "a service not consumed": ["billing:3"],
    "one good, one bad": ["goals:1", "checkins:x"],
    "nine of them": ["goals:1"] * 9,
}


@pytest.mark.parametrize(
    ("method", "path", "body"), [pytest.param(*VALID[c], id=c) for c in ("open", "decision")]
)
@pytest.mark.parametrize("values", list(BAD_MIN_POSITION.values()), ids=list(BAD_MIN_POSITION))
async def test_bad_min_position_is_422(world, method, path, body, values):
    query = httpx.QueryParams([("min_position", v) for v in values])
    problem = await assert_refused(world.reviews, world, method, f"{path}?{query}", body, None)
    # "min_position", or "min_position.0" where the parameter may be repeated.
    fields_named = [f.split(".")[0] for f in error_fields(problem)]
    assert "min_position" in fields_named, problem


# --- ids in the path ----------------------------------------------------------------------

ROUTES = {
    "GET review": ("GET", "/v1/reviews/{id}", None),
    "GET team review": ("GET", "/v1/cycles/{id}/teams/platform/review", None),
    "score (review id)": ("PUT", "/v1/reviews/{id}/scores/{kr}", scoring()),
    "score (key result id)": ("PUT", "/v1/reviews/{review}/scores/{id}", scoring()),
    "reflect": ("POST", "/v1/reviews/{id}/reflections", reflection()),
    "decide": ("POST", "/v1/reviews/{id}/carry-over", decision()),
    "finalise": ("POST", "/v1/reviews/{id}/finalise", None),
}

NOT_UUIDS = {
    "a word": "not-a-uuid",
    "a number": "42",
    "a uuid too long": UNKNOWN + "0",
}


@pytest.mark.parametrize(("method", "path", "body"), _cases(ROUTES))
@pytest.mark.parametrize("value", list(NOT_UUIDS.values()), ids=list(NOT_UUIDS))
async def test_non_uuid_id_is_422(world, method, path, body, value):
    problem = await assert_refused(
        world.reviews, world, method, path.replace("{id}", value), body, None
    )
    assert any("id" in f for f in error_fields(problem)), problem


async def test_team_in_the_path_is_bounded(world):
    r = await send(world.reviews, world, "GET", "/v1/cycles/{cycle}/teams/" + "t" * 201 + "/review")
    assert "team" in error_fields(assert_problem(r, 422))
    assert_problem(
        await send(world.reviews, world, "GET", f"/v1/cycles/{UNKNOWN}/teams/platform/review"), 404
    )


async def test_unknown_route_and_method_are_problems(world):
    client = world.reviews.client
    assert_problem(await client.get("/v1/nothing-here"), 404)
    assert_problem(await client.get("/v1/reviews"), 405)
    assert_problem(await client.delete(world.fill("/v1/reviews/{review}")), 405)
    assert_problem(await client.post(world.fill(SCORE), json=scoring()), 405)
    assert_problem(await client.get(world.fill(FINALISE)), 405)
    assert_problem(await client.put(world.fill(REFLECT), json=reflection()), 405)


# --- what is accepted ---------------------------------------------------------------------


async def review_of(world: World) -> dict[str, Any]:
    return await get_json(world.reviews.client, f"/v1/reviews/{world.review}")


@pytest.mark.parametrize(
    ("body", "score", "comment"),
    [
        pytest.param({"score": 0.4}, 0.4, None, id="the suggestion, no comment"),
        pytest.param({"score": 0.4, "comment": None}, 0.4, None, id="the suggestion, null"),
        pytest.param({"score": 0.4, "comment": "  "}, 0.4, None, id="the suggestion, blank"),
        pytest.param({"score": 0.4, "comment": "as said"}, 0.4, "as said", id="with a comment"),
        pytest.param({"score": 0, "comment": "nothing"}, 0.0, "nothing", id="integer 0"),
        pytest.param({"score": 1, "comment": "all"}, 1.0, "all", id="integer 1"),
        pytest.param({"score": 0.0, "comment": "none"}, 0.0, "none", id="0.0"),
        pytest.param({"score": 1.0, "comment": "done"}, 1.0, "done", id="1.0"),
        pytest.param({"score": 0.45, "comment": "  padded\n"}, 0.45, "padded", id="trimmed"),
        pytest.param({"score": 0.7, "comment": "c" * 2000}, 0.7, "c" * 2000, id="comment 2000"),
        pytest.param(
            {"score": 0.7, "comment": "c" * 2000 + "   "},
            0.7,
            "c" * 2000,
            id="comment 2000 and spaces",
        ),
    ],
)
async def test_scores_accepted(world, body, score, comment):
    r = await world.reviews.client.put(world.fill(SCORE), json=body)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == world.review
    assert r.headers["etag"] == f'"{r.json()["version"]}"'
    kr = next(k for k in (await review_of(world))["key_results"] if k["key_result_id"] == world.kr)
    assert (kr["score"], kr["comment"], kr["suggested_score"]) == (score, comment, 0.4)


async def test_the_same_score_again_stores_nothing(world):
    client = world.reviews.client
    r = await client.put(world.fill(SCORE), json={"score": 0.8, "comment": "late surge"})
    assert r.status_code == 200, r.text
    before = await stored(world.reviews)
    r2 = await client.put(world.fill(SCORE), json={"score": 0.8, "comment": " late surge "})
    assert r2.status_code == 200, r2.text
    assert (r2.json()["version"], r2.json()["position"]) == (r.json()["version"], None)
    assert await stored(world.reviews) == before


@pytest.mark.parametrize("kind", ["went_well", "learned", "do_differently", "do_more_of"])
@pytest.mark.parametrize(
    ("text", "kept"),
    [
        pytest.param("x", "x", id="1 character"),
        pytest.param("  Pairing worked \n", "Pairing worked", id="trimmed"),
        pytest.param("r" * 5000, "r" * 5000, id="5000 characters"),
    ],
)
async def test_reflections_accepted(world, kind, text, kept):
    before = await stored(world.reviews)
    r = await world.reviews.client.post(world.fill(REFLECT), json={"kind": kind, "text": text})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"id", "version", "position", "reflection_id"}
    assert answer["id"] == world.review
    assert answer["position"] == f"reviews:{before + 1}"
    last = (await review_of(world))["reflections"][-1]
    assert (last["id"], last["kind"], last["text"], last["actor"]) == (
        answer["reflection_id"],
        kind,
        kept,
        "alice",
    )


@pytest.mark.parametrize(
    ("body", "decided", "carried"),
    [
        pytest.param({"decision": "drop"}, "drop", False, id="drop"),
        pytest.param({"decision": "done", "next_cycle_id": None}, "done", False, id="done, null"),
        pytest.param(
            {"decision": "carry_over", "next_cycle_id": "{next_cycle}"},
            "carry_over",
            True,
            id="carry over",
        ),
        pytest.param(
            {"decision": "carry_over", "next_cycle_id": "{NEXT_CYCLE}"},
            "carry_over",
            True,
            id="carry over, the id in upper case",
        ),
    ],
)
async def test_decisions_accepted(world, body, decided, carried):
    payload = {"objective_id": world.objective, **body}
    if body.get("next_cycle_id") == "{NEXT_CYCLE}":
        payload["next_cycle_id"] = world.next_cycle.upper()
    r = await send(world.reviews, world, "POST", DECIDE, payload)
    assert r.status_code == 200, r.text
    objective = next(
        o for o in (await review_of(world))["objectives"] if o["objective_id"] == world.objective
    )
    expected_next = world.next_cycle if carried else None
    assert (objective["decision"], objective["next_cycle_id"]) == (decided, expected_next)


async def test_team_is_trimmed_and_min_position_already_reached_is_accepted(world):
    goals_at, checkins_at = await stored(world.goals), await stored(world.checkins)
    r = await world.reviews.client.post(
        OPEN,
        params=[("min_position", f"goals:{goals_at}"), ("min_position", f"checkins:{checkins_at}")],
        json={"cycle_id": world.cycle, "team": "  design\t"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/reviews/{r.json()['id']}"
    body = await get_json(world.reviews.client, f"/v1/cycles/{world.cycle}/teams/design/review")
    assert (body["id"], body["team"], body["status"]) == (r.json()["id"], "design", "open")
    # The path's team is trimmed the same way.
    again = await get_json(
        world.reviews.client, f"/v1/cycles/{world.cycle}/teams/%20design%20/review"
    )
    assert again == body
