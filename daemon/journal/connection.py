"""The journal's connection: one SQLite file (WAL, synchronous=FULL) served by one dedicated thread.

State is written here before any message that depends on it is sent. All database work runs on the
journal thread, so the event loop never blocks on an fsync and SQLite sees one writer. Rooms call
the named statements of the table-family modules through :meth:`Journal.transaction` (writes, one
IMMEDIATE transaction) and :meth:`Journal.read` (reads).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Concatenate, ParamSpec, TypeVar

import structlog

from daemon.errors import JournalError
from daemon.journal.schema import LATEST, migrate, refuse_newer

T = TypeVar("T")
P = ParamSpec("P")

log = structlog.get_logger()


class Journal:
    """Async facade over the site's SQLite journal; every call runs on the journal thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"journal-{path.stem}")
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Create or open the database and migrate it to the current schema.

        Raises:
            JournalError: it cannot be opened, or it was written by a newer release.
        """
        applied = await self._run(self._open)
        if applied:
            log.info("journal_migrated", path=str(self.path), versions=applied, version=LATEST)

    def _open(self) -> list[int]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        except (sqlite3.Error, OSError) as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        try:
            db.row_factory = sqlite3.Row
            refuse_newer(db, self.path)  # before any statement that writes (journal_mode=WAL does)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            applied = migrate(db, self.path)
        except sqlite3.Error as exc:
            db.close()
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        except JournalError:
            db.close()
            raise
        self._db = db
        return applied

    async def close(self) -> None:
        """Close the database and let the journal thread end (without blocking the loop)."""
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=False)

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    @property
    def db(self) -> sqlite3.Connection:
        """The connection; only for use on the journal thread."""
        if self._db is None:
            raise JournalError("journal is not open")
        return self._db

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(db)`` inside one IMMEDIATE transaction on the journal thread."""

        def run() -> T:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        try:
            return await self._run(run)
        except sqlite3.Error as exc:
            raise JournalError(f"journal write failed: {exc}") from exc

    async def write(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One statement function as its own transaction: ``write(files.mark_acked, tid, ...)``."""
        return await self.transaction(lambda db: fn(db, *args, **kwargs))

    async def read(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a read function ``fn(db, *args)`` on the journal thread."""
        try:
            return await self._run(lambda: fn(self.db, *args, **kwargs))
        except sqlite3.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc
