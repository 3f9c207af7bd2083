"""Read the cards of a header as plain Python values.

Absent, null and astropy's UNDEFINED cards all read as None; numbers, dates, DAYOBS and instrument names
are checked and parsed here once, for the verifier, the repairer and the summary alike. Also here: the
values sibling detectors agree on, with the cards that belong to one detector left out.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final, TypeGuard

from astropy.io.fits.card import Undefined
from astropy.time import Time

from processors.detectors import UnknownInstrument, canonical_instrument

_TIME_SCALES: Final = {
    "TAI": "tai",
    "UTC": "utc",
    "TT": "tt",
    "TDB": "tdb",
    "TCG": "tcg",
    "TCB": "tcb",
    "UT1": "ut1",
}
_MJD_TOLERANCE_S: Final = 1.0
_MJD_EPOCH: Final = datetime(1858, 11, 17)
_ONE_DAY: Final = timedelta(days=1)
_DAYOBS_RE: Final = re.compile(r"\d{8}")
# Cards that identify one detector: a sibling's value must never be copied into them.
_PER_DETECTOR_KEYS: Final = frozenset(
    {
        "CCDSLOT",
        "RAFTBAY",
        "DETSIZE",
        "FILENAME",
        "CHECKSUM",
        "DATASUM",
        "LSST_NUM",
        "CCD_SERN",
        "CCD_MANU",
        "CCD_TYPE",
        "RAFTNAME",
        "REBNAME",
        "CHIPID",
        "CCDTEMP",
    }
)


def _value(header: Mapping[str, object], key: str) -> object:
    """Return a card's value, with absent, None and astropy's UNDEFINED all as None."""
    value = header.get(key)
    if value is None or isinstance(value, Undefined):
        return None
    return value


def _is_real(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_isot(value: str) -> datetime | None:
    """Parse a FITS date string quickly; None when it is not a naive ISO date-time."""
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        return None
    return parsed


def _mjd_fast(moment: datetime) -> float:
    """MJD of a calendar date-time in a scale without leap seconds (exact for TAI, TT, ...)."""
    return (moment - _MJD_EPOCH) / _ONE_DAY


def _mjd_astropy(value: str, scale: str) -> float:
    """MJD of a FITS date string in a time scale, as :class:`astropy.time.Time` gives it.

    Remembered per (date, scale): the detectors of one exposure share DATE-OBS, so astropy runs once per
    exposure rather than once per file. (Calendar arithmetic is no substitute even without leap seconds:
    it differs from astropy by an ulp for about one date in 10^5.)
    """
    return _mjd_of(value.strip(), scale)


@functools.lru_cache(maxsize=4096)
def _mjd_of(value: str, scale: str) -> float:
    return float(Time(value, scale=scale).mjd)


def _dayobs_text(value: object) -> str | None:
    """DAYOBS as an 8-digit string, or None when it is not a plausible YYYYMMDD."""
    if _is_int(value):
        value = str(value)
    if not isinstance(value, str) or not _DAYOBS_RE.fullmatch(value):
        return None
    month, day = int(value[4:6]), int(value[6:8])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    return value


def _canonical_or_none(name: object) -> str | None:
    if not isinstance(name, str):
        return None
    try:
        return canonical_instrument(name)
    except UnknownInstrument:
        return None


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, Undefined):
        return None
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _sibling_context(exposure_context: Mapping[str, object] | None) -> dict[str, object]:
    """The sibling detectors' agreed values, keys upper-cased, without the cards of one detector."""
    return {k.upper(): v for k, v in (exposure_context or {}).items() if k.upper() not in _PER_DETECTOR_KEYS}
