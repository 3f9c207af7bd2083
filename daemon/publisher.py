"""Publishes a journaled log (notices, problems, events) on the site's own broker, in order.

Each loop is woken by the commits that add to its log; it publishes in bounded batches, marks
each batch published once the broker acknowledged it (PUBACK), and backs off (capped, jittered)
while the broker is down. A crash between publishing and marking repeats messages with the same
ids; none is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, Protocol, TypeVar

import structlog

from daemon.aio import raise_if_cancelling
from daemon.backoff import backoff_delay

log = structlog.get_logger()

BATCH = 500
"""At most this many messages are loaded per round."""
WINDOW = 64
"""Publishes awaiting their PUBACK at once: started in log order (the client writes them in that order),
so a busy event loop costs one turn per window, not one per message."""


class Entry(Protocol):
    """What a journaled message offers for publishing."""

    @property
    def topic(self) -> str: ...

    @property
    def payload(self) -> str: ...


E = TypeVar("E", bound=Entry)


class LogPublisher(Generic[E]):
    """Publish the unpublished entries of one journaled log, oldest first."""

    def __init__(
        self,
        name: str,
        *,
        fetch: Callable[[int], Awaitable[Sequence[E]]],
        mark: Callable[[Sequence[E]], Awaitable[None]],
        publish: Callable[[str, bytes], Awaitable[bool]],
        connected: Callable[[], Awaitable[None]],
        initial_backoff_s: float,
        max_backoff_s: float,
    ) -> None:
        self.name = name
        self._fetch = fetch
        self._mark = mark
        self._publish = publish
        self._connected = connected
        self._initial = initial_backoff_s
        self._cap = max_backoff_s
        self.wake = asyncio.Event()
        self.wake.set()  # whatever the journal holds from before a restart goes first

    async def run(self) -> None:
        """Publish until cancelled."""
        failures = 0
        while True:
            raise_if_cancelling()
            await self.wake.wait()
            self.wake.clear()
            await self._connected()
            while True:
                batch = await self._fetch(BATCH)
                if not batch:
                    break
                done = await self._publish_in_order(batch)
                if done:
                    await self._mark(done)
                if len(done) < len(batch):
                    failures += 1
                    delay = backoff_delay(failures, initial_s=self._initial, cap_s=self._cap)
                    log.info("publish_deferred", log=self.name, unpublished=len(batch) - len(done), retry_in_s=delay)
                    self.wake.set()
                    await asyncio.sleep(delay)  # the broker answered no, or not in time: back off
                    break
                failures = 0
                if len(batch) < BATCH:
                    break

    async def _publish_in_order(self, batch: Sequence[E]) -> list[E]:
        """Publish ``batch`` in order, :data:`WINDOW` at a time; the entries up to the first refusal.

        Entries after a refusal may have been published too: they are published again later, with
        the same ids, as after a crash.
        """
        done: list[E] = []
        for start in range(0, len(batch), WINDOW):
            raise_if_cancelling()
            window = batch[start : start + WINDOW]
            results = await asyncio.gather(*(self._publish(e.topic, e.payload.encode()) for e in window))
            for entry, published in zip(window, results, strict=True):
                if not published:
                    return done
                done.append(entry)
        return done
