"""Hostile input: what a careless or malicious client or publisher sends, and what must come
back.

- schemathesis against every service's OpenAPI document with a valid admin token: generated
  requests (valid by the schema, and deliberately invalid), on made-up ids and on ids that
  exist. No 5xx, every status code and content type documented, every body as its schema
  says. `OKR_FAULTS_EXAMPLES` (default 25) is the number of examples per operation and mode.
- bodies over the limit (413), 10,000 levels of nesting (4xx, and the service stays healthy),
  huge strings and lists (422), odd unicode (refused, or kept and read back exactly: by the
  service and by the projections);
- bearer tokens that must not pass: `alg: none`, another key, expired, no `sub`, huge, a
  `sub` no store can keep, ... (401 each, nothing stored);
- forged and malformed events on `okr.>`: every consumer of every service rejects them and
  no view changes.

Services in-process (uvicorn, SQLite) on a real nats-server.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import nats
import orjson
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.faults.report import record
from tests.faults.views import (
    assert_unchanged,
    consumer_counts,
    consumers,
    grown,
    positions,
    quiet,
    settle,
    snapshot,
)
from tests.http.checkins_helpers import Plan, check_in, meeting_body, plan
from tests.http.forged import BAD_AUTHORIZATION, alg_none_token, signed
from tests.http.helpers import PROBLEM_JSON, assert_problem
from tests.http.reviews_helpers import open_review, synced
from tests.integration.test_contract_consumers import envelope, hostile
from tests.support import SECRET, RunningService, auth, token
from tests.system import running

NAMES = ("goals", "checkins", "reviews", "projections")
EXAMPLES = int(os.environ.get("OKR_FAULTS_EXAMPLES", "25"))
# A response that never ends (server-sent events): not something to fuzz by request.
UNFUZZABLE = {"/v1/stream"}
# Request headers whose generated values are mostly refused (422) before the route's logic;
# one mode leaves them out so that the generated bodies reach the use cases.
COMMAND_HEADERS = {"if-match", "idempotency-key", "x-request-id", "x-correlation-id"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
TODAY = time.strftime("%Y-%m-%d")


@dataclass
class Hostile:
    services: dict[str, RunningService]
    ids: dict[str, str]  # path parameter -> an id that exists, for the fuzzer


@pytest.fixture(scope="module")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hostile]:
    base = tmp_path_factory.mktemp("hostile")
    async with running({"data_dir": base / "data"}, base, *NAMES) as s:
        p = await plan(s["goals"], s["checkins"], start=0, target=100)
        check_in_id = await check_in(s["checkins"].client, p.key_result_id, value=40)
        r = await s["checkins"].client.post(
            f"/v1/teams/{p.team}/check-in-meetings", json=meeting_body(p.cycle_id, held_on=TODAY)
        )
        assert r.status_code == 201, r.text
        meeting_id = r.json()["id"]
        await synced(s["reviews"], s["goals"], s["checkins"])
        r = await open_review(s["reviews"], p.cycle_id, p.team)
        assert r.status_code == 201, r.text
        ids = {
            "cycle_id": p.cycle_id,
            "objective_id": p.objective_id,
            "key_result_id": p.key_result_id,
            "check_in_id": check_in_id,
            "meeting_id": meeting_id,
            "review_id": r.json()["id"],
            "team": p.team,
        }
        yield Hostile(s, ids)


# --- schemathesis -------------------------------------------------------------------------


@dataclass
class Fuzzed:
    operations: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # what failed -> one report
    no_invalid_input: int = 0  # (operation, negative mode) with nothing to make invalid


def fuzz(spec: dict[str, Any], base_url: str, ids: dict[str, str], examples: int) -> Fuzzed:
    """Run every operation of `spec` against `base_url` in three modes: valid requests on
    generated ids, valid requests on ids that exist (without the command headers), invalid
    requests on ids that exist. Blocking: run it in a thread."""
    schema = schemathesis.openapi.from_dict(spec)
    headers = {"Authorization": f"Bearer {token('fuzzer')}"}
    session = requests.Session()
    found = Fuzzed()
    results: Any = schema.get_all_operations()  # Ok(operation), or Err for a broken schema
    for result in results:
        operation = result.ok()
        if operation.path in UNFUZZABLE:
            continue
        found.operations += 1
        known = {p.name: ids[p.name] for p in operation.path_parameters if p.name in ids}
        modes: list[tuple[str, GenerationMode, dict[str, str], bool]] = [
            ("valid", GenerationMode.POSITIVE, {}, False)
        ]
        if known:
            modes.append(("valid, known ids", GenerationMode.POSITIVE, known, True))
        modes.append(("invalid", GenerationMode.NEGATIVE, known, False))
        for label, mode, fixed, plain in modes:
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=fixed or None)
            where = f"{operation.method.upper()} {operation.path} ({label})"
            try:
                _run(strategy, where, plain, base_url, headers, session, examples, found)
            except Unsatisfiable:  # nothing in this operation can be made invalid
                found.no_invalid_input += 1
    session.close()
    return found


def _run(
    strategy: Any,
    where: str,
    plain: bool,
    base_url: str,
    headers: dict[str, str],
    session: requests.Session,
    examples: int,
    found: Fuzzed,
) -> None:
    """Send `examples` cases drawn from `strategy` and check each answer."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(case=strategy)
    def send(case: Any) -> None:
        if plain and case.headers:
            for name in [n for n in case.headers if n.lower() in COMMAND_HEADERS]:
                del case.headers[name]
        response = case.call(base_url=base_url, headers=headers, session=session, timeout=30)
        found.requests += 1
        found.statuses[response.status_code] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as e:
            found.failures.setdefault(f"{where}: {response.status_code}", str(e)[:2000])

    send()


