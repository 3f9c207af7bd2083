"""Verify and fix the primary headers of camera FITS files.

Everything here is pure and synchronous: functions take an :class:`astropy.io.fits.Header` and return
findings, fixes and a new header; nothing is written to disk and the input header is never mutated.

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

Fix rules (``Fix.source == "rule:<id>"``): ``obsid.from_imgname``, ``obsid.from_dayobs_seqnum``,
``instrument.from_obsid``, ``dayobs.from_obsid``, ``seqnum.from_obsid``, ``context.sibling_detectors``,
``time.timesys_rubin_tai``, ``time.mjd_from_date_obs``, ``time.date_obs_from_mjd``,
``detector.single_detector``, ``detector.from_filename``, ``detector.from_chipid``. Fixes read from a
correction file have ``Fix.source == "file:<path>"``.
"""

from __future__ import annotations

import contextlib
import math
import re
import textwrap
import time as _time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Final, TypeAlias, TypeGuard

import yaml
from astropy.io import fits
from astropy.io.fits.card import Undefined
from astropy.time import Time

from processors.detectors import (
    CAMERA_CODES,
    UnknownInstrument,
    canonical_instrument,
    detector_name,
    expected_detectors,
    instrument_aliases,
    instrument_for_camera_code,
)

__all__ = [
    "IMGTYPES",
    "NO_FILTER_IMGTYPES",
    "CorrectionFileError",
    "Finding",
    "Fix",
    "HeaderError",
    "HeaderReport",
    "derive_obsid",
    "header_summary",
    "load_corrections",
    "measure_verify_us",
    "parse_obsid",
    "repair_header",
    "verify_header",
]

HISTORY_WIDTH: Final = 72
"""Characters of text a FITS HISTORY card holds."""

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
_OBSID_RE: Final = re.compile(r"([A-Z]{2})_([A-Z])_(\d{8})_(\d{6,})")
_DAYOBS_RE: Final = re.compile(r"\d{8}")
_FILENAME_DETECTOR_RE: Final = re.compile(r"_(R\d\d)_(S[A-Z0-9]{2})(?:_[A-Za-z0-9]+)?\.fits(?:\.fz)?$")
_CHIPID_RE: Final = re.compile(r"(R\d\d)_(S[A-Z0-9]{2})")
_SAFE_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FITS_KEYWORD_RE: Final = re.compile(r"[A-Z0-9_-]{1,8}")
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


_Add: TypeAlias = Callable[[str, str | None, str], None]


class HeaderError(Exception):
    """Base class of header processing errors."""


