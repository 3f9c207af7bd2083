"""The workloads: a fresh cluster per workload, files pushed in a burst or one by one, notices awaited."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from prometheus_client.parser import text_string_to_metric_families

from ops.bench.arrivals import ArrivalListener, listen_arrivals
from ops.bench.config import MB
from ops.bench.files import close_and_rename, link_files, remove_tree, total_size
from ops.bench.measure import cpu_seconds, idle_cpu, peak_rss_mib, percentiles
from ops.cluster import SITES, Cluster
from ops.pki import make_pki

__all__ = ["Body", "on_fresh_cluster", "push_burst", "push_lone_then_burst", "push_one_by_one"]

log = structlog.get_logger()


Body = Callable[[Cluster, ArrivalListener], Awaitable[dict[str, Any]]]


async def on_fresh_cluster(
    workdir: Path,
    routes: Mapping[str, Sequence[str]],
    body: Body,
    *,
    cpu_window_s: float | None = None,
    keep: bool,
    https: bool = False,
) -> dict[str, Any]:
    """Start a fresh cluster in ``workdir``, subscribe to arrivals, run ``body``; add peak RSS (and idle CPU).

    ``https``: the data servers speak HTTPS with a throwaway CA's certificate (made with openssl).
    """
    try:
        http_tls = await asyncio.to_thread(make_pki, workdir / "pki", "skyrelay bench") if https else None
        async with Cluster(workdir, routes=routes, http_tls=http_tls) as cluster:
            async with listen_arrivals(cluster.brokers["archive"].port, cluster.login("subscriber")) as listener:
                pids = {site: pid for site, _ in SITES if (pid := cluster.daemons[site].pid) is not None}
                cpu_before = {site: cpu_seconds(pid) for site, pid in pids.items()}
                result = await body(cluster, listener)
                result["daemon_cpu_s"] = _cpu_since(cluster, pids, cpu_before)
                result["duplicate_notices"] = listener.duplicates
                result["mailbox"] = await mailbox_traffic(cluster)
            if cpu_window_s is not None:
                result["idle_cpu"] = await idle_cpu(cluster, cpu_window_s)
            result["peak_rss_mib"] = {site: peak_rss_mib(cluster.daemons[site].pid) for site, _ in SITES}
    finally:
        if keep:
            log.info("bench_cluster_kept", workdir=str(workdir), logs=str(workdir / "logs"))
        else:
            await remove_tree(workdir)
    return result


async def mailbox_traffic(cluster: Cluster) -> dict[str, dict[str, float]]:
    """Per site: MQTT publishes into peers' mailboxes, the messages they carried, and messages per publish
    (above 1 when the mailbox batched them), read from each daemon's metrics."""
    out: dict[str, dict[str, float]] = {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, headers=cluster.basic_auth()) as session:
        for site, _ in SITES:
            if cluster.daemons[site].pid is None:
                continue
            try:
                async with session.get(f"{cluster.http_url(site)}/metrics", ssl=False) as resp:
                    text = await resp.text()
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("bench_metrics_unread", site=site, error=str(exc))
                continue
            sums = {"publishes": 0.0, "messages": 0.0}
            wanted = {"skyrelay_mailbox_publishes_total": "publishes", "skyrelay_mailbox_messages_total": "messages"}
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in wanted:
                        sums[wanted[sample.name]] += sample.value
            if sums["publishes"]:
                sums["messages_per_publish"] = round(sums["messages"] / sums["publishes"], 2)
            out[site] = sums
    return out


def _cpu_since(cluster: Cluster, pids: Mapping[str, int], before: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds each daemon used since ``before``; a daemon restarted meanwhile counts from its restart."""
    used: dict[str, float] = {}
    for site, pid in pids.items():
        now_pid = cluster.daemons[site].pid
        if now_pid is None:
            continue
        used[site] = round(cpu_seconds(now_pid) - (before[site] if now_pid == pid else 0.0), 2)
    return used


def _deadline_s(total_bytes: int, files: int) -> float:
    """A generous wait for a batch: 60 s plus 5 MB/s plus 0.2 s per file."""
    return 60.0 + total_bytes / (5 * MB) + 0.2 * files


async def push_burst(cluster: Cluster, listener: ArrivalListener, files: Sequence[Path]) -> dict[str, Any]:
    """Rename every file into the inbox at once, wait for all notices; throughput and latency."""
    staged = await asyncio.to_thread(link_files, files, cluster.workdir / "camera")
    total = await asyncio.to_thread(total_size, staged)
    names = [f.name for f in staged]
    first_rename = await asyncio.to_thread(close_and_rename, staged, cluster.inbox)
    complete = await listener.wait_for(names, _deadline_s(total, len(names)))
    got = [listener.arrivals[n] for n in names if n in listener.arrivals]
    received_bytes = sum(a.size for a in got)
    last = max((a.received_at for a in got), default=None)
    span = (last - first_rename) if last is not None else None
    result: dict[str, Any] = {
        "files": len(names),
        "received": len(got),
        "complete": complete,
        "bytes": total,
        "seconds": round(span, 3) if span else None,
        "mb_per_s": round(received_bytes / span / MB, 1) if span else None,
        "files_per_s": round(len(got) / span, 1) if span else None,
        "latency": percentiles([a.latency_s for a in got]),
    }
    if not complete:
        log.warning("bench_notices_missing", workdir=str(cluster.workdir), missing=len(names) - len(got))
    return result


async def push_one_by_one(cluster: Cluster, listener: ArrivalListener, files: Sequence[Path]) -> dict[str, Any]:
    """Rename one file, wait for its notice, then the next: latency of an idle system."""
    staged = await asyncio.to_thread(link_files, files, cluster.workdir / "camera")
    largest = max([await asyncio.to_thread(total_size, [f]) for f in staged], default=0)
    latencies: list[float] = []
    missing = 0
    for path in staged:
        await asyncio.to_thread(close_and_rename, [path], cluster.inbox)
        if await listener.wait_for([path.name], _deadline_s(largest, 1)):
            latencies.append(listener.arrivals[path.name].latency_s)
        else:
            missing += 1
            log.warning("bench_notice_missing", file=path.name)
    return {
        "files": len(staged),
        "received": len(latencies),
        "complete": missing == 0,
        "size_bytes": largest,
        "latency": percentiles(latencies),
    }


async def push_lone_then_burst(
    cluster: Cluster, listener: ArrivalListener, files: Sequence[Path], *, lone: int
) -> dict[str, Any]:
    """``lone`` files one by one on an idle cluster (latency with nothing to batch), then the rest in a burst."""
    lone_files, burst_files = files[:lone], files[lone:]
    alone = await push_one_by_one(cluster, listener, lone_files) if lone_files else None
    result = await push_burst(cluster, listener, burst_files)
    if alone is not None:
        result["lone"] = alone
    return result