def answers(statuses: Counter[int]) -> str:
    return ", ".join(f"{code}: {n:,}" for code, n in sorted(statuses.items()))


def server_errors(statuses: Counter[int]) -> int:
    return sum(n for code, n in statuses.items() if code >= 500)


def classes(statuses: Counter[int]) -> str:
    by_class = Counter(f"{code // 100}xx" for code in statuses.elements())
    return ", ".join(f"{k} {by_class[k]:,}" for k in sorted(by_class))


@pytest.mark.parametrize("name", NAMES)
async def test_schemathesis_finds_no_5xx_and_no_answer_off_the_schema(
    system: Hostile, name: str
) -> None:
    svc = system.services[name]
    r = await svc.client.get("/openapi.json")
    assert r.status_code == 200
    started = time.perf_counter()
    found = await asyncio.to_thread(fuzz, r.json(), svc.base_url, system.ids, EXAMPLES)
    elapsed = time.perf_counter() - started
    # The process is still healthy after it all.
    assert (await svc.client.get("/healthz")).status_code == 200
    ready = await svc.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    record(
        "hostile",
        f"schemathesis: {name} ({found.operations} operations)",
        "no 5xx, every answer as documented" if not found.failures else "FAILED",
        inputs=found.requests,
        answers=classes(found.statuses),
        server_errors=server_errors(found.statuses),
        schema_failures=len(found.failures),
        examples_per_mode=EXAMPLES,
        seconds=round(elapsed, 1),
    )
    assert not found.failures, "\n\n".join(f"{k}\n{v}" for k, v in found.failures.items())
    assert found.requests >= found.operations  # it did send something for every operation


# --- hand-made requests -------------------------------------------------------------------


@dataclass
class Command:
    """One representative command of a service, with a valid body."""

    service: str
    method: str
    path: str
    body: dict[str, Any]
    ok: int
    text_field: str  # a free-text field of the body


