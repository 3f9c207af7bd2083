"""The journal's connection: one SQLite file (WAL, synchronous=FULL) served by one dedicated thread.

State is written here before any message that depends on it is sent. All database work runs on the
journal thread, so the event loop never blocks on an fsync and SQLite sees one writer. Rooms call
the named statements of the table-family modules through :meth:`Journal.transaction` (writes, one
IMMEDIATE transaction) and :meth:`Journal.read` (reads).

Group commit: transactions asked for while the journal thread is busy (typically waiting for the
previous COMMIT's fsync) are run together in one SQLite transaction, each in its own SAVEPOINT, and
committed with one fsync. Each caller's ``await`` returns only after that COMMIT, so "committed"
still means durable; a function that raises rolls back only its own savepoint. A lone transaction
is run at once: batching adds no wait when there is nothing to batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import threading
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

MAX_GROUP: int = 256
"""At most this many transactions share one COMMIT."""
WAL_SIZE_LIMIT: int = 4 << 20
"""The WAL is cut back to this many bytes when a checkpoint resets it: a burst (a night's backlog, a reader that
held checkpoints off) does not leave a large WAL on disk for good (SQLite otherwise keeps the file at its peak)."""


@dataclasses.dataclass(slots=True)
class _Pending:
    """One caller's transaction waiting for the journal thread."""

    fn: Callable[[sqlite3.Connection], object]
    future: asyncio.Future[object]
    loop: asyncio.AbstractEventLoop
    result: object = None
    error: BaseException | None = None


class Journal:
    """Async facade over the site's SQLite journal; every call runs on the journal thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"journal-{path.stem}")
        self._db: sqlite3.Connection | None = None
        self._pending: list[_Pending] = []
        self._pending_lock = threading.Lock()
        self._flush_queued = False
        self.commits = 0
        """COMMITs (fsyncs of the WAL) so far; with group commit, at most the number of transactions."""
        self.transactions = 0
        """Transactions committed so far."""

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
            db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
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
        """Run ``fn(db)`` inside one IMMEDIATE transaction on the journal thread; return once it is committed.

        ``fn`` may share the transaction (and its one fsync) with others asked for meanwhile; it
        runs in its own SAVEPOINT, so an exception from it undoes only its own changes.

        Raises:
            JournalError: the database refused the write (the exception ``fn`` raised otherwise).
        """
        loop = asyncio.get_running_loop()
        pending = _Pending(fn, loop.create_future(), loop)
        with self._pending_lock:
            self._pending.append(pending)
            start = not self._flush_queued
            self._flush_queued = True
        if start:
            try:
                self._executor.submit(self._flush)
            except RuntimeError as exc:  # the executor was shut down: the journal is closed
                with self._pending_lock:
                    self._flush_queued = False
                    if pending in self._pending:
                        self._pending.remove(pending)
                raise JournalError("journal is not open") from exc
        try:
            result = await pending.future
        except sqlite3.Error as exc:
            raise JournalError(f"journal write failed: {exc}") from exc
        return result  # type: ignore[return-value]

    def _flush(self) -> None:
        """On the journal thread: run every pending transaction in one SQLite transaction, then settle them."""
        while True:
            with self._pending_lock:
                batch, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                if not batch:
                    self._flush_queued = False
                    return
            try:
                self._commit_group(batch)
            except BaseException as exc:  # an undo that failed: nothing of this group is committed
                log.exception("journal_group_failed", transactions=len(batch))
                self._abandon(batch, exc)
            for item in batch:
                with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
                    item.loop.call_soon_threadsafe(_settle, item)

    def _abandon(self, batch: list[_Pending], exc: BaseException) -> None:
        """Roll back whatever is open and hand ``exc`` to every caller of the group."""
        db = self._db
        if db is not None and db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        for item in batch:
            item.error = exc
            item.result = None

    def _commit_group(self, batch: list[_Pending]) -> None:
        try:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, JournalError) as exc:
            for item in batch:
                item.error = exc
            return
        ran: list[_Pending] = []
        for item in batch:
            if len(batch) == 1:
                try:
                    item.result = item.fn(db)
                except BaseException as exc:
                    item.error = exc
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    return
                ran.append(item)
                continue
            try:
                db.execute("SAVEPOINT grouped")
                item.result = item.fn(db)
                db.execute("RELEASE grouped")
            except BaseException as exc:
                item.error = exc
                if not db.in_transaction:  # SQLite rolled the whole transaction back (disk full, I/O error)
                    lost = JournalError(f"journal write failed with another in its group commit: {exc}")
                    for other in ran:
                        other.error = lost
                    for other in batch[batch.index(item) + 1 :]:
                        other.error = lost
                    return
                try:
                    db.execute("ROLLBACK TO grouped")
                    db.execute("RELEASE grouped")
                except sqlite3.Error as undo:
                    self._fail_all(db, batch, undo)
                    return
                continue
            ran.append(item)
        if not ran:
            db.execute("ROLLBACK")
            return
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._fail_all(db, batch, exc)
            return
        self.commits += 1
        self.transactions += len(ran)

    @staticmethod
    def _fail_all(db: sqlite3.Connection, batch: list[_Pending], exc: sqlite3.Error) -> None:
        """The group's COMMIT (or an undo) failed: nothing of it is stored; every caller gets the error."""
        if db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("journal_rollback_failed")
        for item in batch:
            item.error = exc
            item.result = None

    async def write(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """One statement function as its own transaction: ``write(files.mark_acked, tid, ...)``."""
        return await self.transaction(lambda db: fn(db, *args, **kwargs))

    async def read(self, fn: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a read function ``fn(db, *args)`` on the journal thread."""
        try:
            return await self._run(lambda: fn(self.db, *args, **kwargs))
        except sqlite3.Error as exc:
            raise JournalError(f"journal read failed: {exc}") from exc


def _settle(item: _Pending) -> None:
    """On the caller's loop: hand over the result (or the error) unless the caller gave up waiting."""
    if item.future.done():
        return
    if item.error is not None:
        item.future.set_exception(item.error)
    else:
        item.future.set_result(item.result)
