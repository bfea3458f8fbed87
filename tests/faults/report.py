"""What the fault tests tried and saw, and `docs/reliability.md` written from it.

Each fault test calls `record(...)` with its figures; the rows go to a JSON-lines file
(`OKR_FAULTS_RESULTS`, default `test-artifacts/faults/results.jsonl`). `python -m
tests.faults.report` turns the last run's rows into `docs/reliability.md` (`make faults` and
`make soak` run both steps), so the document only ever shows figures a run produced.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("OKR_FAULTS_RESULTS", "test-artifacts/faults/results.jsonl"))
DOCUMENT = Path("docs/reliability.md")

# The document's sections, in order: key -> (title, what the section shows).
SECTIONS: dict[str, tuple[str, str]] = {
    "crash": (
        "Crash matrix",
        "Clients send commands with an `Idempotency-Key` and retry until answered; one process at "
        "a time is killed with SIGKILL at a random moment and restarted. Afterwards every "
        "command answered 2xx must be in its store once, on the stream once, and applied once "
        "in every view, and nothing else.",
    ),
    "outage": (
        "NATS outage",
        "NATS is stopped under load: commands must keep succeeding (the store comes first), and "
        "the backlog drains in order once it is back.",
    ),
    "store-outage": (
        "Store outage",
        "The PostgreSQL server is killed under running services: reads of the store and commands "
        "answer 503 with Retry-After, nothing is recorded, and all answer again once it is back.",
    ),
    "cluster": (
        "Cluster",
        "A 3-node NATS cluster; the stream leader is killed under load.",
    ),
    "duplicates": (
        "Duplicates and disorder",
        "Messages are published again, redelivered and sent out of order: views must not change.",
    ),
    "races": (
        "Races",
        "Concurrent clients change the same key result.",
    ),
    "hostile": (
        "Hostile input",
        "Generated and hand-made bad requests, tokens and events.",
    ),
}


def record(section: str, name: str, outcome: str, **figures: Any) -> None:
    """Add one row: what was tried (`name`), how it ended (`outcome`), and its figures."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    row = {"section": section, "name": name, "outcome": outcome, "at": time.time(), **figures}
    with RESULTS.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, default=str) + "\n")


def start_run() -> None:
    """Forget the rows of earlier runs (called once per test session)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("", encoding="utf-8")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, Any]]) -> str:
    by_section: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_section[row["section"]].append(row)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(max((r["at"] for r in rows), default=0)))
    lines = [
        "# Reliability",
        "",
        "Written by `python -m tests.faults.report` from the rows the fault tests recorded in "
        f"their last run ({when}, Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs). Run `make faults` (bounded, also part of `make test`) or "
        "`make soak` (every kill point, longer load) to write it again.",
        "",
    ]
    for key, (title, text) in SECTIONS.items():
        section = by_section.get(key)
        lines += [f"## {title}", "", text, ""]
        if not section:
            lines += ["Not run in the last run.", ""]
            continue
        columns = ["name", "outcome"]
        for row in section:
            columns += [k for k in row if k not in columns and k not in ("section", "at")]
        lines.append("| " + " | ".join(c.replace("_", " ") for c in columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for row in section:
            lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    if not RESULTS.exists() or not RESULTS.read_text().strip():
        print(f"no results in {RESULTS}: run the fault tests first", file=sys.stderr)
        return 1
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    DOCUMENT.write_text(render(rows), encoding="utf-8")
    print(f"{DOCUMENT}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
