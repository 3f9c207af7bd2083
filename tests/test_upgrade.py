"""Upgrading in place: journals and a workdir written by release 0.1.0 open with this code and lose nothing.

``tests/data/journal-v0`` holds what 0.1.0 left after a crash (see its ``make.py``): exposures 1-2
archived with custody, 3-4 held at the base on their way to the archive, 5 still at the summit.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from conftest import FAST_TUNING, REPO, Collector, cli_ok, login, query_journal, read_catalog, run_cli, wait_settled

from daemon.journal import schema
from ops.cluster import Cluster

pytestmark = pytest.mark.timeout(180)

FIXTURE = REPO / "tests" / "data" / "journal-v0"
OLD_WORKDIR = (FIXTURE / "workdir.txt").read_text().strip()


def _copy_release_0_1(workdir: Path) -> None:
    """The 0.1.0 workdir, its journals pointed at where the files now are (as after a move of the disk)."""
    for site in ("summit", "base", "archive"):
        shutil.copytree(FIXTURE / site, workdir / site)
    for site in ("summit", "base"):
        with closing(sqlite3.connect(workdir / site / "state" / "journal.sqlite")) as db, db:
            db.execute("UPDATE files SET local_path = replace(local_path, ?, ?)", (OLD_WORKDIR, str(workdir)))
    # A custody receipt the base had not yet acknowledged when the archive died, and one the base had
    # not yet relayed to the summit: 0.1.0 journaled both unsigned.
    for site in ("archive", "base"):
        with closing(sqlite3.connect(workdir / site / "state" / "journal.sqlite")) as db, db:
            db.execute("UPDATE outbox SET state = 'pending' WHERE rowid = (SELECT MIN(rowid) FROM outbox)")


def _journal(workdir: Path, site: str, sql: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(f"file:{workdir / site / 'state' / 'journal.sqlite'}?mode=ro", uri=True)) as db:
        return db.execute(sql).fetchall()


async def test_a_release_0_1_workdir_upgrades_and_delivers_everything_once(tmp_path: Path) -> None:
    """Every pending transfer of the old journals is delivered, archived files keep their custody, the old notices
    are not published again, and `up` adds the accounts, ACLs and keys the old workdir lacked."""
    workdir = tmp_path / "cluster"
    _copy_release_0_1(workdir)
    old_notices = {row[0] for row in _journal(workdir, "archive", "SELECT notice_id FROM notices")}
    assert len(old_notices) == 4 and not (workdir / "secrets.json").exists()

    async with Cluster(workdir, tuning=FAST_TUNING) as cluster:
        live = Collector("127.0.0.1", cluster.brokers["archive"].port, "skyrelay/v1/arrivals/#", login=login(cluster))
        await live.start()
        try:
            await wait_settled(cluster, archived=5, wake=live, timeout_s=90)
        finally:
            await live.stop()
        for site in ("summit", "base", "archive"):
            assert query_journal(cluster, site, "PRAGMA user_version")[0]["user_version"] == schema.LATEST
        catalog = read_catalog(cluster)
        assert sorted(r["seqnum"] for r in catalog) == [1, 2, 3, 4, 5], "each file archived exactly once"
        for row in catalog:
            archived = (cluster.archive_root / row["archive_path"]).read_bytes()
            assert row["archived_checksum"].startswith("blake3:") and len(archived) == row["archived_size"]
        summit = {r["name"]: r["state"] for r in query_journal(cluster, "summit", "SELECT name, state FROM files")}
        assert set(summit.values()) == {"archived"} and len(summit) == 5
        outbox = query_journal(cluster, "base", "SELECT state FROM outbox")
        assert "pending" not in {r["state"] for r in outbox}, "the base's unsigned custody was retired, not re-sent"

        replay = await cli_ok("subscribe", "--workdir", str(workdir), "--since", "0", "--count", "10", timeout_s=60)
        ids = [json.loads(line)["message"]["notice_id"] for line in replay.splitlines() if line.strip()]
        assert len(ids) == len(set(ids)) == 10, "5 arrivals and 5 exposures, each once"
        assert old_notices <= set(ids)
        live_ids = {m.data["notice_id"] for m in live.messages}
        assert not (live_ids & old_notices), "a notice 0.1.0 had published was published again"
        assert (workdir / "secrets.json").exists() and (workdir / "archive" / "broker" / "auth").is_dir()


async def test_a_journal_from_a_newer_release_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A daemon given a journal whose schema is newer than it knows exits with a clear error and changes nothing."""
    async with Cluster(tmp_path / "cluster", tuning=FAST_TUNING, routes={"direct": ["summit", "archive"]}) as cluster:
        await cluster.daemons["archive"].kill()
        journal = cluster.workdir / "archive" / "state" / "journal.sqlite"
        for leftover in journal.parent.glob("journal.sqlite*"):
            leftover.unlink()
        shutil.copyfile(FIXTURE / "archive" / "state" / "journal.sqlite", journal)
        shutil.copyfile(FIXTURE / "archive" / "state" / "journal.sqlite-wal", journal.with_name("journal.sqlite-wal"))
        with closing(sqlite3.connect(journal)) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            db.execute(f"PRAGMA user_version = {schema.LATEST + 1}")
        before = hashlib.sha256(journal.read_bytes()).hexdigest()
        result = await run_cli("run", "--topology", str(cluster.topology_path), "--site", "archive", timeout_s=60)
    assert result.code == 2, result.err
    assert f"schema version {schema.LATEST + 1}" in result.err and "newer than this skyrelay" in result.err
    assert hashlib.sha256(journal.read_bytes()).hexdigest() == before
