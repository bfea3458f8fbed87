"""The board's server side over plain HTTP, no browser: the page and every file it loads (served
with a strict Content-Security-Policy, naming no other host), the live event stream (a token
needed, a message once new events are applied, heartbeats, its end when the token expires or
the process is told to stop), and CORS for the board's origin on the command services."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.checkins.main import CheckinsSettings
from services.checkins.main import create_app as create_checkins
from services.goals.main import GoalsSettings
from services.goals.main import create_app as create_goals
from services.projections import live
from services.projections.board import BOARD_DIR
from services.projections.main import ProjectionsApplication, ProjectionsSettings
from services.projections.main import create_app as create_projections
from services.projections.rebuild import rebuild
from shared.sql import Database
from shared.store import store_env
from tests.http.checkins_helpers import check_in, plan
from tests.http.helpers import anonymous, assert_problem, cycle_body
from tests.support import SECRET, NatsServer, RunningService, free_port, serve, token
from tests.system import running

ROOT = Path(__file__).resolve().parents[2]
CHECKINS_URL = "http://127.0.0.1:18002"
BOARD = "http://board.example:8004"
# The one address the board's files may hold: the SVG namespace, a name that is never fetched.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


# --- the page and its files ---------------------------------------------------------------


@pytest.fixture
async def page() -> AsyncIterator[httpx.AsyncClient]:
    """The projections app without its moving parts (no lifespan): the board needs none."""
    app = create_projections(
        ProjectionsSettings(jwt_secret=SECRET, board_checkins_url=CHECKINS_URL)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://board.test") as client:
        yield client


def assert_strict_policy(r: httpx.Response) -> None:
    policy = dict(
        part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == policy["style-src"] == policy["img-src"] == "'self'"
    assert policy["connect-src"] == f"'self' {CHECKINS_URL}"
    assert policy["frame-ancestors"] == "'none'" and policy["base-uri"] == "'none'"
    assert r.headers["x-content-type-options"] == "nosniff"


def references(text: str) -> set[str]:
    """The board's own paths a file loads: src/href in HTML, relative module imports in JS."""
    found = set(re.findall(r'(?:src|href)="(/board/[^"]+)"', text))
    found |= {"/board/" + name for name in re.findall(r'from "\./([^"]+)"', text)}
    return found


async def test_the_board_and_every_file_it_loads_are_served_with_a_strict_policy(
    page: httpx.AsyncClient,
) -> None:
    r = await page.get("/")  # no token: the page holds no data
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert_strict_policy(r)
    media = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    seen: set[str] = set()
    todo = references(r.text)
    while todo:
        path = todo.pop()
        seen.add(path)
        r = await page.get(path)
        assert r.status_code == 200, path
        assert r.headers["content-type"].startswith(media[Path(path).suffix]), path
        assert_strict_policy(r)
        todo |= references(r.text) - seen
    # Every file that ships is used, and every one used ships.
    assert seen == {f"/board/{p.name}" for p in BOARD_DIR.iterdir() if p.name != "index.html"}


def test_no_file_of_the_board_names_another_host() -> None:
    for path in BOARD_DIR.iterdir():
        text = path.read_text()
        addresses = set(re.findall(r"https?://[^\s\"'`<>)]+", text)) - {SVG_NAMESPACE}
        assert not addresses, f"{path.name} names {addresses}"
        assert not re.search(r"""(?:src|href|url)\s*[=(]\s*["']?//""", text), path.name


async def test_the_board_knows_where_to_send_commands(page: httpx.AsyncClient) -> None:
    r = await page.get("/board/config.json")
    assert r.status_code == 200 and r.json() == {"checkins_url": CHECKINS_URL}
    assert_strict_policy(r)


@pytest.mark.parametrize(
    "path", ["/board/nope.js", "/board/..%2Fboard.py", "/board/%2E%2E%2Fmain.py", "/board/"]
)
async def test_only_the_board_files_are_served(page: httpx.AsyncClient, path: str) -> None:
    assert_problem(await page.get(path), 404)


def test_the_check_in_service_url_must_be_http() -> None:
    bad_urls = ("ftp://x.example", "javascript:alert(1)", "127.0.0.1:8002", "http://", "http://x?y")
    for bad in bad_urls:
        with pytest.raises(ValueError, match="OKR_BOARD_CHECKINS_URL"):
            ProjectionsSettings(jwt_secret=SECRET, board_checkins_url=bad)
    settings = ProjectionsSettings(jwt_secret=SECRET, board_checkins_url="https://okr.test/c/")
    assert settings.board_checkins_url == "https://okr.test/c"


# --- the live stream ----------------------------------------------------------------------


