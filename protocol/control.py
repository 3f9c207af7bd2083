"""Operator commands sent into a site's mailbox on ``site/<site>/control``."""

from __future__ import annotations

import dataclasses
from typing import Literal

from protocol.codec import Message, meta
from protocol.transfer import ID_PATTERN

RouteCommand = Literal["force", "disable", "enable", "auto"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RouteControl(Message):
    """Change the summit's route policy: force or disable a route, or return to automatic choice."""

    TYPE = "route_control"

    control_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    command: RouteCommand = dataclasses.field(metadata=meta())
    route: str | None = dataclasses.field(default=None, metadata=meta(pattern=ID_PATTERN, max_len=128))
    issued_by: str = dataclasses.field(default="operator", metadata=meta(max_len=128))
    at: float = dataclasses.field(default=0.0, metadata=meta(min=0))