async def commands(s: dict[str, RunningService]) -> tuple[Plan, list[Command]]:
    """A fresh plan (the fuzzer may have closed or removed the seeded one) and one command of
    each writing service on it."""
    p = await plan(s["goals"], s["checkins"], start=0, target=100)
    await synced(s["reviews"], s["goals"], s["checkins"])
    r = await open_review(s["reviews"], p.cycle_id, p.team)
    assert r.status_code == 201, r.text
    review = r.json()["id"]
    return p, [
        Command(
            "goals",
            "POST",
            "/v1/cycles",
            {"name": "Q3", "starts_on": "2027-07-01", "ends_on": "2027-09-30"},
            201,
            "name",
        ),
        Command(
            "checkins",
            "POST",
            f"/v1/key-results/{p.key_result_id}/check-ins",
            {"value": 30, "confidence": 7, "note": "fine", "blockers": []},
            201,
            "note",
        ),
        Command(
            "reviews",
            "POST",
            f"/v1/reviews/{review}/reflections",
            {"kind": "learned", "text": "Ship smaller"},
            200,
            "text",
        ),
    ]


async def send_raw(
    svc: RunningService, method: str, path: str, content: Any, **headers: str
) -> httpx.Response:
    return await svc.client.request(
        method, path, content=content, headers={"Content-Type": "application/json", **headers}
    )


async def assert_healthy(svc: RunningService, command: Command) -> None:
    """Alive, ready, and still doing its work."""
    assert (await svc.client.get("/healthz")).status_code == 200
    r = await svc.client.get("/readyz")
    assert r.status_code == 200, r.text
    r = await svc.client.request(command.method, command.path, json=command.body)
    assert r.status_code == command.ok, r.text


async def test_bodies_over_the_limit_are_refused_with_413(system: Hostile) -> None:
    s = system.services
    _, cmds = await commands(s)
    limit = s["goals"].runtime.settings.max_body_bytes
    statuses: Counter[int] = Counter()
    before = await positions(s)
    for cmd in cmds:
        svc = s[cmd.service]
        big = json.dumps({**cmd.body, cmd.text_field: "x" * (limit + 1)}).encode()
        r = await send_raw(svc, cmd.method, cmd.path, big)
        statuses[r.status_code] += 1
        assert_problem(r, 413)

        async def chunks(data: bytes = big) -> AsyncIterator[bytes]:
            for i in range(0, len(data), 4096):
                yield data[i : i + 4096]

        # Without Content-Length (chunked): counted while it arrives.
        r = await send_raw(svc, cmd.method, cmd.path, chunks())
        statuses[r.status_code] += 1
        assert_problem(r, 413)
    # The projections take no bodies, but a big one is refused before any route all the same.
    r = await send_raw(s["projections"], "GET", "/v1/audit", b"x" * (limit + 1))
    statuses[r.status_code] += 1
    assert_problem(r, 413)
    assert await positions(s) == before
    for cmd in cmds:
        await assert_healthy(s[cmd.service], cmd)
    record(
        "hostile",
        f"bodies over the limit of {limit:,} bytes (with Content-Length, and chunked)",
        "413 each; nothing stored; every service healthy after",
        inputs=statuses.total(),
        answers=answers(statuses),
        server_errors=server_errors(statuses),
    )


async def test_malformed_json_is_a_documented_400(system: Hostile) -> None:
    """Found by schemathesis: a body that is not JSON answered 400, which no operation
    documented. Every operation that takes a body now documents it."""
    s = system.services
    _, cmds = await commands(s)
    for cmd in cmds:
        spec = (await s[cmd.service].client.get("/openapi.json")).json()
        with_body = [
            (method, path, operation)
            for path, item in spec["paths"].items()
            for method, operation in item.items()
            if "requestBody" in operation
        ]
        assert with_body
        for method, path, operation in with_body:
            assert PROBLEM_JSON in operation["responses"]["400"]["content"], (method, path)
        r = await send_raw(s[cmd.service], cmd.method, cmd.path, b'{"name": "unfinished')
        assert assert_problem(r, 400)["type"].endswith("/malformed-json")