@pytest.fixture(scope="module")
async def system(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    """goals, checkins and projections on SQLite: the stream does not depend on the store."""
    base = tmp_path_factory.mktemp("board-http")
    async with running({"data_dir": base / "data"}, base, "goals", "checkins", "projections") as s:
        yield s


async def events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event type, data) for each message of an event stream; ("comment", text) for comments."""
    kind, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data.append(line.removeprefix("data: "))
        elif line == "" and data:
            yield kind, "\n".join(data)
            kind, data = "message", []


async def next_event(stream: AsyncIterator[tuple[str, str]], timeout: float = 10) -> Any:
    return await asyncio.wait_for(anext(stream), timeout)


async def applied_at(
    stream: AsyncIterator[tuple[str, str]], wanted: Any, timeout: float = 10
) -> dict[str, Any]:
    """The first `applied` message whose data satisfies `wanted`."""
    deadline = time.monotonic() + timeout
    while True:
        kind, data = await next_event(stream, max(0.1, deadline - time.monotonic()))
        message = json.loads(data)
        if kind == "applied" and wanted(message):
            return message


def position_of(message: dict[str, Any], service: str) -> int:
    at = dict(p.split(":") for p in message["positions"])
    return int(at.get(service, 0))


async def test_the_stream_needs_a_valid_token(system: dict[str, RunningService]) -> None:
    async with anonymous(system["projections"]) as client:
        for headers in ({}, {"Authorization": "Bearer nonsense"}):
            r = await client.get("/v1/stream", headers=headers)
            assert_problem(r, 401)
        r = await client.get("/v1/stream", headers={"Authorization": f"Bearer {token(ttl_s=-100)}"})
        assert_problem(r, 401)


async def test_a_message_arrives_once_the_views_applied_new_events(
    system: dict[str, RunningService],
) -> None:
    goals, checkins, projections = system["goals"], system["checkins"], system["projections"]
    async with projections.client.stream("GET", "/v1/stream") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-store"
        stream = events(r)
        kind, data = await next_event(stream)
        assert kind == "ready"
        assert set(json.loads(data)) == {"generation", "positions"}
        p = await plan(goals, checkins)
        answer = await checkins.client.post(
            f"/v1/key-results/{p.key_result_id}/check-ins",
            json={"value": 30, "confidence": 7, "note": "", "blockers": []},
        )
        assert answer.status_code == 201, answer.text
        wanted = int(answer.json()["position"].removeprefix("checkins:"))
        await applied_at(stream, lambda m: position_of(m, "checkins") >= wanted)
    # The views have it by then: the message came after the event was applied.
    tree = (await projections.client.get(f"/v1/cycles/{p.cycle_id}/okrs")).json()
    assert tree["objectives"][0]["key_results"][0]["current"] == 30


async def test_a_rebuild_is_announced_and_the_stream_follows_the_new_views(
    system: dict[str, RunningService],
) -> None:
    goals, checkins, projections = system["goals"], system["checkins"], system["projections"]
    p = await plan(goals, checkins)
    settings = projections.runtime.settings
    async with projections.client.stream("GET", "/v1/stream") as r:
        stream = events(r)
        kind, data = await next_event(stream)
        assert kind == "ready"
        generation = json.loads(data)["generation"]
        app = ProjectionsApplication(store_env(settings))
        try:
            built = await rebuild(settings, Database(app), out=io.StringIO())
        finally:
            app.close()
        assert built == generation + 1
        await applied_at(stream, lambda m: m["generation"] == built)
        # Events after the switch come through the new generation's consumer.
        await check_in(checkins.client, p.key_result_id, value=41)
        at = await asyncio.to_thread(checkins.runtime.app.recorder.max_notification_id)
        message = await applied_at(stream, lambda m: position_of(m, "checkins") >= at)
        assert message["generation"] == built


async def test_a_quiet_stream_sends_heartbeats(
    system: dict[str, RunningService], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "HEARTBEAT_S", 0.3)
    async with system["projections"].client.stream("GET", "/v1/stream") as r:
        stream = events(r)
        assert (await next_event(stream))[0] == "ready"
        started = time.monotonic()
        kind, text = await next_event(stream, 5)
        assert (kind, text) == ("comment", "heartbeat")
        assert 0.2 < time.monotonic() - started < 3


async def test_the_stream_ends_when_its_token_expires(system: dict[str, RunningService]) -> None:
    # Expired 28 s ago: still inside the verifier's 30 s leeway, refused 2 s from now.
    almost = {"Authorization": f"Bearer {token(ttl_s=-28)}"}
    async with system["projections"].client.stream("GET", "/v1/stream", headers=almost) as r:
        assert r.status_code == 200
        started = time.monotonic()
        received = [kind async for kind, _ in events(r)]
        assert received[0] == "ready"
        assert time.monotonic() - started < 5


async def test_a_stop_signal_ends_open_streams_and_the_service_stops_promptly(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """uvicorn waits for open responses before it stops; a stream must end by itself."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OKR_")} | {
        "OKR_JWT_SECRET": SECRET,
        "OKR_NATS_URL": nats_server.url,
        "OKR_DATA_DIR": str(tmp_path / "data"),
        "OKR_PROJECTIONS_PORT": str(port),
        "OKR_LOG_FORMAT": "text",
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "projections.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.projections"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=20) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                await asyncio.sleep(0.1)
            headers = {"Authorization": f"Bearer {token()}"}
            async with client.stream("GET", "/v1/stream", headers=headers) as r:
                stream = events(r)
                assert (await next_event(stream))[0] == "ready"
                stopped = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                rest = [kind async for kind, _ in stream]  # ends without an error
            assert rest in ([], ["comment"])
        code = await asyncio.to_thread(proc.wait, 10)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert took < 5, f"took {took:.1f}s to stop:\n{text}"
    assert code in (0, -signal.SIGTERM), text
    assert "Application shutdown complete" in text, text  # not cut short
    assert "Cancel" not in text, text


