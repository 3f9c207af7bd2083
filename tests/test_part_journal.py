"""The journal on its own: migrations (from nothing, from release 0.1.0, refused when newer, atomic when they
fail), transactions that roll back, and database work that stays off the event loop.

Real SQLite files in ``tmp_path``; the release-0.1.0 journals under ``tests/data/journal-v0`` are fixtures and
are copied before use.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from parts import open_journal

from daemon.errors import JournalError
from daemon.journal import Journal, schema
from daemon.journal import settings as journal_settings

V0 = Path(__file__).parent / "data" / "journal-v0"
V0_TABLES = ("files", "transfers", "outbox", "inbound", "catalog", "notices", "exposures", "settings")


def user_version(path: Path) -> int:
    """The schema version recorded in a journal file (read with a separate connection)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def tables(path: Path) -> set[str]:
    """The table names in a journal file."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def row_counts(path: Path) -> dict[str, int]:
    """Rows per release-0.1.0 table."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {t: int(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in V0_TABLES}


def digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_v0(site: str, dest: Path) -> Path:
    """Copy a release-0.1.0 journal (with its WAL and shared-memory files) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for source in (V0 / site / "state").glob("journal.sqlite*"):
        shutil.copy2(source, dest / source.name)
    return dest / "journal.sqlite"


@pytest.mark.parametrize("existing", [False, True], ids=["no file", "empty file"])
async def test_a_new_journal_is_migrated_to_the_latest_version(tmp_path: Path, existing: bool) -> None:
    """A missing or zero-byte journal file is created with every table at schema.LATEST."""
    path = tmp_path / "state" / "journal.sqlite"
    if existing:
        path.parent.mkdir()
        path.touch()
    journal = await open_journal(path)
    await journal.close()
    assert user_version(path) == schema.LATEST
    assert {*V0_TABLES, "reports"} <= tables(path)


@pytest.mark.parametrize("site", ["summit", "base", "archive"])
async def test_a_release_0_1_journal_migrates_and_keeps_every_row(tmp_path: Path, site: str) -> None:
    """A journal written by 0.1.0 (user_version 0, its tables present) reaches LATEST with every row kept."""
    path = copy_v0(site, tmp_path / site)
    assert user_version(path) == 0
    before = row_counts(path)
    assert sum(before.values()) > 0, "the fixture holds rows"
    journal = await open_journal(path)
    states = await journal.read(lambda db: {r[0]: r[1] for r in db.execute("SELECT state, COUNT(*) FROM files")})
    await journal.close()
    assert user_version(path) == schema.LATEST
    assert row_counts(path) == before
    assert sum(states.values()) == before["files"]
    assert "reports" in tables(path)


@pytest.mark.parametrize("mode", ["wal", "delete"])
async def test_a_journal_from_a_newer_release_is_refused_and_left_untouched(tmp_path: Path, mode: str) -> None:
    """user_version LATEST+1: JournalError naming both versions, and the file's bytes are unchanged."""
    path = tmp_path / "journal.sqlite"
    newer = schema.LATEST + 1
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA journal_mode={mode}")
        db.execute("CREATE TABLE future (x INTEGER)")
        db.execute("INSERT INTO future VALUES (42)")
        db.commit()
        db.execute(f"PRAGMA user_version = {newer}")
    before = digest(path)
    with pytest.raises(JournalError) as refused:
        await Journal(path).open()
    message = str(refused.value)
    assert f"version {newer}" in message and f"({schema.LATEST})" in message
    assert digest(path) == before
    assert user_version(path) == newer


