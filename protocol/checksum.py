"""Checksums on the wire: ``blake3:<64 lowercase hex digits>``."""

from __future__ import annotations

import re

from protocol.errors import ProtocolError

ALGORITHM = "blake3"
CHECKSUM_PATTERN = r"^blake3:[0-9a-f]{64}$"
_CHECKSUM_RE = re.compile(CHECKSUM_PATTERN)


def format_checksum(digest_hex: str) -> str:
    """Return the wire form of a blake3 hex digest."""
    text = f"{ALGORITHM}:{digest_hex.lower()}"
    if not _CHECKSUM_RE.match(text):
        raise ProtocolError("not a 256-bit blake3 hex digest", field="checksum")
    return text


def parse_checksum(text: str, *, field: str = "checksum") -> str:
    """Validate a wire checksum and return its hex digest."""
    if not isinstance(text, str) or not _CHECKSUM_RE.match(text):
        raise ProtocolError("must look like 'blake3:<64 hex digits>'", field=field)
    return text.split(":", 1)[1]
