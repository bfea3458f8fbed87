"""PostgreSQL gone under running services: every read of the store and every command answers
503 with Retry-After (never a 500), readiness says not ready, nothing is recorded, and
everything answers again once the server is back, with no restart of the services. (The
checkins service's catalogue is kept in memory and keeps answering.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.report import record
from tests.faults.test_crash import ADMIN, _ok, _scenario, _start, _stored

pytestmark = [pytest.mark.timeout(240), pytest.mark.e2e]
TARGET = {"target": 90, "reason": "learned more"}
CHECK_IN = {"value": 40, "confidence": 7, "note": "week 1"}
REFLECTION = {"kind": "learned", "text": "the store can go away"}


async def _until_ok(c: httpx.AsyncClient, url: str, timeout: float = 60) -> float:
    started = time.monotonic()
    while True:
        r = await c.get(url)
        if r.status_code == 200:
            return time.monotonic() - started
        assert r.status_code == 503, (url, r.status_code, r.text)
        assert time.monotonic() - started < timeout, f"{url} still {r.status_code}"
        await asyncio.sleep(0.2)


async def test_reads_and_commands_answer_503_while_postgres_is_down(tmp_path: Path) -> None:
    # One second's wait for a connection: the library tries a read ten times before giving up.
    system = await _start(tmp_path, "postgres", OKR_DATABASE_WAIT_S="1")
    assert system.postgres is not None
    urls = {name: svc.url for name, svc in system.services.items()}
    try:
        scenario = await _scenario(system, key_results=1)
        kr = scenario.key_results[0]
        async with httpx.AsyncClient(headers=ADMIN, timeout=30) as c:
            reads = {
                "goals": f"{urls['goals']}/v1/key-results/{kr}",
                "checkins": f"{urls['checkins']}/v1/catalogue",
                "reviews": f"{urls['reviews']}/v1/reviews/{scenario.review_id}",
                "projections": f"{urls['projections']}/v1/cycles",
            }
            for url in reads.values():
                await _ok(await c.get(url))
            stores = ("goals", "checkins", "reviews")
            before = {name: len(_stored(tmp_path, name, system.postgres.url)) for name in stores}

            system.kill("postgres")
            commands = {
                "goals": (f"{urls['goals']}/v1/key-results/{kr}/target", TARGET),
                "checkins": (f"{urls['checkins']}/v1/key-results/{kr}/check-ins", CHECK_IN),
                "reviews": (
                    f"{urls['reviews']}/v1/reviews/{scenario.review_id}/reflections",
                    REFLECTION,
                ),
            }
            answers: dict[str, int] = {}
            waited: dict[str, float] = {}
            responses: dict[str, httpx.Response] = {}

            async def send(label: str, method: str, url: str, **kw: Any) -> httpx.Response:
                started = time.monotonic()
                r = await c.request(method, url, **kw)
                waited[label], answers[label] = round(time.monotonic() - started, 2), r.status_code
                responses[label] = r
                return r

            async def all_at_once() -> None:
                # Each request waits for the store in its own service.
                requests = [send(f"GET {name}", "GET", url) for name, url in reads.items()]
                requests += [send(f"readyz {name}", "GET", f"{urls[name]}/readyz") for name in urls]
                requests += [
                    send(f"POST {name}", "POST", url, json=payload)
                    for name, (url, payload) in commands.items()
                ]
                await asyncio.gather(*requests)

            await all_at_once()
            first = dict(waited)
            # Now that each service has found the store unreachable, a call no longer waits
            # the pool's timeout, nor for the library's retries (ten times 1 s here): 503 at
            # once.
            await all_at_once()
            slow = {label: s for label, s in waited.items() if s > 1.5}
            assert not slow, (slow, first)
            for label, status in answers.items():
                # The checkins service's catalogue is served from memory.
                expected = 200 if label == "GET checkins" else 503
                assert status == expected, (label, status)
            for label, r in responses.items():
                if r.status_code != 503 or label.startswith("readyz"):
                    continue
                assert r.headers["content-type"] == "application/problem+json"
                assert r.headers["retry-after"] == "1"
                assert "unreachable" in r.json()["detail"]

            system.restart("postgres")
            recovered = {name: await _until_ok(c, url) for name, url in reads.items()}
            after = {name: len(_stored(tmp_path, name, system.postgres.url)) for name in stores}
            assert after == before, "a command refused with 503 left events behind"
            for url, payload in commands.values():  # the same commands, now they land
                await _ok(await c.post(url, json=payload))
        record(
            "store-outage",
            "PostgreSQL killed under running services",
            "every read and command 503 with Retry-After; nothing stored; reads back unaided",
            answers=answers,
            seconds_to_answer=first,
            seconds_to_answer_again=waited,
            recovered_s={k: round(v, 2) for k, v in recovered.items()},
        )
    except BaseException:
        print(system.logs())
        raise
    finally:
        system.stop()
