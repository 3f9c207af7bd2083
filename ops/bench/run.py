"""One benchmark run: generate the files, run the baselines and the selected workloads, assemble the report."""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import structlog

from ops.bench.arrivals import ArrivalListener
from ops.bench.backlog import push_backlog
from ops.bench.baselines import dd_baseline, rsync_baseline
from ops.bench.config import MIB, BenchConfig
from ops.bench.errors import BenchError
from ops.bench.files import filesystem_type, generate_files, make_run_dir, sync_disk, total_size
from ops.bench.headers import measure_verify_us
from ops.bench.report import targets
from ops.bench.workloads import Body, on_fresh_cluster, push_burst, push_lone_then_burst, push_one_by_one
from ops.broker import BrokerError
from ops.cluster import Cluster, ClusterError
from ops.pki import PkiError

__all__ = ["run_bench"]

log = structlog.get_logger()

LONE_SMALL_FILES = 5
"""Small files sent one at a time before the small burst: the latency of a file with nothing to batch."""


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


async def run_bench(config: BenchConfig, *, on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the selected workloads and baselines; return the report (see the module docstring).

    ``on_step(name)`` is called as each workload or baseline starts (for a progress display).
    """
    run_dir = await asyncio.to_thread(make_run_dir, config.parent)
    fs_type = await asyncio.to_thread(filesystem_type, run_dir)
    if fs_type in {"tmpfs", "ramfs"}:
        log.warning("bench_workdir_in_memory", workdir=str(run_dir), fs=fs_type)
    report: dict[str, Any] = {
        "schema": "skyrelay.bench/1",
        "started_at": time.time(),
        "host": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": sys.platform,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        "workdir": str(run_dir),
        "workdir_fs": fs_type,
        "config": {
            "files": config.files,
            "size_bytes": config.size_bytes,
            "idle_files": config.idle_files,
            "small_files": config.small_files,
            "small_size_bytes": config.small_size_bytes,
            "backlog_files": config.backlog_files,
            "idle_window_s": config.idle_window_s,
            "workloads": list(config.workloads),
            "quick": config.quick,
        },
        "baselines": {},
        "workloads": {},
        "errors": [],
    }
    try:
        await _run_all(config, run_dir, report, on_step or (lambda name: None))
    finally:
        if not config.keep:
            await asyncio.to_thread(shutil.rmtree, run_dir, True)
    report["host"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = targets(report)
    report["finished_at"] = time.time()
    return report


async def _run_all(config: BenchConfig, run_dir: Path, report: dict[str, Any], on_step: Callable[[str], None]) -> None:
    selected = set(config.workloads)
    exposure = selected & {"direct", "primary", "https"}
    pregen_count = max(config.files if exposure else 0, config.idle_files if "idle" in selected else 0)
    files: list[Path] = []
    if pregen_count:
        log.info("bench_generating", files=pregen_count, size_bytes=config.size_bytes)
        files = await asyncio.to_thread(generate_files, run_dir / "files", pregen_count, config.size_bytes)
    small: list[Path] = []
    if selected & {"small", "small-primary"}:
        log.info("bench_generating", files=config.small_files, size_bytes=config.small_size_bytes)
        small = await asyncio.to_thread(
            generate_files, run_dir / "small", config.small_files, config.small_size_bytes, first_seqnum=1001
        )
    backlog: list[Path] = []
    if "backlog" in selected:
        log.info("bench_generating", files=config.backlog_files, size_bytes=config.small_size_bytes)
        backlog = await asyncio.to_thread(
            generate_files, run_dir / "backlog", config.backlog_files, config.small_size_bytes, first_seqnum=3001
        )
    await asyncio.to_thread(sync_disk)

    errors: list[str] = report["errors"]
    baselines: dict[str, Any] = report["baselines"]
    workloads: dict[str, Any] = report["workloads"]
    exposure_files = files[: config.files]

    async def attempt(key: str, section: dict[str, Any], step: Awaitable[dict[str, Any]]) -> None:
        log.info("bench_step", step=key)
        on_step(key)
        try:
            section[key] = await step
        except (
            BenchError,
            ClusterError,
            BrokerError,
            PkiError,
            OSError,
            TimeoutError,
            aiomqtt.MqttError,
            aiohttp.ClientError,
        ) as exc:
            message = f"{key}: {type(exc).__name__}: {exc}"
            log.error("bench_step_failed", step=key, error=message)
            errors.append(message)
            section[key] = {"error": message}

    if exposure or "idle" in selected:
        total_mb = math.ceil(await asyncio.to_thread(total_size, exposure_files or files) / MIB)
        await attempt("dd", baselines, dd_baseline(run_dir, total_mb))
    rsync_runs = [
        (key, chosen)
        for key, chosen in (
            ("rsync", exposure_files if exposure else []),
            ("rsync_small", small),
            ("rsync_backlog", backlog),
        )
        if chosen
    ]
    for key, chosen in rsync_runs:
        if shutil.which("rsync") is None:
            errors.append(f"{key}: rsync is not installed; no rsync baseline")
            baselines[key] = {"error": "rsync not installed"}
        else:
            await attempt(key, baselines, rsync_baseline(run_dir, chosen, label=key.replace("_", "-")))

    async def burst(cluster: Cluster, listener: ArrivalListener) -> dict[str, Any]:
        return await push_burst(cluster, listener, exposure_files)

    async def one_by_one(cluster: Cluster, listener: ArrivalListener) -> dict[str, Any]:
        return await push_one_by_one(cluster, listener, files[: config.idle_files])

    async def stream(cluster: Cluster, listener: ArrivalListener) -> dict[str, Any]:
        return await push_lone_then_burst(cluster, listener, small, lone=LONE_SMALL_FILES)

    async def drain(cluster: Cluster, listener: ArrivalListener) -> dict[str, Any]:
        return await push_backlog(cluster, listener, backlog)

    async def nothing(cluster: Cluster, listener: ArrivalListener) -> dict[str, Any]:
        return {}

    cpu_window = config.idle_window_s if "cpu" in selected else None
    plan: list[tuple[str, dict[str, list[str]], Body, float | None]] = []
    if "direct" in selected:
        plan.append(("direct", {"direct": ["summit", "archive"]}, burst, None))
    if "primary" in selected:
        plan.append(("primary", {"primary": ["summit", "base", "archive"]}, burst, None))
    if "https" in selected:
        plan.append(("https", {"direct": ["summit", "archive"]}, burst, None))
    if "idle" in selected:
        plan.append(("idle", {"direct": ["summit", "archive"]}, one_by_one, None))
    if "small" in selected:
        plan.append(("small", {"direct": ["summit", "archive"]}, stream, cpu_window))
    if "small-primary" in selected:
        plan.append(("small-primary", {"primary": ["summit", "base", "archive"]}, stream, None))
    if "backlog" in selected:
        plan.append(("backlog", {"direct": ["summit", "archive"]}, drain, None))
    if "small" not in selected and cpu_window is not None:
        plan.append(("cpu", {"direct": ["summit", "archive"]}, nothing, cpu_window))
    routes_of = {name: routes for name, routes, _, _ in plan}
    for name, routes, body, window in plan:
        workdir = run_dir / f"cluster-{name}"
        step = on_fresh_cluster(workdir, routes, body, cpu_window_s=window, keep=config.keep, https=name == "https")
        await attempt(name, workloads, step)
        measured = workloads[name]
        if "idle_cpu" in measured:
            after = name if name != "cpu" else "start-up of a fresh cluster"
            workloads["cpu"] = {**measured.pop("idle_cpu"), "measured_after": after}
        elif window is not None:
            workloads["cpu"] = {"error": f"not measured: the {name} cluster failed"}

    for name in ("direct", "primary", "https"):
        entry = workloads.get(name)
        if entry and "mb_per_s" in entry:
            entry["vs_rsync"] = _ratio(entry["mb_per_s"], baselines.get("rsync", {}).get("mb_per_s"))
            entry["vs_dd"] = _ratio(entry["mb_per_s"], baselines.get("dd", {}).get("mb_per_s"))
    for name, baseline in (("small", "rsync_small"), ("small-primary", "rsync_small"), ("backlog", "rsync_backlog")):
        entry = workloads.get(name)
        if entry and "files_per_s" in entry:
            entry["vs_rsync"] = _ratio(entry["files_per_s"], baselines.get(baseline, {}).get("files_per_s"))
    for name, baseline in (("direct", "rsync"), ("primary", "rsync"), ("https", "rsync"), ("small", "rsync_small")):
        entry = workloads.get(name)
        if entry and entry.get("bytes") and "daemon_cpu_s" in entry:
            sites = next(iter(routes_of[name].values()))
            hops = len(sites) - 1
            cpu = sum(entry["daemon_cpu_s"].get(site, 0.0) for site in sites)
            entry["cpu_s_per_gb_per_hop"] = round(cpu / (entry["bytes"] / 1e9) / hops, 3)
            entry["cpu_vs_rsync"] = _ratio(
                entry["cpu_s_per_gb_per_hop"], baselines.get(baseline, {}).get("cpu_s_per_gb")
            )

    if "headers" in selected:
        us = await asyncio.to_thread(measure_verify_us)
        workloads["headers"] = {"verify_us_per_header": round(us, 2)}