async def test_a_failing_migration_leaves_the_journal_at_the_previous_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration that fails part-way is rolled back with its version bump: nothing of it remains, the
    migrations before it stay applied, and a release without the bad migration opens the journal."""
    path = copy_v0("summit", tmp_path)
    before = row_counts(path)
    broken = "CREATE TABLE half_done (x INTEGER);\nINSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, broken))
    monkeypatch.setattr(schema, "LATEST", len(schema.MIGRATIONS))
    with pytest.raises(JournalError, match="no_such_table"):
        await Journal(path).open()
    monkeypatch.undo()
    assert user_version(path) == schema.LATEST  # 0 -> 1 -> 2 committed, 2 -> 3 rolled back
    assert "half_done" not in tables(path)
    assert row_counts(path) == before
    journal = await open_journal(path)
    await journal.close()


async def test_a_transaction_that_raises_is_rolled_back(tmp_path: Path) -> None:
    """An exception inside ``transaction(fn)`` undoes fn's writes and reaches the caller as itself;
    an SQLite error becomes JournalError; the journal takes the next transaction normally."""
    journal = await open_journal(tmp_path / "journal.sqlite")

    def write_then_fail(db: sqlite3.Connection) -> None:
        journal_settings.put(db, "route_policy", '{"primary": "disable"}')
        raise ValueError("changed my mind")

    with pytest.raises(ValueError, match="changed my mind"):
        await journal.transaction(write_then_fail)
    assert await journal.read(journal_settings.get, "route_policy") is None

    def write_then_break(db: sqlite3.Connection) -> None:
        journal_settings.put(db, "route_policy", "{}")
        db.execute("INSERT INTO settings (key, value) VALUES ('route_policy', 'twice')")

    with pytest.raises(JournalError, match="UNIQUE"):
        await journal.transaction(write_then_break)
    assert await journal.read(journal_settings.get, "route_policy") is None

    await journal.write(journal_settings.put, "route_policy", '{"direct": "force"}')
    assert await journal.read(journal_settings.get, "route_policy") == '{"direct": "force"}'
    await journal.close()


async def test_journal_work_runs_on_the_journal_thread_while_the_loop_keeps_running(tmp_path: Path) -> None:
    """Writes and reads run on the journal's own thread: the event loop runs other callbacks meanwhile."""
    journal = await open_journal(tmp_path / "journal.sqlite")
    loop = asyncio.get_running_loop()

    def wait_for_the_loop(db: sqlite3.Connection) -> tuple[str, bool]:
        # The loop sets this event from a callback scheduled before the call: if fn ran on the loop,
        # the callback could not run until fn returned, and the wait would time out.
        return threading.current_thread().name, loop_ran.wait(timeout=5.0)

    loop_ran = threading.Event()
    loop.call_soon(loop_ran.set)
    write_thread, write_saw_loop = await journal.transaction(wait_for_the_loop)

    loop_ran = threading.Event()
    loop.call_soon(loop_ran.set)
    read_thread, read_saw_loop = await journal.read(wait_for_the_loop)
    await journal.close()

    assert write_saw_loop and read_saw_loop
    assert write_thread.startswith("journal-") and read_thread == write_thread
    assert write_thread != threading.current_thread().name


async def test_transactions_asked_for_together_share_commits_and_fail_alone(tmp_path: Path) -> None:
    """Transactions asked for while the journal is busy are committed together (fewer COMMITs than
    transactions), each sees the ones before it, and one that raises undoes only its own writes."""
    path = tmp_path / "journal.sqlite"
    journal = await open_journal(path)
    gate = threading.Event()

    def hold_the_thread(db: sqlite3.Connection) -> None:
        journal_settings.put(db, "k-first", "1")
        gate.wait(timeout=10.0)  # the others queue up behind this one meanwhile

    def put(key: str) -> Callable[[sqlite3.Connection], str | None]:
        def fn(db: sqlite3.Connection) -> str | None:
            journal_settings.put(db, key, "v")
            return journal_settings.get(db, "k-first")

        return fn

    def write_then_fail(db: sqlite3.Connection) -> None:
        journal_settings.put(db, "k-failed", "v")
        raise ValueError("changed my mind")

    first = asyncio.ensure_future(journal.transaction(hold_the_thread))
    await asyncio.sleep(0)  # let the first reach the thread before the rest are asked for
    keys = [f"k-{i}" for i in range(50)]
    rest = [asyncio.ensure_future(journal.transaction(put(k))) for k in keys[:25]]
    failing = asyncio.ensure_future(journal.transaction(write_then_fail))
    rest += [asyncio.ensure_future(journal.transaction(put(k))) for k in keys[25:]]
    gate.set()
    await first
    assert await asyncio.gather(*rest) == ["1"] * 50
    with pytest.raises(ValueError, match="changed my mind"):
        await failing
    assert journal.transactions == 51 and journal.commits < journal.transactions
    await journal.close()

    db = sqlite3.connect(path)
    stored = {k for (k,) in db.execute("SELECT key FROM settings")}
    db.close()
    assert stored >= {"k-first", *keys} and "k-failed" not in stored
