"""File operations on the disk: durable renames and writes (fsync), and hashing (blocking; call in a thread)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import blake3

from protocol.checksum import format_checksum


def hash_file(path: Path) -> tuple[str, int]:
    """blake3 and size of a file."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    hasher.update_mmap(path)
    return format_checksum(hasher.hexdigest()), path.stat().st_size


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename into it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_rename(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest`` (creating parents) and fsync the destination directory."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(src, dest)
    fsync_dir(dest.parent)


def durable_rename_new(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest`` only if nothing is there yet, and fsync the directory.

    A hard link is created first (which fails when ``dest`` exists), then ``src`` is removed, so two
    writers can never overwrite each other's file.

    Raises:
        FileExistsError: ``dest`` already exists (``src`` is left in place).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP):
            raise
        if dest.exists():  # a filesystem without hard links: the check and the rename are not atomic
            raise FileExistsError(errno.EEXIST, "exists", str(dest)) from exc
        os.rename(src, dest)
        fsync_dir(dest.parent)
        return
    os.unlink(src)
    fsync_dir(dest.parent)


def durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, fsynced, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    durable_rename(tmp, path)