class CorrectionFileError(HeaderError):
    """A correction file exists but cannot be read or is not a flat mapping of cards."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    """One thing wrong with a header.

    Attributes:
        rule: Stable rule id, e.g. ``"time.mjd_mismatch"``.
        keyword: The keyword at fault, when there is one.
        message: What is wrong, for people.
    """

    rule: str
    keyword: str | None
    message: str

    def to_dict(self) -> dict[str, str | None]:
        """Return the finding as a JSON-able mapping."""
        return {"rule": self.rule, "keyword": self.keyword, "message": self.message}


@dataclass(frozen=True, slots=True, kw_only=True)
class Fix:
    """One change made to a header, with its justification.

    Attributes:
        keyword: The card changed.
        old: Its value before (None when absent or null).
        new: Its value after.
        source: ``"rule:<id>"`` or ``"file:<path of the correction file>"``.
    """

    keyword: str
    old: object
    new: object
    source: str

    def to_dict(self) -> dict[str, object]:
        """Return the fix as a JSON-able mapping."""
        return {"keyword": self.keyword, "old": self.old, "new": self.new, "source": self.source}

    def history_card(self) -> str:
        """Return a one-card summary of the fix, at most 72 characters.

        The form is ``skyrelay fix <KEY>: <old> -> <new> (<source>)``. When that is too long, a
        correction file is named without its directory, "fix" is dropped, floats lose digits (down to 6
        significant) and finally values are cut short; :meth:`history_cards` keeps the complete record.
        """
        source = self.source
        if source.startswith("file:"):
            source = "file:" + Path(source[5:]).name
        old, new = _history_value(self.old), _history_value(self.new)
        for digits in (None, 10, 9, 8, 7, 6):
            if digits is not None:
                old = f"{self.old:.{digits}g}" if isinstance(self.old, float) else old
                new = f"{self.new:.{digits}g}" if isinstance(self.new, float) else new
            for compact in (False, True):
                line = _history_line(self.keyword, old, new, source, compact=compact)
                if len(line) <= HISTORY_WIDTH:
                    return line
        budget = max(4, (HISTORY_WIDTH - len(_history_line(self.keyword, "", "", source, compact=True))) // 2)
        line = _history_line(self.keyword, _shorten(old, budget), _shorten(new, budget), source, compact=True)
        return line[:HISTORY_WIDTH]

    def history_cards(self) -> tuple[str, ...]:
        """Return the complete record of the fix as HISTORY card texts of at most 72 characters.

        The record is one line when it fits and is wrapped onto indented continuation cards otherwise.
        """
        line = _history_line(self.keyword, _history_value(self.old), _history_value(self.new), self.source)
        if len(line) <= HISTORY_WIDTH:
            return (line,)
        return tuple(
            textwrap.wrap(
                line,
                width=HISTORY_WIDTH,
                subsequent_indent="  ",
                break_long_words=True,
                break_on_hyphens=False,
            )
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderReport:
    """The outcome of :func:`repair_header`.

    Attributes:
        header: The repaired copy of the header, with one HISTORY record per fix.
        fixes: Every change made, in the order applied.
        findings: What is still wrong after the fixes.
        correction_file: The correction file applied, if any.
    """

    header: fits.Header
    fixes: tuple[Fix, ...]
    findings: tuple[Finding, ...]
    correction_file: Path | None = None

    @property
    def ok(self) -> bool:
        """True when nothing is left wrong."""
        return not self.findings

    def history_cards(self) -> list[str]:
        """Return the HISTORY card texts recording every fix (each at most 72 characters)."""
        return [card for fix in self.fixes for card in fix.history_cards()]


# ---------------------------------------------------------------------------------------------------------
# Small readers


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
    return float(Time(value.strip(), scale=scale).mjd)


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


def parse_obsid(obsid: str) -> tuple[str, str, str, int] | None:
    """Split an OBSID into its parts.

    Args:
        obsid: e.g. ``"CC_O_20241108_000266"``.

    Returns:
        ``(camera code, controller, dayobs, seqnum)``, e.g. ``("CC", "O", "20241108", 266)``, or None
        when the string is not an OBSID.
    """
    match = _OBSID_RE.fullmatch(obsid)
    if match is None:
        return None
    code, controller, dayobs, seqnum = match.groups()
    return code, controller, dayobs, int(seqnum)


def derive_obsid(
    *, instrument: str | None, dayobs: object, seqnum: object, camcode: object = None, controller: object = None
) -> str | None:
    """Build an OBSID as the camera does: ``<camcode>_<controller>_<dayobs>_<seqnum:06d>``.

    Args:
        instrument: Instrument name, used for the camera code when ``camcode`` is not given.
        dayobs: DAYOBS (8-digit string or int).
        seqnum: SEQNUM.
        camcode: CAMCODE (or the older TELCODE) card value, if known.
        controller: CONTRLLR card value; ``"O"`` (observatory) when not known.

    Returns:
        The OBSID, or None when the parts are missing or malformed.
    """
    day = _dayobs_text(dayobs)
    if day is None or not _is_int(seqnum) or seqnum < 0:
        return None
    code = camcode if isinstance(camcode, str) and re.fullmatch(r"[A-Z]{2}", camcode) else None
    if code is None:
        canonical = _canonical_or_none(instrument)
        code = CAMERA_CODES.get(canonical) if canonical else None
    if code is None:
        return None
    ctrl = controller if isinstance(controller, str) and re.fullmatch(r"[A-Z]", controller) else "O"
    return f"{code}_{ctrl}_{day}_{seqnum:06d}"


# ---------------------------------------------------------------------------------------------------------
# Verification


def verify_header(header: fits.Header) -> list[Finding]:
    """Check a primary header against the rules skyrelay archives by.

    Checks required keywords and their types, DATE-OBS against MJD-OBS in the header's TIMESYS,
    DATE-BEG/DATE-END against EXPTIME, DARKTIME, the IMGTYPE vocabulary, FILTER on non-bias frames,
    OBSID against DAYOBS/SEQNUM/CAMCODE/CONTRLLR/INSTRUME, and the detector keys. Times are compared
    with plain calendar arithmetic and only a disagreement is confirmed with :mod:`astropy.time`, which
    keeps a clean header well under a millisecond.

    Args:
        header: A primary header (or any mapping of cards).

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


