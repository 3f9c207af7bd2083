"""Problems and decisions a site reports on ``problems/<site>`` and ``events/<site>``."""

from __future__ import annotations

import dataclasses
from typing import Any

from protocol.codec import Message, meta
from protocol.transfer import SITE_PATTERN


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Problem(Message):
    """Something an operator must know: a rejected message, a quarantined file, a stuck transfer."""

    TYPE = "problem"

    site: str = dataclasses.field(metadata=meta(pattern=SITE_PATTERN, max_len=32))
    kind: str = dataclasses.field(metadata=meta(description="e.g. bad_message, quarantined", max_len=64))
    reason: str = dataclasses.field(metadata=meta(max_len=2048))
    topic: str | None = dataclasses.field(default=None, metadata=meta(max_len=512))
    name: str | None = dataclasses.field(default=None, metadata=meta(max_len=2048))
    transfer_id: str | None = dataclasses.field(default=None, metadata=meta(max_len=256))
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    at: float = dataclasses.field(default=0.0, metadata=meta(min=0))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Event(Message):
    """A decision a site took (route change, failover, operator command)."""

    TYPE = "event"

    site: str = dataclasses.field(metadata=meta(pattern=SITE_PATTERN, max_len=32))
    kind: str = dataclasses.field(metadata=meta(max_len=64))
    message: str = dataclasses.field(metadata=meta(max_len=2048))
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    at: float = dataclasses.field(default=0.0, metadata=meta(min=0))
