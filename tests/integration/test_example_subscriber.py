"""The example subscriber (`examples/subscriber.py`), run as a separate process against a real
nats-server, reading events that the goals service really stored and its relay published."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.http.helpers import add_key_result, create_cycle, create_objective
from tests.support import NatsServer, RunningService, bodies, read_stream

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "subscriber.py"
LINE_SEQ = re.compile(r"^\S+  #(\d+)  (\S+)  ")
DEADLINE_S = 20.0

GOAL_TYPES = [
    "okr.goals.cycle.scheduled.v1",
    "okr.goals.cycle.started.v1",
    "okr.goals.objective.created.v1",
    "okr.goals.key_result.defined.v1",
    "okr.goals.key_result.target_adjusted.v1",
]


@pytest.fixture
def store(tmp_path: Path) -> dict[str, Any]:
    """SQLite only: the subscriber reads NATS and never sees the service's store."""
    return {"data_dir": tmp_path / "data"}


# --- producing events -----------------------------------------------------------------------


async def adjust_target(goals: RunningService, key_result_id: str, target: int) -> None:
    r = await goals.client.post(
        f"/v1/key-results/{key_result_id}/target",
        json={"target": target, "reason": "board asked"},
    )
    assert r.status_code == 200, r.text


async def make_goal(goals: RunningService) -> str:
    """Five events: a cycle scheduled and started, an objective, a key result, a new target."""
    cycle_id = await create_cycle(goals.client)
    objective_id = await create_objective(goals.client, cycle_id)
    key_result_id = await add_key_result(goals.client, objective_id)
    await adjust_target(goals, key_result_id, 90)
    return key_result_id


async def on_stream(url: str, count: int) -> list[Any]:
    """The stream's messages once the relay has published `count` of them."""
    messages = await read_stream(url, count, timeout=DEADLINE_S)
    assert len(messages) == count, f"{len(messages)} of {count} events reached the stream"
    return messages


# --- running the example --------------------------------------------------------------------


async def start(url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--server",
        url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def caught_up(url: str, *args: str) -> tuple[list[str], str]:
    """Run the example with --until-caught-up: its stdout lines and its stderr."""
    proc = await start(url, "--until-caught-up", *args)
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE_S)
    assert proc.returncode == 0, err.decode()
    return out.decode().splitlines(), err.decode()


async def next_line(stream: asyncio.StreamReader) -> str:
    line = await asyncio.wait_for(stream.readline(), DEADLINE_S)
    assert line, "the subscriber ended its output"
    return line.decode().rstrip("\n")


async def wait_ready(proc: asyncio.subprocess.Process) -> str:
    """The stderr line that says the consumer exists (so new events cannot be missed)."""
    assert proc.stderr is not None
    while " pending" not in (line := await next_line(proc.stderr)):
        pass
    return line


async def stop(proc: asyncio.subprocess.Process, sig: signal.Signals) -> int:
    proc.send_signal(sig)
    return await asyncio.wait_for(proc.wait(), DEADLINE_S)


def parsed(lines: list[str]) -> list[tuple[int, str]]:
    """(stream sequence, type) of each printed line."""
    out = []
    for line in lines:
        m = LINE_SEQ.match(line)
        assert m, line
        out.append((int(m[1]), m[2]))
    return out


def expected(messages: list[Any]) -> list[tuple[int, str]]:
    return [
        (m.metadata.sequence.stream, b["type"])
        for m, b in zip(messages, bodies(messages), strict=True)
    ]


# --- the tests ------------------------------------------------------------------------------


async def test_replays_every_stored_event_in_order_then_exits(goals, nats_server):
    await make_goal(goals)
    messages = await on_stream(nats_server.url, 5)

    lines, err = await caught_up(nats_server.url)

    assert parsed(lines) == expected(messages)
    assert [t for _, t in parsed(lines)] == GOAL_TYPES
    assert "warning" not in err and "skipped" not in err
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ  #1  ", lines[0])
    assert "  cycle " in lines[0] and "  by alice  " in lines[0], lines[0]
    assert 'name="Q1 2027"' in lines[0], lines[0]
    assert lines[4].endswith('target 50 → 90  ("board asked")'), lines[4]
    key_result_id = bodies(messages)[4]["subject"]
    assert f"  key_result {key_result_id[:8]}…  by alice  " in lines[4], lines[4]


async def test_json_prints_each_envelope_as_published(goals, nats_server):
    await make_goal(goals)
    messages = await on_stream(nats_server.url, 5)

    lines, _ = await caught_up(nats_server.url, "--json", "--subject", "okr.goals.key_result.>")

    assert [json.loads(line) for line in lines] == bodies(messages)[3:]


async def test_from_seq_starts_at_that_stream_sequence(goals, nats_server):
    await make_goal(goals)
    messages = await on_stream(nats_server.url, 5)

    lines, _ = await caught_up(nats_server.url, "--from-seq", "3")

    assert parsed(lines) == expected(messages)[2:]


