"""The summit's registrar: journal each finished inbox file (hash, early header warning, route) and offer it.

Only regular files are taken, each read through one descriptor opened without following links
(:mod:`daemon.summit.intake`); anything else in the inbox is reported once as ``not_a_regular_file``
and left where it is. A file that no route can take now is handed to the router, which holds it
(counted, visible) and offers it the moment a route is usable.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from daemon.aio import raise_if_cancelling
from daemon.config import Topology
from daemon.counters import SiteCounters
from daemon.fitsfile import read_primary_header
from daemon.journal import FileRow, Journal, TransferRow, new_id
from daemon.journal import files as journal_files
from daemon.journal.retention import CopyRow
from daemon.logcontext import bound_file
from daemon.report import Reporter
from daemon.sending.items import ItemFactory
from daemon.sending.router import Router
from daemon.sending.sender import Sender
from daemon.summit.intake import (
    NotRegularFile,
    Taken,
    describe,
    descriptor_path,
    hash_descriptor,
    open_regular,
    signature,
)
from daemon.summit.watcher import InboxWatcher, is_candidate
from processors.headers import verify_header
from protocol.errors import ProtocolError
from protocol.names import validate_name
from protocol.transfer import FileIdentity

log = structlog.get_logger()

REGISTRARS = 8
"""Files registered at once. A registration mostly waits: on its thread (open, hash, header) and on its
journal commit's fsync; registrations that overlap share one commit. Two at a time held the summit's GIL 28%
of the time and registered a backlog at about 290 files/s on the bench's 2-core VM; eight took 1,500-file
bursts from 124 to 143 files/s end to end (three interleaved runs each)."""


class Registrar:
    """Takes paths from the inbox watcher and turns each new file into a journaled, offered transfer."""

    def __init__(
        self,
        topology: Topology,
        inbox: Path,
        watcher: InboxWatcher,
        journal: Journal,
        sender: Sender,
        router: Router,
        items: ItemFactory,
        reporter: Reporter,
        counters: SiteCounters,
        known: dict[str, tuple[int, int | None]],
        stop_offering: Callable[[str], None],
    ) -> None:
        self.topology = topology
        self.inbox = inbox
        self.watcher = watcher
        self.journal = journal
        self.sender = sender
        self.router = router
        self.items = items
        self.reporter = reporter
        self.counters = counters
        self.known = known
        self.stop_offering = stop_offering

    async def restore(self) -> None:
        """Remember every inbox file the journal holds, so rescans enqueue only new or rewritten ones."""
        self.known.update(await self.journal.read(journal_files.inbox_versions))

    async def run(self) -> None:
        """Register files from the watcher until cancelled."""
        while True:
            raise_if_cancelling()
            path = await self.watcher.queue.get()
            try:
                relative = path.relative_to(self.inbox).as_posix()
            except ValueError:
                continue
            if not is_candidate(relative):
                continue
            try:
                st = await asyncio.to_thread(os.lstat, path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if stat.S_ISDIR(st.st_mode):
                continue  # a real directory: its files come one by one
            if not stat.S_ISREG(st.st_mode):
                await self._refuse(relative, st, describe(st, path))
                continue
            if self.known.get(relative) == (st.st_size, st.st_mtime_ns):
                continue
            self.known[relative] = (st.st_size, st.st_mtime_ns)
            try:
                validate_name(relative)
            except ProtocolError as exc:
                await self.reporter.problem(
                    "bad_name", f"inbox file cannot travel under this name: {exc.reason}", name=relative
                )
                continue
            with bound_file(relative):
                await self._register(path, relative, st)

    async def _refuse(self, relative: str, st: os.stat_result, what: str) -> None:
        """Report an inbox entry that is not a regular file, once while it stays the same entry; leave it."""
        if self.watcher.refused.get(relative) == signature(st):
            return
        self.watcher.refused[relative] = signature(st)
        await self.reporter.problem(
            "not_a_regular_file",
            f"{relative} is a {what}: the inbox takes regular files only; left in place and not sent",
            name=relative,
            what=what,
        )

    async def _register(self, path: Path, relative: str, st: os.stat_result) -> None:
        try:
            taken, findings = await asyncio.to_thread(take, self.inbox, relative)
        except FileNotFoundError:
            return
        except NotRegularFile as exc:
            await self._refuse(relative, st, exc.what)
            return
        checksum, size, mtime_ns = taken.checksum, taken.size, taken.mtime_ns
        self.known[relative] = (size, mtime_ns)
        identity = FileIdentity(name=relative, size=size, checksum=checksum)
        if findings:
            await self.reporter.problem(
                "header_warning",
                "; ".join(f"{f['rule']}: {f['message']}" for f in findings)[:1500]
                + " (found at the summit before transfer; the archive fixes what is derivable)",
                name=relative,
                findings=findings,
            )
        chosen = self.router.route_for_new()

        def record(db: sqlite3.Connection) -> tuple[TransferRow | None, list[sqlite3.Row], FileRow | None]:
            inserted = journal_files.insert_file(
                db,
                file_key=identity.key,
                name=relative,
                size=size,
                checksum=checksum,
                closed_at=mtime_ns / 1e9,
                local_path=str(path),
                source="inbox",
                mtime_ns=mtime_ns,
            )
            # Content rewritten back to an earlier version that was itself replaced: send it again.
            revived = not inserted and journal_files.revive_replaced(db, identity.key, mtime_ns=mtime_ns)
            if not inserted and not revived:
                return None, [], None
            replaced = journal_files.retire_replaced(db, name=relative, keep=identity.key)
            transfer = journal_files.insert_transfer(
                db, transfer_id=new_id("t"), file_key=identity.key, route=chosen.name, route_sites=chosen.sites, hop=0
            )
            return transfer, replaced, journal_files.file(db, identity.key)

        transfer, replaced, file_row = await self.journal.transaction(record)
        for old in replaced:
            self.stop_offering(old["file_key"])
            self.counters.files["replaced"] += 1
            await self.reporter.problem(
                "source_replaced",
                f"{relative} was rewritten before any site took the earlier content ({old['checksum']}, "
                f"{old['size']} bytes); that content no longer exists and is not sent, the new content is",
                name=relative,
                old_checksum=old["checksum"],
                new_checksum=checksum,
            )
        if transfer is None or file_row is None:
            return
        self.counters.files["registered"] += 1
        offered = self.router.admit(transfer, file_row)
        log.info("file_registered", size=size, checksum=checksum, route=chosen.name, held=not offered)


def forget_copies(known: dict[str, tuple[int, int | None]], copies: Sequence[CopyRow]) -> None:
    """Retention deleted these inbox files: forget them (``known``: name → size, mtime_ns), unless a later
    version is what is known now.

    What is known is every inbox file there is; without this it was every file the summit ever registered,
    and each rescan copied all of them (a night is some 200,000)."""
    for copy in copies:
        if known.get(copy.name) == (copy.size, copy.mtime_ns):
            del known[copy.name]


def take(inbox: Path, relative: str) -> tuple[Taken, list[dict[str, Any]]]:
    """Hash an inbox file and check its header, both through one descriptor opened without following
    links (blocking).

    Raises:
        NotRegularFile: it is (or, on the way, passes through) a symlink, FIFO, socket or device.
        FileNotFoundError: it went away.
    """
    with open_regular(inbox, relative) as fd:
        return hash_descriptor(fd), early_findings(descriptor_path(fd))


def early_findings(path: Path) -> list[dict[str, Any]]:
    """Read-only header verification at the summit, before the file travels (blocking)."""
    header, problem = read_primary_header(path)
    if header is None:
        kind, _, detail = (problem or "not_fits: unreadable").partition(": ")
        return [{"rule": kind, "keyword": None, "message": detail}]
    return [f.to_dict() for f in verify_header(header)]
