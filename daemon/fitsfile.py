"""Reading a FITS file's headers without its data, and checking that the file holds all the data they describe.

The headers are read in 2880-byte blocks straight from the file (one read covers a small file). The
primary header's cards are read as astropy reads them, on demand (:class:`~processors.headers.text.HeaderText`,
or astropy's whole parse when that cannot take them); an extension header is only walked past, so just its structural
keywords (BITPIX, NAXIS, NAXISn, PCOUNT, GCOUNT) are read from their fixed-format cards (FITS 4.0
§4.1-4.4). A header that is anything but plain (no END card at a card boundary, bytes that are not
ASCII, lower-case or HIERARCH keywords, CONTINUE cards, a structural value that is not a fixed-format
integer, a short block...) is read by astropy exactly as before, so every file gets the answer, header
and reason text, that astropy's own reading of it gives.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import BinaryIO, Final

from astropy.io import fits

from processors.headers.text import HeaderText

_BLOCK: Final = 2880
_CARD: Final = 80
_FIRST_READ: Final = 128 * 1024
"""Bytes read at once from the start of a file: all of a small file, the primary header of a big one."""
_LATER_READ: Final = 4 * _BLOCK
"""Bytes read at once at an extension header beyond the first read."""
# astropy's own test for the END card (astropy.io.fits.header.HEADER_END_RE): the first match at a card
# boundary ends the header; only the "valid" form (END and 77 spaces) is read here, astropy handles the rest.
_END_RE: Final = re.compile(rb"(?:(?P<valid>END {77}) *)|(?P<invalid>END$|END {0,76}[^A-Z0-9_-])")
# Keywords astropy reads as written, 8 columns each: standard characters, upper case, left-justified (or blank).
_PLAIN_KEYWORDS_RE: Final = re.compile(
    b"(?:%s)*" % b"|".join(b"[A-Z0-9_-]{%d} {%d}" % (length, 8 - length) for length in range(8, -1, -1))
)
_STRUCTURAL_RE: Final = re.compile(rb"(BITPIX|NAXIS\d{0,3}|PCOUNT|GCOUNT) *")
# The value of an integer card: "= " in columns 9-10, the integer, an optional comment.
_INTEGER_VALUE_RE: Final = re.compile(rb"= +([+-]?\d+) *(?:/.*)?")


def _data_bytes(header: fits.Header | HeaderText) -> int:
    """Bytes of an HDU's data as its header describes them (FITS standard 4.4.1), unpadded."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    count = 1
    for axis in range(1, naxis + 1):
        count *= int(header.get(f"NAXIS{axis}", 0))
    bits = abs(int(header.get("BITPIX", 8)))
    return bits // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + count)


class _Blocks:
    """Reads byte ranges of an open file, keeping the last range read (one read for a small file)."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.fd = handle.fileno()
        self.size = size
        self.start = 0
        self.buffer = os.pread(self.fd, min(size, _FIRST_READ), 0)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``, fewer at the end of the file."""
        end = offset + length
        if not (self.start <= offset and end <= self.start + len(self.buffer)):
            self.start = offset
            self.buffer = os.pread(self.fd, max(length, _LATER_READ), offset)
        return self.buffer[offset - self.start : end - self.start]


def _plain_header(blocks: _Blocks, offset: int) -> tuple[bytes, int] | None:
    """The blocks of the header at ``offset`` and the position of its END card in them.

    None unless astropy would read exactly these blocks without a complaint: whole blocks only, the
    first END card at a card boundary (block by block, as astropy looks) in its valid form, and no null
    byte at the end of the header.
    """
    position = offset
    while position + _BLOCK <= blocks.size:
        block = blocks.read(position, _BLOCK)
        if len(block) < _BLOCK:
            return None  # the file shrank since its size was taken
        position += _BLOCK
        match = _end_card(block)
        if match is None:
            continue
        if match.group("valid") is None:
            return None
        raw = blocks.read(offset, position - offset)
        if raw.endswith(b"\0"):
            return None
        return raw, position - offset - _BLOCK + match.start()
    return None


def _end_card(block: bytes) -> re.Match[bytes] | None:
    """astropy's END card of a block: the first match of its pattern that starts a card.

    A match can only start where "END" starts a card, and no earlier match can run over such a place, so
    trying the pattern at those places alone finds the one ``finditer`` would, without scanning every byte.
    """
    start = block.find(b"END")
    while start >= 0:
        if start % _CARD == 0 and (match := _END_RE.match(block, start)) is not None:
            return match
        start = block.find(b"END", start + 1)
    return None


