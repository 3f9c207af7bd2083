"""The report: the issue's targets with PASS/MISS, and the human table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ops.bench.config import MB
from ops.cluster import SITES

__all__ = ["render_table", "targets"]


# Targets from the issue: reported with PASS/MISS, never asserted.
TARGET_DIRECT_VS_RSYNC: Final = 1.0
TARGET_PRIMARY_VS_RSYNC: Final = 0.75
TARGET_SMALL_VS_RSYNC: Final = 1.0
TARGET_SMALL_PRIMARY_VS_RSYNC: Final = 0.5
TARGET_BACKLOG_VS_RSYNC: Final = 0.5
TARGET_LONE_SMALL_P99_S: Final = 0.2
TARGET_CPU_VS_RSYNC: Final = 1.0
TARGET_JOURNAL_BYTES_PER_FILE: Final = 8192
"""What a file's rows need in a site's journal (files, transfers, inbound, catalog, notices, outbox, indexes)."""
TARGET_IDLE_P99_S: Final = 1.0
TARGET_PEAK_RSS_MIB: Final = 150.0
TARGET_IDLE_CPU_PERCENT: Final = 1.0


def targets(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets with the measured value and PASS/MISS (None when not measured)."""
    workloads: Mapping[str, Any] = report["workloads"]
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, passed: bool | None, shown: str) -> None:
        out.append({"target": name, "value": value, "shown": shown, "pass": passed})

    for key, goal in (("direct", TARGET_DIRECT_VS_RSYNC), ("primary", TARGET_PRIMARY_VS_RSYNC)):
        if key in workloads:
            entry = workloads[key]
            ratio = entry.get("vs_rsync")
            ok = None if ratio is None else bool(entry.get("complete")) and ratio >= goal
            add(f"{key} throughput >= {goal:g}x rsync --fsync", ratio, ok, f"{ratio:.2f}x" if ratio else "n/a")
    if "idle" in workloads:
        entry = workloads["idle"]
        p99 = entry.get("latency", {}).get("p99_s")
        size = report["config"]["size_bytes"] / MB
        ok = None if p99 is None else bool(entry.get("complete")) and p99 <= TARGET_IDLE_P99_S
        add(f"idle p99 latency ({size:.0f} MB files) <= {TARGET_IDLE_P99_S:.0f} s", p99, ok, _secs(p99))
    for key, goal, what in (
        ("small", TARGET_SMALL_VS_RSYNC, "small files, direct"),
        ("small-primary", TARGET_SMALL_PRIMARY_VS_RSYNC, "small files, primary"),
        ("backlog", TARGET_BACKLOG_VS_RSYNC, "backlog drain"),
    ):
        if key in workloads:
            entry = workloads[key]
            ratio = entry.get("vs_rsync")
            ok = None if ratio is None else bool(entry.get("complete")) and ratio >= goal
            add(f"{what} files/s >= {goal:g}x rsync --fsync", ratio, ok, f"{ratio:.2f}x" if ratio else "n/a")
    lone = workloads.get("small", {}).get("lone", {}).get("latency", {}).get("p99_s")
    if lone is not None:
        add(
            f"lone small file p99 latency <= {TARGET_LONE_SMALL_P99_S:.1f} s",
            lone,
            lone <= TARGET_LONE_SMALL_P99_S,
            _secs(lone),
        )
    for key in ("direct", "primary", "small"):
        entry = workloads.get(key, {})
        cpu_ratio = entry.get("cpu_vs_rsync")
        if "cpu_s_per_gb_per_hop" in entry:
            add(
                f"CPU-s/GB per hop ({key}) <= {TARGET_CPU_VS_RSYNC:.1f}x rsync's",
                cpu_ratio,
                None if cpu_ratio is None else cpu_ratio <= TARGET_CPU_VS_RSYNC,
                f"{cpu_ratio:.2f}x" if cpu_ratio else "n/a",
            )
    growth = workloads.get("backlog", {}).get("journal_bytes_per_file")
    if growth:
        worst_growth = max(growth.values())
        add(
            f"backlog journal growth per file per site <= {TARGET_JOURNAL_BYTES_PER_FILE} B",
            worst_growth,
            worst_growth <= TARGET_JOURNAL_BYTES_PER_FILE,
            f"{worst_growth:.0f} B",
        )
    for key in ("direct", "primary", "small", "backlog"):
        rss = workloads.get(key, {}).get("peak_rss_mib")
        if rss:
            worst = max((v for v in rss.values() if v is not None), default=None)
            ok = None if worst is None else worst <= TARGET_PEAK_RSS_MIB
            moved = workloads[key].get("bytes", 0) / 1e9
            add(
                f"peak RSS per daemon <= {TARGET_PEAK_RSS_MIB:.0f} MiB ({key}, {moved:.1f} GB)",
                worst,
                ok,
                f"{worst:.0f} MiB" if worst else "n/a",
            )
    cpu = workloads.get("cpu", {}).get("percent")
    if cpu:
        worst_cpu = max(cpu.values())
        add(
            f"idle CPU per daemon <= {TARGET_IDLE_CPU_PERCENT:.0f}%",
            worst_cpu,
            worst_cpu <= TARGET_IDLE_CPU_PERCENT,
            f"{worst_cpu:.2f}%",
        )
    return out


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _num(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def render_table(report: Mapping[str, Any]) -> str:
    """The human summary of a report."""
    cfg = report["config"]
    lines = [
        f"skyrelay bench: {cfg['files']} files x {cfg['size_bytes'] / MB:g} MB, "
        f"workdir {report['workdir']} ({report['workdir_fs']}), {report['host']['cpus']} CPUs"
        + (" [quick]" if cfg["quick"] else ""),
    ]
    host = report["host"]
    load = max(host.get("loadavg_start", [0.0])[0], host.get("loadavg_end", [0.0])[0])
    cpus = host.get("cpus") or 1
    start_load, end_load = host.get("loadavg_start", ["?"])[0], host.get("loadavg_end", ["?"])[0]
    lines.append(
        f"load average (1 min): {start_load} at start, {end_load} at end"
        + (f"  WARNING: the machine was busy (> {cpus} CPUs' worth); figures are noisy" if load > cpus else "")
    )
    lines.append("")
    baselines = report["baselines"]
    dd = baselines.get("dd")
    if dd:
        lines.append(
            f"disk     dd conv=fdatasync: {dd['mb_per_s']} MB/s ({dd['bytes'] / MB:.0f} MB in {dd['seconds']} s)"
            if "mb_per_s" in dd
            else f"disk     dd: {dd.get('error')}"
        )
    rs = baselines.get("rsync")
    if rs:
        if "mb_per_s" in rs:
            flag = "--fsync" if rs["fsync"] else "WITHOUT --fsync (unsupported by this rsync: not durable)"
            lines.append(
                f"rsync    loopback daemon, --whole-file {flag}: {rs['mb_per_s']} MB/s "
                f"({rs['files']} files, {rs['bytes'] / MB:.0f} MB in {rs['seconds']} s)"
            )
        else:
            lines.append(f"rsync    {rs.get('error')}")
    for key, what in (("rsync_small", "small files"), ("rsync_backlog", "backlog files")):
        extra = baselines.get(key)
        if extra:
            lines.append(
                f"rsync    {what}: {extra['files_per_s']} files/s ({extra['files']} files in {extra['seconds']} s)"
                if "files_per_s" in extra
                else f"rsync    {what}: {extra.get('error')}"
            )
    cpu_lines = [
        f"{key} {baselines[key]['cpu_s_per_gb']} CPU-s/GB"
        for key in ("rsync", "rsync_small")
        if baselines.get(key, {}).get("cpu_s_per_gb") is not None
    ]
    if cpu_lines:
        lines.append("rsync    CPU (client + daemon): " + ", ".join(cpu_lines))
    lines.append("")
    header = (
        f"{'workload':13} {'files':>6} {'MB/s':>7} {'files/s':>8} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
        f"{'x rsync':>7} {'x dd':>6}  {'CPU s sum/base/arch':>19}  peak RSS MiB sum/base/arch"
    )
    workloads = report["workloads"]
    rows = ("direct", "primary", "https", "idle", "small", "small-primary", "backlog")
    if any(name in workloads for name in rows):
        lines += [header, "-" * len(header)]
    for name in rows:
        entry = workloads.get(name)
        if entry is None:
            continue
        if "error" in entry:
            lines.append(f"{name:13} ERROR {entry['error']}")
            continue
        lat = entry.get("latency", {})
        rss = entry.get("peak_rss_mib", {})
        cpu_s = entry.get("daemon_cpu_s", {})
        files = f"{entry['received']}/{entry['files']}" if not entry.get("complete") else str(entry["files"])
        lines.append(
            f"{name:13} {files:>6} {_num(entry.get('mb_per_s')):>7} {_num(entry.get('files_per_s')):>8} "
            f"{_secs(lat.get('p50_s')):>7} {_secs(lat.get('p95_s')):>7} {_secs(lat.get('p99_s')):>7} "
            f"{_num(entry.get('vs_rsync'), '.2f'):>7} {_num(entry.get('vs_dd'), '.2f'):>6}  "
            f"{'/'.join(_num(cpu_s.get(site), '.1f') for site, _ in SITES):>19}  "
            + "/".join(_num(rss.get(site), ".0f") for site, _ in SITES)
        )
    per_hop = [
        f"{name} {workloads[name]['cpu_s_per_gb_per_hop']}"
        for name in ("direct", "primary", "https", "small")
        if workloads.get(name, {}).get("cpu_s_per_gb_per_hop") is not None
    ]
    if per_hop:
        lines.append("daemon CPU-s/GB per hop (sites on the route): " + ", ".join(per_hop))
    lone = workloads.get("small", {}).get("lone")
    if lone:
        lat = lone.get("latency", {})
        lines.append(
            f"lone small files ({lone['files']}, one at a time): "
            f"p50 {_secs(lat.get('p50_s'))} s, p99 {_secs(lat.get('p99_s'))} s"
        )
    batching = [
        f"{name} "
        + " ".join(
            f"{site} {v['messages_per_publish']}" for site, v in entry["mailbox"].items() if "messages_per_publish" in v
        )
        for name in rows
        if isinstance(entry := workloads.get(name), dict) and entry.get("mailbox")
    ]
    if batching:
        lines.append("mailbox messages per MQTT publish (batching): " + "; ".join(batching))
    backlog = workloads.get("backlog")
    if backlog and "journal_bytes_per_file" in backlog:
        growth = "  ".join(f"{site} {b:.0f}" for site, b in backlog["journal_bytes_per_file"].items())
        lines.append(
            f"backlog: registered in {backlog['register_s']} s with the archive down, "
            f"drained in {backlog['seconds']} s; "
            f"journal growth B/file: {growth}"
        )
    lines.append("")
    cpu = workloads.get("cpu")
    if cpu:
        if "percent" in cpu:
            shares = "  ".join(f"{site} {pct:.2f}%" for site, pct in cpu["percent"].items())
            settled = "" if cpu.get("settled") else " (cluster had not settled)"
            tail = "  ".join(f"{site} {pct:.2f}%" for site, pct in cpu.get("tail", {}).items())
            lines.append(f"CPU in the first {cpu['window_s']} s after {cpu['measured_after']} settled: {tail}")
            lines.append(f"idle CPU over the next {cpu['window_s']} s: {shares}{settled}")
        else:
            lines.append(f"idle CPU: {cpu.get('error')}")
    headers = workloads.get("headers")
    if headers:
        lines.append(f"header verification: {headers['verify_us_per_header']} us/header")
    if report["targets"]:
        lines += ["", f"{'target':62} {'value':>10}  result", "-" * 81]
        for t in report["targets"]:
            verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
            lines.append(f"{t['target']:62} {t['shown']:>10}  {verdict}")
    for error in report["errors"]:
        lines.append(f"ERROR {error}")
    return "\n".join(lines)
