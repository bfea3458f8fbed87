"""Follow the OKR event stream from another system: a self-contained example subscriber.

Every service of the OKR system publishes its stored events to the JetStream stream `OKR`,
subject `okr.<service>.<aggregate>.<event>`, body a CloudEvents 1.0 JSON envelope. This script
replays that stream and keeps following it, printing one line per event. It needs only Python
3.11+ and `nats-py` (`pip install nats-py`); copy it and replace `handle()` with your own code.

    python subscriber.py                              # everything, then follow
    python subscriber.py --subject 'okr.goals.>' --since 2026-04-01T00:00:00Z
    python subscriber.py --from-seq 42 --until-caught-up --json > events.jsonl
    python subscriber.py --new-only --server nats://nats.example:4222 --creds app.creds

It reads through an ephemeral pull consumer with no acknowledgements, created on the server
with an explicit configuration and recreated from the next stream sequence whenever it is lost
(NATS restarted, or we were away longer than its inactivity threshold): it is an ordered
consumer that we manage ourselves, so nothing is skipped or repeated across reconnects.

Delivery is at least once: a relay that crashed can republish an event after the stream's
duplicate window, so events are deduplicated by their CloudEvents `id` (a bounded LRU).
Messages that are not JSON envelopes are skipped with a warning on stderr. SIGINT or SIGTERM
stops it cleanly with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections import OrderedDict
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy
from nats.js.errors import NotFoundError

T = TypeVar("T")
BATCH = 256
FETCH_TIMEOUT_S = 2.0
CONNECT_WAIT_S = 10.0
VALUE_WIDTH = 40
UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def warn(text: str) -> None:
    print(f"subscriber: {text}", file=sys.stderr, flush=True)


def why(e: BaseException) -> str:
    return str(e) or type(e).__name__


class SeenIds:
    """The last `size` event ids, forgetting the oldest first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def repeat(self, event_id: str) -> bool:
        """True when `event_id` was seen already; otherwise remember it."""
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return False


# --- one line per event -------------------------------------------------------------------


def cut(text: str, width: int = VALUE_WIDTH) -> str:
    return text if width <= 0 or len(text) <= width else text[: width - 1] + "…"


def quoted(text: str) -> str:
    return cut(json.dumps(text, ensure_ascii=False)[:-1]) + '"'


def value(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, str) and UUID_TEXT.match(v):
        return v[:8] + "…"  # ids: enough to tell them apart on one line
    if isinstance(v, str):
        return cut(v) if v and not any(c.isspace() or c == '"' for c in v) else quoted(v)
    return cut(json.dumps(v, ensure_ascii=False, separators=(",", ":")))


def is_change(v: Any) -> bool:
    return isinstance(v, dict) and set(v) == {"from", "to"}


def fields(data: dict[str, Any]) -> list[str]:
    """`x a → b` for each `previous_x`/`x` pair (or `{from, to}` value), `k=v` for the rest."""
    parts = []
    for k, v in data.items():
        if k == "reason" or (k.startswith("previous_") and k[len("previous_") :] in data):
            continue
        if f"previous_{k}" in data:
            parts.append(f"{k} {value(data[f'previous_{k}'])} → {value(v)}")
        elif is_change(v):
            parts.append(f"{k} {value(v['from'])} → {value(v['to'])}")
        elif isinstance(v, dict) and v and all(is_change(c) for c in v.values()):
            parts.extend(f"{n} {value(c['from'])} → {value(c['to'])}" for n, c in v.items())
        else:
            parts.append(f"{k}={value(v)}")
    if data.get("reason"):
        parts.append(f"({quoted(str(data['reason']))})")
    return parts


def utc(text: Any, fallback: datetime) -> str:
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        when = fallback
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def summary(env: dict[str, Any], msg: Msg, width: int) -> str:
    kind = str(env["type"])
    tokens = kind.split(".")
    aggregate = tokens[2] if len(tokens) >= 4 and tokens[0] == "okr" else "subject"
    subject = str(env.get("subject") or "-")
    line = (
        f"{utc(env.get('time'), msg.metadata.timestamp)}  #{msg.metadata.sequence.stream}  "
        f"{kind}  {aggregate} {value(subject)}  by {env.get('actor') or '-'}"
    )
    data = env.get("data")
    if isinstance(data, dict):
        line += "".join(f"  {part}" for part in fields(data))
    elif data is not None:
        line += f"  data={value(data)}"
    return cut(line, width)


