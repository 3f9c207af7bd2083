"""Quarantine: the files the archive could not accept, with their reasons, and their release after a fix."""

from __future__ import annotations

import asyncio
from typing import Any

from daemon.archive import store
from daemon.archive.ingest import Archivist
from daemon.journal import catalog as journal_catalog
from daemon.report import Reporter
from protocol.transfer import FileIdentity


class Quarantine:
    """Lists quarantined files and re-ingests one through the normal path when an operator asks."""

    def __init__(self, archivist: Archivist, reporter: Reporter) -> None:
        self.archivist = archivist
        self.journal = archivist.journal
        self.reporter = reporter
        self._release_lock = asyncio.Lock()

    async def list(self) -> list[dict[str, Any]]:
        """Every quarantined file with its id and reason."""
        return await self.journal.read(journal_catalog.quarantined)

    async def release(self, quarantine_id: int) -> dict[str, Any]:
        """Re-ingest a quarantined file (after an operator fixed its cause, e.g. added a correction file).

        Returns the outcome; a file that is still not acceptable stays in quarantine with the new reason.

        Raises:
            LookupError: no quarantined file has this id.
        """
        archivist = self.archivist
        async with self._release_lock:
            row = await self.journal.read(journal_catalog.quarantined_entry, quarantine_id)
            if row is None:
                raise LookupError(f"no quarantined file with id {quarantine_id}")
            await asyncio.to_thread(archivist.incoming.mkdir, parents=True, exist_ok=True)
            tmp = await asyncio.to_thread(
                store.release_from_quarantine, archivist.root, row["archive_path"], archivist.incoming
            )
            prepared = await archivist.prepare(tmp, row["name"], row["checksum"])
            if prepared.status != "archived":
                await asyncio.to_thread(tmp.unlink, missing_ok=True)
                await self.journal.write(journal_catalog.set_reason, quarantine_id, prepared.reason)
                return {"id": quarantine_id, "released": False, "reason": prepared.reason}
            async with archivist.path_lock(prepared.archive_path):
                prepared = await archivist.claim_path(prepared, tmp, row["checksum"], row["file_key"])
                if prepared.status != "archived":
                    await asyncio.to_thread(tmp.unlink, missing_ok=True)
                    return {"id": quarantine_id, "released": False, "reason": prepared.reason}
                placed = await asyncio.to_thread(store.place, prepared, tmp, archivist.root, row["checksum"])
                if placed.status != "archived":
                    return {"id": quarantine_id, "released": False, "reason": placed.reason}
                identity = FileIdentity(name=row["name"], size=row["size"], checksum=row["checksum"])
                await archivist.commit(
                    identity,
                    placed,
                    closed_at=row["closed_at"],
                    route=row["route"],
                    sender=row["sender"],
                    transfer_id=None,
                    release_of=quarantine_id,
                )
            await asyncio.to_thread((archivist.root / row["archive_path"]).unlink, missing_ok=True)
            await self.reporter.event(
                "released",
                f"{row['name']} released from quarantine to {placed.archive_path}",
                name=row["name"],
                archive_path=placed.archive_path,
                fixes=placed.fixes,
            )
            return {"id": quarantine_id, "released": True, "archive_path": placed.archive_path, "fixes": placed.fixes}
