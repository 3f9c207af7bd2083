"""Process figures of the daemons: peak RSS and CPU seconds from /proc, idle CPU of a settled cluster, percentiles."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from ops.bench.config import MIB
from ops.cluster import SITES, Cluster

__all__ = ["cpu_seconds", "idle_cpu", "peak_rss_mib", "percentiles", "wait_settled"]


def peak_rss_mib(pid: int | None) -> float | None:
    """The kernel's peak resident set size (``VmHWM``) of a process, in MiB; None when it is gone."""
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+)\s+kB", status, re.MULTILINE)
    return round(int(match.group(1)) * 1024 / MIB, 1) if match else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/<pid>/stat``)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # Fields after the command start at field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of ``values`` in seconds (linear interpolation), None for an empty list."""
    if not values:
        return {"p50_s": None, "p95_s": None, "p99_s": None, "max_s": None}
    p50, p95, p99 = (float(v) for v in np.percentile(np.asarray(values, dtype=float), [50, 95, 99]))
    return {"p50_s": round(p50, 4), "p95_s": round(p95, 4), "p99_s": round(p99, 4), "max_s": round(max(values), 4)}


async def wait_settled(cluster: Cluster, timeout_s: float = 60.0) -> bool:
    """Wait until no site has anything pending (custody still flowing upstream counts as busy).

    The daemons publish no "queue empty" event, so this asks ``/v1/status`` a few times a second,
    within a bound; the benchmark harness is the only place that does this.
    """
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=cluster.basic_auth()) as session:
        while time.monotonic() < deadline:
            pending = 0
            for site, _ in SITES:
                url = f"http://127.0.0.1:{cluster.http_ports[site]}/v1/status"
                async with session.get(url) as resp:
                    pending += int((await resp.json())["pending"])
            if pending == 0:
                return True
            await asyncio.sleep(0.25)
    return False


async def idle_cpu(cluster: Cluster, window_s: float) -> dict[str, Any]:
    """CPU % of each daemon over two windows of ``window_s`` seconds once the cluster has settled.

    The first window (``tail``) still holds the end of the work: the last custody commits, journal
    checkpoints, a garbage collection. The second (``percent``) is the idle figure the target is about.
    """
    settled = await wait_settled(cluster)
    pids = {site: pid for site, _ in SITES if (pid := cluster.daemons[site].pid) is not None}

    async def window() -> tuple[float, dict[str, float]]:
        before = {site: cpu_seconds(pid) for site, pid in pids.items()}
        started = time.monotonic()
        await asyncio.sleep(window_s)  # the measurement window itself, not a wait for a condition
        elapsed = time.monotonic() - started
        return elapsed, {
            site: round((cpu_seconds(pid) - before[site]) / elapsed * 100, 3) for site, pid in pids.items()
        }

    _, tail = await window()
    elapsed, percent = await window()
    return {"window_s": round(elapsed, 2), "settled": settled, "tail": tail, "percent": percent}
