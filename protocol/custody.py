"""Custody: the archive's word, relayed upstream hop by hop, that a file is safely archived."""

from __future__ import annotations

import dataclasses
from typing import Literal

from protocol.checksum import CHECKSUM_PATTERN
from protocol.codec import Message, meta
from protocol.names import validate_name
from protocol.transfer import ID_PATTERN, MAX_FILE_BYTES, SITE_PATTERN


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Custody(Message):
    """The archive holds this file durably; the receiving site may expire its copy after retention."""

    TYPE = "custody"

    custody_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    sender: str = dataclasses.field(metadata=meta(description="site relaying custody", pattern=SITE_PATTERN))
    receiver: str = dataclasses.field(metadata=meta(description="upstream site", pattern=SITE_PATTERN))
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
