"""The baselines skyrelay is compared with: ``rsync --fsync`` over loopback and ``dd conv=fdatasync``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

from ops.bench.config import MB, MIB
from ops.bench.errors import BenchError
from ops.bench.files import link_files, remove_tree, total_size
from ops.broker import free_port

__all__ = ["DD_CAP_MB", "dd_baseline", "rsync_baseline", "rsync_daemon"]


DD_CAP_MB: Final = 2048


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


def _children_cpu_s() -> float:
    """User + system CPU seconds of every reaped child of this process (and of their reaped children)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def rsync_baseline(run_dir: Path, files: Sequence[Path], *, label: str = "rsync") -> dict[str, Any]:
    """Time ``rsync -a --whole-file --fsync`` of ``files`` over loopback into a fresh directory.

    CPU is the client's plus the daemon's (with the children it forks per connection), measured as
    the CPU of this process's reaped children across the run: nothing else is started or reaped
    meanwhile (baselines run before any cluster).
    """
    fsync = await asyncio.to_thread(_rsync_supports_fsync)
    source = run_dir / f"{label}-src"
    dest = run_dir / f"{label}-dest"
    await asyncio.to_thread(link_files, files, source)
    total = await asyncio.to_thread(total_size, files)
    options = ["-a", "--whole-file", *(["--fsync"] if fsync else [])]
    cpu_before = _children_cpu_s()
    try:
        async with rsync_daemon(run_dir / f"{label}d", dest) as port:
            url = f"rsync://127.0.0.1:{port}/bench/"
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                "rsync", *options, f"{source}/", url, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
            )
            _, stderr = await proc.communicate()
            elapsed = time.perf_counter() - started
        cpu_s = _children_cpu_s() - cpu_before  # the daemon is reaped by now: its CPU is counted
        if proc.returncode != 0:
            raise BenchError(f"rsync failed ({proc.returncode}): {stderr.decode(errors='replace').strip()[-300:]}")
    finally:
        await remove_tree(source)
        await remove_tree(dest)
    result: dict[str, Any] = {
        "command": f"rsync {' '.join(options)} <src>/ rsync://127.0.0.1:<port>/bench/",
        "fsync": fsync,
        "files": len(files),
        "bytes": total,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(total / elapsed / MB, 1),
        "files_per_s": round(len(files) / elapsed, 1),
        "cpu_s": round(cpu_s, 3),
        "cpu_s_per_gb": round(cpu_s / (total / 1e9), 3) if total else None,
    }
    if not fsync:
        result["note"] = "this rsync has no --fsync: baseline is NOT durable (page cache only); ratios flatter it"
    return result