def nested(kind: str, depth: int) -> str:
    if kind == "arrays":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


async def test_deep_nesting_is_refused_and_the_service_stays_healthy(system: Hostile) -> None:
    s = system.services
    _, cmds = await commands(s)
    depth = 10_000
    statuses: Counter[int] = Counter()
    before = await positions(s)
    for cmd in cmds:
        svc = s[cmd.service]
        for kind in ("arrays", "objects"):
            deep = nested(kind, depth)
            field_body = json.dumps(cmd.body)[:-1] + f', "{cmd.text_field}": {deep}}}'
            for body in (deep, field_body):
                r = await send_raw(svc, cmd.method, cmd.path, body.encode())
                statuses[r.status_code] += 1
                assert 400 <= r.status_code < 500, (cmd.service, kind, r.status_code, r.text)
                assert r.headers["content-type"].startswith(PROBLEM_JSON)
    assert await positions(s) == before
    for cmd in cmds:
        await assert_healthy(s[cmd.service], cmd)
    record(
        "hostile",
        f"bodies nested {depth:,} levels deep (arrays, objects; whole body and one field)",
        "4xx each; nothing stored; every service healthy after",
        inputs=statuses.total(),
        answers=answers(statuses),
        server_errors=server_errors(statuses),
    )


async def test_huge_strings_and_lists_are_refused_with_422(system: Hostile) -> None:
    s = system.services
    p, cmds = await commands(s)
    before = await positions(s)
    statuses: Counter[int] = Counter()
    for cmd in cmds:
        # Under the body limit, far over the field's.
        r = await send_raw(
            s[cmd.service],
            cmd.method,
            cmd.path,
            json.dumps({**cmd.body, cmd.text_field: "y" * 60_000}).encode(),
        )
        statuses[r.status_code] += 1
        problem = assert_problem(r, 422)
        assert cmd.text_field in [e["field"] for e in problem["errors"]], problem
    many = {"value": 1, "confidence": 5, "note": "", "blockers": ["b"] * 5_000}
    r = await s["checkins"].client.post(f"/v1/key-results/{p.key_result_id}/check-ins", json=many)
    statuses[r.status_code] += 1
    assert "blockers" in [e["field"] for e in assert_problem(r, 422)["errors"]]
    assert await positions(s) == before
    record(
        "hostile",
        "strings of 60,000 characters; a list of 5,000 items",
        "422 naming the field; nothing stored",
        inputs=statuses.total(),
        answers=answers(statuses),
        server_errors=server_errors(statuses),
    )


# Odd text, and whether a store can keep it. `\ud800`-style lone surrogates can only arrive
# escaped in JSON; NUL cannot be kept by PostgreSQL's text columns, so it is refused on
# every store alike.
ODD_TEXT: dict[str, tuple[str, bool]] = {
    "NUL": ("before\x00after", False),
    "lone high surrogate": ("before\ud800after", False),
    "lone low surrogate": ("before\udfffafter", False),
    "right-to-left override": ("invoice\u202egnp.exe", True),
    "bidi isolates": ("a\u2066\u05e9\u05dc\u05d5\u05dd\u2069b", True),
    "zero-width joiner family": ("team \U0001f469\u200d\U0001f469\u200d\U0001f467 wins", True),
    "zero-width space and BOM": ("a\u200bb\ufeffc", True),
    "combining marks": ("Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o", True),
    "astral plane and emoji": ("\U0001d54f \U0001f600 \U00020000", True),
    "line and paragraph separators": ("one\u2028two\u2029three", True),
    "control characters": ("tab\there\x07bell\x1bescape", True),
    "Arabic and Hebrew": ("\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd", True),
}


