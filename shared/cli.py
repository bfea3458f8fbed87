"""The `okr` command: run the system, mint tokens, declare the stream, write the contract."""

from __future__ import annotations

import argparse
import asyncio
import sys

from shared.auth import mint_token
from shared.nats import connect, ensure_stream, redact
from shared.settings import Settings


def _token(args: argparse.Namespace) -> int:
    settings = Settings()
    try:
        secret = settings.jwt_secret_value()
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 2
    print(
        mint_token(
            secret,
            args.subject,
            ttl_s=args.ttl or settings.token_ttl_s,
            roles=args.role,
            teams=args.team,
            name=args.name,
        )
    )
    return 0


def _stream(_: argparse.Namespace) -> int:
    settings = Settings()

    async def declare() -> None:
        nc = await connect(settings, connect_timeout=2, max_reconnect_attempts=0)
        try:
            await ensure_stream(nc.jetstream(), settings)
        finally:
            await nc.close()

    asyncio.run(declare())
    print(f"stream {settings.stream_name} ready at {redact(settings.nats_url)}")
    return 0


def _contract(args: argparse.Namespace) -> int:
    from shared.contract import documents

    if args.check:
        found = documents.differences()
        for line in found:
            print(line, file=sys.stderr)
        if found:
            print("run `python -m shared contract` and commit docs/contract/", file=sys.stderr)
        return 1 if found else 0
    for name in documents.write():
        print(f"wrote docs/contract/{name}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from shared.launcher import run

    return run(args.services or None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="okr", description="OKR services")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="start every service (and NATS if none is running)")
    run.add_argument("services", nargs="*", help="only these services")
    run.set_defaults(func=_run)

    token = commands.add_parser("token", help="mint a bearer token for a local actor")
    token.add_argument("subject", help="the actor (JWT sub) recorded on events")
    token.add_argument("--ttl", type=int, default=0, help="lifetime in seconds")
    token.add_argument(
        "--role",
        action="append",
        choices=["admin", "lead", "member", "viewer"],
        help="a role the token carries (repeatable)",
    )
    token.add_argument("--team", action="append", help="a team the actor belongs to (repeatable)")
    token.add_argument("--name", help="the actor's display name")
    token.set_defaults(func=_token)

    stream = commands.add_parser("stream", help="create or update the JetStream stream")
    stream.set_defaults(func=_stream)

    contract = commands.add_parser(
        "contract", help="write the event contract (JSON Schemas, AsyncAPI) to docs/contract/"
    )
    contract.add_argument("--check", action="store_true", help="only say what differs")
    contract.set_defaults(func=_contract)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
