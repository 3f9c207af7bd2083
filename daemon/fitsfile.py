"""Reading a FITS file's headers without its data, and checking that the file holds all the data they describe."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from astropy.io import fits


def _data_bytes(header: fits.Header) -> int:
    """Bytes of an HDU's data as its header describes them (FITS standard 4.4.1), unpadded."""
    naxis = int(header.get("NAXIS", 0))
    if naxis == 0:
        return 0
    count = 1
    for axis in range(1, naxis + 1):
        count *= int(header.get(f"NAXIS{axis}", 0))
    bits = abs(int(header.get("BITPIX", 8)))
    return bits // 8 * int(header.get("GCOUNT", 1)) * (int(header.get("PCOUNT", 0)) + count)


def read_primary_header(path: Path) -> tuple[fits.Header | None, str | None]:
    """The primary header, or (None, reason) for a non-FITS or truncated file (blocking).

    Walks every HDU's header and checks that the file holds all the data those headers describe,
    without reading the data itself.
    """
    primary: fits.Header | None = None
    with open(path, "rb") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        size = os.fstat(handle.fileno()).st_size
        offset = 0
        while offset < size:
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
            if primary is None:
                if header.get("SIMPLE") is not True:
                    return None, "not_fits: the first card is not SIMPLE = T"
                primary = header
            data_end = handle.tell() + _data_bytes(header)
            if data_end > size:
                return None, f"truncated: {size} bytes on disk, headers describe at least {data_end}"
            offset = handle.tell() + -(-_data_bytes(header) // 2880) * 2880
    if primary is None:
        return None, "not_fits: empty file"
    return primary, None
