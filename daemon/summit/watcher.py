"""The summit inbox watcher: inotify events through watchdog, plus rescans as a safety net.

A camera writes under a temporary name and renames; that rename (or a close after writing,
for writers that write in place) is the signal. inotify can overflow silently, so a rescan at
start-up and a periodic rescan reconcile the inbox with the journal.

Nothing here opens a file or follows a link: rescans ``lstat`` and do not descend into symlinked
directories, and watchdog is told not to follow symlinks either. Entries that are not regular files
are passed on like the others, once, so that the registrar reports them; one it has refused is not
passed on again while it stays the same entry (:data:`Refused`).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog
from watchdog.events import (
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from daemon.summit.intake import signature

log = structlog.get_logger()

IGNORED_SUFFIXES = (".part", ".tmp", ".truth.json")


def is_candidate(relative: str) -> bool:
    """Whether a relative inbox path names a finished file (not hidden, not a temporary, not a simulator's truth)."""
    parts = relative.split("/")
    return not any(p.startswith(".") for p in parts) and not relative.endswith(IGNORED_SUFFIXES)


Known = Mapping[str, tuple[int, int | None]]
Refused = dict[str, tuple[int, int, int]]
"""Inbox entries reported as not regular files: relative name → (device, inode, file type) when refused."""


def scan(inbox: Path, known: Known, refused: Mapping[str, tuple[int, int, int]] | None = None) -> list[Path]:
    """Candidate entries under ``inbox`` that ``known`` (relative name → size, mtime_ns) does not
    already describe: new or rewritten files only, and entries that are not regular files (symlinks,
    FIFOs, sockets, devices, symlinked directories) not yet in ``refused`` (blocking; run in a thread).

    Nothing is opened and no link is followed (``lstat``; symlinked directories are not descended).
    """
    found: list[Path] = []
    refused = refused or {}
    for root, dirs, files in os.walk(inbox, followlinks=False):
        visible = sorted(d for d in dirs if not d.startswith("."))
        linked = [d for d in visible if os.path.islink(os.path.join(root, d))]
        dirs[:] = [d for d in visible if d not in linked]
        for name in sorted(files) + linked:
            path = Path(root) / name
            relative = path.relative_to(inbox).as_posix()
            if not is_candidate(relative):
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                if refused.get(relative) != signature(st):
                    found.append(path)
            elif known.get(relative) != (st.st_size, st.st_mtime_ns):
                found.append(path)
    return found


class _Handler(FileSystemEventHandler):
    def __init__(self, deliver: Callable[[Path], None], rescan: Callable[[], None]) -> None:
        self._deliver = deliver
        self._rescan = rescan

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent):
            self._deliver(Path(os.fsdecode(event.dest_path)))
        elif isinstance(event, DirMovedEvent):
            self._rescan()
        elif isinstance(event, FileCreatedEvent | FileClosedEvent):
            self._deliver(Path(os.fsdecode(event.src_path)))


class InboxWatcher:
    """Feeds candidate paths into an asyncio queue from watchdog's thread and from rescans."""

    def __init__(self, inbox: Path, rescan_interval_s: float, known: Known) -> None:
        self.inbox = inbox
        self.known = known
        self.refused: Refused = {}
        self.rescan_interval_s = rescan_interval_s
        self.queue: asyncio.Queue[Path] = asyncio.Queue()

    async def run(self, ready: asyncio.Event) -> None:
        """Watch until cancelled; rescan at start and every ``rescan_interval_s``."""
        loop = asyncio.get_running_loop()
        rescan_now = asyncio.Event()

        def deliver(path: Path) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, path)

        def request_rescan() -> None:
            loop.call_soon_threadsafe(rescan_now.set)

        observer = Observer()
        observer.schedule(_Handler(deliver, request_rescan), str(self.inbox), recursive=True, follow_symlink=False)
        try:
            observer.start()
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot watch {self.inbox}: {exc.strerror} "
                "(raise fs.inotify.max_user_watches if the watch limit is reached)",
            ) from exc
        try:
            ready.set()
            while True:
                for path in await asyncio.to_thread(scan, self.inbox, dict(self.known), dict(self.refused)):
                    self.queue.put_nowait(path)
                rescan_now.clear()
                try:
                    async with asyncio.timeout(self.rescan_interval_s):
                        await rescan_now.wait()
                except TimeoutError:
                    pass
        finally:
            observer.stop()
            await asyncio.to_thread(observer.join, 5.0)