def _nonnegative_seconds(header: fits.Header, key: str, add: _Add) -> float | None:
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


# ---------------------------------------------------------------------------------------------------------
# Corrections


def load_corrections(dirs: Sequence[Path], instrument: str, obsid: str) -> tuple[dict[str, object], Path] | None:
    """Find and read the correction file of one observation.

    Follows astro_metadata_translator's convention: ``<instrument>-<obsid>.yaml`` holds a flat mapping
    of cards to overwrite. Directories are searched in order and the first file found wins; within a
    directory every spelling of the instrument is tried (``ComCam`` and ``LSSTComCam``).

    Args:
        dirs: Directories to search, most authoritative first.
        instrument: Instrument name as in INSTRUME or any alias.
        obsid: The observation id, e.g. ``"AT_O_20200217_000238"``.

    Returns:
        ``(cards, path)``, or None when no directory holds a file for the observation (or the names are
        not safe to use in a file name).

    Raises:
        CorrectionFileError: A matching file cannot be read, is not YAML, or is not a flat mapping of
            card names to scalar values.
    """
    if not _SAFE_NAME_RE.fullmatch(obsid) or not _SAFE_NAME_RE.fullmatch(instrument):
        return None
    try:
        names: tuple[str, ...] = (instrument, *instrument_aliases(instrument))
    except UnknownInstrument:
        names = (instrument,)
    names = tuple(dict.fromkeys(names))
    for directory in dirs:
        for name in names:
            path = Path(directory) / f"{name}-{obsid}.yaml"
            if path.is_file():
                return _read_correction_file(path), path
    return None


