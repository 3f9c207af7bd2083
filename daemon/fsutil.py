"""File operations on the disk: durable renames and writes (fsync), and hashing (blocking; call in a thread)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import blake3

from protocol.checksum import format_checksum

HASH_READ_BYTES = 2 << 20
"""A file is hashed this many bytes at a time, read into a buffer of the call's own that goes when the hash is done.

Mapped whole (as it was), every page of a file being hashed counted in the daemon's RSS until the file was
unmapped: at the summit, eight registrations of 20 MB files at once took its peak RSS from 133 to 207 MiB
(at the archive, a header-fixed raw or a product was mapped whole the same way). A mapping also turns a file
cut short while it is read into SIGBUS, which kills the daemon; a read just comes back short. (A buffer kept
per thread stayed resident for good: 12 MiB over the summit's pool.)"""


def hash_descriptor_bytes(fd: int, length: int) -> tuple[str, int]:
    """blake3 of the first ``length`` bytes of the open file ``fd`` and how many were read (fewer when it was
    cut short meanwhile), :data:`HASH_READ_BYTES` at a time (blocking)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    view = memoryview(bytearray(min(length, HASH_READ_BYTES)))
    size = 0
    while size < length:
        read = os.preadv(fd, [view[: length - size]], size)
        if not read:
            break
        hasher.update(view[:read])
        size += read
    return format_checksum(hasher.hexdigest()), size


def hash_file(path: Path) -> tuple[str, int]:
    """blake3 and size of a file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return hash_descriptor_bytes(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


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
