"""``skyrelay bench``: push real FITS files through a fresh cluster and compare with rsync and the disk.

Every workload runs on a FRESH one-machine cluster (:class:`ops.cluster.Cluster`) in its own directory
under one run directory, and the same files are used for skyrelay and for the baselines:

- **direct** / **primary**: one LSSTCam-sized exposure (197 files x 20 MB by default) renamed into the
  summit inbox all at once, one hop (summit -> archive) or two (summit -> base -> archive);
  throughput = bytes / (last arrival notice - first rename).
- **https**: the direct exposure again with every data server speaking HTTPS (a throwaway CA made with
  openssl): what TLS on the pulls costs.
- **idle**: files renamed one at a time, each after the previous one's notice: close -> notice latency
  of an otherwise idle system.
- **small**: a stream of small files (500 x ~100 KB by default): files/s, MB/s and latency.
- **cpu**: CPU used by each daemon over an idle window once the small stream has settled.
- **headers**: :func:`measure_verify_us`, the mean time of :func:`processors.headers.verify_header`.

Baselines, measured in the same run on the same disk: ``rsync -a --whole-file --fsync`` over loopback to
an rsync daemon (the same files as direct/primary), and ``dd conv=fdatasync`` (the disk's durable-write
limit). Latency is measured as a subscriber sees it: from the file's mtime at the summit (set to "now"
just before its rename, as a camera closing the file would) to the moment the arrival notice reaches an
MQTT client subscribed to the archive broker.

Files are pre-generated before any timer starts; a workload's files are hard links to them, so every
workload moves identical bytes and nothing is copied inside a timed section.

The targets (from the design issue) are reported beside the figures with PASS/MISS; they are not
assertions and do not change the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import aiomqtt
import numpy as np
import structlog

from ops.broker import BrokerError, free_port
from ops.cluster import SITES, Cluster, ClusterError
from ops.pki import PkiError, make_pki

if TYPE_CHECKING:
    from astropy.io import fits

__all__ = ["BenchError", "add_bench_arguments", "bench_main", "measure_verify_us", "run_bench"]

log = structlog.get_logger()

WORKLOADS: Final = ("direct", "primary", "https", "idle", "small", "cpu", "headers")
ARRIVALS_TOPIC: Final = "skyrelay/v1/arrivals/#"
INSTRUMENT: Final = "LSSTCam"
MB: Final = 1_000_000
MIB: Final = 1 << 20
DD_CAP_MB: Final = 2048

# Targets from the issue: reported with PASS/MISS, never asserted.
TARGET_DIRECT_VS_RSYNC: Final = 1.0
TARGET_PRIMARY_VS_RSYNC: Final = 0.5
TARGET_IDLE_P99_S: Final = 1.0
TARGET_PEAK_RSS_MIB: Final = 150.0
TARGET_IDLE_CPU_PERCENT: Final = 1.0


class BenchError(RuntimeError):
    """A workload or baseline could not be run."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BenchConfig:
    """What one ``skyrelay bench`` run does."""

    parent: Path
    files: int
    size_bytes: int
    idle_files: int
    small_files: int
    small_size_bytes: int
    idle_window_s: float
    workloads: tuple[str, ...]
    keep: bool
    quick: bool


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """One arrival notice as the benchmark's subscriber received it."""

    name: str
    notice_id: str
    size: int
    closed_at: float
    received_at: float

    @property
    def latency_s(self) -> float:
        """Summit close (the file's mtime) to receipt of the notice."""
        return self.received_at - self.closed_at


