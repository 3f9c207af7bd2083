"""The link simulator's errors: an unknown link, invalid mode parameters."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["LinkParamsError", "LinkSimError", "UnknownLinkError"]


class LinkSimError(Exception):
    """Base class for link simulator errors."""


class UnknownLinkError(LinkSimError, LookupError):
    """No link has the requested name (in either site order)."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(f"unknown link {name!r}; known links: {', '.join(self.known) or '(none)'}")


class LinkParamsError(LinkSimError, ValueError):
    """A mode or a mode parameter is invalid."""
