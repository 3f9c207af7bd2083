"""The catalog's small JSON-able summary of a header: which observation, detector, type and filter."""

from __future__ import annotations

from astropy.io import fits

from processors.detectors import detector_name
from processors.headers.cards import _canonical_or_none, _dayobs_text, _jsonable, _value
from processors.headers.text import HeaderText

__all__ = ["header_summary"]


def header_summary(header: fits.Header | HeaderText) -> dict[str, object]:
    """Return the catalog's small JSON-able summary of a header.

    Args:
        header: A primary header.

    Returns:
        Mapping with obsid, instrument (canonical when known), detector, imgtype, dayobs, seqnum, filter,
        exptime, date_obs, groupid, curindex and maxindex; absent values are None.
    """
    raw_instrument = _value(header, "INSTRUME")
    instrument = _canonical_or_none(raw_instrument) or raw_instrument
    dayobs = _value(header, "DAYOBS")
    return {
        "obsid": _jsonable(_value(header, "OBSID")),
        "instrument": _jsonable(instrument),
        "detector": detector_name(header),
        "imgtype": _jsonable(_value(header, "IMGTYPE")),
        "dayobs": _dayobs_text(dayobs) or _jsonable(dayobs),
        "seqnum": _jsonable(_value(header, "SEQNUM")),
        "filter": _jsonable(_value(header, "FILTER")),
        "exptime": _jsonable(_value(header, "EXPTIME")),
        "date_obs": _jsonable(_value(header, "DATE-OBS")),
        "groupid": _jsonable(_value(header, "GROUPID")),
        "curindex": _jsonable(_value(header, "CURINDEX")),
        "maxindex": _jsonable(_value(header, "MAXINDEX")),
    }
