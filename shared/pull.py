"""A continuous pull on a JetStream durable consumer.

nats-py has no `consume`: its `fetch` sends, per call, a `no_wait` probe and then a lingering
request when little is waiting, and waits for each message with a task and a timer of its
own; between two calls nothing is requested. Here one subscription receives the messages of
pull requests kept open on the server: when fewer than half a batch are still requested or
held, the next request asks for the rest, so messages keep coming while a batch is applied
(which is what lets a consumer linger for more), at most one batch waits beside it, and an
idle consumer holds one request that expires every `expires` seconds with idle heartbeats in
between: the JetStream pull protocol the official clients' `consume` speaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections import deque
from typing import NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header

STATUS = Header.STATUS.value
PENDING_MESSAGES = "Nats-Pending-Messages"
# Statuses of a pull request's end (RFC 7231 wording, as the server sends them).
_HEARTBEAT = "100"
_NO_MESSAGES = "404"
_EXPIRED = "408"
_ENDED = "409"  # the consumer was deleted, the request exceeded a limit, a leader changed


class PullEnded(Exception):
    """The server ended the pull for good (the consumer is gone): subscribe again."""


class Delivery(NamedTuple):
    """What a stream message's `$JS.ACK` reply subject says of its delivery."""

    delivered: int  # times this message was delivered, this time included
    stream: int  # its sequence in the stream
    consumer: int  # the consumer's delivery sequence: one more for every delivery
    pending: int  # messages the consumer still had to deliver after it


# Recently read reply subjects: each message's is read twice, as it arrives (to keep stream
# messages only) and as its batch is checked, a few thousand messages later at most.
@functools.lru_cache(maxsize=4096)
def delivery(reply: str | None) -> Delivery | None:
    """A stream message's delivery, read from its `$JS.ACK` reply subject; None when the reply
    is not one. `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.
    <pending>`, or with `<domain>.<account hash>` after `ACK` (11 tokens or more). nats-py's
    `Msg.metadata` reads the same and also builds a timestamp and two frozen dataclasses: a
    few microseconds per message, a tenth of a consumer's event loop in a rebuild."""
    tokens = (reply or "").split(".")
    if (len(tokens) != 9 and len(tokens) < 11) or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    at = 4 if len(tokens) == 9 else 6
    delivered, stream, consumer = (_count(t) for t in tokens[at : at + 3])
    pending = _count(tokens[at + 4])
    if delivered is None or stream is None or consumer is None or pending is None:
        return None
    return Delivery(delivered, stream, consumer, pending)


class ContinuousPull:
    def __init__(
        self,
        nc: Client,
        stream: str,
        durable: str,
        *,
        batch: int,
        expires: float = 30.0,
        heartbeat: float = 5.0,
    ) -> None:
        if heartbeat * 2 >= expires:
            raise ValueError("the heartbeat must be under half the expiry")
        self._nc = nc
        self._subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._batch = batch
        self._expires = expires
        self._heartbeat = heartbeat
        self._messages: deque[Msg] = deque()
        self._requested = 0  # messages asked for and neither delivered nor given up
        self._heard = time.monotonic()  # a message or a heartbeat last came in
        self._wake = asyncio.Event()
        self._ended: str | None = None
        self._inbox = ""
        self._sub: Subscription | None = None

    @property
    def inbox(self) -> str:
        """The subject the server delivers to (a fresh `_INBOX` one, known once started)."""
        return self._inbox

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._arrived)

    async def stop(self) -> None:
        """Unsubscribe; what arrived and was not taken is handed back to come again at once
        (rather than after the ack wait)."""
        if self._sub is not None:
            # Drained, not just unsubscribed: messages the server sent before it saw the
            # unsubscribe (an open request's) are still taken, then handed back below,
            # instead of being dropped here and coming again only after the ack wait. Not
            # while disconnected: the drain's round trip would wait for the server.
            with contextlib.suppress(Exception):
                if self._nc.is_connected:
                    await asyncio.wait_for(self._sub.drain(), 2)
                else:
                    await self._sub.unsubscribe()
            self._sub = None
        while self._messages:
            with contextlib.suppress(Exception):
                await self._messages.popleft().nak()

    async def next(self, timeout: float, limit: int | None = None) -> list[Msg]:  # noqa: ASYNC109
        """The messages that arrived (at most `limit`, or `batch`), waiting up to `timeout`
        seconds for the first one; none if nothing came."""
        deadline = time.monotonic() + timeout
        while True:
            if self._ended is not None:
                raise PullEnded(self._ended)
            if self._messages:
                count = min(len(self._messages), limit or self._batch)
                taken = [self._messages.popleft() for _ in range(count)]
                await self._top_up()  # the next batch comes while this one is applied
                return taken
            await self._top_up()
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, self._heartbeat))

    async def _top_up(self) -> None:
        if self._requested and time.monotonic() - self._heard > 2 * self._heartbeat:
            # Neither messages nor heartbeats: the requests were lost with a connection or a
            # server restart. Ask again; anything of theirs still on its way is not lost, only
            # delivered beyond what is counted.
            self._requested = 0
        # At most a batch asked for or held beside the one being applied: a bounded prefetch.
        ahead = self._requested + len(self._messages)
        if ahead > self._batch // 2:
            return
        wanted = self._batch - ahead
        request = {
            "batch": wanted,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        await self._nc.publish(self._subject, json.dumps(request).encode(), reply=self._inbox)
        self._requested += wanted
        self._heard = time.monotonic()

    async def _arrived(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        headers = msg.headers or {}
        status = headers.get(STATUS)
        if status is None:
            if delivery(msg.reply) is None:
                return  # not a stream message: nothing JetStream delivered, nothing to ack
            self._messages.append(msg)
            self._requested = max(0, self._requested - 1)
        elif status in (_EXPIRED, _ENDED):
            # The rest of a request that ended: how many it still held, when the server says.
            pending = _count(headers.get(PENDING_MESSAGES))
            if pending is None:
                # nats-py keys the description by the enum member, not its value.
                if status == _ENDED and "deleted" in str(headers.get(Header.DESCRIPTION, "")):
                    self._ended = "the consumer was deleted"
                self._requested = 0
            else:
                self._requested = max(0, self._requested - pending)
        elif status not in (_HEARTBEAT, _NO_MESSAGES):
            self._requested = 0
        self._wake.set()


def _count(value: str | None) -> int | None:
    """A status's count of messages, if it carries a sound one."""
    if value is None or not value.isdecimal():  # isdigit() lets "²" through, which int() refuses
        return None
    return int(value)