def _read_correction_file(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorrectionFileError(path, f"cannot read: {exc}") from exc
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CorrectionFileError(path, f"not valid YAML: {exc}") from exc
    if not isinstance(content, dict):
        raise CorrectionFileError(path, "not a mapping of cards")
    cards: dict[str, object] = {}
    for key, value in content.items():
        if not isinstance(key, str) or not key.strip():
            raise CorrectionFileError(path, f"card name {key!r} is not a string")
        if isinstance(value, datetime):
            value = value.isoformat(timespec="milliseconds")
        elif isinstance(value, date):
            value = value.isoformat()
        if value is not None and not isinstance(value, str | int | float | bool):
            raise CorrectionFileError(path, f"card {key} has a value that is not a scalar: {value!r}")
        cards[key.strip().upper()] = value
    return cards


# ---------------------------------------------------------------------------------------------------------
# Repair


class _Editor:
    """Applies changes to the working copy of a header and records them as fixes."""

    def __init__(self, header: fits.Header) -> None:
        self.header = header
        self.fixes: list[Fix] = []

    def get(self, key: str) -> object:
        return _value(self.header, key)

    def set(self, key: str, value: object, source: str) -> None:
        old = self.get(key)
        if old == value and type(old) is type(value):
            return
        if key in self.header or _FITS_KEYWORD_RE.fullmatch(key):
            self.header[key] = value
        else:
            self.header[f"HIERARCH {key}"] = value
        self.fixes.append(Fix(keyword=key, old=_jsonable(old), new=_jsonable(value), source=source))


def repair_header(
    header: fits.Header,
    *,
    correction_dirs: Sequence[Path] = (),
    exposure_context: Mapping[str, object] | None = None,
) -> HeaderReport:
    """Return a fixed copy of a header, with a record of every fix and of what is still wrong.

    Order: the OBSID is derived when missing (it names the correction file); the observation's
    correction file, if any, overwrites cards; values agreed by the other detectors of the exposure
    (``exposure_context``) fill missing or null cards; then rules fill what is derivable: DAYOBS/SEQNUM
    from OBSID, INSTRUME from the OBSID's camera code, TIMESYS = TAI for Rubin cameras (the Rubin header
    service always writes TAI), MJD-OBS from DATE-OBS (DATE-OBS wins a disagreement), DATE-OBS from
    MJD-OBS when only the latter exists, and the detector from the instrument (LATISS has one), FILENAME
    or CHIPID. A HISTORY record of each fix is added to the copy. The input header is not modified.

    Args:
        header: The primary header as received.
        correction_dirs: Directories of ``<instrument>-<obsid>.yaml`` correction files, in priority order.
        exposure_context: Keyword -> value agreed by the sibling detectors of the same exposure (e.g.
            IMGTYPE, FILTER, EXPTIME, DATE-OBS). Detector-specific keywords in it are ignored.

    Returns:
        The report; ``report.ok`` is True when no finding is left.

    Raises:
        CorrectionFileError: The observation's correction file exists but is malformed.
    """
    editor = _Editor(header.copy())
    context = {k.upper(): v for k, v in (exposure_context or {}).items() if k.upper() not in _PER_DETECTOR_KEYS}

    def known(key: str) -> object:
        value = editor.get(key)
        return value if value is not None else _value(context, key)

    # 1. OBSID (needed to find the correction file).
    # A malformed OBSID is left alone (and reported): only a missing one is derived.
    obsid = editor.get("OBSID")
    if obsid is None:
        imgname = editor.get("IMGNAME")
        if isinstance(imgname, str) and parse_obsid(imgname) is not None:
            editor.set("OBSID", imgname, "rule:obsid.from_imgname")
        else:
            derived = derive_obsid(
                instrument=_as_str(known("INSTRUME")),
                dayobs=known("DAYOBS"),
                seqnum=known("SEQNUM"),
                camcode=known("CAMCODE") or known("TELCODE"),
                controller=known("CONTRLLR"),
            )
            if derived is not None:
                editor.set("OBSID", derived, "rule:obsid.from_dayobs_seqnum")
    obsid = editor.get("OBSID")
    parts = parse_obsid(obsid) if isinstance(obsid, str) else None
    instrument = _as_str(known("INSTRUME"))
    if instrument is None and parts is not None:
        instrument = instrument_for_camera_code(parts[0])

    # 2. The observation's correction file.
    correction_file: Path | None = None
    if correction_dirs and instrument is not None and isinstance(obsid, str):
        found = load_corrections(correction_dirs, instrument, obsid)
        if found is not None:
            cards, correction_file = found
            for key, value in cards.items():
                editor.set(key, value, f"file:{correction_file}")
            obsid = editor.get("OBSID")
            parts = parse_obsid(obsid) if isinstance(obsid, str) else None

    # 3. Values agreed by the sibling detectors.
    for key, value in context.items():
        if value is not None and not isinstance(value, Undefined) and editor.get(key) is None:
            editor.set(key, value, "rule:context.sibling_detectors")

    # 4. Rules.
    if parts is not None:
        code, _, obs_day, obs_seq = parts
        if editor.get("DAYOBS") is None:
            editor.set("DAYOBS", obs_day, "rule:dayobs.from_obsid")
        if editor.get("SEQNUM") is None:
            editor.set("SEQNUM", obs_seq, "rule:seqnum.from_obsid")
        by_code = instrument_for_camera_code(code)
        if editor.get("INSTRUME") is None and by_code is not None:
            editor.set("INSTRUME", by_code, "rule:instrument.from_obsid")
    canonical = _canonical_or_none(editor.get("INSTRUME"))
    if editor.get("TIMESYS") is None and canonical is not None:
        editor.set("TIMESYS", "TAI", "rule:time.timesys_rubin_tai")
    _repair_times(editor)
    _repair_detector(editor, canonical)

    repaired = editor.header
    fixes = tuple(editor.fixes)
    for fix in fixes:
        for text in fix.history_cards():
            repaired.add_history(text)
    return HeaderReport(
        header=repaired,
        fixes=fixes,
        findings=tuple(verify_header(repaired)),
        correction_file=correction_file,
    )


def _repair_times(editor: _Editor) -> None:
    timesys = editor.get("TIMESYS")
    scale = _TIME_SCALES.get(timesys.strip().upper()) if isinstance(timesys, str) else None
    if scale is None:
        return
    date_obs, mjd_obs = editor.get("DATE-OBS"), editor.get("MJD-OBS")
    if isinstance(date_obs, str) and _parse_isot(date_obs) is not None:
        try:
            truth = _mjd_astropy(date_obs, scale)
        except ValueError:
            return
        if not _is_real(mjd_obs) or abs(truth - mjd_obs) * 86400.0 > _MJD_TOLERANCE_S:
            editor.set("MJD-OBS", truth, "rule:time.mjd_from_date_obs")
    elif date_obs is None and _is_real(mjd_obs):
        moment = Time(mjd_obs, format="mjd", scale=scale)
        editor.set("DATE-OBS", moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3], "rule:time.date_obs_from_mjd")


