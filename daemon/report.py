"""Problems and events: logged, counted, journaled, and published on the site's own broker by their own loop.

Reporting never waits for a broker: a problem is a log line, a counter and a journal row at once,
and :class:`~daemon.publisher.LogPublisher` publishes the journaled rows in order, so a slow or
absent local broker stalls no delivery, router or dispatch.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import structlog

from daemon.counters import SiteCounters
from daemon.journal import Journal
from daemon.journal import reports as journal_reports
from daemon.publisher import LogPublisher
from protocol import topics
from protocol.events import Event, Problem

log = structlog.get_logger()


class Reporter:
    """Tells operators what went wrong (``problems/<site>``) and what was decided (``events/<site>``)."""

    def __init__(self, site: str, journal: Journal, counters: SiteCounters) -> None:
        self.site = site
        self.journal = journal
        self.counters = counters
        self.publisher: LogPublisher[journal_reports.ReportRow] | None = None
        self.listeners: list[Callable[[], None]] = []
        """Called after each report is journaled (the console pushes it to open pages; systemd's status line
        re-reads)."""

    async def problem(
        self,
        kind: str,
        reason: str,
        *,
        topic: str | None = None,
        name: str | None = None,
        transfer_id: str | None = None,
        **details: Any,
    ) -> None:
        """Report a problem: a warning log line, a counter, and a journaled ``problems/<site>`` message."""
        self.counters.problems[kind] += 1
        message = Problem(
            site=self.site,
            kind=kind,
            reason=reason[:2048],
            topic=topic[:512] if topic else None,
            name=name[:2048] if name else None,
            transfer_id=transfer_id[:256] if transfer_id else None,
            details={k: _jsonable(v) for k, v in details.items()},
            at=time.time(),
        )
        log.warning("problem", kind=kind, reason=reason, topic=topic, file=name, transfer_id=transfer_id, **details)
        await self._journal("problem", kind, topics.problems(self.site), message.to_json(), message.at)

    async def event(self, kind: str, message: str, **details: Any) -> None:
        """Report a decision: an info log line, a counter, and a journaled ``events/<site>`` message."""
        self.counters.events[kind] += 1
        event = Event(
            site=self.site,
            kind=kind,
            message=message,
            details={k: _jsonable(v) for k, v in details.items()},
            at=time.time(),
        )
        log.info("event", kind=kind, message=message, **details)
        await self._journal("event", kind, topics.events(self.site), event.to_json(), event.at)

    async def _journal(self, stream: str, kind: str, topic: str, payload: bytes, at: float) -> None:
        await self.journal.write(journal_reports.insert, stream=stream, kind=kind, topic=topic, payload=payload, at=at)
        if self.publisher is not None:
            self.publisher.wake.set()
        for listener in self.listeners:
            listener()

    async def recent(self, stream: str, limit: int = 10) -> list[dict[str, Any]]:
        """The newest problems or events, oldest first, as published."""
        rows = await self.journal.read(journal_reports.recent, stream, limit)
        return [json.loads(r.payload) for r in rows]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
