"""What alert subscribers receive: one AlertNotice per difference-image detection, wrapping its alert packet.

Published on ``alerts/<instrument>`` through the archive's notice log (so it has a ``position`` and
``skyrelay subscribe --since N`` replays it). ``alert_id`` is stable: the same pair of calexps always
gives the same ids, so an archive crash may repeat an alert with the same id, never with a new one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from protocol.checksum import CHECKSUM_PATTERN
from protocol.codec import Message, meta
from protocol.transfer import ID_PATTERN


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AlertNotice(Message):
    """One detection in a difference image: its alert packet (Rubin field names, cutouts as base64 FITS)."""

    TYPE = "alert"

    notice_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    alert_id: int = dataclasses.field(metadata=meta(description="63-bit stable id (= diaSourceId)", min=0))
    instrument: str = dataclasses.field(metadata=meta(max_len=64))
    detector: str = dataclasses.field(metadata=meta(max_len=64))
    diff_product_id: str = dataclasses.field(
        metadata=meta(description="the diff product it was found in", pattern=ID_PATTERN, max_len=128)
    )
    visits: tuple[str, ...] = dataclasses.field(
        metadata=meta(description="OBSIDs of the science and reference visits, in that order")
    )
    alert: dict[str, Any] = dataclasses.field(
        metadata=meta(description="the alert packet as JSON (processors.alerts ALERT_JSON_SCHEMA)")
    )
    created_at: float = dataclasses.field(default=0.0, metadata=meta(description="Unix seconds", min=0))
    position: int | None = dataclasses.field(
        default=None, metadata=meta(description="place in the archive's notice log", min=1)
    )


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ScienceProductNotice(Message):
    """A science product is archived: a ``calexp`` (a visit after ISR), ``diff``, a visit's ``alerts``, a ``template``.

    Published on ``products/<instrument>`` beside the master notices. ``visits`` names the OBSIDs it is
    made of (science then reference for a difference); ``inputs`` the products or frames it was made
    from (product_id or name, with checksums).
    """

    TYPE = "science_product"

    notice_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    product_id: str = dataclasses.field(metadata=meta(pattern=ID_PATTERN, max_len=128))
    kind: Literal["calexp", "diff", "alerts", "template"] = dataclasses.field(
        metadata=meta(description="kind of product")
    )
    instrument: str = dataclasses.field(metadata=meta(max_len=64))
    detector: str = dataclasses.field(metadata=meta(max_len=64))
    archive_path: str = dataclasses.field(metadata=meta(description="relative to archive_root", max_len=2048))
    checksum: str = dataclasses.field(metadata=meta(description="blake3 of the product file", pattern=CHECKSUM_PATTERN))
    visits: tuple[str, ...] = dataclasses.field(default=(), metadata=meta(description="OBSIDs: science, reference"))
    inputs: tuple[dict[str, Any], ...] = dataclasses.field(
        default=(), metadata=meta(description="what it was made from: product_id or name, checksum")
    )
    stats: dict[str, Any] = dataclasses.field(default_factory=dict, metadata=meta(description="figures"))
    created_at: float = dataclasses.field(default=0.0, metadata=meta(description="Unix seconds", min=0))
    position: int | None = dataclasses.field(
        default=None, metadata=meta(description="place in the archive's notice log", min=1)
    )
