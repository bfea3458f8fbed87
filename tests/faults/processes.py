"""The system as separate OS processes that a fault test can kill with SIGKILL and start again:
each service (`python -m services.<name>`), a nats-server, and a PostgreSQL server of the
test's own (so killing it harms nothing else on the machine)."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import ServiceProcess
from tests.support import SECRET, NatsServer, free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("goals", "checkins", "reviews", "projections")


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


def postgres_binaries() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries, if the machine has them."""
    base = Path("/usr/lib/postgresql")
    found = sorted(base.glob("*/bin/postgres")) if base.exists() else []
    return found[-1].parent if found else None


class PrivatePostgres:
    """A PostgreSQL server in a folder of its own, on a free port, run as the `postgres` user
    (the server refuses root). Killed with SIGKILL, it recovers from its WAL on restart."""

    def __init__(self, base: Path) -> None:
        binaries = postgres_binaries()
        if binaries is None:
            raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql")
        self.bin = binaries
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        # Pytest's folders are private to root; the server user needs a folder it can enter.
        self.home = Path(tempfile.mkdtemp(prefix="okr-pg-")) if self._user else base
        self.dir = self.home / "pgdata"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_server_user(self) -> dict[str, int]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid}

    def init(self) -> None:
        self.dir.mkdir(parents=True)
        if self._user is not None:
            for path in (self.home, self.dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.dir), "-U", "postgres", "-A", "trust"],
            check=True,
            cwd=self.home,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self._as_server_user(),  # type: ignore[arg-type]
        )

    def start(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            out = self.log.open("ab")
            self.proc = subprocess.Popen(
                [
                    str(self.bin / "postgres"),
                    "-D",
                    str(self.dir),
                    "-p",
                    str(self.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"unix_socket_directories={self.dir}",
                    "-c",
                    "max_connections=200",
                ],
                cwd=self.home,
                stdout=out,
                stderr=subprocess.STDOUT,
                **self._as_server_user(),  # type: ignore[arg-type]
            )
            out.close()
            if _wait_port(self.port, 10):
                return
            # Backends of a killed server may hold its shared memory for a moment: try again.
            self.proc.kill()
            self.proc.wait()
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the postmaster; its backends notice and exit on their own."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self._user is not None:  # the folder outside pytest's
            shutil.rmtree(self.home, ignore_errors=True)


@dataclass
class ProcessSystem:
    """NATS, optionally PostgreSQL, and the four services, each a process of its own."""

    base: Path
    postgres: PrivatePostgres | None
    nats: NatsServer
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    @classmethod
    def create(cls, base: Path, *, with_postgres: bool) -> ProcessSystem:
        postgres = PrivatePostgres(base) if with_postgres else None
        system = cls(base, postgres, NatsServer(base / "nats"))
        common = {k: v for k, v in os.environ.items() if not k.startswith("OKR_")} | {
            "PYTHONPATH": str(ROOT),
            "OKR_NATS_URL": system.nats.url,
            "OKR_JWT_SECRET": SECRET,
            "OKR_DATA_DIR": str(base / "data"),
            "OKR_LOG_FORMAT": "text",
            "OKR_LOG_LEVEL": "WARNING",
            "OKR_RELAY_POLL_INTERVAL_S": "0.05",
            "OKR_CONSUMER_POLL_INTERVAL_S": "0.2",
            "OKR_CONSUMER_ACK_WAIT_S": "2",
            "OKR_READ_WAIT_TIMEOUT_S": "10",
        }
        if postgres is not None:
            common["OKR_DATABASE_URL"] = postgres.url
        for name in SERVICES:
            port = free_port()
            env = common | {f"OKR_{name.upper()}_PORT": str(port)}
            system.services[name] = ServiceProcess(name, env, port, base / f"{name}.log")
        return system

    def start(self) -> None:
        if self.postgres is not None:
            self.postgres.init()
            self.postgres.start()
        self.nats.start()
        for svc in self.services.values():
            svc.start()
        for svc in self.services.values():
            svc.wait_ready()

    def stop(self) -> None:
        for svc in self.services.values():
            svc.stop()
        self.nats.stop()
        if self.postgres is not None:
            self.postgres.stop()

    def kill(self, target: str) -> None:
        if target == "nats":
            self.nats.stop(kill=True)
        elif target == "postgres":
            assert self.postgres is not None
            self.postgres.kill()
        else:
            self.services[target].kill()

    def restart(self, target: str) -> None:
        if target == "nats":
            self.nats.start()
        elif target == "postgres":
            assert self.postgres is not None
            self.postgres.start()
        else:
            self.services[target].start()
            self.services[target].wait_ready()

    def restart_exited(self) -> list[str]:
        """Start again each service whose process exited on its own, as a supervisor would
        (a consumer that finds its store lost commits it made asks its process to stop); their
        names."""
        exited = [
            name
            for name, svc in self.services.items()
            if svc.proc is not None and svc.proc.poll() is not None
        ]
        for name in exited:
            self.restart(name)
        return exited

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.tail()}" for s in self.services.values())
