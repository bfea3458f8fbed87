"""Stopping background tasks for certain."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def stop_task(task: asyncio.Task[Any] | None, patience: float = 10.0) -> None:
    """Cancel `task` and wait for it to end, cancelling again if it swallowed the first
    cancellation (client libraries sometimes turn a cancellation into a timeout error)."""
    if task is None or task.done():
        return
    deadline = asyncio.get_running_loop().time() + patience
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.2)
        if asyncio.get_running_loop().time() > deadline:
            log.error("task %s did not stop within %.0fs", task.get_name(), patience)
            return
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r", task.get_name(), task.exception())


class BlockingWorker:
    """One thread for a component's blocking calls (the store is synchronous).

    Unlike `asyncio.to_thread`, it can be waited for: a task cancelled while a call runs
    leaves that call running, and closing the store under it would crash the process.
    `close()` returns once the last call has finished.
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def close(self) -> None:
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
