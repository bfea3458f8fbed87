"""Start the whole system the way a user does (`python -m shared run`), for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("goals", "checkins", "reviews", "projections")


@dataclass
class System:
    process: subprocess.Popen[bytes]
    log: Path
    nats_port: int
    ports: dict[str, int]
    token: str
    data_dir: Path

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def pids(self, service: str) -> list[int]:
        """The running processes of `service` in this system (its own, not its supervisor's),
        found by command line and port."""
        module = f"services.{service}".encode()
        port = f"OKR_{service.upper()}_PORT={self.ports[service]}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                args = (entry / "cmdline").read_bytes().split(b"\0")
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if module in args and b"shared.supervise" not in args and port in environ:
                found.append(int(entry.name))
        return found


@contextmanager
def launched(tmp_path: Path) -> Iterator[System]:
    """The launcher with a fresh data folder and no NATS at its URL; stopped with SIGTERM."""
    nats_port = free_port()
    ports = {name: free_port() for name in SERVICES}
    data_dir = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OKR_")} | {
        "OKR_DATA_DIR": str(data_dir),
        "OKR_NATS_URL": f"nats://127.0.0.1:{nats_port}",
        "PYTHONPATH": str(ROOT),
        **{f"OKR_{name.upper()}_PORT": str(port) for name, port in ports.items()},
    }
    log = tmp_path / "launcher.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shared", "run"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        token = None
        while time.monotonic() < deadline and token is None:
            text = log.read_text(errors="replace")
            match = re.search(r"Local admin token.*\n\s+(\S+\.\S+\.\S+)", text)
            token = match.group(1) if match else None
            assert proc.poll() is None, text
            time.sleep(0.2)
        assert token, log.read_text()
        yield System(proc, log, nats_port, ports, token, data_dir)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