async def test_odd_unicode_is_refused_or_kept_exactly(system: Hostile) -> None:
    s = system.services
    goals, checkins, projections = s["goals"], s["checkins"], s["projections"]
    p, _ = await commands(s)
    statuses: Counter[int] = Counter()
    for label, (text, storable) in ODD_TEXT.items():
        # ensure_ascii: lone surrogates travel escaped, as a hostile client would send them.
        cycle = json.dumps({"name": text, "starts_on": "2027-07-01", "ends_on": "2027-09-30"})
        check = json.dumps({"value": 1, "confidence": 5, "note": text, "blockers": [text]})
        before = await positions(s)
        r1 = await send_raw(goals, "POST", "/v1/cycles", cycle.encode())
        r2 = await send_raw(
            checkins, "POST", f"/v1/key-results/{p.key_result_id}/check-ins", check.encode()
        )
        statuses.update([r1.status_code, r2.status_code])
        if not storable:
            assert "name" in [e["field"] for e in assert_problem(r1, 422)["errors"]], label
            fields = [e["field"] for e in assert_problem(r2, 422)["errors"]]
            assert "note" in fields and any(f.startswith("blockers") for f in fields), fields
            assert await positions(s) == before, label
            continue
        assert r1.status_code == 201, (label, r1.text)
        assert r2.status_code == 201, (label, r2.text)
        cycle_id, check_in_id = r1.json()["id"], r2.json()["id"]
        # Read back exactly: by the service that stored it ...
        assert (await goals.client.get(f"/v1/cycles/{cycle_id}")).json()["name"] == text, label
        stored = (await checkins.client.get(f"/v1/check-ins/{check_in_id}")).json()
        assert (stored["note"], stored["blockers"]) == (text, [text]), label
        # ... and by the projections, from the events.
        wait = [r1.json()["position"], r2.json()["position"]]
        tree = await projections.client.get(
            f"/v1/cycles/{cycle_id}/okrs", params={"min_position": wait}
        )
        assert tree.json()["cycle"]["name"] == text, label
        history = await projections.client.get(
            f"/v1/key-results/{p.key_result_id}/check-ins", params={"min_position": wait}
        )
        item = next(i for i in history.json()["items"] if i["id"] == check_in_id)
        assert (item["note"], item["blockers"]) == (text, [text]), label
    record(
        "hostile",
        f"odd unicode in names, notes and lists ({len(ODD_TEXT)} kinds)",
        "NUL and lone surrogates 422; the rest kept and read back exactly, by the service and "
        "by the projections",
        kinds=len(ODD_TEXT),
        inputs=statuses.total(),
        answers=answers(statuses),
        server_errors=server_errors(statuses),
    )


def huge_jwt_header() -> str:
    """Correctly signed, with a header that makes the token larger than 8 KiB."""
    claims = {"sub": "alice", "exp": int(time.time()) + 600, "roles": ["admin"]}
    return jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "k" * 9_000})


# Beyond tests/http/forged.py: admin claims under `alg: none`, huge tokens and headers, and
# subjects no store can keep (they would be the actor of every event).
def alg_none_admin() -> str:
    """`alg: none`, unsigned, claiming to be an admin."""
    header = alg_none_token().split(".")[0]
    claims = {"sub": "admin", "roles": ["admin"], "exp": int(time.time()) + 600}
    payload = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{header}.{payload}."


MORE_BAD_AUTHORIZATION = {
    "alg none claiming admin": lambda: f"Bearer {alg_none_admin()}",
    "huge JWT header (over 8 KiB)": lambda: f"Bearer {huge_jwt_header()}",
    "Authorization header of 1 MB": lambda: "Bearer " + "a" * 1_000_000,
    "sub with NUL": lambda: "Bearer " + token("ali\x00ce"),
    "sub a lone surrogate": lambda: "Bearer " + token("ali" + chr(0xD800) + "ce"),
    "roles but signed with another key": lambda: (
        "Bearer " + signed("another-secret-that-is-long-enough-for-hs256-xyz", roles=["admin"])
    ),
}


