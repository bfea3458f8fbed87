"""The benchmark's held load (`bench.http.corrected_pause`): the pause per connection that
brings a load to the rate asked, from the rate a pause held."""

from __future__ import annotations

import pytest

from bench.http import corrected_pause


def test_a_load_that_held_too_much_gets_a_longer_pause() -> None:
    # 16 connections, 10 ms of pause held 800 req/s: 20 ms a request, 10 of them service.
    # For 400 req/s each request must take 40 ms: 30 of pause.
    assert corrected_pause(10.0, 800.0, 400.0, 16) == pytest.approx(30.0)


def test_a_load_that_held_too_little_gets_a_shorter_pause() -> None:
    assert corrected_pause(10.0, 800.0, 1_000.0, 16) == pytest.approx(6.0)


def test_a_rate_past_what_no_pause_holds_gets_no_pause() -> None:
    assert corrected_pause(10.0, 800.0, 5_000.0, 16) == 0.0


def test_the_rate_held_again_keeps_the_pause() -> None:
    assert corrected_pause(12.5, 640.0, 640.0, 16) == pytest.approx(12.5)
