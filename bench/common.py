"""What every benchmark shares: a NATS server and a store of its own, the settings of each
service pointed at them, and how a figure is reported beside its ceiling."""

from __future__ import annotations

import contextlib
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
from pydantic import SecretStr

from services.checkins.main import CheckinsSettings
from services.goals.main import GoalsSettings
from services.projections.main import ProjectionsSettings
from services.reviews.main import ReviewsSettings
from shared.launcher import nats_server_binary
from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]

# A benchmark's own secret: its tokens are minted here and never leave the run.
SECRET = "bench-secret-" + uuid.uuid4().hex
SETTINGS: dict[str, type[ServiceSettings]] = {
    "goals": GoalsSettings,
    "checkins": CheckinsSettings,
    "reviews": ReviewsSettings,
    "projections": ProjectionsSettings,
}
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _outgoing_ports() -> tuple[int, int]:
    """The range the kernel takes local ports of outgoing connections from."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


# Ports handed out by this process, so that no two services are given the same one.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port free now, and outside the range of outgoing connections' local ports.

    A service's port is chosen when the system is set up and kept across its restarts, while
    the run opens thousands of connections (to PostgreSQL, NATS, the services): a port from
    the kernel's own free range (binding port 0) could be taken by one of them before the
    service binds it, and the service would fail to start."""
    low, high = _outgoing_ports()
    for _ in range(1000):
        port = random.randrange(10_000, 65_536)
        if low <= port <= high or port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port outside the range of outgoing connections")


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"nothing listens on port {port} after {timeout} s")


def process_cpu_seconds(pid: int) -> float:
    """CPU time process `pid` has used so far, user and system (`/proc/<pid>/stat`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_context_switches(pid: int) -> tuple[int, int]:
    """Context switches of process `pid`'s live threads so far, voluntary (a thread waited: for
    the GIL, a lock, the disk, the network) and involuntary (the kernel took its core), summed
    over `/proc/<pid>/task/*/status`. A thread that has ended no longer counts."""
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:  # the thread ended meanwhile
            continue
        for line in lines:
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


def machine_cpu_seconds() -> tuple[float, float]:
    """CPU time of the whole machine so far, summed over its cores: busy (anything but idle
    and waiting for I/O) and in all (`/proc/stat`)."""
    first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    # user nice system idle iowait irq softirq steal (guest time is counted in user already)
    ticks = [int(x) for x in first[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - ticks[3] - ticks[4]) / hz, sum(ticks) / hz


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have ended (and been waited for) so far: the
    load generators, run one at a time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Nats:
    """A nats-server with JetStream on a free port, its store in a folder of the run."""

    def __init__(self, base: Path) -> None:
        self.port = free_port()
        self.dir = base / f"nats-{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js"]
        self.proc = subprocess.Popen(
            [*command, "-sd", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def cpu_seconds(self) -> float:
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class ServiceProcess:
    """One process of the system (a service, `python -m services.<name>`, or another
    command), logging to a file of its own: started, waited for, measured, stopped or killed.
    The benchmarks and the fault tests that kill processes both run the system this way."""

    name: str
    env: dict[str, str]
    port: int
    log: Path
    command: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        if not self.command:
            self.command = [sys.executable, "-m", f"services.{self.name}"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.starts += 1

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout} s: {self.tail()}")

    def cpu_seconds(self) -> float:
        """CPU time the process has used so far, user and system (`/proc/<pid>/stat`)."""
        assert self.proc is not None
        return process_cpu_seconds(self.proc.pid)

    def context_switches(self) -> tuple[int, int]:
        """Its threads' context switches so far, voluntary and involuntary."""
        assert self.proc is not None
        return process_context_switches(self.proc.pid)

    def memory_kib(self) -> dict[str, int]:
        """Resident memory now and at its peak (VmRSS, VmHWM)."""
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {
            "rss": int(fields["VmRSS"].split()[0]),
            "peak": int(fields["VmHWM"].split()[0]),
        }

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The process stopped (SIGSTOP) for the block, and continued after it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc = None

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@dataclass
class Store:
    """Where the services of one run keep their events: a SQLite folder, or a PostgreSQL
    database created for the run (and dropped after it)."""

    kind: str  # "sqlite" or "postgres"
    data_dir: Path
    database_url: str | None = None
    _admin_url: str | None = field(default=None, repr=False)

    @classmethod
    @contextlib.contextmanager
    def create(cls, kind: str, base: Path, admin_url: str | None = None) -> Iterator[Store]:
        data_dir = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=base))
        if kind == "sqlite":
            try:
                yield cls(kind, data_dir)
            finally:
                shutil.rmtree(data_dir, ignore_errors=True)
            return
        admin = admin_url or os.environ.get("OKR_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
        name = f"okr_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = f"{admin.rsplit('/', 1)[0]}/{name}"
        try:
            yield cls(kind, data_dir, url, admin)
        finally:
            with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            shutil.rmtree(data_dir, ignore_errors=True)

    def settings(self, service: str, nats_url: str, **extra: Any) -> ServiceSettings:
        """The settings a service of this run reads (in-process use)."""
        return SETTINGS[service](
            jwt_secret=SecretStr(SECRET),
            nats_url=nats_url,
            data_dir=self.data_dir,
            database_url=SecretStr(self.database_url) if self.database_url else None,
            log_level="WARNING",
            **extra,
        )

    def environment(self, nats_url: str) -> dict[str, str]:
        """The environment of a service process of this run."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OKR_")}
        env |= {
            "OKR_JWT_SECRET": SECRET,
            "OKR_NATS_URL": nats_url,
            "OKR_DATA_DIR": str(self.data_dir),
            "OKR_LOG_LEVEL": "WARNING",
            "OKR_LOG_FORMAT": "text",
        }
        if self.database_url is not None:
            env["OKR_DATABASE_URL"] = self.database_url
        return env


def postgres_reachable(admin_url: str | None = None) -> bool:
    admin = admin_url or os.environ.get("OKR_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL)
    try:
        with psycopg.connect(admin, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


@dataclass
class Figure:
    """One measured figure, with the ceiling it is compared to (measured in the same run)."""

    bench: str
    store: str
    name: str
    value: float
    unit: str
    ceiling: float | None = None
    ceiling_name: str | None = None
    target: str | None = None  # e.g. ">= 0.5" of the ratio, or "<= 3" of the value
    met: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.ceiling in (None, 0):
            return None
        return self.value / self.ceiling  # type: ignore[operator]

    def as_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "store": self.store,
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "ceiling": self.ceiling,
            "ceiling_name": self.ceiling_name,
            "ratio": self.ratio,
            "target": self.target,
            "met": self.met,
            "detail": self.detail,
        }


def judge(value: float, target: str) -> bool:
    """Whether `value` meets a target written as ">= x" or "<= x"."""
    op, number = target.split()
    return value >= float(number) if op == ">=" else value <= float(number)
