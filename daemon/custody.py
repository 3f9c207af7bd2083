"""Custody: record the archive's signed receipt, relay it upstream unchanged (journal first), expire copies.

The receipt reaching here has been verified against the archive's key (:class:`daemon.trust.Trust`):
only that lets a site mark a file archived and, after retention, expire its copy (:mod:`daemon.retention`,
woken by :attr:`CustodyRelay.expiry_wake`). The base deletes its relay copy at once (``retention_s`` 0 by
default for relays); the summit keeps the camera's files unless ``retention_s`` is set.
"""

from __future__ import annotations

import asyncio
import collections
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from daemon.counters import SiteCounters
from daemon.errors import PeerUnreachable
from daemon.journal import Journal, new_id
from daemon.journal import files as journal_files
from daemon.journal import outbox as journal_outbox
from daemon.mailbox import Mailbox
from daemon.sending.items import ItemFactory
from daemon.sending.sender import Sender
from protocol.custody import Custody, Receipt
from protocol.errors import ProtocolError
from protocol.transfer import Ack

log = structlog.get_logger()


StopOffering = Callable[[str], None]


ANSWERED_KEPT = 4096


class CustodyRelay:
    """Handles custody receipts arriving at a relay or the summit, and expiry of copies in custody."""

    def __init__(
        self,
        site: str,
        journal: Journal,
        mailbox: Mailbox,
        sender: Sender,
        items: ItemFactory,
        counters: SiteCounters,
        stop_offering: StopOffering,
        relay_dir: Path,
    ) -> None:
        self.site = site
        self.journal = journal
        self.mailbox = mailbox
        self.sender = sender
        self.items = items
        self.counters = counters
        self.stop_offering = stop_offering
        self.relay_dir = relay_dir
        self._answered: collections.OrderedDict[str, None] = collections.OrderedDict()
        """Custody ids acked lately: the ack of a repeat goes alone (a lost batch is not lost again)."""
        self.expiry_wake = asyncio.Event()

    async def on_custody(self, custody: Custody, receipt: Receipt) -> None:
        """The archive holds a file (``receipt``, verified): record it, stop its transfers, relay upstream, ack.

        Raises:
            ProtocolError: the receipt is not addressed to this site or comes from a non-peer.
        """
        if custody.receiver != self.site:
            raise ProtocolError(f"custody for {custody.receiver} arrived at {self.site}", field="receiver")
        if custody.sender not in self.mailbox.peers:
            raise ProtocolError(f"{custody.sender!r} is not a peer of {self.site}", field="sender")
        key = receipt.file_key
        held = await self.journal.read(journal_files.file, key)
        onward: Custody | None = None
        if held is not None and held.source != "inbox" and held.source in self.mailbox.peers:
            onward = Custody(custody_id=new_id("c"), sender=self.site, receiver=held.source, receipt=custody.receipt)

        def record(db: sqlite3.Connection) -> bool:
            journal_files.mark_archived(db, key, status=receipt.status, archive_path=receipt.archive_path)
            return onward is not None and journal_outbox.queue_custody(db, onward, key)

        queued = await self.journal.transaction(record)
        self.stop_offering(key)
        self.counters.files["custody"] += 1
        log.info(
            "custody_received",
            file=receipt.name,
            status=receipt.status,
            archive_path=receipt.archive_path,
            relayed_to=onward.receiver if onward else None,
        )
        ack = Ack(
            kind="custody",
            transfer_id=custody.custody_id,
            sender=self.site,
            status="stored",
            checksum=receipt.checksum,
            size=receipt.size,
            at=time.time(),
        )
        repeat = custody.custody_id in self._answered
        self._answered[custody.custody_id] = None
        self._answered.move_to_end(custody.custody_id)
        while len(self._answered) > ANSWERED_KEPT:
            self._answered.popitem(last=False)
        try:
            await self.mailbox.send(custody.sender, "ack", ack.to_json(), alone=repeat)
        except PeerUnreachable as exc:
            log.info("ack_not_sent", peer=custody.sender, transfer_id=ack.transfer_id, reason=str(exc))
        if onward is not None and queued:
            self.sender.add(self.items.custody(onward, receipt))
        self.expiry_wake.set()


async def upgrade_legacy(
    row: journal_outbox.OutboxRow, journal: Journal, sign: Callable[[str, Receipt], Custody] | None
) -> Custody | None:
    """A custody message journaled by 0.1.0 (unsigned, the receipt's fields inline): sign it or retire it.

    At the archive (``sign`` given) the fields become a receipt the archive signs now, and the row is
    rewritten. Elsewhere no site may speak for the archive: the row is retired, and the summit, whose
    custody deadline then passes, re-sends the file and the archive answers with a signed receipt.
    """
    fields = json.loads(row.payload)
    if sign is None:
        await journal.write(journal_outbox.retire, row.msg_id)
        log.info("legacy_custody_retired", msg_id=row.msg_id, file=fields.get("name"))
        return None
    receipt = Receipt(
        receipt_id=new_id("r"),
        archive=str(fields["sender"]),
        name=fields["name"],
        size=fields["size"],
        checksum=fields["checksum"],
        status=fields["status"],
        archive_path=fields["archive_path"],
        archived_at=fields["archived_at"],
        route=fields["route"],
    )
    custody = sign(row.receiver, receipt)
    custody = Custody(custody_id=row.msg_id, sender=custody.sender, receiver=custody.receiver, receipt=custody.receipt)
    await journal.write(journal_outbox.replace_payload, row.msg_id, custody.to_json().decode())
    log.info("legacy_custody_signed", msg_id=row.msg_id, file=receipt.name)
    return custody
