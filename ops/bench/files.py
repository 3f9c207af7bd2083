"""The benchmark's files and disk: generate FITS files once, hard-link them per workload, rename like a camera."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ops.bench.config import INSTRUMENT

__all__ = [
    "close_and_rename",
    "filesystem_type",
    "generate_files",
    "link_files",
    "make_run_dir",
    "remove_tree",
    "sync_disk",
    "total_size",
]


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


def make_run_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="skyrelay-bench-", dir=parent)).resolve()


def sync_disk() -> None:
    """Flush dirty pages so one measurement's writeback does not land in the next one's timing."""
    os.sync()


async def remove_tree(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, True)
    await asyncio.to_thread(sync_disk)


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
