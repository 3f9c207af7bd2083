"""Custody: the archive's signed receipt that a file is safely archived, carried unchanged hop by hop upstream.

The archive states once, in a :class:`Receipt` it signs (kind ``custody_receipt``), what it holds and
where. Each hop upstream is a :class:`Custody` message, signed by the relaying site, that carries the
archive's envelope verbatim in ``receipt``: a relay can pass a receipt on but never make or change one,
and every site verifies the archive's signature before it marks a file archived or expires a copy.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from protocol.checksum import CHECKSUM_PATTERN
from protocol.codec import Message, meta
from protocol.names import validate_name
from protocol.transfer import ID_PATTERN, MAX_FILE_BYTES, SITE_PATTERN, FileIdentity


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Receipt(Message):
    """The archive holds this file durably (or has quarantined it), at ``archive_path``."""

    TYPE = "custody_receipt"

    receipt_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    archive: str = dataclasses.field(metadata=meta(description="the archive site that signed", pattern=SITE_PATTERN))
    name: str = dataclasses.field(metadata=meta(max_len=1020))
    size: int = dataclasses.field(metadata=meta(min=0, max=MAX_FILE_BYTES))
    checksum: str = dataclasses.field(metadata=meta(pattern=CHECKSUM_PATTERN))
    status: Literal["archived", "quarantined"] = dataclasses.field(metadata=meta())
    archive_path: str = dataclasses.field(metadata=meta(description="relative to archive_root", max_len=2048))
    archived_at: float = dataclasses.field(metadata=meta(min=0))
    route: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))

    def check(self) -> None:
        Message.check(self)
        validate_name(self.name)
        validate_name(self.archive_path, field="archive_path")

    @property
    def file_key(self) -> str:
        """The journal key of the file the receipt is about."""
        return FileIdentity(name=self.name, size=self.size, checksum=self.checksum).key


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Custody(Message):
    """One hop of custody upstream: ``sender`` passes the archive's signed ``receipt`` to ``receiver``."""

    TYPE = "custody"

    custody_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    sender: str = dataclasses.field(metadata=meta(description="site relaying custody", pattern=SITE_PATTERN))
    receiver: str = dataclasses.field(metadata=meta(description="upstream site", pattern=SITE_PATTERN))
    receipt: str = dataclasses.field(
        metadata=meta(description="the archive-signed custody_receipt envelope, verbatim", max_len=16384)
    )
