"""The benchmark's CPU accounting (`bench.http.Usage`): what a load cost each process, NATS, the
load generator and the whole machine, per request."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from bench.common import (
    ServiceProcess,
    free_port,
    machine_cpu_seconds,
    process_context_switches,
)
from bench.http import Usage


def usage(checkins: float, nats: float, load: float, busy: float, total: float) -> Usage:
    return Usage({"checkins": checkins, "ceiling": 0.0}, nats, load, busy, total)


def test_a_load_costs_the_difference_of_two_readings_spread_over_its_requests() -> None:
    before = usage(10.0, 1.0, 2.0, 100.0, 400.0)
    after = usage(11.0, 1.2, 2.1, 101.6, 402.0)

    used = after - before

    assert used.per_request(1000) == {
        "checkins": 1.0,
        "nats": 0.2,
        "wrk": 0.1,
        "other": 0.3,  # busy time no process of the system accounts for
        "machine": 1.6,
    }
    assert used.busy_share == pytest.approx(0.8)


def test_two_loads_add_up() -> None:
    one = usage(1.0, 0.1, 0.1, 2.0, 4.0)
    two = usage(3.0, 0.3, 0.1, 4.0, 4.0)

    both = one + two

    assert both.per_request(1000)["checkins"] == 4.0
    assert both.per_request(1000)["machine"] == 6.0
    assert both.busy_share == pytest.approx(0.75)


def test_the_rest_of_the_machine_is_never_negative() -> None:
    # /proc/stat and /proc/<pid>/stat are read a moment apart: the processes may seem to have
    # used a tick more than the machine did.
    used = usage(1.01, 0.0, 0.0, 1.0, 2.0)

    assert used.per_request(10)["other"] == 0.0


def test_the_machine_shows_busy_time_when_this_process_burns_cpu() -> None:
    busy, total = machine_cpu_seconds()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    busy_after, total_after = machine_cpu_seconds()

    assert busy_after - busy >= 0.2
    assert total_after - total >= busy_after - busy


def test_context_switches_are_counted_per_request() -> None:
    before = Usage({"checkins": 1.0}, 0, 0, 0, 0, {"checkins": (100, 10), "ceiling": (5, 5)})
    after = Usage({"checkins": 2.0}, 0, 0, 0, 0, {"checkins": (2_100, 510), "ceiling": (5, 5)})

    used = after - before

    # A process that did not switch at all is left out.
    assert used.switches_per_request(1000) == {"checkins": {"voluntary": 2.0, "involuntary": 0.5}}
    assert (used + used).switches_per_request(1000)["checkins"]["voluntary"] == 4.0


def test_a_thread_that_waits_shows_as_voluntary_switches_of_its_process() -> None:
    voluntary, _ = process_context_switches(os.getpid())
    ping, pong = threading.Event(), threading.Event()

    def other() -> None:
        for _ in range(50):
            ping.wait()
            ping.clear()
            pong.set()

    thread = threading.Thread(target=other)
    thread.start()
    for _ in range(50):
        ping.set()
        assert pong.wait(5)
        pong.clear()
    thread.join()
    after, _ = process_context_switches(os.getpid())

    # Each round trip makes this thread wait for the other at least once: the other thread's
    # own switches ended with it, so only this one's are counted.
    assert after - voluntary >= 40


# A process that burns a little CPU all the time.
SLEEPER = "import time\nwhile True:\n    sum(range(10_000))\n    time.sleep(0.001)\n"


def _state(pid: int) -> str:
    # The field after the command's name in parentheses: R running, S sleeping, T stopped.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_a_paused_process_is_stopped_for_the_block_and_runs_again_after_it(
    tmp_path: Path,
) -> None:
    # The check-in point that pauses the consumers: they must use no CPU during the load, and
    # must work again after it, also when the load fails.
    process = ServiceProcess(
        "sleeper", {}, 0, tmp_path / "sleeper.log", command=[sys.executable, "-c", SLEEPER]
    )
    process.start()
    try:
        assert process.proc is not None
        pid = process.proc.pid
        with pytest.raises(RuntimeError), process.paused():
            time.sleep(0.2)
            assert _state(pid) == "T"
            used = process.cpu_seconds()
            time.sleep(0.3)
            assert process.cpu_seconds() == used
            raise RuntimeError("the load failed")
        time.sleep(0.2)
        assert _state(pid) != "T"
        assert process.proc.poll() is None
    finally:
        process.stop()


def test_service_ports_are_free_distinct_and_never_an_outgoing_connections_port() -> None:
    # A port from the kernel's free range could be taken by one of the run's own outgoing
    # connections between setting the system up and a service's (re)start.
    low, high = (int(p) for p in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(50)]

    assert len(set(ports)) == len(ports)
    for port in ports:
        assert not low <= port <= high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # still free