class ArrivalListener:
    """Collects arrival notices by file name; lets a workload wait until a set of names has arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, Arrival] = {}
        self.seen_ids: set[str] = set()
        self.duplicates = 0
        self.ignored = 0
        self._changed = asyncio.Condition()

    async def consume(self, client: aiomqtt.Client) -> None:
        """Record every arrival notice until cancelled (exposure notices and repeats are skipped)."""
        async for message in client.messages:
            received_at = time.time()
            await self._record(message.topic.value, message.payload, received_at)

    async def _record(self, topic: str, payload: Any, received_at: float) -> None:
        if topic.endswith("/exposure") or not isinstance(payload, bytes | bytearray):
            self.ignored += 1
            return
        try:
            body = json.loads(payload)
            if body.get("type") == "exposure":
                self.ignored += 1
                return
            arrival = Arrival(
                name=str(body["name"]),
                notice_id=str(body["notice_id"]),
                size=int(body["size"]),
                closed_at=float(body["closed_at"]),
                received_at=received_at,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("bench_bad_notice", topic=topic, error=repr(exc))
            self.ignored += 1
            return
        if arrival.notice_id in self.seen_ids or arrival.name in self.arrivals:
            self.duplicates += 1
            return
        self.seen_ids.add(arrival.notice_id)
        async with self._changed:
            self.arrivals[arrival.name] = arrival
            self._changed.notify_all()

    async def wait_for(self, names: Sequence[str], timeout_s: float) -> bool:
        """Wait until every name has a notice; False when ``timeout_s`` passes first."""
        wanted = set(names)
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: wanted <= self.arrivals.keys())
        except TimeoutError:
            return False
        return True


@contextlib.asynccontextmanager
async def listen_arrivals(port: int) -> AsyncIterator[ArrivalListener]:
    """Subscribe to the archive broker's arrival notices (qos 1) for the duration of the block."""
    listener = ArrivalListener()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"skyrelay-bench-{os.getpid()}") as client:
        await client.subscribe(ARRIVALS_TOPIC, qos=1)
        async with asyncio.TaskGroup() as tg:
            consumer = tg.create_task(listener.consume(client), name="bench.arrivals")
            try:
                yield listener
            finally:
                consumer.cancel()


# ---------------------------------------------------------------------------------------------------------
# Files


def generate_files(directory: Path, count: int, size_bytes: int, *, first_seqnum: int = 1) -> list[Path]:
    """Write ``count`` LSSTCam detector files of about ``size_bytes`` into ``directory`` (blocking).

    Files come from consecutive exposures of up to every LSSTCam detector (205), as a camera writes them.
    """
    from ops.camera import rubin_dayobs, write_exposure
    from processors.detectors import expected_detectors

    detectors = sorted(expected_detectors(INSTRUMENT))
    staging = directory.parent / f".{directory.name}.staging"
    dayobs = rubin_dayobs()
    written: list[Path] = []
    seqnum = first_seqnum
    while len(written) < count:
        chosen = detectors[: min(len(detectors), count - len(written))]
        written += write_exposure(
            directory,
            INSTRUMENT,
            dayobs=dayobs,
            seqnum=seqnum,
            size_bytes=size_bytes,
            detectors=chosen,
            staging=staging,
        )
        seqnum += 1
    shutil.rmtree(staging, ignore_errors=True)
    return written


def link_files(files: Sequence[Path], directory: Path) -> list[Path]:
    """Hard-link ``files`` into ``directory`` (same filesystem; blocking) and return the links."""
    directory.mkdir(parents=True, exist_ok=True)
    links = []
    for source in files:
        target = directory / source.name
        os.link(source, target)
        links.append(target)
    return links


def close_and_rename(staged: Sequence[Path], inbox: Path) -> float:
    """Do what a camera does for each file: set its mtime to now (the close), rename it into the inbox.

    Returns:
        Wall-clock time just before the first rename.
    """
    started = time.time()
    for path in staged:
        now_ns = time.time_ns()
        os.utime(path, ns=(now_ns, now_ns))
        os.rename(path, inbox / path.name)
    return started


def total_size(paths: Sequence[Path]) -> int:
    """Sum of the files' sizes (blocking)."""
    return sum(path.stat().st_size for path in paths)


def _make_run_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="skyrelay-bench-", dir=parent)).resolve()


def _sync_disk() -> None:
    """Flush dirty pages so one measurement's writeback does not land in the next one's timing."""
    os.sync()


async def _remove_tree(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, True)
    await asyncio.to_thread(_sync_disk)


# ---------------------------------------------------------------------------------------------------------
# Process figures


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


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path`` (longest mount-point match in /proc/mounts)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1].replace("\\040", " ")
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, parts[2]
    return kind


# ---------------------------------------------------------------------------------------------------------
# Baselines


