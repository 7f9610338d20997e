"""Timed waits that never swallow a cancellation.

On Python 3.11 ``asyncio.wait_for(aw, timeout)`` returns ``aw``'s result when the
task is cancelled in the same loop turn in which ``aw`` finished (bpo-42130, fixed
in 3.12): the cancellation is lost. A loop such as "wait for a change or the
refresh period, publish, repeat" then survives the ``task.cancel()`` meant to end
it, and whoever gathers it waits forever. That is how an edge node agent hung
on stop: its load publisher was cancelled in the turn its load-changed event was
set (a generation finishing, or the drain itself). These helpers use
``asyncio.timeout``, which lets a cancellation through whatever else happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until ``event`` is set or ``timeout`` passes; True if it is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


async def within(awaitable: Awaitable[_T], timeout: float | None) -> _T:
    """``await awaitable``, raising ``TimeoutError`` after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        return await awaitable


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], *, patience_s: float = 5.0) -> None:
    """Cancel ``tasks`` and wait until all have ended, cancelling again any that linger.

    A task still running ``patience_s`` after its cancel swallowed it (or blocks in
    ``finally``): it is named in an error log line and cancelled again, so a stop
    is late, never hung, and says why.
    """
    pending = set(tasks)
    for task in pending:
        task.cancel()
    while pending:
        _, pending = await asyncio.wait(pending, timeout=patience_s)
        if pending:
            names = ", ".join(sorted(task.get_name() for task in pending))
            logger.error("still running %g s after cancel, cancelling again: %s", patience_s, names)
            for task in pending:
                task.cancel()
