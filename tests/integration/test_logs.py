"""Structured logs: JSON lines with the service's name, and the correlation and causation ids
of a change carried from the HTTP request, through its event, into the consumers that apply
it."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from shared.logs import bind, configure, context_fields
from tests.http.helpers import create_cycle
from tests.support import SECRET, NatsServer, RunningService, auth, free_port

ROOT = Path(__file__).resolve().parents[2]


def test_a_record_is_one_json_object_with_the_context() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure("goals", fmt="json", level="INFO")
        out = io.StringIO()
        root.handlers[0].stream = out  # type: ignore[attr-defined]
        with bind(correlation_id="corr-1", causation_id="req-1", actor="alice"):
            logging.getLogger("okr.test").info("target adjusted for %s", "KR-1")
        logging.getLogger("okr.test").warning("outside")
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["message"] == "target adjusted for KR-1"
    assert inside["level"] == "INFO" and inside["logger"] == "okr.test"
    assert inside["service"] == "goals"
    assert (inside["correlation_id"], inside["causation_id"], inside["actor"]) == (
        "corr-1",
        "req-1",
        "alice",
    )
    assert "time" in inside
    assert "correlation_id" not in outside and outside["level"] == "WARNING"


def test_bound_fields_nest_and_are_gone_after_their_block() -> None:
    with bind(correlation_id="c-1", actor="alice"):
        with bind(causation_id="e-1", actor=None):  # None leaves the outer value
            assert context_fields() == {
                "correlation_id": "c-1",
                "actor": "alice",
                "causation_id": "e-1",
            }
        assert context_fields() == {"correlation_id": "c-1", "actor": "alice"}
        with pytest.raises(RuntimeError), bind(event_id="e-2"):
            raise RuntimeError
        assert context_fields() == {"correlation_id": "c-1", "actor": "alice"}
    assert context_fields() == {}


async def test_ids_go_from_the_request_through_the_event_into_the_consumer(
    checkins: RunningService, goals: RunningService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="shared.consumer")
    r = await goals.client.post(
        "/v1/cycles",
        json={"name": "Traced", "starts_on": "2027-01-01", "ends_on": "2027-03-31"},
        headers={"X-Correlation-Id": "corr-trace-1", "X-Request-Id": "req-trace-1"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["X-Correlation-Id"] == "corr-trace-1"
    assert r.headers["X-Request-Id"] == "req-trace-1"
    position = r.json()["position"]
    r = await checkins.client.get("/v1/catalogue", params={"min_position": position})
    assert r.status_code == 200, r.text

    applied = [
        rec
        for rec in caplog.records
        if rec.name == "shared.consumer" and "applied okr.goals.cycle.scheduled" in rec.getMessage()
    ]
    assert applied, [rec.getMessage() for rec in caplog.records]
    record = applied[-1]
    assert record.correlation_id == "corr-trace-1"  # type: ignore[attr-defined]
    assert record.actor == "alice"  # type: ignore[attr-defined]
    # The cause of the consumer's work is the event, whose own cause was the request.
    assert record.causation_id == record.event_id != "req-trace-1"  # type: ignore[attr-defined]


async def test_a_request_without_ids_gets_new_ones_and_a_bad_one_is_refused(
    goals: RunningService,
) -> None:
    await create_cycle(goals.client)
    r = await goals.client.get("/healthz")
    assert len(r.headers["X-Request-Id"]) == 36
    assert r.headers["X-Correlation-Id"] == r.headers["X-Request-Id"]
    r = await goals.client.post(
        "/v1/cycles",
        json={"name": "Q", "starts_on": "2027-01-01", "ends_on": "2027-03-31"},
        headers={"X-Correlation-Id": "bad id with spaces"},
    )
    assert r.status_code == 422 and "X-Correlation-Id" in r.text


def test_a_service_process_writes_json_lines(tmp_path: Path) -> None:
    nats = NatsServer(tmp_path / "nats")
    nats.start()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OKR_")} | {
        "OKR_DATA_DIR": str(tmp_path / "data"),
        "OKR_NATS_URL": nats.url,
        "OKR_GOALS_PORT": str(port),
        "OKR_JWT_SECRET": SECRET,
        "OKR_LOG_FORMAT": "json",
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "goals.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.goals"], env=env, stdout=err, stderr=err
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
            time.sleep(0.1)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/cycles",
            json={"name": "Q", "starts_on": "2027-01-01", "ends_on": "2027-03-31"},
            headers=auth(),
        )
        assert r.status_code == 201
    finally:
        proc.terminate()
        proc.wait(20)
        nats.stop()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(r["service"] == "goals" and "level" in r and "time" in r for r in records)
    assert any("Uvicorn running" in r["message"] or "Started" in r["message"] for r in records)
    assert SECRET not in log.read_text()
