"""The header workload: how long :func:`processors.headers.verify_header` takes on one real-sized header."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from astropy.io import fits

__all__ = ["measure_verify_us"]


_BENCH_CARDS: Final[tuple[tuple[str, object], ...]] = (
    ("SIMPLE", True),
    ("EXTEND", True),
    ("DATE", "2024-11-09T06:35:11.753"),
    ("MJD", 60623.274441585876),
    ("IMGTYPE", "OBJECT"),
    ("DATE-OBS", "2024-11-09T06:34:41.323"),
    ("MJD-OBS", 60623.27408938669),
    ("OBSID", "CC_O_20241108_000266"),
    ("DATE-BEG", "2024-11-09T06:34:41.323"),
    ("MJD-BEG", 60623.27408938669),
    ("DATE-END", "2024-11-09T06:35:11.754"),
    ("MJD-END", 60623.27444159705),
    ("TIMESYS", "TAI"),
    ("GROUPID", "2024-11-09T06:33:55.311"),
    ("INSTRUME", "ComCam"),
    ("TELESCOP", "Simonyi Survey Telescope"),
    ("RA", 53.12550000000002),
    ("DEC", -28.1),
    ("CAMCODE", "CC"),
    ("CONTRLLR", "O"),
    ("DAYOBS", "20241108"),
    ("SEQNUM", 266),
    ("CURINDEX", 1),
    ("MAXINDEX", 1),
    ("CCDSLOT", "S00"),
    ("RAFTBAY", "R22"),
    ("FILTER", "g_01"),
    ("EXPTIME", 30.0),
    ("DARKTIME", 30.4306),
)


def measure_verify_us(n: int = 2000, header: fits.Header | None = None) -> float:
    """Measure the mean time :func:`processors.headers.verify_header` takes on one header.

    Args:
        n: Number of verifications to time.
        header: Header to verify; by default a clean ComCam header parsed from its FITS bytes,
            padded to a real header's length.

    Returns:
        Mean microseconds per header.
    """
    # Imported here: astropy takes a second to import and every ``skyrelay`` command imports this module.
    from astropy.io import fits

    from processors.headers import verify_header

    if header is None:
        sample = fits.Header(list(_BENCH_CARDS))
        for index in range(100):
            sample[f"PAD{index:05d}"] = float(index)
        header = fits.Header.fromstring(sample.tostring())
    runs = max(1, n)
    verify_header(header)
    start = time.perf_counter()
    for _ in range(runs):
        verify_header(header)
    return (time.perf_counter() - start) / runs * 1e6
