"""A service's process runs with the collector tuned (`shared.collector`): checked in a process
of its own, where `serve` builds the app and hands it to uvicorn, whose `run` here only reports
how the collector stands at that moment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shared.collector import THRESHOLDS
from tests.support import SECRET

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import gc, uvicorn
uvicorn.run = lambda app, **options: print(*gc.get_threshold(), gc.get_freeze_count(), app.title)
from services.goals.main import GoalsSettings, create_app
from shared.serve import serve
serve(GoalsSettings, create_app)
"""


def test_a_service_is_served_with_the_collector_tuned(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OKR_")}
    env |= {"OKR_JWT_SECRET": SECRET, "OKR_DATA_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    *threshold, frozen, _title = out.stdout.split(maxsplit=4)
    assert tuple(int(t) for t in threshold) == THRESHOLDS
    assert int(frozen) > 10_000  # the modules, classes and app built at start
