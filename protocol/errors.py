"""Errors raised by the protocol package."""

from __future__ import annotations


class ProtocolError(ValueError):
    """A message or value does not follow the wire contract.

    Attributes:
        field: the offending field (dotted path), or None for the message as a whole.
        reason: a short human-readable reason.
    """

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)
