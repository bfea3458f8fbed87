"""The benchmark's CPU accounting (`bench.http.Usage`): what a load cost each process, NATS, the
load generator and the whole machine, per request."""

from __future__ import annotations

import time

import pytest

from bench.common import machine_cpu_seconds
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
