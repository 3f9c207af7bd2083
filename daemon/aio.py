"""asyncio helpers for the daemon's loops."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that an inner ``wait_for`` swallowed.

    On Python 3.11, ``asyncio.wait_for`` (used by aiomqtt's publish) drops a cancel that arrives as
    the inner future completes; a loop that carries on would then never end and hang shutdown.
    Each long-lived loop calls this at the top of every iteration.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
