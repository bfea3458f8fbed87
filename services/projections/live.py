"""Live updates: a server-sent event stream that tells a client (the board) each time the views
have applied new events, so it can fetch again what it shows.

The stream carries no data of the views, only their progress: every client reads what it may
through the ordinary reads. Messages:

- `event: ready` once on connecting, `event: applied` whenever the views moved on; both with
  `data: {"generation": N, "positions": ["checkins:12", "goals:40", ...]}`;
- a comment line (`: heartbeat`) after 15 s of silence, so proxies keep the connection open.

A stream ends when its token expires (the client must reconnect with a valid one) and when
the process is asked to stop (see `Stopping`).
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from shared.auth import LEEWAY_S, Principal
from shared.http import PROBLEM_RESPONSES, Actor
from shared.service import Runtime, runtime_of

HEARTBEAT_S = 15.0
# The longest a stream waits without looking at the stop signal, the token's expiry and a
# rebuild's switch to a new generation of the views.
CHECK_EVERY_S = 0.5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopping:
    """Set when the process is asked to stop (SIGINT or SIGTERM).

    uvicorn waits for open responses to end before it runs the application's shutdown, and an
    event stream never ends by itself: left alone, one open board would hold a stopping
    service until uvicorn's graceful-shutdown timeout. The streams therefore learn of the stop
    from the signal itself. The handlers uvicorn installed are chained, never replaced, and
    put back when the service stops. Only the main thread may handle signals, and only a
    signal some Python code already handles is chained: elsewhere (a server run in a thread)
    nothing changes.
    """

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self._previous: dict[int, Callable[[int, FrameType | None], Any]] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            previous = signal.getsignal(sig)
            if callable(previous):
                self._previous[sig] = previous
                signal.signal(sig, self._handler(loop, previous))

    def _handler(
        self, loop: asyncio.AbstractEventLoop, previous: Callable[[int, FrameType | None], Any]
    ) -> Callable[[int, FrameType | None], None]:
        def handle(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.event.set)
            previous(signum, frame)

        return handle

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    async def watch(self) -> None:
        """A background loop of the service: handlers installed while it runs."""
        self.install()
        try:
            await asyncio.Event().wait()  # until the service stops and cancels it
        finally:
            self.uninstall()


def _progress(runtime: Runtime) -> tuple[int, dict[str, int]]:
    """The live generation of the views and how far its consumer has got."""
    generation: int = runtime.parts["views"].tables.generation
    return generation, dict(runtime.consumers[0].positions)


def _message(event: str, generation: int, positions: dict[str, int]) -> bytes:
    data = {
        "generation": generation,
        "positions": sorted(f"{s.removeprefix('okr/')}:{n}" for s, n in positions.items()),
    }
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def _events(runtime: Runtime, principal: Principal) -> AsyncIterator[bytes]:
    stopping: Stopping = runtime.parts["stopping"]
    # The token is refused from the moment its expiry, with the verifier's leeway, has passed.
    expires = float(principal.claims["exp"]) + LEEWAY_S
    generation, positions = _progress(runtime)
    yield _message("ready", generation, positions)
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    while not stopping.event.is_set() and time.time() < expires:
        # The consumer is looked up each time: a rebuild replaces it with a new generation's.
        wait = min(CHECK_EVERY_S, max(0.0, last_sent + HEARTBEAT_S - loop.time()))
        await runtime.consumers[0].wait_for_progress(positions, wait)
        now = _progress(runtime)
        if now != (generation, positions):
            generation, positions = now
            yield _message("applied", generation, positions)
            last_sent = loop.time()
        elif loop.time() - last_sent >= HEARTBEAT_S:
            yield b": heartbeat\n\n"
            last_sent = loop.time()


live_router = APIRouter(tags=["live"], responses=PROBLEM_RESPONSES)


@live_router.get(
    "/v1/stream",
    summary="Server-sent events: a message each time the views have applied new events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(request: Request, principal: Actor) -> StreamingResponse:
    runtime = runtime_of(request)
    return StreamingResponse(
        _events(runtime, principal),
        media_type="text/event-stream",
        # No caching, and no buffering by a reverse proxy: each message is due at once.
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