def envelope(msg: Msg) -> dict[str, Any] | None:
    """The CloudEvents envelope in `msg`, or None (with a warning) if it is not one."""
    where = f"#{msg.metadata.sequence.stream} on {msg.subject}"
    try:
        env = json.loads(msg.data)
    except ValueError as e:
        warn(f"skipped {where}: not JSON ({e})")
        return None
    if not isinstance(env, dict) or not all(
        isinstance(env.get(k), str) and env[k] for k in ("specversion", "id", "type")
    ):
        warn(f"skipped {where}: not a CloudEvents envelope (needs specversion, id and type)")
        return None
    return env


# --- the stream ---------------------------------------------------------------------------


def consumer_config(args: argparse.Namespace, next_seq: int | None) -> ConsumerConfig:
    config = ConsumerConfig(
        filter_subject=args.subject,
        ack_policy=AckPolicy.NONE,  # we only read: nothing to redeliver
        replay_policy=ReplayPolicy.INSTANT,
        inactive_threshold=30.0,  # the server removes it 30 s after we are gone
        mem_storage=True,
        num_replicas=1,
    )
    if next_seq is not None:  # resuming after a lost consumer
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, next_seq
    elif args.from_seq is not None:
        config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, args.from_seq
    elif args.since is not None:
        config.deliver_policy, config.opt_start_time = DeliverPolicy.BY_START_TIME, args.since
    elif args.new_only:
        config.deliver_policy = DeliverPolicy.NEW
    else:
        config.deliver_policy = DeliverPolicy.ALL
    return config


async def unless_stopped(aw: Awaitable[T], stop: asyncio.Event) -> T | None:
    """What `aw` gives, or None when asked to stop first (`aw` is then cancelled)."""
    task = asyncio.ensure_future(aw)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None
    return task.result()


async def lost(sub: JetStreamContext.PullSubscription) -> bool:
    """True when the server no longer has our consumer (not when we merely cannot ask)."""
    try:
        await sub.consumer_info()
    except NotFoundError:
        return True
    except Exception:  # disconnected: nats-py reconnects meanwhile, and the consumer waits
        return False
    return False


