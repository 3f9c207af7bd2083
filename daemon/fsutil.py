"""Durable file moves: rename into place and fsync the directory (blocking; call in a thread)."""

from __future__ import annotations

import os
from pathlib import Path


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


def durable_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name, fsynced, then rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    durable_rename(tmp, path)
