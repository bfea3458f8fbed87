"""The fault tests share one results file per run (see `report.py`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.report import start_run


@pytest.fixture(scope="session", autouse=True)
def _fresh_results() -> Iterator[None]:
    start_run()
    yield
