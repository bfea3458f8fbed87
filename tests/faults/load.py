"""Steady load from clients that behave as a careful user's would: every command carries an
`Idempotency-Key`, and is sent again with the same key until it gets an answer (a dropped
connection, a 5xx or a retryable 409 is not one). The ledger keeps what was answered 2xx."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support import token

RETRYABLE = {409, 425, 429, 500, 502, 503, 504}


@dataclass
class Scenario:
    """What the load works on, made before it starts."""

    cycle_id: str
    key_results: list[str]
    review_id: str


@dataclass
class Ledger:
    """Commands answered 2xx (once per idempotency key), and what the clients went through."""

    check_ins: dict[str, str] = field(default_factory=dict)  # check-in id -> key result
    targets: Counter[str] = field(default_factory=Counter)  # key result -> adjustments
    reflections: dict[str, str] = field(default_factory=dict)  # reflection id -> text
    positions: dict[str, int] = field(default_factory=dict)  # service -> highest answered
    attempts: int = 0
    retries: int = 0
    replayed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    longest_wait_s: float = 0.0

    @property
    def answered(self) -> int:
        return len(self.check_ins) + sum(self.targets.values()) + len(self.reflections)

    def saw(self, position: str | None) -> None:
        if position:
            service, n = position.split(":")
            self.positions[service] = max(self.positions.get(service, 0), int(n))


class UnexpectedAnswer(AssertionError):
    pass


def _rule_broken(r: httpx.Response) -> bool:
    """A 409 that says the command can never succeed as sent (not a conflict to retry)."""
    return r.status_code == 409 and str(r.json().get("type", "")).endswith("/rule-broken")


async def send_until_answered(
    client: httpx.AsyncClient,
    ledger: Ledger,
    method: str,
    url: str,
    body: dict[str, Any],
    *,
    impatient: bool = False,
    give_up_after_s: float = 120,
) -> dict[str, Any]:
    """Send one command with one Idempotency-Key until it is answered 2xx; its answer.

    An `impatient` client stops waiting for the first answer after a millisecond, as if the
    connection dropped after the request went out: the retry then finds the command done."""
    key = str(uuid.uuid4())
    started = time.monotonic()
    first = True
    while True:
        ledger.attempts += 1
        if not first:
            ledger.retries += 1
        timeout = httpx.Timeout(10.0, read=0.001) if impatient and first else httpx.Timeout(10.0)
        first = False
        try:
            r = await client.request(
                method, url, json=body, headers={"Idempotency-Key": key}, timeout=timeout
            )
        except httpx.TransportError as e:
            ledger.errors[type(e).__name__] += 1
        else:
            if r.status_code in (200, 201):
                if r.headers.get("idempotent-replayed") == "true":
                    ledger.replayed += 1
                ledger.longest_wait_s = max(ledger.longest_wait_s, time.monotonic() - started)
                answer: dict[str, Any] = r.json()
                ledger.saw(answer.get("position"))
                return answer
            retryable = r.status_code in RETRYABLE and not _rule_broken(r)
            if not retryable:
                raise UnexpectedAnswer(f"{method} {url}: {r.status_code} {r.text}")
            ledger.errors[str(r.status_code)] += 1
        if time.monotonic() - started > give_up_after_s:
            raise UnexpectedAnswer(f"{method} {url}: no answer in {give_up_after_s} s")
        await asyncio.sleep(0.1)


@dataclass
class Load:
    """`clients` concurrent clients, each sending one command after another."""

    urls: dict[str, str]
    scenario: Scenario
    clients: int = 4
    pause_s: float = 0.02
    impatient: float = 0.05  # the share of commands whose first answer is not waited for
    ledger: Ledger = field(default_factory=Ledger)
    _targets: itertools.count[int] = field(default_factory=lambda: itertools.count(1000))
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, seed: int) -> None:
        for i in range(self.clients):
            self._tasks.append(asyncio.create_task(self._client(random.Random(seed + i))))

    async def stop(self) -> None:
        """Let every client finish the command it is on (answered), then stop."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _client(self, rng: random.Random) -> None:
        headers = {"Authorization": f"Bearer {token('load')}"}

        def client(service: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(base_url=self.urls[service], headers=headers, timeout=10.0)

        async with client("goals") as g, client("checkins") as c, client("reviews") as r:
            while not self._stop.is_set():
                await self._one(rng, g, c, r)
                await asyncio.sleep(self.pause_s)

    async def _one(
        self,
        rng: random.Random,
        goals: httpx.AsyncClient,
        checkins: httpx.AsyncClient,
        reviews: httpx.AsyncClient,
    ) -> None:
        kr = rng.choice(self.scenario.key_results)
        roll = rng.random()
        ledger = self.ledger
        impatient = rng.random() < self.impatient
        if roll < 0.6:
            body = {"value": rng.randint(0, 100), "confidence": rng.randint(0, 10), "note": "wk"}
            answer = await send_until_answered(
                checkins,
                ledger,
                "POST",
                f"/v1/key-results/{kr}/check-ins",
                body,
                impatient=impatient,
            )
            ledger.check_ins[answer["id"]] = kr
        elif roll < 0.85:
            # Always a new value: the same target again would be refused (409 rule-broken).
            body = {"target": next(self._targets), "reason": "learned more"}
            await send_until_answered(
                goals, ledger, "POST", f"/v1/key-results/{kr}/target", body, impatient=impatient
            )
            ledger.targets[kr] += 1
        else:
            body = {"kind": "learned", "text": f"note {uuid.uuid4().hex[:8]}"}
            answer = await send_until_answered(
                reviews,
                ledger,
                "POST",
                f"/v1/reviews/{self.scenario.review_id}/reflections",
                body,
                impatient=impatient,
            )
            ledger.reflections[answer["reflection_id"]] = body["text"]
