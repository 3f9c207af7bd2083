"""What subscribers receive when the archive has built a product: the product notice.

Published on ``products/<instrument>`` through the archive's notice log, so it has a ``position`` and
``skyrelay subscribe --since N`` replays it like the arrival notices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from protocol.checksum import CHECKSUM_PATTERN
from protocol.codec import Message, meta
from protocol.transfer import ID_PATTERN


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProductNotice(Message):
    """A product (a master bias, dark or flat) is archived and catalogued with its provenance.

    ``product_id`` is stable: the same job always yields the same id, so a repeat after an archive
    crash carries the same id (and position).
    """

    TYPE = "product"

    notice_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    product_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    kind: Literal["bias", "dark", "flat"] = dataclasses.field(metadata=meta(description="kind of master"))
    instrument: str = dataclasses.field(metadata=meta(max_len=64))
    detector: str = dataclasses.field(metadata=meta(max_len=64))
    archive_path: str = dataclasses.field(metadata=meta(description="relative to archive_root", max_len=2048))
    checksum: str = dataclasses.field(metadata=meta(description="blake3 of the product file", pattern=CHECKSUM_PATTERN))
    filter: str | None = dataclasses.field(default=None, metadata=meta(description="flats: FILTER", max_len=64))
    inputs: tuple[dict[str, Any], ...] = dataclasses.field(
        default=(), metadata=meta(description="input frames: name, checksum (blake3 of the archived file)")
    )
    left_out: tuple[dict[str, Any], ...] = dataclasses.field(
        default=(), metadata=meta(description="input frames not combined: name, reason")
    )
    stats: dict[str, Any] = dataclasses.field(
        default_factory=dict,
        metadata=meta(
            description="frames_used, and amps: EXTNAME -> mean, stdev, read_noise_adu, dark_current_adu_per_s"
        ),
    )
    created_at: float = dataclasses.field(default=0.0, metadata=meta(description="Unix seconds", min=0))
    position: int | None = dataclasses.field(
        default=None,
        metadata=meta(
            description="place in the archive's notice log: 1, 2, 3, ... in journal order (GET /v1/notices?after=N)",
            min=1,
        ),
    )
