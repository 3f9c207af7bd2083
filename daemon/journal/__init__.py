"""The journal: the only place with SQL. A connection thread, schema migrations, one module per table family.

- :mod:`~daemon.journal.connection` — :class:`Journal`, the SQLite file and its thread;
- :mod:`~daemon.journal.schema` — ordered migrations in ``PRAGMA user_version``;
- :mod:`~daemon.journal.files` — files, transfers and inbound answers (every site);
- :mod:`~daemon.journal.outbox` — messages re-sent until acknowledged (custody);
- :mod:`~daemon.journal.catalog`, :mod:`~daemon.journal.exposures`, :mod:`~daemon.journal.notices` — the archive;
- :mod:`~daemon.journal.reports` — problems and events; :mod:`~daemon.journal.settings` — route policy.
"""

from __future__ import annotations

import uuid

from daemon.journal.connection import Journal
from daemon.journal.files import FileRow, TransferRow


def new_id(prefix: str) -> str:
    """A fresh id for a transfer (``t-``), custody message (``c-``) or notice (``n-``, ``x-``)."""
    return f"{prefix}-{uuid.uuid4().hex}"


__all__ = ["FileRow", "Journal", "TransferRow", "new_id"]