# --- CORS ---------------------------------------------------------------------------------


@pytest.fixture
async def command_services(
    nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[dict[str, RunningService]]:
    """goals and checkins allowing the board's origin, as the launcher sets them up."""
    common: dict[str, Any] = {
        "jwt_secret": SECRET,
        "nats_url": nats_server.url,
        "data_dir": tmp_path / "data",
        "cors_origins": f"{BOARD}, http://localhost:8004",
    }
    async with (
        serve(create_goals(GoalsSettings(**common))) as goals,
        serve(create_checkins(CheckinsSettings(**common))) as checkins,
    ):
        yield {"goals": goals, "checkins": checkins}


def preflight(origin: str) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key, if-match",
    }


async def test_a_preflight_from_a_configured_origin_is_allowed(
    command_services: dict[str, RunningService],
) -> None:
    checkins = command_services["checkins"]
    async with anonymous(checkins) as client:
        r = await client.options(
            f"/v1/key-results/{uuid.uuid4()}/check-ins", headers=preflight(BOARD)
        )
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == BOARD
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "if-match"} <= allowed
    assert "access-control-allow-credentials" not in r.headers


async def test_a_preflight_from_another_origin_is_refused(
    command_services: dict[str, RunningService],
) -> None:
    checkins = command_services["checkins"]
    for origin in ("http://evil.example:8004", "http://board.example:8005", "null"):
        async with anonymous(checkins) as client:
            r = await client.options(
                f"/v1/key-results/{uuid.uuid4()}/check-ins", headers=preflight(origin)
            )
        assert r.status_code == 400, origin
        assert "access-control-allow-origin" not in r.headers, origin


async def test_answers_to_the_board_expose_the_version_and_location(
    command_services: dict[str, RunningService],
) -> None:
    goals, checkins = command_services["goals"], command_services["checkins"]
    r = await goals.client.post("/v1/cycles", json=cycle_body(), headers={"Origin": BOARD})
    assert r.status_code == 201, r.text
    assert r.headers["access-control-allow-origin"] == BOARD
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert exposed == {"etag", "location"}
    # Refusals too: the board reads their problem details to show them by the field.
    r = await checkins.client.post(
        f"/v1/key-results/{uuid.uuid4()}/check-ins",
        json={"value": 1, "confidence": 11},
        headers={"Origin": BOARD},
    )
    assert_problem(r, 422)
    assert r.headers["access-control-allow-origin"] == BOARD
    # Another origin gets its answer, but no header that would let its page read it.
    r = await goals.client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


async def test_without_origins_configured_there_is_no_cors(
    system: dict[str, RunningService],
) -> None:
    async with anonymous(system["checkins"]) as client:
        path = f"/v1/key-results/{uuid.uuid4()}/check-ins"
        r = await client.options(path, headers=preflight(BOARD))
        assert "access-control-allow-origin" not in r.headers
        r = await client.get("/healthz", headers={"Origin": BOARD})
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize(
    "origins",
    ["*", "http://board.example/", "board.example:8004", "http://*.example", "http://a@b.example"],
)
def test_cors_origins_must_be_exact_origins(origins: str) -> None:
    with pytest.raises(ValueError, match="OKR_CORS_ORIGINS"):
        GoalsSettings(jwt_secret=SECRET, cors_origins=origins)
