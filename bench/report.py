"""A results file of `python -m bench` as a Markdown table (for docs/benchmarks-log.md):
`python -m bench.report test-artifacts/bench/latest.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _number(value: float | None) -> str:
    if value is None:
        return ""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Run {result['at'][:16].replace('T', ' ')} UTC, {result['machine']['cpus']}, "
        f"Python {result['machine']['python']}, {result['seconds']:.0f} s in all.",
        "",
        "| bench | store | figure | value | ceiling | ratio | target | met |",
        "|---|---|---|---:|---:|---:|---|---|",
    ]
    for f in result["figures"]:
        met = "" if f["met"] is None else ("yes" if f["met"] else "**no**")
        ratio = "" if f["ratio"] is None else f"{f['ratio']:.2f}"
        value = f"{_number(f['value'])} {f['unit']}".strip()
        ceiling = _number(f["ceiling"])
        if ceiling and f.get("ceiling_name"):
            ceiling = f"{ceiling} ({f['ceiling_name']})"
        lines.append(
            f"| {f['bench']} | {f['store']} | {f['name']} | {value} | {ceiling} | {ratio} "
            f"| {f['target'] or ''} | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    print(markdown(json.loads(Path(argv[0]).read_text())))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