async def test_since_prints_only_what_reached_the_stream_after_that_time(goals, nats_server):
    cycle_id = await create_cycle(goals.client)
    first = await on_stream(nats_server.url, 2)
    cut = datetime.now(UTC)
    objective_id = await create_objective(goals.client, cycle_id)
    await add_key_result(goals.client, objective_id)
    messages = await on_stream(nats_server.url, 4)
    assert first[-1].metadata.timestamp < cut < messages[2].metadata.timestamp

    lines, _ = await caught_up(nats_server.url, "--since", cut.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))

    assert parsed(lines) == expected(messages)[2:]


async def test_follows_new_events_and_stops_cleanly_on_sigterm(goals, nats_server):
    cycle_id = await create_cycle(goals.client)
    await on_stream(nats_server.url, 2)
    proc = await start(nats_server.url)
    try:
        assert proc.stdout is not None
        replayed = [await next_line(proc.stdout) for _ in range(2)]
        assert [t for _, t in parsed(replayed)] == GOAL_TYPES[:2]

        objective_id = await create_objective(goals.client, cycle_id)
        key_result_id = await add_key_result(goals.client, objective_id)
        await adjust_target(goals, key_result_id, 70)
        followed = [await next_line(proc.stdout) for _ in range(3)]

        assert parsed(followed) == list(zip([3, 4, 5], GOAL_TYPES[2:], strict=True))
        assert followed[2].endswith('target 50 → 70  ("board asked")'), followed[2]
        assert await stop(proc, signal.SIGTERM) == 0
        assert await proc.stdout.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_new_only_skips_the_past_and_stops_cleanly_on_sigint(goals, nats_server):
    cycle_id = await create_cycle(goals.client)
    await on_stream(nats_server.url, 2)
    proc = await start(nats_server.url, "--new-only")
    try:
        assert proc.stdout is not None
        await wait_ready(proc)
        await create_objective(goals.client, cycle_id)

        assert parsed([await next_line(proc.stdout)]) == [(3, GOAL_TYPES[2])]
        assert await stop(proc, signal.SIGINT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_until_caught_up_with_nothing_to_read_exits_at_once(goals, nats_server):
    await create_cycle(goals.client)
    await on_stream(nats_server.url, 2)

    assert (await caught_up(nats_server.url, "--new-only"))[0] == []
    assert (await caught_up(nats_server.url, "--subject", "okr.checkins.>"))[0] == []
    assert (await caught_up(nats_server.url, "--from-seq", "3"))[0] == []


async def test_republished_event_printed_once_and_garbage_skipped(goals, nats_server):
    key_result_id = await make_goal(goals)
    messages = await on_stream(nats_server.url, 5)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        # A relay that crashed republishes an event after the duplicate window: JetStream
        # takes it again, under another message id.
        again = messages[2]
        ack = await js.publish(again.subject, again.data, headers={"Nats-Msg-Id": "later:3"})
        assert (ack.seq, ack.duplicate) == (6, None)
        assert (await js.publish("okr.goals.x.y", b"not json {")).seq == 7
        assert (await js.publish("okr.goals.x.y", b'{"hello": "world"}')).seq == 8
    finally:
        await nc.close()
    await adjust_target(goals, key_result_id, 95)
    messages = await on_stream(nats_server.url, 9)

    lines, err = await caught_up(nats_server.url)

    assert [s for s, _ in parsed(lines)] == [1, 2, 3, 4, 5, 9]
    assert lines[-1].endswith('target 90 → 95  ("board asked")'), lines[-1]
    assert "skipped #7 on okr.goals.x.y: not JSON" in err, err
    assert "skipped #8 on okr.goals.x.y: not a CloudEvents envelope" in err, err
    assert "#6" not in err  # a repeat is dropped silently


async def test_resumes_where_it_was_after_nats_restarts(goals, nats_server: NatsServer):
    cycle_id = await create_cycle(goals.client)
    await on_stream(nats_server.url, 2)
    proc = await start(nats_server.url)
    try:
        assert proc.stdout is not None
        assert [s for s, _ in parsed([await next_line(proc.stdout) for _ in range(2)])] == [1, 2]
        # The server goes away, and with it the subscriber's in-memory consumer.
        nats_server.stop()
        nats_server.start()
        objective_id = await create_objective(goals.client, cycle_id)
        await add_key_result(goals.client, objective_id)

        followed = [await next_line(proc.stdout) for _ in range(2)]

        assert parsed(followed) == [(3, GOAL_TYPES[2]), (4, GOAL_TYPES[3])]
        assert await stop(proc, signal.SIGTERM) == 0
        assert await proc.stdout.read() == b""
        assert proc.stderr is not None
        err = (await proc.stderr.read()).decode()
        assert "reconnected to NATS" in err and "resuming at #3" in err, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
