"""`okr run` (what `make run` calls) as a user runs it: a fresh data folder, no NATS at the
configured URL. It must start nats-server itself, bring every service to ready, print a
working admin token, carry a key result from the goals service to the check-in service over
NATS, start a service that was killed again while the others keep running, and stop
everything on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.launcher import SERVICES, launched
from tests.support import read_stream

pytestmark = pytest.mark.e2e


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=2) as r:
            return bool(json.load(r)["status"] == "ready")
    except OSError:
        return False


async def test_launcher_starts_everything_and_stops_on_sigterm(tmp_path: Path) -> None:
    with launched(tmp_path) as system:
        text = system.log.read_text()
        assert "local nats-server" in text and "(ready)" in text
        assert (system.data_dir / "jwt-secret").exists()
        for service in SERVICES:
            assert (system.data_dir / f"{service}.db").exists()
            with urllib.request.urlopen(f"{system.url(service)}/readyz") as r:
                assert json.load(r)["status"] == "ready"

        # A service killed outright is started again by its supervisor; the others go on.
        before = {service: system.pids(service) for service in SERVICES}
        assert all(len(pids) == 1 for pids in before.values()), before
        os.kill(before["checkins"][0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        while not ready(system.url("checkins")) or system.pids("checkins") == before["checkins"]:
            assert time.monotonic() < deadline, system.log.read_text()
            time.sleep(0.2)
        assert len(system.pids("checkins")) == 1
        assert {s: system.pids(s) for s in SERVICES if s != "checkins"} == {
            s: pids for s, pids in before.items() if s != "checkins"
        }
        assert "starting it again" in system.log.read_text()

        def post(service: str, path: str, body: dict[str, object] | None = None) -> dict[str, str]:
            request = urllib.request.Request(
                f"{system.url(service)}{path}",
                data=json.dumps(body or {}).encode(),
                headers={
                    "Authorization": f"Bearer {system.token}",
                    "Content-Type": "application/json",
                },
                method="POST",
            )
            with urllib.request.urlopen(request) as r:
                assert r.status in (200, 201)
                answer: dict[str, str] = json.load(r)
                return answer

        cycle = post(
            "goals",
            "/v1/cycles",
            {"name": "Q1", "starts_on": "2027-01-01", "ends_on": "2027-03-31"},
        )["id"]
        post("goals", f"/v1/cycles/{cycle}/start")
        objective = post(
            "goals",
            "/v1/objectives",
            {"cycle_id": cycle, "title": "Ship", "owner": "ann", "team": "core"},
        )["id"]
        kr = post(
            "goals",
            f"/v1/objectives/{objective}/key-results",
            {"title": "Users", "kind": "number", "start": 0, "target": 10, "owner": "ann"},
        )
        check_in = post(
            "checkins",
            f"/v1/key-results/{kr['id']}/check-ins?min_position={kr['position']}",
            {"value": 4, "confidence": 8},
        )
        assert check_in["position"].startswith("checkins:")
        messages = await read_stream(f"nats://127.0.0.1:{system.nats_port}", 6)
        envelopes = [json.loads(m.data) for m in messages]
        assert {e["actor"] for e in envelopes} == {"admin"}
        assert [e["source"] for e in envelopes].count("okr/checkins") == 2
        ports = [system.nats_port, *system.ports.values()]
    # The launcher got SIGTERM and exited: nothing it started may outlive it.
    deadline = time.monotonic() + 10
    while any(port_open(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in ports if port_open(p)], "a process outlived the launcher"
