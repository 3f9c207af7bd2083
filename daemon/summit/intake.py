"""Taking a file from the inbox: regular files only, never through a link, read from one open descriptor.

Anything in the inbox can be hostile. A FIFO blocks a reader that opens it until a writer appears;
a symlink would ship the bytes of a file outside the inbox; a device may do something on open. So
a file is looked at with ``lstat`` (nothing is opened that is not a regular file), each directory on
the way is opened with ``O_NOFOLLOW`` relative to the one before, and the file itself with
``O_RDONLY | O_NONBLOCK | O_NOFOLLOW``; ``fstat`` on the descriptor must say regular file again. The
checksum, size, modification time and header check all come from that descriptor, so a swap of
the name between the check and the read cannot put another file's bytes under this file's name.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from daemon.fsutil import hash_descriptor_bytes

OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class NotRegularFile(Exception):
    """An inbox entry that is not a regular file reached through real directories."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Taken:
    """What the registrar learnt from one open descriptor of an inbox file."""

    checksum: str
    size: int
    mtime_ns: int
    device: int
    inode: int


def describe(st: os.stat_result, path: Path | None = None) -> str:
    """What kind of entry ``st`` (from ``lstat``) is, in an operator's words (a symlink with its target)."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        target = ""
        if path is not None:
            try:
                target = f" -> {os.readlink(path)}"
            except OSError:
                target = ""
        return f"symlink{target}"
    if stat.S_ISFIFO(mode):
        return "FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISDIR(mode):
        return "directory"
    return "regular file" if stat.S_ISREG(mode) else f"file of unknown type {stat.S_IFMT(mode):o}"


def signature(st: os.stat_result) -> tuple[int, int, int]:
    """What identifies an inbox entry that was refused: (device, inode, file type)."""
    return st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode)


@contextmanager
def open_regular(inbox: Path, relative: str) -> Iterator[int]:
    """A read-only descriptor of the regular file ``inbox/relative``, closed on exit (blocking).

    Every directory between the inbox and the file is opened relative to its parent with
    ``O_NOFOLLOW``: a symlinked directory is refused like a symlinked file.

    Raises:
        NotRegularFile: the entry, or a directory on the way, is a symlink, FIFO, socket or device.
        FileNotFoundError: the entry went away.
    """
    parts = relative.split("/")
    dir_fd = os.open(inbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for depth, part in enumerate(parts[:-1], start=1):
            try:
                next_fd = os.open(part, DIR_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                on_the_way = "/".join(parts[:depth])
                st = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
                raise NotRegularFile(f"{describe(st, inbox / on_the_way)} on the way ({on_the_way})") from None
            os.close(dir_fd)
            dir_fd = next_fd
        name = parts[-1]
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):  # refused before any open: a device is never opened
            raise NotRegularFile(describe(st, inbox / relative))
        try:
            fd = os.open(name, OPEN_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENXIO):  # became a symlink or a socket since the lstat
                raise NotRegularFile(describe(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))) from None
            raise
    finally:
        os.close(dir_fd)
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):  # swapped for a FIFO between the lstat and the open
            raise NotRegularFile(describe(opened))
        yield fd
    finally:
        os.close(fd)


def hash_descriptor(fd: int) -> Taken:
    """blake3, size and modification time of the open regular file ``fd`` (blocking).

    The size is the length that was hashed, not a second look at the file.
    """
    st = os.fstat(fd)
    checksum, size = hash_descriptor_bytes(fd, st.st_size)  # (cut short since the fstat: what was read counts)
    return Taken(
        checksum=checksum,
        size=size,
        mtime_ns=st.st_mtime_ns,
        device=st.st_dev,
        inode=st.st_ino,
    )


def descriptor_path(fd: int) -> Path:
    """A name that opens the very file behind ``fd`` (Linux ``/proc/self/fd``), for readers that take a path.

    Opening it reaches the descriptor's inode whatever has been renamed or swapped in the inbox since.
    """
    return Path(f"/proc/self/fd/{fd}")
