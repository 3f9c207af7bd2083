"""How the release-0.1.0 journals in this folder were made (kept as a record; it ran against 0.1.0).

A cluster archived exposure 1; then the archive was SIGKILLed and exposure 2 went to the base, which
held it; then the base was SIGKILLed and exposure 3 stayed at the summit; then everything was killed.
The state directories, the summit inbox, the base's relay copies and the archive root were copied here.

    python tests/data/journal-v0/make.py OUTDIR
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

from ops.camera import write_exposure
from ops.cluster import Cluster


def count(db: Path, sql: str) -> int:
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return int(conn.execute(sql).fetchone()[0])


async def wait_for(db: Path, sql: str, n: int) -> None:
    async with asyncio.timeout(60):
        while not db.exists() or count(db, sql) < n:
            await asyncio.sleep(0.2)


async def main(out: Path) -> None:
    work = Path("/tmp/journal-v0-work")
    shutil.rmtree(work, ignore_errors=True)
    cluster = Cluster(work, tuning={"end_to_end_timeout_s": 3600})
    async with cluster:
        kw = {"dayobs": "20261201", "size_bytes": 12_000}
        write_exposure(cluster.inbox, "LATISS", seqnum=1, **kw)
        write_exposure(cluster.inbox, "LATISS", seqnum=2, **kw)
        archive_db = work / "archive/state/journal.sqlite"
        await wait_for(archive_db, "SELECT COUNT(*) FROM notices WHERE published_at IS NOT NULL", 4)
        await wait_for(work / "summit/state/journal.sqlite", "SELECT COUNT(*) FROM files WHERE state='archived'", 2)
        await cluster.daemons["archive"].kill(signal.SIGKILL)
        write_exposure(cluster.inbox, "LATISS", seqnum=3, **kw)
        write_exposure(cluster.inbox, "LATISS", seqnum=4, **kw)
        await wait_for(work / "base/state/journal.sqlite", "SELECT COUNT(*) FROM files", 4)
        await cluster.daemons["base"].kill(signal.SIGKILL)
        write_exposure(cluster.inbox, "LATISS", seqnum=5, **kw)
        await wait_for(work / "summit/state/journal.sqlite", "SELECT COUNT(*) FROM files", 5)
        await asyncio.sleep(1.0)
        await cluster.daemons["summit"].kill(signal.SIGKILL)
        for site in ("summit", "base", "archive"):
            shutil.copytree(work / site / "state", out / site / "state", dirs_exist_ok=True)
        shutil.copytree(work / "summit/inbox", out / "summit/inbox", dirs_exist_ok=True)
        shutil.copytree(work / "archive/root", out / "archive/root", dirs_exist_ok=True)
        (out / "workdir.txt").write_text(str(work) + "\n")


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]).resolve()))
