"""`python -m shared.supervise`, which the launcher runs each process under: a command that
stops is started again, one that keeps stopping at its start is given up, and a stop asked
of the supervisor reaches the command and starts nothing more. Real processes, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import eventually

# Each run of the child appends its pid to `runs` and then does the step of the plan for
# its run (the last step repeats): `exit:N` exits at once with N, `run:S:N` exits with N
# after S seconds, `hold` runs until it is stopped.
CHILD = textwrap.dedent(
    """
    import os, sys, time
    runs, plan = sys.argv[1], sys.argv[2].split(",")
    with open(runs, "a") as f:
        f.write(f"{os.getpid()}\\n")
    with open(runs) as f:
        run = len(f.read().split())
    step = plan[min(run, len(plan)) - 1].split(":")
    if step[0] == "hold":
        time.sleep(600)
    elif step[0] == "run":
        time.sleep(float(step[1]))
    sys.exit(int(step[-1]))
    """
)


@contextmanager
def supervised(tmp_path: Path, plan: str, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    runs = tmp_path / "runs"
    runs.touch()
    stderr = (tmp_path / "stderr").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shared.supervise",
            *options,
            "--",
            sys.executable,
            "-c",
            CHILD,
            str(runs),
            plan,
        ],
        stderr=stderr,
    )
    try:
        yield proc
    finally:
        stderr.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in pids(tmp_path):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def said(tmp_path: Path) -> str:
    """What the supervisor wrote to its stderr so far."""
    return (tmp_path / "stderr").read_text()


def pids(tmp_path: Path) -> list[int]:
    return [int(p) for p in (tmp_path / "runs").read_text().split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that exited but was not yet reaped is a zombie: not running.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_command_that_stops_is_started_again_until_the_supervisor_is_stopped(
    tmp_path: Path,
) -> None:
    with supervised(tmp_path, "exit:1,exit:0,hold", "--first-wait-s", "0.05") as proc:
        await eventually(lambda: len(pids(tmp_path)) == 3, what="never started a third time")
        third = pids(tmp_path)[2]
        assert alive(third)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM  # the command's status
        assert not alive(third)
        stderr = said(tmp_path)
    assert stderr.count("starting it again") == 2, stderr
    assert "exit status 1" in stderr and "exit status 0" in stderr, stderr
    assert len(pids(tmp_path)) == 3  # nothing started after the stop


async def test_a_command_that_keeps_stopping_at_its_start_is_given_up(tmp_path: Path) -> None:
    options = ("--retries", "2", "--steady-s", "60", "--first-wait-s", "0.05")
    with supervised(tmp_path, "exit:3", *options) as proc:
        assert proc.wait(timeout=20) == 3
        stderr = said(tmp_path)
    assert len(pids(tmp_path)) == 3  # the first start and two more
    assert "3 times in a row" in stderr and "giving up" in stderr, stderr


async def test_a_steady_run_starts_the_count_of_quick_stops_again(tmp_path: Path) -> None:
    # No quick stop is allowed at all, yet a command that runs 0.3 s each time (steady
    # after 0.2) is started again and again.
    options = ("--retries", "0", "--steady-s", "0.2", "--first-wait-s", "0.05")
    with supervised(tmp_path, "run:0.3:1", *options) as proc:
        await eventually(lambda: len(pids(tmp_path)) >= 4, what="given up after a steady run")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) in (1, 128 + signal.SIGTERM)


async def test_a_stop_while_waiting_to_start_again_ends_the_wait(tmp_path: Path) -> None:
    with supervised(tmp_path, "exit:4", "--first-wait-s", "8") as proc:
        await eventually(lambda: len(pids(tmp_path)) == 1)
        await eventually(lambda: "starting it again in 8 s" in said(tmp_path))
        assert not alive(pids(tmp_path)[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 4
        stderr = said(tmp_path)
    assert len(pids(tmp_path)) == 1
    assert "giving up" not in stderr, stderr