async def dd_baseline(directory: Path, megabytes: int) -> dict[str, Any]:
    """Time ``dd if=/dev/zero bs=1M conv=fdatasync``: the disk's durable sequential write rate."""
    target = directory / "dd.bin"
    count = max(1, min(megabytes, DD_CAP_MB))
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        "dd",
        "if=/dev/zero",
        f"of={target}",
        "bs=1M",
        f"count={count}",
        "conv=fdatasync",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await proc.communicate()
    elapsed = time.perf_counter() - started
    await asyncio.to_thread(target.unlink, missing_ok=True)
    text = stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"dd failed ({proc.returncode}): {text.strip()[-300:]}")
    match = re.search(r"(\d+) bytes.*copied, ([0-9.]+) s", text)
    written, seconds = (int(match.group(1)), float(match.group(2))) if match else (count * MIB, elapsed)
    return {
        "command": f"dd if=/dev/zero of=<workdir>/dd.bin bs=1M count={count} conv=fdatasync",
        "bytes": written,
        "seconds": round(seconds, 3),
        "mb_per_s": round(written / seconds / MB, 1),
    }


def _rsync_supports_fsync() -> bool:
    import subprocess

    result = subprocess.run(["rsync", "--help"], capture_output=True, text=True, check=False)
    return "--fsync" in result.stdout


@contextlib.asynccontextmanager
async def rsync_daemon(directory: Path, dest: Path) -> AsyncIterator[int]:
    """Run ``rsync --daemon`` on a free loopback port with module ``bench`` writing into ``dest``.

    Yields the port once the daemon answers with its ``@RSYNCD:`` greeting.
    """
    conf = await asyncio.to_thread(_write_rsyncd_conf, directory, dest)
    port = free_port()
    with (directory / "rsyncd.out").open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            "rsync",
            "--daemon",
            "--no-detach",
            f"--config={conf}",
            f"--port={port}",
            "--address=127.0.0.1",
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        await _wait_rsyncd(proc, port, directory)
        yield port
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _write_rsyncd_conf(directory: Path, dest: Path) -> Path:
    """An rsyncd.conf with one writable module ``bench`` at ``dest``, run as the current user, no chroot."""
    directory.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    conf = directory / "rsyncd.conf"
    conf.write_text(
        f"pid file = {directory / 'rsyncd.pid'}\n"
        f"log file = {directory / 'rsyncd.log'}\n"
        "use chroot = no\n"
        f"uid = {os.getuid()}\n"
        f"gid = {os.getgid()}\n"
        "[bench]\n"
        f"path = {dest}\n"
        "read only = no\n"
        "use chroot = no\n"
    )
    return conf


