"""Presence: retained ``online`` at connect, ``offline`` as the connection's last will."""

from __future__ import annotations

import dataclasses
from typing import Literal

from protocol.codec import Message, meta
from protocol.transfer import SITE_PATTERN


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Presence(Message):
    """Whether a site's daemon is connected, and which peers it cannot reach; retained on ``presence/<site>``.

    A relay's ``unreachable`` tells the summit about a hop it cannot see (base → archive).
    """

    TYPE = "presence"

    site: str = dataclasses.field(metadata=meta(pattern=SITE_PATTERN, max_len=32))
    state: Literal["online", "offline"] = dataclasses.field(metadata=meta())
    at: float = dataclasses.field(default=0.0, metadata=meta(min=0))
    version: str = dataclasses.field(default="", metadata=meta(max_len=64))
    unreachable: tuple[str, ...] = dataclasses.field(
        default=(), metadata=meta(description="peers this site cannot reach right now (its links that are down)")
    )
