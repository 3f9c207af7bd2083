"""Per-instrument detector tables and instrument names.

The archive uses these tables for completeness tracking: an exposure is complete when a file has arrived
for every detector the instrument is expected to read out.

Instrument names are canonicalised to ``LATISS``, ``ComCam`` and ``LSSTCam``. ``ComCam`` (not
``LSSTComCam``) is canonical because it is what the camera writes in ``INSTRUME``; ``LSSTComCam`` is the
name used by the Butler and by the astro_metadata_translator correction files, so it is accepted as an
alias, as is every spelling seen in real headers (``COMCAM``, ``lsstCam``). Matching is
case-insensitive.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "CAMERA_CODES",
    "DetectorError",
    "UnknownInstrument",
    "canonical_instrument",
    "detector_name",
    "expected_detectors",
    "instrument_aliases",
    "instrument_for_camera_code",
]


class DetectorError(Exception):
    """Base class of errors about instruments and detectors."""


class UnknownInstrument(DetectorError, KeyError):
    """The instrument name is not one skyrelay knows the detectors of."""

    def __str__(self) -> str:
        return f"unknown instrument: {self.args[0]!r}" if self.args else "unknown instrument"


_ALIASES: dict[str, tuple[str, ...]] = {
    "LATISS": ("LATISS",),
    "ComCam": ("ComCam", "LSSTComCam"),
    "LSSTCam": ("LSSTCam", "lsstCam"),
}

_CANONICAL_BY_FOLDED: dict[str, str] = {
    alias.casefold(): canonical for canonical, aliases in _ALIASES.items() for alias in aliases
}

CAMERA_CODES: Mapping[str, str] = {"LATISS": "AT", "ComCam": "CC", "LSSTCam": "MC"}
"""Two-letter camera code used in OBSID (``AT_O_20240624_000106``) per canonical instrument."""

_INSTRUMENT_BY_CODE = {code: name for name, code in CAMERA_CODES.items()}

_SENSORS = tuple(f"S{x}{y}" for x in range(3) for y in range(3))
_SCIENCE_RAFTS = tuple(f"R{x}{y}" for x in range(5) for y in range(5) if (x, y) not in {(0, 0), (0, 4), (4, 0), (4, 4)})
_CORNER_RAFTS = ("R00", "R04", "R40", "R44")

_DETECTORS: dict[str, frozenset[str]] = {
    "LATISS": frozenset({"R00_S00"}),
    "ComCam": frozenset(f"R22_{s}" for s in _SENSORS),
    "LSSTCam": frozenset(
        [f"{r}_{s}" for r in _SCIENCE_RAFTS for s in _SENSORS]
        + [f"{r}_{s}" for r in _CORNER_RAFTS for s in ("SG0", "SG1", "SW0", "SW1")]
    ),
}


def canonical_instrument(name: str) -> str:
    """Return the canonical name of an instrument.

    Args:
        name: An instrument name as written in ``INSTRUME`` or used by the Butler, any case
            (``"LSSTComCam"``, ``"COMCAM"``, ``"lsstCam"``).

    Returns:
        ``"LATISS"``, ``"ComCam"`` or ``"LSSTCam"``.

    Raises:
        UnknownInstrument: The name is not a known instrument or alias.
    """
    try:
        return _CANONICAL_BY_FOLDED[name.strip().casefold()]
    except KeyError:
        raise UnknownInstrument(name) from None


def instrument_aliases(name: str) -> tuple[str, ...]:
    """Return every spelling of an instrument used in file names, canonical first.

    Args:
        name: Any known name of the instrument.

    Returns:
        The canonical name followed by its aliases (e.g. ``("ComCam", "LSSTComCam")``).

    Raises:
        UnknownInstrument: The name is not a known instrument or alias.
    """
    return _ALIASES[canonical_instrument(name)]


def instrument_for_camera_code(code: str) -> str | None:
    """Return the canonical instrument whose OBSID camera code is ``code`` (``"CC"`` -> ``"ComCam"``)."""
    return _INSTRUMENT_BY_CODE.get(code)


def expected_detectors(instrument: str) -> frozenset[str]:
    """Return the detectors an exposure of ``instrument`` is expected to contain.

    LATISS has one detector, ComCam one raft of nine, and LSSTCam 189 science detectors plus the
    8 guider and 8 wavefront half-sensors of its four corner rafts (205 in all).

    Args:
        instrument: Any known name of the instrument.

    Returns:
        Detector names in ``<RAFTBAY>_<CCDSLOT>`` form, e.g. ``"R22_S11"``.

    Raises:
        UnknownInstrument: The name is not a known instrument or alias.
    """
    return _DETECTORS[canonical_instrument(instrument)]


def detector_name(header: Mapping[str, object]) -> str | None:
    """Return the detector of a header as ``f"{RAFTBAY}_{CCDSLOT}"``.

    Args:
        header: A FITS header or any mapping of cards.

    Returns:
        The detector name, or None when either keyword is absent, null or not a non-empty string.
    """
    raft = header.get("RAFTBAY")
    slot = header.get("CCDSLOT")
    if isinstance(raft, str) and isinstance(slot, str) and raft and slot:
        return f"{raft}_{slot}"
    return None
