"""Retention: delete what the archive holds in custody once it is kept long enough, and say so.

Three sweeps, each woken by what makes something deletable and otherwise by a timer at the next moment
something falls due (expiry is time-based by nature; nothing polls):

- **copies** (summit inbox files, relay copies): only after the archive's verified custody receipt
  (the file is ``archived`` in the journal), once the site's ``retention_s`` has passed since custody;
  at a relay also earlier, oldest first, while the cache's file system is below
  ``[retention] cache_min_free_fraction``. Woken by each custody receipt. A copy is deleted only if the
  file at its path is still that copy (its size, and an inbox file's mtime, as registered): a camera
  file rewritten since is a later version, perhaps not in custody yet, and stays.
- **products** (at the archive): per kind after ``[retention] <kind>_s`` (none by default: kept for ever);
  never one that a queued or running job reads, never the newest master of its detector; the file is
  deleted and its catalogue row kept, marked expired, so provenance still resolves.

Every deletion is journaled as a ``retention_deleted`` event (problems and events are the site's
journaled report log, published on ``events/<site>``), counted (``skyrelay_retention_deleted_*``) and
shown in ``/v1/status`` under ``retention``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import structlog

from daemon.aio import raise_if_cancelling
from daemon.config import Retention
from daemon.counters import SiteCounters
from daemon.journal import Journal
from daemon.journal import retention as journal_retention
from daemon.journal.products import ProductRow
from daemon.report import Reporter

log = structlog.get_logger()

BATCH = 1000
"""Copies or products looked at per sweep step."""
EVENT_FILES = 200
"""File names per ``retention_deleted`` event (a large sweep is journaled in several events)."""
COALESCE_S = 1.0
"""After a custody receipt wakes the sweep, how long it waits for the rest of a burst."""


class CopyExpiry:
    """Deletes a site's local copies of files in the archive's custody: by age, and at a relay by free space."""

    def __init__(
        self,
        *,
        what: str,
        journal: Journal,
        reporter: Reporter,
        counters: SiteCounters,
        retention_s: float | None,
        cache_dir: Path | None = None,
        min_free_fraction: float | None = None,
        wake: asyncio.Event | None = None,
    ) -> None:
        """Args:
        what: ``summit`` (inbox files) or ``relay`` (relay copies): the label of counters and events.
        retention_s: seconds after custody; None keeps copies (only the watermark may delete them).
        cache_dir: where the copies are; its empty directories are removed, its file system measured.
        min_free_fraction: delete copies in custody early while less than this fraction of the file
            system holding ``cache_dir`` is free.
        wake: set when custody arrives (what makes a copy deletable).
        """
        self.what = what
        self.journal = journal
        self.reporter = reporter
        self.counters = counters
        self.retention_s = retention_s
        self.cache_dir = cache_dir
        self.min_free_fraction = min_free_fraction
        self.wake = wake or asyncio.Event()
        self.last_sweep_at: float | None = None
        self.expired_listeners: list[Callable[[Sequence[journal_retention.CopyRow]], None]] = []
        """Called with the copies marked expired by each deletion (the summit's registrar forgets them)."""

    async def run(self) -> None:
        """Sweep whenever custody arrives or the next copy falls due, until cancelled."""
        while True:
            raise_if_cancelling()
            self.wake.clear()
            due_at = await self.sweep()
            if due_at == 0.0:
                continue  # a full batch was deleted: more may be due at once
            timeout = None if due_at is None else max(0.0, due_at - time.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
                    # Woken by a custody receipt: let the rest of a burst arrive, so that a night's receipts
                    # give one deletion (and one journaled event) per second, not one per file.
                    await asyncio.sleep(COALESCE_S)

    async def sweep(self) -> float | None:
        """Delete what is due now; return when the next copy falls due by age (None: none, 0.0: sweep again)."""
        rows = await self.journal.read(journal_retention.copies_in_custody, BATCH)
        now = time.time()
        self.last_sweep_at = now
        aged = [r for r in rows if self.retention_s is not None and r.custody_at + self.retention_s <= now]
        await self._delete(aged, "age")
        rest = rows[len(aged) :] if self.retention_s is not None else rows
        if self.min_free_fraction is not None and self.cache_dir is not None and rest:
            rest = await self._relieve(rest)
        if len(rows) == BATCH and len(rest) < len(rows):
            return 0.0
        if self.retention_s is None or not rest:
            return None
        return min(r.custody_at for r in rest) + self.retention_s

    async def _relieve(self, rows: list[journal_retention.CopyRow]) -> list[journal_retention.CopyRow]:
        """Below the watermark: delete copies in custody, longest in custody first, until above it."""
        assert self.cache_dir is not None and self.min_free_fraction is not None
        free, total = await asyncio.to_thread(_free_bytes, self.cache_dir)
        want = self.min_free_fraction * total - free
        if want <= 0:
            return rows
        chosen: list[journal_retention.CopyRow] = []
        for row in rows:
            if want <= 0:
                break
            chosen.append(row)
            want -= row.size
        log.warning(
            "cache_below_watermark",
            free_bytes=free,
            total_bytes=total,
            min_free_fraction=self.min_free_fraction,
            deleting=len(chosen),
        )
        await self._delete(chosen, "free_space", free_bytes=free, min_free_fraction=self.min_free_fraction)
        return rows[len(chosen) :]

    async def _delete(self, rows: Sequence[journal_retention.CopyRow], reason: str, **details: Any) -> None:
        if not rows:
            return
        freed = 0
        deleted: list[journal_retention.CopyRow] = []
        rewritten: list[journal_retention.CopyRow] = []
        for row in rows:
            removed = await asyncio.to_thread(
                _remove_copy, Path(row.local_path), self.cache_dir, expect=(row.size, row.mtime_ns)
            )
            if removed is None:
                rewritten.append(row)
            else:
                deleted.append(row)
                freed += removed
        # Both are no longer here: the rewritten ones' path holds a later version, which has its own row.
        await self.journal.write(journal_retention.mark_copies_expired, [r.file_key for r in rows])
        for listener in self.expired_listeners:
            listener(rows)
        if rewritten:
            log.info(
                "copies_rewritten_kept",
                what=self.what,
                count=len(rewritten),
                files=[r.name for r in rewritten[:EVENT_FILES]],
                detail="the file at the path is no longer the copy in custody (rewritten since): left in place",
            )
        rows = deleted
        if not rows:
            return
        self.counters.deleted_files[self.what] += len(rows)
        self.counters.deleted_bytes[self.what] += freed
        log.info("files_expired", what=self.what, reason=reason, count=len(rows), bytes=freed)
        for start in range(0, len(rows), EVENT_FILES):
            chunk = rows[start : start + EVENT_FILES]
            await self.reporter.event(
                "retention_deleted",
                f"deleted {len(chunk)} {self.what} cop{'y' if len(chunk) == 1 else 'ies'} in the archive's custody"
                f" ({'retention_s passed' if reason == 'age' else 'cache below its free-space watermark'})",
                what=self.what,
                reason=reason,
                files=[r.name for r in chunk],
                bytes=sum(r.size for r in chunk),
                retention_s=self.retention_s,
                **details,
            )

    def settings(self) -> dict[str, Any]:
        """What this sweep keeps and for how long (for status)."""
        return {"retention_s": self.retention_s, "cache_min_free_fraction": self.min_free_fraction}


class ProductExpiry:
    """Deletes the archive's products per kind once they are old enough, keeping their catalogue rows."""

    def __init__(
        self,
        *,
        root: Path,
        journal: Journal,
        reporter: Reporter,
        counters: SiteCounters,
        retention: Retention,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.root = root
        self.journal = journal
        self.reporter = reporter
        self.counters = counters
        self.retention = retention
        self.wake = wake or asyncio.Event()
        self.last_sweep_at: float | None = None
        self.expired_listeners: list[Callable[[Sequence[journal_retention.CopyRow]], None]] = []
        """Called with the copies marked expired by each deletion (the summit's registrar forgets them)."""

    async def run(self) -> None:
        """Sweep when the next product falls due (at least every ``sweep_interval_s``), until cancelled."""
        if not self.retention.products_s:
            return
        while True:
            raise_if_cancelling()
            self.wake.clear()
            due_at = await self.sweep()
            if due_at == 0.0:
                continue
            now = time.time()
            interval = self.retention.sweep_interval_s
            timeout = interval if due_at is None or due_at <= now else min(interval, due_at - now)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    async def sweep(self) -> float | None:
        """Delete the products due now; return when the next one falls due (None: none; 0.0: sweep again;
        a time already past: some are due but held back, by a pending job or as the newest master)."""
        now = time.time()
        self.last_sweep_at = now
        kinds = self.retention.products_s
        cutoffs = {kind: now - seconds for kind, seconds in kinds.items()}
        due = await self.journal.read(journal_retention.expirable_products, cutoffs, BATCH)
        for product in due:
            await self._delete(product)
        if len(due) == BATCH:
            return 0.0
        oldest = {kind: await self.journal.read(journal_retention.oldest_unexpired, kind) for kind in kinds}
        times = [at + kinds[kind] for kind, at in oldest.items() if at is not None]
        return min(times) if times else None

    async def _delete(self, product: ProductRow) -> None:
        path = self.root / product.archive_path
        freed = await asyncio.to_thread(_remove_copy, path, self.root / "products") or 0
        at = time.time()
        await self.journal.write(journal_retention.mark_product_expired, product, at)
        what = f"product:{product.kind}"
        self.counters.deleted_files[what] += 1
        self.counters.deleted_bytes[what] += freed
        log.info("product_expired", product_id=product.product_id, kind=product.kind, path=product.archive_path)
        await self.reporter.event(
            "retention_deleted",
            f"deleted {product.kind} {product.product_id} ({self.retention.products_s[product.kind]:g} s old); "
            "its catalogue row and provenance stay, marked expired",
            what=what,
            reason="age",
            product_id=product.product_id,
            archive_path=product.archive_path,
            checksum=product.checksum,
            bytes=freed,
            created_at=product.created_at,
        )


class SiteRetention:
    """A site's retention sweeps, started in its task group, and what status shows of them."""

    def __init__(
        self,
        *,
        site: str,
        role: str,
        retention_s: float | None,
        retention: Retention,
        journal: Journal,
        reporter: Reporter,
        counters: SiteCounters,
        custody_wake: asyncio.Event,
        relay_dir: Path,
        archive_root: Path | None,
    ) -> None:
        self.site = site
        self.journal = journal
        self.counters = counters
        self.retention = retention
        self.copies: CopyExpiry | None = None
        self.products: ProductExpiry | None = None
        if role == "summit" and retention_s is not None:
            self.copies = CopyExpiry(
                what="summit",
                journal=journal,
                reporter=reporter,
                counters=counters,
                retention_s=retention_s,
                wake=custody_wake,  # no cache_dir: empty folders of the camera's inbox are left alone
            )
        elif role == "relay" and (retention_s is not None or retention.cache_min_free_fraction is not None):
            self.copies = CopyExpiry(
                what="relay",
                journal=journal,
                reporter=reporter,
                counters=counters,
                retention_s=retention_s,
                cache_dir=relay_dir,
                min_free_fraction=retention.cache_min_free_fraction,
                wake=custody_wake,
            )
        if role == "archive" and archive_root is not None and retention.products_s:
            self.products = ProductExpiry(
                root=archive_root, journal=journal, reporter=reporter, counters=counters, retention=retention
            )

    def start(self, tg: asyncio.TaskGroup) -> None:
        """Start the sweeps this site has."""
        if self.copies is not None:
            tg.create_task(self.copies.run(), name=f"{self.site}.expiry")
        if self.products is not None:
            tg.create_task(self.products.run(), name=f"{self.site}.product-expiry")

    async def status(self) -> dict[str, Any]:
        """Settings, deletions since start-up, and (at the archive) products expired over the journal's life."""
        out: dict[str, Any] = {
            "deleted_files": dict(self.counters.deleted_files),
            "deleted_bytes": dict(self.counters.deleted_bytes),
        }
        if self.copies is not None:
            out["copies"] = {**self.copies.settings(), "last_sweep_at": self.copies.last_sweep_at}
        if self.products is not None:
            out["products"] = {
                "retention_s": dict(self.retention.products_s),
                "kept_for_ever": "every other kind",
                "last_sweep_at": self.products.last_sweep_at,
                "expired": await self.journal.read(journal_retention.expired_counts),
            }
        return out


def _free_bytes(directory: Path) -> tuple[int, int]:
    """(bytes free to unprivileged users, total bytes) of the file system holding ``directory`` (blocking)."""
    probe = directory
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def _remove_copy(path: Path, stop_at: Path | None, *, expect: tuple[int, int | None] | None = None) -> int | None:
    """Delete a file and the directories it leaves empty below ``stop_at``; return the bytes freed (blocking).

    With ``expect`` (size, mtime_ns or None), only if the entry at ``path`` is still a regular file of that
    size and mtime: None, and nothing deleted, when it is not (another version was written there since).
    """
    try:
        st = path.lstat()
        if expect is not None:
            size, mtime_ns = expect
            if not stat.S_ISREG(st.st_mode) or st.st_size != size or mtime_ns not in (None, st.st_mtime_ns):
                return None
        path.unlink()
    except FileNotFoundError:
        return 0
    parent = path.parent
    while stop_at is not None and parent != stop_at and stop_at in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent
    return st.st_size
