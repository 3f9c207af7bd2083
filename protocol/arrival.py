"""What subscribers receive from the archive: arrival notices and exposure completeness.

Every notice carries its ``position`` in the archive's notice log: positions only grow, so a
subscriber that remembers the last one it saw can replay the rest (``GET /v1/notices?after=N``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from protocol.checksum import CHECKSUM_PATTERN
from protocol.codec import Message, decode, meta
from protocol.errors import ProtocolError
from protocol.transfer import ID_PATTERN


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ArrivalNotice(Message):
    """A file is archived and verified; published on ``arrivals/<instrument>/<detector>``.

    ``notice_id`` is stable: a repeat after an archive crash carries the same id, so a
    subscriber can drop it.
    """

    TYPE = "arrival"

    notice_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    obsid: str = dataclasses.field(metadata=meta(max_len=128))
    instrument: str = dataclasses.field(metadata=meta(max_len=64))
    detector: str = dataclasses.field(metadata=meta(max_len=64))
    name: str = dataclasses.field(metadata=meta(max_len=1020))
    size: int = dataclasses.field(metadata=meta(min=0))
    checksum: str = dataclasses.field(
        metadata=meta(description="blake3 of the received bytes", pattern=CHECKSUM_PATTERN)
    )
    archived_checksum: str = dataclasses.field(
        metadata=meta(
            description="blake3 of the archived file (differs when the header was fixed)",
            pattern=CHECKSUM_PATTERN,
        )
    )
    archive_path: str = dataclasses.field(metadata=meta(description="relative to archive_root", max_len=2048))
    arrived_at: float = dataclasses.field(metadata=meta(description="Unix seconds when stored", min=0))
    closed_at: float = dataclasses.field(metadata=meta(description="Unix seconds of summit close", min=0))
    latency_s: float = dataclasses.field(metadata=meta(description="summit close to archive stored"))
    route: str = dataclasses.field(metadata=meta(max_len=128))
    dayobs: str | None = dataclasses.field(default=None, metadata=meta(max_len=16))
    seqnum: int | None = dataclasses.field(default=None)
    imgtype: str | None = dataclasses.field(default=None, metadata=meta(max_len=64))
    fixes: tuple[dict[str, Any], ...] = dataclasses.field(
        default=(), metadata=meta(description="header fixes: keyword, old, new, source")
    )
    complete: bool | None = dataclasses.field(
        default=None, metadata=meta(description="whether the exposure is complete with this file")
    )
    position: int | None = dataclasses.field(
        default=None,
        metadata=meta(
            description="place in the archive's notice log: 1, 2, 3, ... in journal order (GET /v1/notices?after=N)",
            min=1,
        ),
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ExposureNotice(Message):
    """An exposure's state of completeness; published on ``arrivals/<instrument>/exposure``."""

    TYPE = "exposure"

    notice_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    obsid: str = dataclasses.field(metadata=meta(max_len=128))
    instrument: str = dataclasses.field(metadata=meta(max_len=64))
    dayobs: str | None = dataclasses.field(default=None, metadata=meta(max_len=16))
    seqnum: int | None = dataclasses.field(default=None)
    state: Literal["complete", "late"] = dataclasses.field(
        metadata=meta(description="complete, or late: detectors still missing after the late period")
    )
    expected: int = dataclasses.field(metadata=meta(min=0))
    arrived: int = dataclasses.field(metadata=meta(min=0))
    missing: tuple[str, ...] = dataclasses.field(default=())
    at: float = dataclasses.field(metadata=meta(min=0))
    position: int | None = dataclasses.field(
        default=None,
        metadata=meta(
            description="place in the archive's notice log: 1, 2, 3, ... in journal order (GET /v1/notices?after=N)",
            min=1,
        ),
    )


def positioned(payload: bytes | str | Message, position: int) -> bytes:
    """The notice ``payload`` with its ``position`` in the notice log set (validated, re-encoded).

    Args:
        payload: a notice message, or its JSON (any message type with a ``position`` field). A message
            in hand is not encoded and decoded again: the archive journals each file's notice this way.
        position: its place in the archive's notice log (1 and up).

    Returns:
        The notice's JSON with ``position`` set.

    Raises:
        ProtocolError: not a valid message, or a message type that has no position.
    """
    message = payload if isinstance(payload, Message) else decode(payload)
    if "position" not in {f.name for f in dataclasses.fields(message)}:
        raise ProtocolError(f"{message.TYPE!r} is not a notice: it has no position", field="position")
    return dataclasses.replace(message, **{"position": position}).to_json()