async def follow(js: JetStreamContext, args: argparse.Namespace, stop: asyncio.Event) -> None:
    seen = SeenIds(args.dedupe_size)
    # --until-caught-up: the stream's last sequence now bounds what "everything" is. Alone it
    # is not enough: with a subject filter the last messages may not match, and we would wait
    # for one forever. So we are also done when the server reports that no matching message is
    # pending after the one delivered (its `num_pending`), or none at all at the start. Both
    # come from the server, unlike a count of our own, and survive a recreated consumer.
    last = (await js.stream_info(args.stream)).state.last_seq if args.until_caught_up else 0
    next_seq: int | None = None
    problem = ""
    while not stop.is_set():
        try:
            config = consumer_config(args, next_seq)
            sub = await js.pull_subscribe(args.subject, stream=args.stream, config=config)
            info = await sub.consumer_info()
        except Exception as e:  # NATS down (nats-py is reconnecting meanwhile), or no stream yet
            if why(e) != problem:  # say it once, not every second
                problem = why(e)
                warn(f"cannot create a consumer on {args.stream} ({problem}); retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            continue
        problem = ""
        resumed = f", resuming at #{next_seq}" if next_seq is not None else ""
        warn(f"reading {args.subject} on {args.stream}: {info.num_pending} pending{resumed}")
        if args.until_caught_up and info.num_pending == 0:
            return
        while not stop.is_set():
            try:
                batch = await unless_stopped(sub.fetch(BATCH, timeout=FETCH_TIMEOUT_S), stop)
            except TimeoutError:  # nothing new (nats.errors.TimeoutError is one too)
                batch = []
            except Exception as e:
                warn(f"fetch failed ({why(e)}); recreating the consumer")
                break
            if batch is None:
                return
            if not batch:  # idle: is our consumer still there?
                if await lost(sub):
                    warn("consumer lost; recreating it")
                    break
                continue
            for msg in batch:
                seq = msg.metadata.sequence.stream
                if args.until_caught_up and seq > last:
                    return
                handle(msg, seen, args)
                next_seq = seq + 1
                if args.until_caught_up and (seq >= last or msg.metadata.num_pending == 0):
                    return
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def handle(msg: Msg, seen: SeenIds, args: argparse.Namespace) -> None:
    env = envelope(msg)
    if env is None or seen.repeat(env["id"]):
        return
    if args.json:
        print(json.dumps(env, ensure_ascii=False, separators=(",", ":")), flush=True)
    else:
        print(summary(env, msg, args.width), flush=True)


# --- the command line ---------------------------------------------------------------------


def since(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_server = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    p.add_argument("--server", default=default_server, help="NATS URL (env NATS_URL)")
    p.add_argument("--user", help="user name (with --password)")
    p.add_argument("--password", help="password (with --user)")
    p.add_argument("--creds", metavar="FILE", help="NATS credentials file (JWT and NKey)")
    p.add_argument("--token", help="authentication token")
    p.add_argument("--stream", default="OKR", help="JetStream stream (default: %(default)s)")
    p.add_argument("--subject", default="okr.>", help="subject filter (default: %(default)s)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=int, metavar="N", help="start at stream sequence N")
    start.add_argument("--since", type=since, metavar="TIME", help="start at an ISO 8601 time")
    start.add_argument("--new-only", action="store_true", help="only events from now on")
    p.add_argument(
        "--until-caught-up",
        action="store_true",
        help="exit once everything in the stream at start has been delivered",
    )
    p.add_argument("--json", action="store_true", help="print each envelope as one JSON line")
    p.add_argument("--width", type=int, default=200, help="cut lines at N characters (0: never)")
    p.add_argument("--dedupe-size", type=int, default=100_000, help="event ids remembered")
    args = p.parse_args(argv)
    if args.from_seq is not None and args.from_seq < 1:
        p.error("--from-seq starts at 1")
    if (args.user is None) != (args.password is None):
        p.error("--user and --password go together")
    return args


async def main(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # Windows: Ctrl-C raises instead
            loop.add_signal_handler(sig, stop.set)

    async def disconnected() -> None:
        if not stop.is_set():  # not when we close the connection ourselves
            warn("disconnected from NATS; reconnecting")

    last_error = ""

    async def error(e: Exception) -> None:
        nonlocal last_error  # say it once, not at every retry
        if why(e) != last_error:
            last_error = why(e)
            warn(f"NATS: {last_error}{'' if nc else '; still trying to connect'}")

    async def reconnected() -> None:
        nonlocal last_error
        last_error = ""
        warn("reconnected to NATS")

    nc: Client | None = None
    try:
        # Following waits for NATS to come up; a one-off --until-caught-up run gives up.
        wait = CONNECT_WAIT_S if args.until_caught_up else None
        connect = nats.connect(
            args.server,
            name="okr-example-subscriber",
            user=args.user,
            password=args.password,
            user_credentials=args.creds,
            token=args.token,
            max_reconnect_attempts=-1,  # keep trying for as long as we run
            reconnect_time_wait=1,
            disconnected_cb=disconnected,
            reconnected_cb=reconnected,
            error_cb=error,
        )
        nc = await unless_stopped(asyncio.wait_for(connect, wait), stop)
    except TimeoutError:
        warn(f"cannot connect to {args.server} within {CONNECT_WAIT_S:g} s")
        return 1
    except Exception as e:
        warn(f"cannot connect to {args.server}: {why(e)}")
        return 1
    if nc is None:  # stopped while still trying to connect
        return 0
    try:
        await follow(nc.jetstream(), args, stop)
    except NotFoundError:  # only --until-caught-up asks at once; following waits for it
        warn(f"no stream {args.stream} on {args.server}")
        return 1
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await nc.drain()
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(main(parse())))
