"""The observation id: parse it, build it as the camera does, and derive it for a header that lacks one.

An OBSID is ``<camcode>_<controller>_<dayobs>_<seqnum:06d>``, e.g. ``CC_O_20241108_000266``. It names an
observation's correction file, so :func:`correction_key` says which file a header needs before it is
repaired.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Final

from processors.detectors import CAMERA_CODES, instrument_for_camera_code
from processors.headers.cards import _as_str, _canonical_or_none, _dayobs_text, _is_int, _sibling_context, _value

__all__ = ["correction_key", "derive_obsid", "parse_obsid"]

_OBSID_RE: Final = re.compile(r"([A-Z]{2})_([A-Z])_(\d{8})_(\d{6,})")


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


def _missing_obsid(header: Mapping[str, object], known: Callable[[str], object]) -> tuple[str, str] | None:
    """The OBSID for a header without one, and the rule that derives it; None when nothing does.

    IMGNAME is read from the header itself; the other parts may come from the sibling detectors (``known``).
    """
    imgname = _value(header, "IMGNAME")
    if isinstance(imgname, str) and parse_obsid(imgname) is not None:
        return imgname, "rule:obsid.from_imgname"
    derived = derive_obsid(
        instrument=_as_str(known("INSTRUME")),
        dayobs=known("DAYOBS"),
        seqnum=known("SEQNUM"),
        camcode=known("CAMCODE") or known("TELCODE"),
        controller=known("CONTRLLR"),
    )
    return (derived, "rule:obsid.from_dayobs_seqnum") if derived is not None else None


def _instrument_of(known: Callable[[str], object], obsid: object) -> str | None:
    """INSTRUME as written (header, then siblings), else the instrument of the OBSID's camera code."""
    instrument = _as_str(known("INSTRUME"))
    parts = parse_obsid(obsid) if isinstance(obsid, str) else None
    if instrument is None and parts is not None:
        instrument = instrument_for_camera_code(parts[0])
    return instrument


def correction_key(
    header: Mapping[str, object], *, exposure_context: Mapping[str, object] | None = None
) -> tuple[str, str] | None:
    """Name the observation whose correction file applies to a header, as :func:`repair_header` identifies it.

    The OBSID is the header's, or (when missing) the one repair derives from IMGNAME or from
    DAYOBS/SEQNUM/CAMCODE; the instrument is INSTRUME, or the OBSID's camera code's instrument.

    Args:
        header: The primary header as received.
        exposure_context: Keyword -> value agreed by the sibling detectors, as given to :func:`repair_header`.

    Returns:
        ``(instrument, obsid)`` as written (the instrument may be any alias), or None when either is unknown.
    """
    context = _sibling_context(exposure_context)

    def known(key: str) -> object:
        value = _value(header, key)
        return value if value is not None else _value(context, key)

    obsid = _value(header, "OBSID")
    if obsid is None:
        missing = _missing_obsid(header, known)
        obsid = missing[0] if missing is not None else None
    if not isinstance(obsid, str):
        return None
    instrument = _instrument_of(known, obsid)
    return (instrument, obsid) if instrument is not None else None
