"""Run one service under uvicorn (uvloop + httptools), shutting down cleanly on SIGTERM; or
one of its operator commands (`main`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import uvicorn
from fastapi import FastAPI

from shared.collector import tune_collector
from shared.logs import configure
from shared.relay import rewind
from shared.settings import ServiceSettings
from shared.store import RewindRefused, ServiceApplication, store_env

S = TypeVar("S", bound=ServiceSettings)


def serve(settings_class: type[S], create_app: Callable[[Any], FastAPI]) -> None:
    settings = settings_class()
    configure(settings.service, fmt=settings.log_format, level=settings.log_level)
    app = create_app(settings)
    tune_collector()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn's loggers go through ours
        access_log=False,
        timeout_graceful_shutdown=10,
    )


def main(
    settings_class: type[S],
    create_app: Callable[[Any], FastAPI],
    application_class: type[ServiceApplication],
    argv: Sequence[str] | None = None,
) -> None:
    """`python -m services.<name>` serves; with arguments, it runs an operator command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        serve(settings_class, create_app)
        return
    sys.exit(command(settings_class(), application_class, args))


def command(
    settings: ServiceSettings, application_class: type[ServiceApplication], args: Sequence[str]
) -> int:
    """An operator command on the service's own store; its exit status."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{settings.service}")
    commands = parser.add_subparsers(dest="command", required=True)
    relay_rewind = commands.add_parser(
        "relay-rewind",
        help="publish the events after a position again: after NATS lost messages it had "
        "acknowledged",
    )
    relay_rewind.add_argument(
        "--to",
        type=int,
        required=True,
        metavar="POSITION",
        help="the notification id to go back to: the events after it are published again "
        "(0: the whole log)",
    )
    chosen = parser.parse_args(args)
    app = application_class(store_env(settings))
    try:
        was = rewind(app, chosen.to)
    except RewindRefused as e:
        print(f"relay-rewind refused for the {settings.service} relay: {e}", file=sys.stderr)
        return 2
    finally:
        app.close()
    print(
        f"the {settings.service} relay was at {was} and is now at {chosen.to}: it publishes"
        f" the events after {chosen.to} again, at once if the service is running and idle,"
        " after its next batch if it is busy, or when it starts (subscribers drop those they"
        " already have)"
    )
    return 0