async def test_bad_tokens_are_refused_with_401_and_store_nothing(system: Hostile) -> None:
    s = system.services
    _, cmds = await commands(s)
    cases = {**BAD_AUTHORIZATION, **MORE_BAD_AUTHORIZATION}
    before = await positions(s)
    statuses: Counter[int] = Counter()
    for label, make in cases.items():
        value = make()
        for cmd in cmds:
            svc = s[cmd.service]
            headers = {} if value is None else {"Authorization": value}
            async with httpx.AsyncClient(base_url=svc.base_url, timeout=30) as anonymous:
                r = await anonymous.request(cmd.method, cmd.path, json=cmd.body, headers=headers)
                statuses[r.status_code] += 1
                assert_problem(r, 401)
                assert r.headers["www-authenticate"].startswith("Bearer"), (label, r.headers)
        async with httpx.AsyncClient(base_url=s["projections"].base_url, timeout=30) as anonymous:
            headers = {} if value is None else {"Authorization": value}
            r = await anonymous.get("/v1/audit", headers=headers)
            assert_problem(r, 401)  # reads need a token as much as commands do
            statuses[r.status_code] += 1
    assert await positions(s) == before
    for cmd in cmds:  # the same commands with a good token still work
        await assert_healthy(s[cmd.service], cmd)
    # Odd but storable subjects are kept as the actor, exactly.
    actor = "\u202eeve \U0001f469\u200d\U0001f469\u200d\U0001f467"
    r = await s["goals"].client.post(
        "/v1/cycles",
        json={"name": "Q4", "starts_on": "2027-10-01", "ends_on": "2027-12-31"},
        headers=auth(actor),
    )
    assert r.status_code == 201, r.text
    entries = await s["projections"].client.get(
        "/v1/audit", params={"entity": r.json()["id"], "min_position": r.json()["position"]}
    )
    assert [e["actor"] for e in entries.json()["items"]] == [actor]
    record(
        "hostile",
        f"bad bearer tokens ({len(cases)} kinds) on a command of each service and a read",
        "401 each; nothing stored",
        kinds=len(cases),
        inputs=statuses.total(),
        answers=answers(statuses),
        server_errors=server_errors(statuses),
    )


# --- forged events ------------------------------------------------------------------------


def more_hostile() -> list[tuple[str, bytes, dict[str, str]]]:
    """Envelopes broken in ways `hostile()` does not try, on the subjects of every consumer."""
    scheduled = {"name": "Forged", "starts_on": "2027-01-01", "ends_on": "2027-03-31"}
    subject = "okr.goals.cycle.scheduled"
    review = "okr.reviews.cycle_review.finalised"
    checked_in = "okr.checkins.key_result_progress.checked_in"
    deep = orjson.dumps(envelope(subject, {**scheduled, "name": "DEEP"}, 910_015)).replace(
        b'"DEEP"', b"[" * 10_000 + b"]" * 10_000
    )

    def broken(n: int, **changes: Any) -> dict[str, Any]:
        return {**envelope(subject, scheduled, n), **changes}

    cases: list[tuple[str, Any]] = [
        (subject, broken(910_001, subject="not-a-uuid")),
        (subject, broken(910_002, time="2027-01-04T09:00:00")),  # no time zone
        (subject, broken(910_003, sequence=0)),
        (subject, broken(910_004, sequence="910004")),
        (subject, broken(910_005, aggregateversion=True)),
        (subject, broken(910_006, actor="m" * 5_000)),
        (subject, broken(910_007, specversion="0.3")),
        (subject, broken(910_008, datacontenttype="text/plain")),
        (subject, broken(910_009, data=[scheduled])),
        (subject, {k: v for k, v in broken(910_010).items() if k != "id"}),
        ("okr.goals.cycle", broken(910_011)),  # a subject of three parts
        ("okr.elsewhere.thing.done", envelope("okr.elsewhere.thing.done", {}, 910_012)),
        (review, envelope(review, {"decisions": "all of them"}, 910_013)),
        (checked_in, envelope(checked_in, {"value": "NaN", "confidence": -1}, 910_014)),
        (subject, deep),  # 10,000 levels inside data
        (subject, b"\xff\xfe not utf-8"),
        (subject, b""),
    ]
    messages = []
    for subject_, body in cases:
        if isinstance(body, bytes):
            messages.append((subject_, body, {"Nats-Msg-Id": f"garbage-{uuid.uuid4()}"}))
        else:  # the id the envelope claims, so that only what was broken on purpose is wrong
            msg_id = f"{body['source']}:{body['sequence']}"
            messages.append((subject_, orjson.dumps(body), {"Nats-Msg-Id": msg_id}))
    # A valid envelope whose Nats-Msg-Id names another event.
    good = envelope(subject, scheduled, 910_020)
    messages.append((subject, orjson.dumps(good), {"Nats-Msg-Id": "okr/goals:910021"}))
    return messages


