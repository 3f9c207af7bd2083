"""What the sender carries: an Offer for each pending transfer and each journaled custody receipt.

Each item knows how to encode its message for an attempt and what to journal when its ack is
accepted; the sender only times and retries them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog

from daemon.journal import FileRow, Journal, TransferRow
from daemon.journal import files as journal_files
from daemon.journal import outbox as journal_outbox
from daemon.sending.sender import Outgoing
from protocol.custody import Custody, Receipt
from protocol.errors import ProtocolError
from protocol.transfer import Ack, Offer

log = structlog.get_logger()

LegacyCustody = Callable[[journal_outbox.OutboxRow], Awaitable[Custody | None]]
"""Turns a 0.1.0 custody row into a signed one, or retires it (returns None)."""
FirstHopAcked = Callable[[str, str], None]
"""Called with (file_key, route) when the first hop of a summit file acknowledged it."""


class ItemFactory:
    """Builds the sender's items for one site."""

    def __init__(self, site: str, journal: Journal) -> None:
        self.site = site
        self.journal = journal
        self.on_first_hop: FirstHopAcked | None = None

    def offer(self, transfer: TransferRow, file_row: FileRow) -> Outgoing:
        """The Offer of one pending transfer; its accepted ack marks the transfer acked."""

        def payload(attempt: int) -> bytes:
            return Offer(
                transfer_id=transfer.transfer_id,
                sender=self.site,
                receiver=transfer.receiver,
                name=file_row.name,
                size=file_row.size,
                checksum=file_row.checksum,
                closed_at=file_row.closed_at,
                route=transfer.route,
                route_sites=transfer.route_sites,
                hop=transfer.hop,
                source_path=f"/v1/transfers/{transfer.transfer_id}",
                attempt=attempt,
                sent_at=time.time(),
            ).to_json()

        async def accepted(ack: Ack) -> None:
            await self.journal.write(journal_files.mark_acked, transfer.transfer_id, ack.status)
            # (debug: a file's info lines are its registration and its custody; a backlog logs 2, not 3, per file)
            log.debug(
                "offer_acked",
                transfer_id=transfer.transfer_id,
                file=file_row.name,
                peer=transfer.receiver,
                status=ack.status,
                route=transfer.route,
            )
            if self.on_first_hop is not None and transfer.hop == 0:
                self.on_first_hop(file_row.file_key, transfer.route)

        return Outgoing(
            msg_id=transfer.transfer_id,
            kind="offer",
            peer=transfer.receiver,
            file_key=file_row.file_key,
            name=file_row.name,
            checksum=file_row.checksum,
            size=file_row.size,
            payload=payload,
            on_accepted=accepted,
            route=transfer.route,
        )

    def custody(self, custody: Custody, receipt: Receipt) -> Outgoing:
        """A journaled custody hop carrying the archive's ``receipt``; its ack marks the outbox row acked."""
        encoded = custody.to_json()

        async def accepted(ack: Ack) -> None:
            await self.journal.write(journal_outbox.mark_acked, custody.custody_id)

        return Outgoing(
            msg_id=custody.custody_id,
            kind="custody",
            peer=custody.receiver,
            file_key=receipt.file_key,
            name=receipt.name,
            checksum=receipt.checksum,
            size=0,
            payload=lambda attempt: encoded,
            on_accepted=accepted,
        )

    async def restore(
        self, open_receipt: Callable[[str], Receipt], legacy: LegacyCustody, *, offers: bool = True
    ) -> list[Outgoing]:
        """Every item the journal says is unfinished (after a crash or restart); without the offers when
        ``offers`` is False (the summit's router restores those and queues them as there is room).

        A custody message journaled by a release before signed receipts (0.1.0) is handed to ``legacy``,
        which re-signs it (at the archive) or retires it (elsewhere: the summit's custody deadline gets a
        fresh, signed receipt from the archive).
        """
        pending = await self.journal.read(journal_files.pending_transfers) if offers else []
        items = [self.offer(t, f) for t, f in pending]
        for row in await self.journal.read(journal_outbox.pending):
            try:
                custody = Custody.from_json(row.payload)
            except ProtocolError:
                replacement = await legacy(row)
                if replacement is None:
                    continue
                custody = replacement
            items.append(self.custody(custody, open_receipt(custody.receipt)))
        return items
