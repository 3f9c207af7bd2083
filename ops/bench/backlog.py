"""The backlog workload: files registered while the archive is gone, then drained when it comes back.

The summit registers every file while the archive's daemon is stopped (nothing downstream answers an
offer: the one route is cut), then the archive starts again and the summit catches up. Reported: the
drain rate (files/s from the archive being up again to the last notice), each daemon's peak RSS, and
how much each site's journal grew per file (checkpointed: database + what is left of its WAL).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from ops.bench.arrivals import ArrivalListener
from ops.bench.config import MB
from ops.bench.errors import BenchError
from ops.bench.files import close_and_rename, link_files, total_size
from ops.bench.measure import cpu_seconds, peak_rss_mib
from ops.cluster import SITES, Cluster

__all__ = ["journal_bytes", "push_backlog"]

log = structlog.get_logger()


def journal_bytes(site_dir: Path) -> int:
    """Bytes of a site's journal on disk once its WAL is checkpointed into the database (blocking).

    The WAL is checkpointed and truncated first, from a connection of our own (SQLite allows it beside the
    daemon's), so the figure is what the rows take and not how far the WAL happened to be from its next
    checkpoint: that alone moved a 1,000-file run's growth by up to 4 KB per file.
    """
    total = 0
    for path in sorted(site_dir.rglob("*.sqlite")):
        db = sqlite3.connect(path, timeout=30)
        try:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            db.close()
        total += sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())
    return total


async def _summit_pending(session: aiohttp.ClientSession, cluster: Cluster) -> int:
    async with session.get(f"http://127.0.0.1:{cluster.http_ports['summit']}/v1/status") as resp:
        return int((await resp.json())["pending"])


async def _wait_registered(cluster: Cluster, count: int, timeout_s: float) -> float:
    """Wait until the summit has ``count`` files pending; return when it got there (monotonic).

    The summit publishes no "registered" event, so this asks ``/v1/status`` a few times a second
    within a bound, as :func:`ops.bench.measure.wait_settled` does.
    """
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=cluster.basic_auth()) as session:
        while time.monotonic() < deadline:
            try:
                if await _summit_pending(session, cluster) >= count:
                    return time.monotonic()
            except TimeoutError:
                log.warning("bench_status_slow", site="summit", timeout_s=30)  # busy registering: ask again
            await asyncio.sleep(0.25)
    raise BenchError(f"the summit did not register {count} files within {timeout_s:.0f} s")


async def push_backlog(cluster: Cluster, listener: ArrivalListener, files: Sequence[Path]) -> dict[str, Any]:
    """Stop the archive, register ``files`` at the summit, start the archive again; drain rate and footprint."""
    staged = await asyncio.to_thread(link_files, files, cluster.workdir / "camera")
    total = await asyncio.to_thread(total_size, staged)
    names = [f.name for f in staged]
    journals_before = {site: await asyncio.to_thread(journal_bytes, cluster.workdir / site) for site, _ in SITES}
    await cluster.daemons["archive"].stop()
    started = time.monotonic()
    await asyncio.to_thread(close_and_rename, staged, cluster.inbox)
    registered_at = await _wait_registered(cluster, len(names), 120.0 + 0.1 * len(names))
    summit_journal_cut = await asyncio.to_thread(journal_bytes, cluster.workdir / "summit")
    restart_began = time.monotonic()
    await cluster.restart_daemon("archive")
    restored_wall = time.time()  # the archive is up again: the route is restored
    archive_start_s = time.monotonic() - restart_began
    archive_pid = cluster.daemons["archive"].pid
    archive_cpu_before = cpu_seconds(archive_pid) if archive_pid is not None else 0.0
    complete = await listener.wait_for(names, 120.0 + total / (2 * MB) + 0.2 * len(names))
    got = [listener.arrivals[n] for n in names if n in listener.arrivals]
    last = max((a.received_at for a in got), default=None)
    drain_s = (last - restored_wall) if last is not None else None
    journals_after = {site: await asyncio.to_thread(journal_bytes, cluster.workdir / site) for site, _ in SITES}
    growth = {site: journals_after[site] - journals_before[site] for site in journals_after}
    result: dict[str, Any] = {
        "files": len(names),
        "received": len(got),
        "complete": complete,
        "bytes": total,
        "register_s": round(registered_at - started, 3),
        "archive_start_s": round(archive_start_s, 3),
        "seconds": round(drain_s, 3) if drain_s else None,
        "files_per_s": round(len(got) / drain_s, 1) if drain_s else None,
        "mb_per_s": round(sum(a.size for a in got) / drain_s / MB, 1) if drain_s else None,
        "journal_bytes_per_file": {site: round(g / len(names), 1) for site, g in growth.items()},
        "summit_journal_bytes_per_file_while_cut": round(
            (summit_journal_cut - journals_before["summit"]) / len(names), 1
        ),
        "archive_restart_cpu_s": round(cpu_seconds(archive_pid) - archive_cpu_before, 2) if archive_pid else None,
        "archive_peak_rss_mib_after_restart": peak_rss_mib(archive_pid),
    }
    if not complete:
        log.warning("bench_backlog_missing", workdir=str(cluster.workdir), missing=len(names) - len(got))
    return result