async def test_forged_events_are_rejected_by_every_consumer_and_change_no_view(
    system: Hostile,
) -> None:
    s = system.services
    at = await settle(s)
    before = await snapshot(s, at)
    projections = s["projections"]
    metrics = {m: await consumer_counts(projections, m, s) for m in ("rejected", "applied")}
    messages = [*hostile(), *more_hostile()]
    nc = await nats.connect(s["goals"].runtime.settings.nats_url)
    try:
        js = nc.jetstream()
        for subject, data, headers in messages:
            await js.publish(subject, data, stream="OKR", headers=headers)
    finally:
        await nc.close()
    expected = {
        c.durable: sum(1 for subject, _, _ in messages if c.follows(subject.split(".")[1]))
        for _, c in consumers(s)
    }
    deadline = time.monotonic() + 30
    while grown(metrics["rejected"], await consumer_counts(projections, "rejected", s)) != expected:
        assert time.monotonic() < deadline, (
            grown(metrics["rejected"], await consumer_counts(projections, "rejected", s)),
            expected,
        )
        await asyncio.sleep(0.05)
    await quiet(s)
    assert_unchanged(before, await snapshot(s, at))
    applied = grown(metrics["applied"], await consumer_counts(projections, "applied", s))
    assert not any(applied.values()), applied
    record(
        "hostile",
        f"forged and malformed events on okr.> ({len(messages)} messages)",
        "terminated by every consumer that receives them; no view changed",
        inputs=len(messages),
        answers="terminated: "
        + ", ".join(f"{k} {v}" for k, v in expected.items())
        + f"; applied: {sum(applied.values())}",
    )


# --- reads with text no store can keep ------------------------------------------------------


NUL_READS = [
    "/v1/audit?actor=a%00b",
    "/v1/audit?entity=a%00b",
    "/v1/audit?event_type=a%00b",
    "/v1/audit.csv?actor=a%00b",
    "/v1/teams/a%00b/check-in-meetings",
    "/v1/search?q=a%00b",
]


async def test_reads_with_nul_in_filters_answer_without_5xx(
    store: dict[str, Any], tmp_path: Path
) -> None:
    async with running(store, tmp_path, "goals", "projections") as s:
        statuses = Counter[int]()
        for path in NUL_READS:
            r = await s["projections"].client.get(path)
            statuses[r.status_code] += 1
    kind = "PostgreSQL" if "database_url" in store else "SQLite"
    errors = server_errors(statuses)
    record(
        "hostile",
        f"NUL in the projections' read filters, query and path ({kind})",
        "no 5xx" if not errors else "5xx",
        inputs=statuses.total(),
        answers=answers(statuses),
        server_errors=errors,
    )
    assert not errors, statuses
    assert statuses == Counter({422: len(NUL_READS)}), statuses