def _read_plain(
    blocks: _Blocks, offset: int, *, primary: bool
) -> tuple[fits.Header | HeaderText, int, None] | tuple[None, int, int] | None:
    """The header at ``offset`` read without astropy's block reader: (header, where it ends, data bytes).

    The primary header is a :class:`~processors.headers.text.HeaderText` of the cards astropy's reader
    would read, or, when astropy must read it whole, parsed by :meth:`astropy.io.fits.Header.fromstring`
    from the same text (its data bytes are left to the caller, None); an extension header is not parsed
    (None), only its structural cards are read for its data bytes. None when the header is not plain and
    astropy must read it.
    """
    plain = _plain_header(blocks, offset)
    if plain is None:
        return None
    raw, end = plain
    if not primary:
        data = _extension_data_bytes(raw, end)
        return None if data is None else (None, offset + len(raw), data)
    header: fits.Header | HeaderText | None = None
    if raw.isascii():
        header = HeaderText.parse(raw[:end].decode("ascii"))
    if header is None:
        try:
            header = fits.Header.fromstring(raw.decode("ascii"))
        except (OSError, ValueError, EOFError):
            return None  # astropy's reader raises it again, and says why
    return header, offset + len(raw), None


def _extension_data_bytes(raw: bytes, end: int) -> int | None:
    """Bytes of an extension's data from its structural cards, as :func:`_data_bytes` of astropy's parse.

    None when a card could be read differently by astropy: a keyword that is not plain upper case, a
    HIERARCH or CONTINUE card, a structural keyword whose value is not a fixed-format integer, bytes
    that are not ASCII, or more than 999 axes.
    """
    keywords = [raw[start : start + 8] for start in range(0, end, _CARD)]
    if (
        b"HIERARCH" in keywords
        or b"CONTINUE" in keywords
        or not _PLAIN_KEYWORDS_RE.fullmatch(b"".join(keywords))
        or not raw.isascii()
    ):
        return None
    values: dict[bytes, int] = {}
    for index, keyword in enumerate(keywords):
        if _STRUCTURAL_RE.fullmatch(keyword):
            start = index * _CARD
            value = _INTEGER_VALUE_RE.fullmatch(raw, start + 8, start + _CARD)
            if value is None:
                return None
            values.setdefault(keyword.rstrip(b" "), int(value.group(1)))
    naxis = values.get(b"NAXIS", 0)
    if naxis == 0:
        return 0
    if naxis > 999:
        return None
    count = math.prod(values.get(b"NAXIS%d" % axis, 0) for axis in range(1, naxis + 1))
    bits = abs(values.get(b"BITPIX", 8))
    return bits // 8 * values.get(b"GCOUNT", 1) * (values.get(b"PCOUNT", 0) + count)


def read_primary_header(path: Path) -> tuple[fits.Header | HeaderText | None, str | None]:
    """The primary header, or (None, reason) for a non-FITS or truncated file (blocking).

    A plain header comes as a :class:`~processors.headers.text.HeaderText` (astropy's values, read on
    demand), any other as astropy's :class:`~astropy.io.fits.Header`.

    Walks every HDU's header and checks that the file holds all the data those headers describe,
    without reading the data itself.
    """
    primary: fits.Header | HeaderText | None = None
    with open(path, "rb") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        size = os.fstat(handle.fileno()).st_size
        blocks = _Blocks(handle, size)
        offset = 0
        while offset < size:
            header: fits.Header | HeaderText | None
            data: int | None
            read = _read_plain(blocks, offset, primary=primary is None)
            if read is not None:
                header, header_end, data = read
            else:
                handle.seek(offset)
                try:
                    header = fits.Header.fromfile(handle, padding=True)
                except (OSError, ValueError, EOFError, UnicodeDecodeError) as exc:
                    if primary is None:
                        handle.seek(0)
                        if handle.read(30).startswith(b"SIMPLE  =                    T"):
                            return None, f"truncated: primary header cut short at {size} bytes ({exc})"
                        return None, f"not_fits: {exc}"
                    return None, f"truncated: extension header at byte {offset} unreadable ({exc})"
                header_end, data = handle.tell(), None
            if primary is None:
                if header is None or header.get("SIMPLE") is not True:
                    return None, "not_fits: the first card is not SIMPLE = T"
                primary = header
            if data is None:
                assert header is not None
                data = _data_bytes(header)
            data_end = header_end + data
            if data_end > size:
                return None, f"truncated: {size} bytes on disk, headers describe at least {data_end}"
            offset = header_end + -(-data // _BLOCK) * _BLOCK
    if primary is None:
        return None, "not_fits: empty file"
    return primary, None