async def _wait_rsyncd(proc: asyncio.subprocess.Process, port: int, directory: Path) -> None:
    """Bounded connect-and-read-greeting retry: rsync has no readiness notification to wait on."""
    deadline = time.monotonic() + 10.0
    while True:
        if proc.returncode is not None:
            raise BenchError(f"rsync daemon exited with {proc.returncode}; see {directory / 'rsyncd.log'}")
        try:
            async with asyncio.timeout(2.0):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                try:
                    greeting = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
            if greeting.startswith(b"@RSYNCD:"):
                return
        except (OSError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(f"rsync daemon not answering on port {port}; see {directory / 'rsyncd.log'}")
        await asyncio.sleep(0.05)


async def rsync_baseline(run_dir: Path, files: Sequence[Path]) -> dict[str, Any]:
    """Time ``rsync -a --whole-file --fsync`` of ``files`` over loopback into a fresh directory."""
    fsync = await asyncio.to_thread(_rsync_supports_fsync)
    source = run_dir / "rsync-src"
    dest = run_dir / "rsync-dest"
    await asyncio.to_thread(link_files, files, source)
    total = await asyncio.to_thread(total_size, files)
    options = ["-a", "--whole-file", *(["--fsync"] if fsync else [])]
    try:
        async with rsync_daemon(run_dir / "rsyncd", dest) as port:
            url = f"rsync://127.0.0.1:{port}/bench/"
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                "rsync", *options, f"{source}/", url, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, stderr = await proc.communicate()
            elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise BenchError(f"rsync failed ({proc.returncode}): {stderr.decode(errors='replace').strip()[-300:]}")
    finally:
        await _remove_tree(source)
        await _remove_tree(dest)
    result: dict[str, Any] = {
        "command": f"rsync {' '.join(options)} <src>/ rsync://127.0.0.1:<port>/bench/",
        "fsync": fsync,
        "files": len(files),
        "bytes": total,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(total / elapsed / MB, 1),
        "files_per_s": round(len(files) / elapsed, 1),
    }
    if not fsync:
        result["note"] = "this rsync has no --fsync: baseline is NOT durable (page cache only); ratios flatter it"
    return result


# ---------------------------------------------------------------------------------------------------------
# Workloads

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
            async with listen_arrivals(cluster.brokers["archive"].port) as listener:
                pids = {site: pid for site, _ in SITES if (pid := cluster.daemons[site].pid) is not None}
                cpu_before = {site: cpu_seconds(pid) for site, pid in pids.items()}
                result = await body(cluster, listener)
                result["daemon_cpu_s"] = {
                    site: round(cpu_seconds(pid) - cpu_before[site], 2) for site, pid in pids.items()
                }
                result["duplicate_notices"] = listener.duplicates
            if cpu_window_s is not None:
                result["idle_cpu"] = await idle_cpu(cluster, cpu_window_s)
            result["peak_rss_mib"] = {site: peak_rss_mib(cluster.daemons[site].pid) for site, _ in SITES}
    finally:
        if keep:
            log.info("bench_cluster_kept", workdir=str(workdir), logs=str(workdir / "logs"))
        else:
            await _remove_tree(workdir)
    return result


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


async def wait_settled(cluster: Cluster, timeout_s: float = 60.0) -> bool:
    """Wait until no site has anything pending (custody still flowing upstream counts as busy).

    The daemons publish no "queue empty" event, so this asks ``/v1/status`` a few times a second,
    within a bound; the benchmark harness is the only place that does this.
    """
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
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


# ---------------------------------------------------------------------------------------------------------
# The run


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return round(numerator / denominator, 3) if numerator and denominator else None


async def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the selected workloads and baselines; return the report (see the module docstring)."""
    run_dir = await asyncio.to_thread(_make_run_dir, config.parent)
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
            "idle_window_s": config.idle_window_s,
            "workloads": list(config.workloads),
            "quick": config.quick,
        },
        "baselines": {},
        "workloads": {},
        "errors": [],
    }
    try:
        await _run_all(config, run_dir, report)
    finally:
        if not config.keep:
            await asyncio.to_thread(shutil.rmtree, run_dir, True)
    report["host"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = targets(report)
    report["finished_at"] = time.time()
    return report


async def _run_all(config: BenchConfig, run_dir: Path, report: dict[str, Any]) -> None:
    selected = set(config.workloads)
    exposure = selected & {"direct", "primary", "https"}
    pregen_count = max(config.files if exposure else 0, config.idle_files if "idle" in selected else 0)
    files: list[Path] = []
    if pregen_count:
        log.info("bench_generating", files=pregen_count, size_bytes=config.size_bytes)
        files = await asyncio.to_thread(generate_files, run_dir / "files", pregen_count, config.size_bytes)
    small: list[Path] = []
    if "small" in selected:
        log.info("bench_generating", files=config.small_files, size_bytes=config.small_size_bytes)
        small = await asyncio.to_thread(
            generate_files, run_dir / "small", config.small_files, config.small_size_bytes, first_seqnum=1001
        )
    await asyncio.to_thread(_sync_disk)

    errors: list[str] = report["errors"]
    baselines: dict[str, Any] = report["baselines"]
    workloads: dict[str, Any] = report["workloads"]
    exposure_files = files[: config.files]

    async def attempt(key: str, section: dict[str, Any], step: Awaitable[dict[str, Any]]) -> None:
        log.info("bench_step", step=key)
        try:
            section[key] = await step
        except (
            BenchError,
            ClusterError,
            BrokerError,
            PkiError,
            OSError,
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
    if exposure:
        if shutil.which("rsync") is None:
            errors.append("rsync: not installed; no rsync baseline")
            baselines["rsync"] = {"error": "rsync not installed"}
        else:
            await attempt("rsync", baselines, rsync_baseline(run_dir, exposure_files))

    async def burst(cluster: Cluster, listener: ArrivalListener) -> dict[str, Any]:
        return await push_burst(cluster, listener, exposure_files)

    async def one_by_one(cluster: Cluster, listener: ArrivalListener) -> dict[str, Any]:
        return await push_one_by_one(cluster, listener, files[: config.idle_files])

    async def stream(cluster: Cluster, listener: ArrivalListener) -> dict[str, Any]:
        return await push_burst(cluster, listener, small)

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
    elif cpu_window is not None:
        plan.append(("cpu", {"direct": ["summit", "archive"]}, nothing, cpu_window))
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

    if "headers" in selected:
        us = await asyncio.to_thread(measure_verify_us)
        workloads["headers"] = {"verify_us_per_header": round(us, 2)}


_BENCH_CARDS: Final[tuple[tuple[str, object], ...]] = (
    ("SIMPLE", True),
    ("EXTEND", True),
    ("DATE", "2024-11-09T06:35:11.753"),
    ("MJD", 60623.274441585876),
    ("IMGTYPE", "OBJECT"),
    ("DATE-OBS", "2024-11-09T06:34:41.323"),
    ("MJD-OBS", 60623.27408938669),
    ("OBSID", "CC_O_20241108_000266"),
    ("DATE-BEG", "2024-11-09T06:34:41.323"),
    ("MJD-BEG", 60623.27408938669),
    ("DATE-END", "2024-11-09T06:35:11.754"),
    ("MJD-END", 60623.27444159705),
    ("TIMESYS", "TAI"),
    ("GROUPID", "2024-11-09T06:33:55.311"),
    ("INSTRUME", "ComCam"),
    ("TELESCOP", "Simonyi Survey Telescope"),
    ("RA", 53.12550000000002),
    ("DEC", -28.1),
    ("CAMCODE", "CC"),
    ("CONTRLLR", "O"),
    ("DAYOBS", "20241108"),
    ("SEQNUM", 266),
    ("CURINDEX", 1),
    ("MAXINDEX", 1),
    ("CCDSLOT", "S00"),
    ("RAFTBAY", "R22"),
    ("FILTER", "g_01"),
    ("EXPTIME", 30.0),
    ("DARKTIME", 30.4306),
)


def measure_verify_us(n: int = 2000, header: fits.Header | None = None) -> float:
    """Measure the mean time :func:`processors.headers.verify_header` takes on one header.

    Args:
        n: Number of verifications to time.
        header: Header to verify; by default a clean ComCam header parsed from its FITS bytes,
            padded to a real header's length.

    Returns:
        Mean microseconds per header.
    """
    # Imported here: astropy takes a second to import and every ``skyrelay`` command imports this module.
    from astropy.io import fits

    from processors.headers import verify_header

    if header is None:
        sample = fits.Header(list(_BENCH_CARDS))
        for index in range(100):
            sample[f"PAD{index:05d}"] = float(index)
        header = fits.Header.fromstring(sample.tostring())
    runs = max(1, n)
    verify_header(header)
    start = time.perf_counter()
    for _ in range(runs):
        verify_header(header)
    return (time.perf_counter() - start) / runs * 1e6


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
            add(f"{key} throughput >= {goal:.1f}x rsync --fsync", ratio, ok, f"{ratio:.2f}x" if ratio else "n/a")
    if "idle" in workloads:
        entry = workloads["idle"]
        p99 = entry.get("latency", {}).get("p99_s")
        size = report["config"]["size_bytes"] / MB
        ok = None if p99 is None else bool(entry.get("complete")) and p99 <= TARGET_IDLE_P99_S
        add(f"idle p99 latency ({size:.0f} MB files) <= {TARGET_IDLE_P99_S:.0f} s", p99, ok, _secs(p99))
    for key in ("direct", "primary"):
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


# ---------------------------------------------------------------------------------------------------------
# Output


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
    lines.append("")
    header = (
        f"{'workload':9} {'files':>6} {'MB/s':>7} {'files/s':>8} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} "
        f"{'x rsync':>7} {'x dd':>6}  {'CPU s sum/base/arch':>19}  peak RSS MiB sum/base/arch"
    )
    workloads = report["workloads"]
    if any(name in workloads for name in ("direct", "primary", "https", "idle", "small")):
        lines += [header, "-" * len(header)]
    for name in ("direct", "primary", "https", "idle", "small"):
        entry = workloads.get(name)
        if entry is None:
            continue
        if "error" in entry:
            lines.append(f"{name:9} ERROR {entry['error']}")
            continue
        lat = entry.get("latency", {})
        rss = entry.get("peak_rss_mib", {})
        cpu_s = entry.get("daemon_cpu_s", {})
        files = f"{entry['received']}/{entry['files']}" if not entry.get("complete") else str(entry["files"])
        lines.append(
            f"{name:9} {files:>6} {_num(entry.get('mb_per_s')):>7} {_num(entry.get('files_per_s')):>8} "
            f"{_secs(lat.get('p50_s')):>7} {_secs(lat.get('p95_s')):>7} {_secs(lat.get('p99_s')):>7} "
            f"{_num(entry.get('vs_rsync'), '.2f'):>7} {_num(entry.get('vs_dd'), '.2f'):>6}  "
            f"{'/'.join(_num(cpu_s.get(site), '.1f') for site, _ in SITES):>19}  "
            + "/".join(_num(rss.get(site), ".0f") for site, _ in SITES)
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
        lines += ["", f"{'target':58} {'value':>10}  result", "-" * 77]
        for t in report["targets"]:
            verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
            lines.append(f"{t['target']:58} {t['shown']:>10}  {verdict}")
    for error in report["errors"]:
        lines.append(f"ERROR {error}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# Command line


def _workloads_argument(value: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown workload(s) {', '.join(unknown)}; choose from {','.join(WORKLOADS)}")
    return chosen


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return number


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return number


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``skyrelay bench`` to ``parser``.

    Args:
        parser: The sub-command's parser.
    """
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="parent of the run directory; use the disk you want to measure (default: the system temp dir)",
    )
    parser.add_argument("--files", type=_positive_int, default=None, help="files per exposure (default 197; quick 40)")
    parser.add_argument("--size-mb", type=_positive_float, default=None, help="MB per file (default 20; quick 5)")
    parser.add_argument(
        "--idle-files", type=_positive_int, default=None, help="idle-latency files (default 20; quick 5)"
    )
    parser.add_argument("--small-files", type=_positive_int, default=None, help="small files (default 500; quick 200)")
    parser.add_argument("--small-kb", type=_positive_float, default=100.0, help="KB per small file (default 100)")
    parser.add_argument(
        "--idle-window-s", type=_positive_float, default=None, help="idle CPU window in seconds (default 10; quick 3)"
    )
    parser.add_argument(
        "--workloads",
        type=_workloads_argument,
        default=WORKLOADS,
        help=f"comma-separated subset of {','.join(WORKLOADS)} (default all)",
    )
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes (well under a minute)")
    parser.add_argument("--json", action="store_true", help="print the JSON report on stdout (table on stderr)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the JSON report to this file")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (files, cluster logs)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Resolve the options (``--quick`` changes the defaults, explicit options still win)."""
    quick = bool(args.quick)

    def pick(value: Any, normal: Any, small: Any) -> Any:
        return value if value is not None else (small if quick else normal)

    return BenchConfig(
        parent=(args.workdir or Path(tempfile.gettempdir())).resolve(),
        files=int(pick(args.files, 197, 40)),
        size_bytes=int(float(pick(args.size_mb, 20.0, 5.0)) * MB),
        idle_files=int(pick(args.idle_files, 20, 5)),
        small_files=int(pick(args.small_files, 500, 200)),
        small_size_bytes=int(args.small_kb * 1000),
        idle_window_s=float(pick(args.idle_window_s, 10.0, 3.0)),
        workloads=tuple(args.workloads),
        keep=bool(args.keep),
        quick=quick,
    )


def bench_main(args: argparse.Namespace) -> int:
    """Run ``skyrelay bench`` and print its report.

    Args:
        args: Parsed options from :func:`add_bench_arguments`.

    Returns:
        0 when every selected workload and baseline ran (whatever the targets say), 1 when one failed,
        2 when the run could not start.
    """
    config = config_from_args(args)
    try:
        report = asyncio.run(run_bench(config))
    except (BenchError, OSError) as exc:
        print(f"skyrelay bench: {exc}", file=sys.stderr)
        return 2
    encoded = json.dumps(report, indent=2) + "\n"
    if args.json_out is not None:
        args.json_out.write_text(encoded)
    table = render_table(report)
    if args.json:
        sys.stdout.write(encoded)
        print(table, file=sys.stderr)
    else:
        print(table)
    return 1 if report["errors"] else 0