def _repair_detector(editor: _Editor, instrument: str | None) -> None:
    if editor.get("RAFTBAY") is not None and editor.get("CCDSLOT") is not None:
        return
    found: tuple[str, str, str] | None = None
    if instrument is not None and len(expected_detectors(instrument)) == 1:
        (only,) = expected_detectors(instrument)
        raft, slot = only.split("_")
        found = (raft, slot, "rule:detector.single_detector")
    else:
        filename, chipid = editor.get("FILENAME"), editor.get("CHIPID")
        if isinstance(filename, str) and (match := _FILENAME_DETECTOR_RE.search(filename)):
            found = (match.group(1), match.group(2), "rule:detector.from_filename")
        elif isinstance(chipid, str) and (match := _CHIPID_RE.fullmatch(chipid)):
            found = (match.group(1), match.group(2), "rule:detector.from_chipid")
    if found is None:
        return
    raft, slot, source = found
    # Fill only what is missing, and only when the other half (if present) agrees with the source.
    current_raft, current_slot = editor.get("RAFTBAY"), editor.get("CCDSLOT")
    if current_raft not in (None, raft) or current_slot not in (None, slot):
        return
    if current_raft is None:
        editor.set("RAFTBAY", raft, source)
    if current_slot is None:
        editor.set("CCDSLOT", slot, source)


# ---------------------------------------------------------------------------------------------------------
# Summary and benchmark


def header_summary(header: fits.Header) -> dict[str, object]:
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
    """Measure the mean time :func:`verify_header` takes on one header, for ``skyrelay bench``.

    Args:
        n: Number of verifications to time.
        header: Header to verify; by default a clean ComCam header parsed from its FITS bytes,
            padded to a real header's length.

    Returns:
        Mean microseconds per header.
    """
    if header is None:
        sample = fits.Header(list(_BENCH_CARDS))
        for index in range(100):
            sample[f"PAD{index:05d}"] = float(index)
        header = fits.Header.fromstring(sample.tostring())
    runs = max(1, n)
    verify_header(header)
    start = _time.perf_counter()
    for _ in range(runs):
        verify_header(header)
    return (_time.perf_counter() - start) / runs * 1e6


# ---------------------------------------------------------------------------------------------------------
# Formatting helpers


def _as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, Undefined):
        return None
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _history_value(value: object) -> str:
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, str) else str(value)
    return _ascii(text)


def _ascii(text: str) -> str:
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


def _history_line(keyword: str, old: str, new: str, source: str, *, compact: bool = False) -> str:
    prefix = "skyrelay" if compact else "skyrelay fix"
    return _ascii(f"{prefix} {keyword}: {old} -> {new} ({source})")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 3)] + "..."
