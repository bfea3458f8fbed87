"""The cyclic garbage collector, tuned for long-running services.

Python collects its youngest generation every 700 net allocations of container objects and
promotes what survives, so a busy service also runs full collections, each a pause of tens of
milliseconds with every request waiting, and a rebuild spends several percent of its time
collecting (docs/benchmarks-log.md). Nearly everything a request or an event allocates is freed by
reference counting long before that; cycles are rare (an exception with its traceback, say).
So the young generation is collected every 50,000 net allocations instead, and what exists
once a process has started (modules, classes, the app, its schemas) is moved out of the
collector's way (`gc.freeze`), so that a full collection no longer walks it.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 10)


def tune_collector() -> None:
    """Call once the process has started (imports done, the app built)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
