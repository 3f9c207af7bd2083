"""Amplifier geometry: FITS sections, where each amplifier's pixels lie in its extension and in the detector.

A FITS section ``[x1:x2,y1:y2]`` is 1-based and inclusive, columns first. In ``DETSEC`` either range may
run backwards (``[509:1,1:2000]``): the amplifier was read out in the other direction and its pixels are
flipped along that axis when the detector is assembled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = [
    "AmpGeometry",
    "LayoutError",
    "Section",
    "amp_geometry",
    "parse_section",
]

_SECTION_RE: Final = re.compile(r"\s*\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]\s*")


class LayoutError(ValueError):
    """A section card is missing or malformed, or the amplifier geometry is inconsistent."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Section:
    """A rectangular FITS section, kept as written (1-based, inclusive, possibly reversed).

    Attributes:
        x1: First column as written.
        x2: Last column as written (smaller than ``x1`` when the columns run backwards).
        y1: First row as written.
        y2: Last row as written (smaller than ``y1`` when the rows run backwards).
    """

    x1: int
    x2: int
    y1: int
    y2: int

    @property
    def flip_x(self) -> bool:
        """True when the columns run backwards."""
        return self.x2 < self.x1

    @property
    def flip_y(self) -> bool:
        """True when the rows run backwards."""
        return self.y2 < self.y1

    @property
    def width_px(self) -> int:
        """Number of columns."""
        return abs(self.x2 - self.x1) + 1

    @property
    def height_px(self) -> int:
        """Number of rows."""
        return abs(self.y2 - self.y1) + 1

    @property
    def columns(self) -> slice:
        """0-based numpy slice of the columns, in ascending order."""
        return slice(min(self.x1, self.x2) - 1, max(self.x1, self.x2))

    @property
    def rows(self) -> slice:
        """0-based numpy slice of the rows, in ascending order."""
        return slice(min(self.y1, self.y2) - 1, max(self.y1, self.y2))

    def to_card(self) -> str:
        """Return the section as a card value, e.g. ``"[509:1,1:2000]"``."""
        return f"[{self.x1}:{self.x2},{self.y1}:{self.y2}]"


def parse_section(text: object) -> Section:
    """Parse a FITS section card value.

    Args:
        text: e.g. ``"[4:512,1:2000]"`` or ``"[509:1,4000:2001]"``.

    Returns:
        The section, as written.

    Raises:
        LayoutError: The value is not a string of the form ``[x1:x2,y1:y2]`` with positive integers.
    """
    if not isinstance(text, str):
        raise LayoutError(f"a section must be a string like '[1:10,1:20]', not {text!r}")
    match = _SECTION_RE.fullmatch(text)
    if match is None:
        raise LayoutError(f"{text!r} is not a section like '[1:10,1:20]'")
    x1, x2, y1, y2 = (int(group) for group in match.groups())
    if min(x1, x2, y1, y2) < 1:
        raise LayoutError(f"{text!r}: sections are 1-based")
    return Section(x1=x1, x2=x2, y1=y1, y2=y2)


@dataclass(frozen=True, slots=True, kw_only=True)
class AmpGeometry:
    """Where one amplifier's pixels are, in its extension and in the assembled detector.

    Attributes:
        name: EXTNAME, e.g. ``"Segment10"``.
        shape_px: (rows, columns) of the extension's image.
        datasec: Imaging pixels within the extension (never reversed).
        biassec: Serial overscan columns within the extension (all rows of DATASEC).
        detsec: Where the imaging pixels go in the detector (possibly reversed).
        detsize_px: (rows, columns) of the assembled detector.
    """

    name: str
    shape_px: tuple[int, int]
    datasec: Section
    biassec: Section
    detsec: Section
    detsize_px: tuple[int, int]

    @property
    def det_rows(self) -> slice:
        """0-based rows of the amplifier in the assembled detector."""
        return self.detsec.rows

    @property
    def det_columns(self) -> slice:
        """0-based columns of the amplifier in the assembled detector."""
        return self.detsec.columns


def amp_geometry(header: Mapping[str, object], shape_px: tuple[int, int], *, name: str | None = None) -> AmpGeometry:
    """Read an amplifier's geometry from its extension header.

    When BIASSEC is absent the overscan is taken to be every column right of DATASEC (or left of it when
    DATASEC ends at the last column), over DATASEC's rows, as in Rubin raws.

    Args:
        header: The extension header (DATASEC, DETSEC, DETSIZE, optional BIASSEC and EXTNAME).
        shape_px: (rows, columns) of the extension's data.
        name: EXTNAME to use when the header has none.

    Returns:
        The geometry.

    Raises:
        LayoutError: A card is missing or malformed, or the sections do not fit the data or each other.
    """
    extname = header.get("EXTNAME", name)
    if not isinstance(extname, str) or not extname:
        raise LayoutError("the amplifier has no EXTNAME")
    cards: dict[str, Section] = {}
    for key in ("DATASEC", "DETSEC", "DETSIZE"):
        if header.get(key) is None:
            raise LayoutError(f"{extname}: {key} is missing")
        cards[key] = parse_section(header.get(key))
    datasec, detsec, detsize = cards["DATASEC"], cards["DETSEC"], cards["DETSIZE"]
    rows, columns = shape_px
    if datasec.flip_x or datasec.flip_y:
        raise LayoutError(f"{extname}: DATASEC {datasec.to_card()} must not be reversed")
    if datasec.columns.stop > columns or datasec.rows.stop > rows:
        raise LayoutError(f"{extname}: DATASEC {datasec.to_card()} lies outside the {rows}x{columns} image")
    if (detsec.width_px, detsec.height_px) != (datasec.width_px, datasec.height_px):
        raise LayoutError(f"{extname}: DETSEC {detsec.to_card()} and DATASEC {datasec.to_card()} differ in size")
    if detsec.columns.stop > detsize.width_px or detsec.rows.stop > detsize.height_px:
        raise LayoutError(f"{extname}: DETSEC {detsec.to_card()} lies outside DETSIZE {detsize.to_card()}")
    raw_biassec = header.get("BIASSEC")
    if raw_biassec is not None:
        biassec = parse_section(raw_biassec)
    elif datasec.columns.stop < columns:
        biassec = Section(x1=datasec.columns.stop + 1, x2=columns, y1=datasec.y1, y2=datasec.y2)
    elif datasec.columns.start > 0:
        biassec = Section(x1=1, x2=datasec.columns.start, y1=datasec.y1, y2=datasec.y2)
    else:
        raise LayoutError(f"{extname}: no BIASSEC and no overscan columns beside DATASEC")
    if biassec.flip_x or biassec.flip_y or biassec.columns.stop > columns or biassec.rows.stop > rows:
        raise LayoutError(f"{extname}: BIASSEC {biassec.to_card()} does not fit the {rows}x{columns} image")
    if biassec.rows != datasec.rows:
        raise LayoutError(f"{extname}: BIASSEC {biassec.to_card()} must cover the rows of DATASEC")
    return AmpGeometry(
        name=extname,
        shape_px=(rows, columns),
        datasec=datasec,
        biassec=biassec,
        detsec=detsec,
        detsize_px=(detsize.height_px, detsize.width_px),
    )
