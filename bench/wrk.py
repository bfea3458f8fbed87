"""HTTP load from wrk (C, one thread, so it takes little of the CPU the server needs): POSTs a
check-in to a random key result of a list per request, and reports through a Lua `done` hook
as JSON. A per-connection pause (`delay`) holds the load near a chosen rate."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = r"""
local ids = {}
for line in io.lines(os.getenv("BENCH_IDS")) do ids[#ids + 1] = line end
local token = os.getenv("BENCH_TOKEN")
local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "0")
local counter = 0
math.randomseed(os.time())

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. token

request = function()
  counter = counter + 1
  local id = ids[math.random(#ids)]
  local body = string.format(
    '{"value": %d, "confidence": %d, "note": "bench %d"}',
    counter % 100, counter % 11, counter)
  return wrk.format(nil, "/v1/key-results/" .. id .. "/check-ins", nil, body)
end

if pause > 0 then
  delay = function() return pause end
end

done = function(summary, latency, requests)
  local out = {
    requests = summary.requests,
    duration_us = summary.duration,
    bytes = summary.bytes,
    errors = {
      connect = summary.errors.connect, read = summary.errors.read,
      write = summary.errors.write, status = summary.errors.status,
      timeout = summary.errors.timeout,
    },
    latency_us = {
      p50 = latency:percentile(50), p90 = latency:percentile(90),
      p99 = latency:percentile(99), max = latency.max, mean = latency.mean,
    },
  }
  local parts = {}
  local function encode(t)
    local items = {}
    for k, v in pairs(t) do
      if type(v) == "table" then
        items[#items + 1] = string.format('"%s": %s', k, encode(v))
      else
        items[#items + 1] = string.format('"%s": %.3f', k, v)
      end
    end
    return "{" .. table.concat(items, ", ") .. "}"
  end
  io.write("BENCH-JSON " .. encode(out) .. "\n")
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def failed(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rate": round(self.rate, 1),
            "errors": self.errors,
            "p50_ms": round(self.p50_ms, 3),
            "p90_ms": round(self.p90_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "max_ms": round(self.max_ms, 3),
        }


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    base_url: str,
    key_result_ids: list[str],
    token: str,
    *,
    connections: int,
    seconds: float,
    delay_ms: float = 0,
    timeout_s: int = 10,
) -> WrkResult:
    """POST check-ins to `base_url` for `seconds` with `connections` open connections."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as folder:
        script = Path(folder) / "checkins.lua"
        script.write_text(SCRIPT)
        ids = Path(folder) / "ids.txt"
        ids.write_text("\n".join(key_result_ids) + "\n")
        env = {
            "BENCH_IDS": str(ids),
            "BENCH_TOKEN": token,
            "BENCH_DELAY_MS": str(round(delay_ms)),
            "PATH": "/usr/bin:/bin",
        }
        command = [
            "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s}s", "-s", str(script), base_url,
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH-JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH-JSON "))
    latency = data["latency_us"]
    return WrkResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        errors={k: int(v) for k, v in data["errors"].items()},
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
    )
