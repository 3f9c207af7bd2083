"""Failover rehearsal figures: cut (or blackhole) a link under traffic and time the recovery.

``skyrelay drill measure summit-base`` on a cluster started with ``skyrelay up --drill --camera …``:
it watches arrival notices, breaks the link, and reports the failover time (break → first file
archived by a route avoiding the link), the failback time (restore → first new file archived by a
route using the link again), and file latencies before, during and after, against the targets
(failover within 2x the ack timeout; no file later than 3x its normal latency).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt


@dataclass(slots=True)
class _Arrival:
    received: float
    name: str
    route: str
    closed_at: float
    latency_s: float


@dataclass(slots=True)
class _Watch:
    arrivals: list[_Arrival] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


def _routes_using(topology: dict[str, Any], a: str, b: str) -> set[str]:
    out = set()
    for name, sites in topology.get("routes", {}).items():
        pairs = set(itertools.pairwise(sites))
        if (a, b) in pairs or (b, a) in pairs:
            out.add(name)
    return out


async def _watch(broker: str, login: Mapping[str, str], watch: _Watch, ready: asyncio.Event) -> None:
    url = urlsplit(broker)
    async with aiomqtt.Client(
        url.hostname or "127.0.0.1",
        url.port or 1883,
        protocol=aiomqtt.ProtocolVersion.V5,
        username=login.get("username"),
        password=login.get("password"),
    ) as client:
        await client.subscribe("skyrelay/v1/arrivals/#", qos=1)
        ready.set()
        seen: set[str] = set()
        async for message in client.messages:
            if not isinstance(message.payload, bytes):
                continue
            notice = json.loads(message.payload)
            if notice.get("type") != "arrival" or notice["notice_id"] in seen:
                continue
            seen.add(notice["notice_id"])
            watch.arrivals.append(
                _Arrival(time.time(), notice["name"], notice["route"], notice["closed_at"], notice["latency_s"])
            )
            watch.changed.set()


async def _wait_for(watch: _Watch, predicate: Any, timeout_s: float) -> _Arrival | None:
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                found = next((a for a in watch.arrivals if predicate(a)), None)
                if found is not None:
                    return found
                watch.changed.clear()
                await watch.changed.wait()
    except TimeoutError:
        return None


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50_s": None, "max_s": None}
    return {"n": len(values), "p50_s": round(statistics.median(values), 3), "max_s": round(max(values), 3)}


def load_cluster(workdir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``cluster.json`` and the topology it names (blocking)."""
    cluster: dict[str, Any] = json.loads((workdir / "cluster.json").read_text())
    return cluster, tomllib.loads(Path(cluster["topology"]).read_text())


async def measure_outage(
    workdir: Path,
    link: str,
    set_mode: Any,
    *,
    mode: str = "cut",
    duration_s: float = 20.0,
    baseline_s: float = 10.0,
    failback_timeout_s: float = 120.0,
    phase: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Break ``link`` for ``duration_s`` under traffic and measure failover and failback.

    ``set_mode(link, mode)`` performs the drill's control call (a blocking function); ``phase(text)``,
    when given, is told what the measurement is waiting for (for a progress display).
    """
    tell = phase or (lambda text: None)
    cluster, topology = await asyncio.to_thread(load_cluster, workdir)
    tuning = topology.get("tuning", {})
    ack_timeout = float(tuning.get("ack_timeout_s", 5.0))
    a, b = link.split("-", 1)
    affected = _routes_using(topology, a, b)
    watch = _Watch()
    ready = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        watcher = tg.create_task(
            _watch(
                cluster["sites"]["archive"]["broker"],
                cluster.get("credentials", {}).get("subscriber", {}),
                watch,
                ready,
            ),
            name="drill.watch",
        )
        await ready.wait()
        tell(f"{baseline_s:g}s of normal traffic")
        await asyncio.sleep(baseline_s)  # collect normal traffic: a measurement window, not a wait for a condition
        baseline = [x.latency_s for x in watch.arrivals]
        in_use = {x.route for x in watch.arrivals}
        t_break = time.time()
        await asyncio.to_thread(set_mode, link, mode)
        tell(f"link {mode}: waiting for a file by another route")
        failover = await _wait_for(
            watch, lambda x: x.received > t_break and x.route not in affected, max(duration_s, 4 * ack_timeout)
        )
        remaining = t_break + duration_s - time.time()
        if remaining > 0:
            tell(f"failover {'seen' if failover else 'NOT seen'}; link stays broken {remaining:.0f}s more")
            await asyncio.sleep(remaining)  # keep the link broken for the drill's duration
        t_restore = time.time()
        await asyncio.to_thread(set_mode, link, "up")
        tell("link restored: waiting for a file by the preferred route")
        failback = await _wait_for(watch, lambda x: x.closed_at > t_restore and x.route in affected, failback_timeout_s)
        during = [x.latency_s for x in watch.arrivals if t_break - 1 <= x.closed_at <= t_restore]
        watcher.cancel()
    normal = statistics.median(baseline) if baseline else None
    worst = max(during) if during else None
    failover_s = round(failover.received - t_break, 3) if failover else None
    names = [x.name for x in watch.arrivals]
    return {
        "link": link,
        "mode": mode,
        "routes_using_link": sorted(affected),
        "routes_in_use_before": sorted(in_use),
        "failover_s": failover_s,
        "failover_target_s": 2 * ack_timeout,
        "failover_ok": failover_s is not None and failover_s <= 2 * ack_timeout,
        "failover_route": failover.route if failover else None,
        "failback_s": round(failback.received - t_restore, 3) if failback else None,
        "latency_before": _stats(baseline),
        "latency_during": _stats(during),
        "latency_ratio": round(worst / normal, 2) if worst is not None and normal else None,
        "latency_ok": worst is not None and normal is not None and worst <= 3 * normal,
        "files_seen": len(names),
        "duplicate_notices_by_name": len(names) - len(set(names)),
    }


def format_report(report: dict[str, Any]) -> str:
    """A readable summary of :func:`measure_outage`'s figures."""
    lines = [
        f"drill: {report['mode']} {report['link']} (routes using it: {', '.join(report['routes_using_link'])}; "
        f"in use before: {', '.join(report['routes_in_use_before']) or 'none'})",
        f"  failover  {report['failover_s']} s via {report['failover_route']}  "
        f"(target <= {report['failover_target_s']} s: {'PASS' if report['failover_ok'] else 'MISS'})",
        f"  failback  {report['failback_s']} s",
        f"  latency   before p50 {report['latency_before']['p50_s']} s; during outage max "
        f"{report['latency_during']['max_s']} s; ratio {report['latency_ratio']} "
        f"(target <= 3: {'PASS' if report['latency_ok'] else 'MISS'})",
        f"  files {report['files_seen']}, duplicate notices {report['duplicate_notices_by_name']}",
    ]
    return "\n".join(lines)
