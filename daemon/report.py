"""Problems and events: logged, counted, and published on the site's own broker."""

from __future__ import annotations

import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from protocol import topics
from protocol.events import Event, Problem

log = structlog.get_logger()

Publisher = Callable[[str, bytes], Awaitable[bool]]


class Reporter:
    """Tells operators what went wrong (``problems/<site>``) and what was decided (``events/<site>``).

    Publishing is best effort: when the site's own broker is down the line is still logged and
    counted, and the state that caused it stays in the journal.
    """

    def __init__(self, site: str) -> None:
        self.site = site
        self.problem_counts: collections.Counter[str] = collections.Counter()
        self.event_counts: collections.Counter[str] = collections.Counter()
        self.recent_problems: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self.recent_events: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)
        self._publish: Publisher | None = None

    def attach(self, publish: Publisher) -> None:
        """Set the function that publishes on the site's own broker."""
        self._publish = publish

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
        """Report a problem: a warning log line, a counter, and a ``problems/<site>`` message."""
        self.problem_counts[kind] += 1
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
        self.recent_problems.append(message.to_dict())
        log.warning("problem", kind=kind, reason=reason, topic=topic, file=name, transfer_id=transfer_id, **details)
        if self._publish is not None:
            await self._publish(topics.problems(self.site), message.to_json())

    async def event(self, kind: str, message: str, **details: Any) -> None:
        """Report a decision: an info log line, a counter, and an ``events/<site>`` message."""
        self.event_counts[kind] += 1
        event = Event(
            site=self.site,
            kind=kind,
            message=message,
            details={k: _jsonable(v) for k, v in details.items()},
            at=time.time(),
        )
        self.recent_events.append(event.to_dict())
        log.info("event", kind=kind, message=message, **details)
        if self._publish is not None:
            await self._publish(topics.events(self.site), event.to_json())


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)
