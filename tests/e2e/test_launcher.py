"""`okr run` (what `make run` calls) as a user runs it: a fresh data folder, no NATS at the
configured URL. It must start nats-server itself, bring every service to ready, print a
working admin token, carry a key result from the goals service to the check-in service over
NATS, and stop everything on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import free_port, read_stream

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


async def test_launcher_starts_everything_and_stops_on_sigterm(tmp_path):
    nats_port, goals_port, checkins_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OKR_")} | {
        "OKR_DATA_DIR": str(tmp_path / "data"),
        "OKR_NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "OKR_GOALS_PORT": str(goals_port),
        "OKR_CHECKINS_PORT": str(checkins_port),
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "launcher.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared", "run"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        token = None
        while time.monotonic() < deadline and token is None:
            text = log.read_text(errors="replace")
            match = re.search(r"Local admin token.*\n\s+(\S+\.\S+\.\S+)", text)
            token = match.group(1) if match else None
            assert proc.poll() is None, text
            time.sleep(0.2)
        assert token, log.read_text()
        text = log.read_text()
        assert "local nats-server" in text and "(ready)" in text
        assert (tmp_path / "data" / "jwt-secret").exists()
        assert (tmp_path / "data" / "goals.db").exists()
        assert (tmp_path / "data" / "checkins.db").exists()

        for port in (goals_port, checkins_port):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as r:
                assert json.load(r)["status"] == "ready"

        def post(port: int, path: str, body: dict[str, object] | None = None) -> dict[str, str]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}{path}",
                data=json.dumps(body or {}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request) as r:
                assert r.status in (200, 201)
                answer: dict[str, str] = json.load(r)
                return answer

        cycle = post(
            goals_port,
            "/v1/cycles",
            {"name": "Q1", "starts_on": "2027-01-01", "ends_on": "2027-03-31"},
        )["id"]
        post(goals_port, f"/v1/cycles/{cycle}/start")
        objective = post(
            goals_port,
            "/v1/objectives",
            {"cycle_id": cycle, "title": "Ship", "owner": "ann", "team": "core"},
        )["id"]
        kr = post(
            goals_port,
            f"/v1/objectives/{objective}/key-results",
            {"title": "Users", "kind": "number", "start": 0, "target": 10, "owner": "ann"},
        )
        check_in = post(
            checkins_port,
            f"/v1/key-results/{kr['id']}/check-ins?min_position={kr['position']}",
            {"value": 4, "confidence": 8},
        )
        assert check_in["position"].startswith("checkins:")
        messages = await read_stream(f"nats://127.0.0.1:{nats_port}", 7)
        envelopes = [json.loads(m.data) for m in messages]
        assert {e["actor"] for e in envelopes} == {"admin"}
        assert [e["source"] for e in envelopes].count("okr/checkins") == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    deadline = time.monotonic() + 10
    ports = (nats_port, goals_port, checkins_port)
    while any(port_open(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not port_open(nats_port), "nats-server outlived the launcher"
    assert not port_open(goals_port), "the goals service outlived the launcher"
    assert not port_open(checkins_port), "the check-in service outlived the launcher"
