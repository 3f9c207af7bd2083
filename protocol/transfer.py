"""One hop of the custody protocol: the sender's Offer and the receiver's Ack."""

from __future__ import annotations

import dataclasses
from typing import Literal

from protocol.checksum import CHECKSUM_PATTERN
from protocol.codec import Message, meta
from protocol.errors import ProtocolError
from protocol.names import validate_name

SITE_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
SOURCE_PATH_PATTERN = r"^/v1/transfers/[A-Za-z0-9_.:-]{1,128}$"
MAX_FILE_BYTES = 1 << 40  # 1 TiB: anything larger is an absurd size, not a camera file
MAX_ROUTE_SITES = 8

AckStatus = Literal["stored", "duplicate", "checksum_mismatch", "rejected", "failed"]
ACCEPTED_STATUSES: frozenset[str] = frozenset({"stored", "duplicate"})


def _site(description: str) -> dict[str, object]:
    return meta(description=description, pattern=SITE_PATTERN, max_len=32)


def _id(description: str) -> dict[str, object]:
    return meta(description=description, pattern=ID_PATTERN, max_len=128)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class FileIdentity:
    """What makes a file the same file at every site: its name, size and checksum."""

    name: str
    size: int
    checksum: str

    @property
    def key(self) -> str:
        """A stable key for journals: checksum and name together."""
        return f"{self.checksum}/{self.name}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Offer(Message):
    """A sender offers a file to the next site of a route; the receiver pulls it over HTTP."""

    TYPE = "offer"

    transfer_id: str = dataclasses.field(metadata=_id("id of this hop's transfer, stable across attempts"))
    sender: str = dataclasses.field(metadata=_site("site that offers the file"))
    receiver: str = dataclasses.field(metadata=_site("site whose mailbox receives the offer"))
    name: str = dataclasses.field(metadata=meta(description="relative path of the file", max_len=1020))
    size: int = dataclasses.field(metadata=meta(description="size in bytes", min=0, max=MAX_FILE_BYTES))
    checksum: str = dataclasses.field(metadata=meta(description="blake3 of the bytes", pattern=CHECKSUM_PATTERN))
    closed_at: float = dataclasses.field(metadata=meta(description="summit close time, Unix seconds", min=0))
    route: str = dataclasses.field(metadata=_id("name of the route this transfer follows"))
    route_sites: tuple[str, ...] = dataclasses.field(metadata=meta(description="the route's sites in order"))
    hop: int = dataclasses.field(metadata=meta(description="index of the sender in route_sites", min=0, max=7))
    source_path: str = dataclasses.field(
        metadata=meta(description="path on the sender's data server", pattern=SOURCE_PATH_PATTERN, max_len=160)
    )
    attempt: int = dataclasses.field(metadata=meta(description="1 for the first offer", min=1, max=1 << 31))
    sent_at: float = dataclasses.field(metadata=meta(description="Unix seconds", min=0))

    def check(self) -> None:
        Message.check(self)
        validate_name(self.name)
        if not 2 <= len(self.route_sites) <= MAX_ROUTE_SITES:
            raise ProtocolError(f"must name 2 to {MAX_ROUTE_SITES} sites", field="route_sites")
        if self.hop + 1 >= len(self.route_sites):
            raise ProtocolError("the sender must not be the last site of the route", field="hop")
        if self.route_sites[self.hop] != self.sender or self.route_sites[self.hop + 1] != self.receiver:
            raise ProtocolError("sender and receiver must be route_sites[hop] and [hop+1]", field="route_sites")

    @property
    def identity(self) -> FileIdentity:
        """The file this offer is about."""
        return FileIdentity(name=self.name, size=self.size, checksum=self.checksum)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    """The receiver's answer to an Offer (or a Custody), carrying the checksum it computed."""

    TYPE = "ack"

    kind: Literal["offer", "custody"] = dataclasses.field(metadata=meta(description="what is acknowledged"))
    transfer_id: str = dataclasses.field(metadata=_id("id of the offer's transfer or of the custody message"))
    sender: str = dataclasses.field(metadata=_site("site that sends this ack"))
    status: AckStatus = dataclasses.field(metadata=meta(description="outcome at the receiver"))
    checksum: str | None = dataclasses.field(
        default=None, metadata=meta(description="checksum the receiver computed", pattern=CHECKSUM_PATTERN)
    )
    size: int | None = dataclasses.field(default=None, metadata=meta(min=0, max=MAX_FILE_BYTES))
    reason: str | None = dataclasses.field(default=None, metadata=meta(max_len=1024))
    attempt: int = dataclasses.field(default=1, metadata=meta(min=1, max=1 << 31))
    at: float = dataclasses.field(default=0.0, metadata=meta(description="Unix seconds", min=0))
