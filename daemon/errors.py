"""Errors of the daemon package."""

from __future__ import annotations


class DaemonError(Exception):
    """Base of daemon errors."""


class TopologyError(DaemonError):
    """The topology file is invalid; ``problems`` lists every problem found."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.problems = problems
        joined = "\n  - ".join(problems)
        super().__init__(f"invalid topology {path}:\n  - {joined}")


class PeerUnreachable(DaemonError):
    """No connection to a peer's mailbox right now; the journal keeps the message for later."""


class PullError(DaemonError):
    """A pull failed for a reason worth retrying (connection, HTTP status, short read)."""


class ChecksumMismatch(DaemonError):
    """The pulled bytes do not match the offered size or checksum."""

    def __init__(self, message: str, *, checksum: str, size: int) -> None:
        self.checksum = checksum
        self.size = size
        super().__init__(message)


class JournalError(DaemonError):
    """The journal cannot be opened or written."""
