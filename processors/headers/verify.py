"""The rules a primary header is archived by: :func:`verify_header` and the vocabularies it checks against.

Rule ids are stable strings that end up in the catalog and in arrival notices:

=============================  ===============================================================
``required.<KEY>``             a required keyword is absent or null
``type.<KEY>``                 a keyword has the wrong type or an unparsable value
``range.<KEY>``                a number is out of range (negative EXPTIME, DARKTIME, SEQNUM)
``instrument.unknown``         INSTRUME is not LATISS, ComCam or LSSTCam (or an alias)
``obsid.format``               OBSID is not ``<camcode>_<controller>_<dayobs>_<seqnum:06d>``
``obsid.mismatch``             OBSID disagrees with DAYOBS, SEQNUM, CAMCODE, CONTRLLR or INSTRUME
``imgtype.vocabulary``         IMGTYPE is not a Rubin observation type
``filter.missing``             no FILTER on a frame that is not a bias
``time.timesys``               TIMESYS is not a time scale astropy knows
``time.mjd_mismatch``          DATE-OBS and MJD-OBS differ by more than 1 s in TIMESYS
``time.beg_end_order``         DATE-BEG is after DATE-END
``time.exptime_mismatch``      DATE-END - DATE-BEG is far from both EXPTIME and DARKTIME
``time.darktime_lt_exptime``   DARKTIME is shorter than EXPTIME
``detector.missing``           RAFTBAY or CCDSLOT is absent or null
``detector.unknown``           the detector is not one the instrument has
=============================  ===============================================================
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Final, TypeAlias

from astropy.io import fits

from processors.detectors import CAMERA_CODES, expected_detectors
from processors.headers.cards import (
    _MJD_TOLERANCE_S,
    _TIME_SCALES,
    _canonical_or_none,
    _dayobs_text,
    _is_int,
    _is_real,
    _mjd_astropy,
    _mjd_fast,
    _parse_isot,
    _value,
)
from processors.headers.model import Finding
from processors.headers.obsid import parse_obsid
from processors.headers.text import HeaderText

__all__ = ["IMGTYPES", "NO_FILTER_IMGTYPES", "verify_header"]

IMGTYPES: Final = frozenset(
    {
        # Agreed LSSTCam/ComCam/LATISS observation types.
        "BIAS",
        "DARK",
        "FLAT",
        "OBJECT",
        "ENGTEST",
        "ACQ",
        "CWFS",
        "FOCUS",
        "STUTTERED",
        "INDOME",
        "CBP",
        "SFLAT",
        "DFLAT",
        "SPOT",
        # Older summit data, camera test stands and imsim simulations.
        "SCIENCE",
        "ZERO",
        "SKYEXP",
        "FE55",
        "PPUMP",
        "XTALK",
        "LAMBDA",
        "SCAN",
        "PINHOLE",
    }
)
"""Accepted IMGTYPE values (compared case-insensitively)."""

NO_FILTER_IMGTYPES: Final = frozenset({"BIAS", "ZERO"})
"""Image types that need no FILTER."""

_Add: TypeAlias = Callable[[str, str | None, str], None]


def verify_header(header: fits.Header | HeaderText) -> list[Finding]:
    """Check a primary header against the rules skyrelay archives by.

    Checks required keywords and their types, DATE-OBS against MJD-OBS in the header's TIMESYS,
    DATE-BEG/DATE-END against EXPTIME, DARKTIME, the IMGTYPE vocabulary, FILTER on non-bias frames,
    OBSID against DAYOBS/SEQNUM/CAMCODE/CONTRLLR/INSTRUME, and the detector keys. Times are compared
    with plain calendar arithmetic and only a disagreement is confirmed with :mod:`astropy.time`, which
    keeps a clean header well under a millisecond.

    Args:
        header: A primary header (astropy's, a :class:`HeaderText`, or any mapping of cards).

    Returns:
        Findings in a stable order; empty when the header is clean.
    """
    findings: list[Finding] = []

    def add(rule: str, keyword: str | None, message: str) -> None:
        findings.append(Finding(rule=rule, keyword=keyword, message=message))

    def required(key: str) -> object:
        value = _value(header, key)
        if value is None:
            add(f"required.{key}", key, f"{key} is missing or null")
        return value

    # Instrument.
    instrument: str | None = None
    raw_instrument = required("INSTRUME")
    if raw_instrument is not None:
        if not isinstance(raw_instrument, str):
            add("type.INSTRUME", "INSTRUME", f"INSTRUME must be a string, not {raw_instrument!r}")
        else:
            instrument = _canonical_or_none(raw_instrument)
            if instrument is None:
                add("instrument.unknown", "INSTRUME", f"INSTRUME {raw_instrument!r} is not a known instrument")

    # OBSID, DAYOBS, SEQNUM and their agreement.
    parts: tuple[str, str, str, int] | None = None
    obsid = required("OBSID")
    if obsid is not None:
        if not isinstance(obsid, str):
            add("type.OBSID", "OBSID", f"OBSID must be a string, not {obsid!r}")
        else:
            parts = parse_obsid(obsid)
            if parts is None:
                add("obsid.format", "OBSID", f"OBSID {obsid!r} is not <camcode>_<controller>_<dayobs>_<seqnum>")
    dayobs: str | None = None
    raw_dayobs = required("DAYOBS")
    if raw_dayobs is not None:
        dayobs = _dayobs_text(raw_dayobs)
        if dayobs is None:
            add("type.DAYOBS", "DAYOBS", f"DAYOBS must be YYYYMMDD, not {raw_dayobs!r}")
    seqnum: int | None = None
    raw_seqnum = required("SEQNUM")
    if raw_seqnum is not None:
        if not _is_int(raw_seqnum):
            add("type.SEQNUM", "SEQNUM", f"SEQNUM must be an integer, not {raw_seqnum!r}")
        elif raw_seqnum < 0:
            add("range.SEQNUM", "SEQNUM", f"SEQNUM must not be negative, is {raw_seqnum}")
        else:
            seqnum = raw_seqnum
    if parts is not None:
        code, controller, obs_day, obs_seq = parts
        if dayobs is not None and dayobs != obs_day:
            add("obsid.mismatch", "DAYOBS", f"DAYOBS {dayobs} disagrees with OBSID {obsid}")
        if seqnum is not None and seqnum != obs_seq:
            add("obsid.mismatch", "SEQNUM", f"SEQNUM {seqnum} disagrees with OBSID {obsid}")
        for key in ("CAMCODE", "TELCODE"):
            card = _value(header, key)
            if isinstance(card, str) and card != code:
                add("obsid.mismatch", key, f"{key} {card!r} disagrees with OBSID {obsid}")
        card = _value(header, "CONTRLLR")
        if isinstance(card, str) and card != controller:
            add("obsid.mismatch", "CONTRLLR", f"CONTRLLR {card!r} disagrees with OBSID {obsid}")
        if instrument is not None and CAMERA_CODES[instrument] != code:
            add("obsid.mismatch", "INSTRUME", f"INSTRUME {raw_instrument!r} disagrees with OBSID {obsid}")

    # Image type and filter.
    imgtype: str | None = None
    raw_imgtype = required("IMGTYPE")
    if raw_imgtype is not None:
        if not isinstance(raw_imgtype, str):
            add("type.IMGTYPE", "IMGTYPE", f"IMGTYPE must be a string, not {raw_imgtype!r}")
        else:
            imgtype = raw_imgtype.strip().upper()
            if imgtype not in IMGTYPES:
                add("imgtype.vocabulary", "IMGTYPE", f"IMGTYPE {raw_imgtype!r} is not a known image type")
    if imgtype not in NO_FILTER_IMGTYPES:
        band = _value(header, "FILTER")
        if band is None or band == "":
            add("filter.missing", "FILTER", f"FILTER is missing on a {imgtype or 'non-bias'} frame")
        elif not isinstance(band, str):
            add("type.FILTER", "FILTER", f"FILTER must be a string, not {band!r}")

    # Exposure and dark time.
    exptime = _nonnegative_seconds(header, "EXPTIME", add)
    darktime = _nonnegative_seconds(header, "DARKTIME", add)
    if exptime is not None and darktime is not None and darktime + 0.01 < exptime:
        add("time.darktime_lt_exptime", "DARKTIME", f"DARKTIME {darktime} s is shorter than EXPTIME {exptime} s")

    # Time system and DATE-OBS <-> MJD-OBS.
    scale: str | None = None
    timesys = required("TIMESYS")
    if timesys is not None:
        if not isinstance(timesys, str):
            add("type.TIMESYS", "TIMESYS", f"TIMESYS must be a string, not {timesys!r}")
        else:
            scale = _TIME_SCALES.get(timesys.strip().upper())
            if scale is None:
                add("time.timesys", "TIMESYS", f"TIMESYS {timesys!r} is not a known time scale")
    date_obs = required("DATE-OBS")
    moment: datetime | None = None
    if date_obs is not None:
        moment = _parse_isot(date_obs) if isinstance(date_obs, str) else None
        if moment is None:
            add("type.DATE-OBS", "DATE-OBS", f"DATE-OBS must be an ISO-8601 date-time, not {date_obs!r}")
    mjd_obs = required("MJD-OBS")
    if mjd_obs is not None and not _is_real(mjd_obs):
        add("type.MJD-OBS", "MJD-OBS", f"MJD-OBS must be a number, not {mjd_obs!r}")
    if moment is not None and isinstance(date_obs, str) and _is_real(mjd_obs):
        delta_s = abs(_mjd_fast(moment) - mjd_obs) * 86400.0
        if delta_s > _MJD_TOLERANCE_S:
            # Confirm with astropy in the header's own scale (handles UTC leap-second days).
            with contextlib.suppress(ValueError):
                delta_s = abs(_mjd_astropy(date_obs, scale or "tai") - mjd_obs) * 86400.0
            if delta_s > _MJD_TOLERANCE_S:
                add(
                    "time.mjd_mismatch",
                    "MJD-OBS",
                    f"MJD-OBS {mjd_obs} is {delta_s:.1f} s from DATE-OBS {date_obs} ({timesys or 'no TIMESYS'})",
                )

    # DATE-BEG .. DATE-END span the exposure and shutter motion; real headers run up to ~1 s past EXPTIME.
    date_beg, date_end = _value(header, "DATE-BEG"), _value(header, "DATE-END")
    if date_beg is not None and date_end is not None:
        beg = _parse_isot(date_beg) if isinstance(date_beg, str) else None
        end = _parse_isot(date_end) if isinstance(date_end, str) else None
        if beg is None:
            add("type.DATE-BEG", "DATE-BEG", f"DATE-BEG must be an ISO-8601 date-time, not {date_beg!r}")
        if end is None:
            add("type.DATE-END", "DATE-END", f"DATE-END must be an ISO-8601 date-time, not {date_end!r}")
        if beg is not None and end is not None:
            span = (end - beg).total_seconds()
            if span < 0:
                add("time.beg_end_order", "DATE-END", f"DATE-END {date_end} is before DATE-BEG {date_beg}")
            elif exptime is not None:
                near_exptime = abs(span - exptime) <= 1.0 + 0.05 * exptime
                near_darktime = darktime is not None and abs(span - darktime) <= 1.0
                if not (near_exptime or near_darktime):
                    add(
                        "time.exptime_mismatch",
                        "EXPTIME",
                        f"DATE-END - DATE-BEG is {span:.3f} s but EXPTIME is {exptime} s",
                    )

    # Detector.
    raft, slot = _value(header, "RAFTBAY"), _value(header, "CCDSLOT")
    for key, card in (("RAFTBAY", raft), ("CCDSLOT", slot)):
        if card is None or card == "":
            add("detector.missing", key, f"{key} is missing or null")
        elif not isinstance(card, str):
            add(f"type.{key}", key, f"{key} must be a string, not {card!r}")
    if instrument is not None and isinstance(raft, str) and isinstance(slot, str) and raft and slot:
        name = f"{raft}_{slot}"
        if name not in expected_detectors(instrument):
            add("detector.unknown", "CCDSLOT", f"{instrument} has no detector {name}")
    return findings


def _nonnegative_seconds(header: fits.Header | HeaderText, key: str, add: _Add) -> float | None:
    value = _value(header, key)
    if value is None:
        add(f"required.{key}", key, f"{key} is missing or null")
        return None
    if not _is_real(value):
        add(f"type.{key}", key, f"{key} must be a number of seconds, not {value!r}")
        return None
    seconds = float(value)
    if seconds < 0:
        add(f"range.{key}", key, f"{key} must not be negative, is {seconds}")
        return None
    return seconds
