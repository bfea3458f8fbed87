"""Keep one command running: `python -m shared.supervise [options] -- COMMAND...`.

The launcher runs each process of the system under this, so that one which stops (a
consumer whose store lost commits asks its process to stop, so that a fresh one recovers
from the store) or crashes is started again while the others keep running: what
`restart: unless-stopped` does under Docker and `Restart=always` under systemd.

- The command is started again whenever it stops, whatever its exit status, until this
  process is asked to stop (SIGTERM or SIGINT). The signal is passed on as SIGTERM, and
  this process then exits with the command's status.
- Each start after a stop waits longer than the one before: `--first-wait-s` (0.5 s),
  doubling with each quick stop, at most 10 s. A run that lasted `--steady-s` (10 s) counts
  as healthy: the next stop is not a quick one.
- A command that keeps stopping soon after it starts (a port in use, a bad setting) is not
  started forever: after `--retries` such starts in a row this process gives up and exits
  with the command's status (and the launcher then stops the rest).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

LONGEST_WAIT_S = 10.0


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + N for one killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


class Supervisor:
    def __init__(
        self, command: Sequence[str], *, retries: int, steady_s: float, first_wait_s: float
    ) -> None:
        self.command = list(command)
        self.retries = retries
        self.steady_s = steady_s
        self.first_wait_s = first_wait_s
        self.stopping = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None

    def stop(self, signum: int, _frame: FrameType | None = None) -> None:
        """Asked to stop: no more starts, and the command is asked to stop too."""
        self.stopping.set()
        self._signal_child()

    def _signal_child(self) -> None:
        child = self.child
        if child is not None and child.poll() is None:
            try:
                child.send_signal(signal.SIGTERM)
            except ProcessLookupError:  # it exited meanwhile
                pass

    def say(self, text: str) -> None:
        print(f"supervise: {text}", file=sys.stderr, flush=True)

    def run(self) -> int:
        quick_stops = 0
        while True:
            started = time.monotonic()
            self.child = subprocess.Popen(self.command)  # noqa: S603 - the launcher's own command
            if self.stopping.is_set():  # the signal came before the child existed
                self._signal_child()
            returncode = self.child.wait()
            ran_s = time.monotonic() - started
            status = exit_status(returncode)
            if self.stopping.is_set():
                return status
            quick_stops = 0 if ran_s >= self.steady_s else quick_stops + 1
            if quick_stops > self.retries:
                self.say(
                    f"stopped (exit status {status}) {quick_stops} times in a row within"
                    f" {self.steady_s:g} s of starting: giving up"
                )
                return status
            wait_s = min(
                self.first_wait_s * 2 ** max(quick_stops - 1, 0),
                max(LONGEST_WAIT_S, self.first_wait_s),
            )
            self.say(
                f"pid {self.child.pid} stopped (exit status {status}) after {ran_s:.1f} s;"
                f" starting it again in {wait_s:g} s"
            )
            if self.stopping.wait(wait_s):
                return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.supervise",
        description="Start COMMAND, and again whenever it stops, until asked to stop.",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=5,
        help="give up after this many quick stops in a row (default 5)",
    )
    parser.add_argument(
        "--steady-s",
        type=float,
        default=10.0,
        help="a run at least this long is not a quick stop (default 10)",
    )
    parser.add_argument(
        "--first-wait-s",
        type=float,
        default=0.5,
        help="the wait before the first start again; it doubles with each quick stop",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARG...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    supervisor = Supervisor(
        command, retries=args.retries, steady_s=args.steady_s, first_wait_s=args.first_wait_s
    )
    signal.signal(signal.SIGTERM, supervisor.stop)
    signal.signal(signal.SIGINT, supervisor.stop)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
