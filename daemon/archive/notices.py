"""The notice log as subscribers replay it: pages of notices after a position, with the newest position.

The archive journals every notice it publishes (:mod:`daemon.journal.notices`); MQTT carries them live,
but a subscriber that was away, or a broker killed before it delivered, loses them on the wire. A page
of the log gives them back in order, each with its position, and says how far the log goes, so a
client knows when it has caught up.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from daemon.journal import Journal
from daemon.journal import notices as journal_notices

DEFAULT_PAGE = 1000
"""Notices per page when the client does not say."""
MAX_PAGE = 10_000
"""The most notices one page holds (a larger request gets this many)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NoticePage:
    """Consecutive notices of the log after ``after``, and the log's newest position when read."""

    after: int
    notices: tuple[journal_notices.NoticeRow, ...]
    newest: int

    @property
    def next_after(self) -> int:
        """The ``after`` of the next page: the last position here (or ``after`` when empty)."""
        return self.notices[-1].position if self.notices else self.after

    @property
    def caught_up(self) -> bool:
        """Whether this page reaches the newest notice of the log."""
        return self.next_after >= self.newest

    def to_json(self) -> bytes:
        """``{"after", "newest", "next_after", "caught_up", "notices": [{position, topic, notice_id, message}]}``.

        Each ``message`` is the notice exactly as journaled and published (the stored JSON, embedded
        as it is: the journal wrote it, so it is not parsed again here).
        """
        items = [
            b'{"position":%d,"topic":%s,"notice_id":%s,"message":%s}'
            % (row.position, json.dumps(row.topic).encode(), json.dumps(row.notice_id).encode(), row.payload.encode())
            for row in self.notices
        ]
        head = json.dumps(
            {"after": self.after, "newest": self.newest, "next_after": self.next_after, "caught_up": self.caught_up},
            separators=(",", ":"),
        ).encode()
        return head[:-1] + b',"notices":[' + b",".join(items) + b"]}"


async def read_page(journal: Journal, after: int, limit: int) -> NoticePage:
    """The notices after position ``after``, at most ``limit`` (clamped to 1..:data:`MAX_PAGE`), in order."""
    limit = max(1, min(limit, MAX_PAGE))

    def read(db: sqlite3.Connection) -> NoticePage:
        # One call on the journal thread: the rows and the newest position are of the same moment.
        rows = journal_notices.after(db, after, limit)
        return NoticePage(after=after, notices=tuple(rows), newest=journal_notices.newest(db))

    return await journal.read(read)
