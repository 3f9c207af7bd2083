"""The master calibration file: its HDUs, cards and tables, written deterministically.

Contract (subscribers rely on it):

- primary HDU: no data; ``CALIBTYP`` (BIAS/DARK/FLAT), ``BUNIT``, ``NFRAMES``, detector-level
  statistics, ``MP_<NAME>`` mask bits, then the caller's provenance cards (keys longer than 8
  characters become HIERARCH cards);
- ``IMAGE``: float32, rows x columns as DETSIZE, amplifiers placed by DETSEC;
- ``VARIANCE``: float32, same shape; ``MASK``: int16 bits (see :data:`processors.calib.isr.MASK_BITS`);
- ``INPUTS``: binary table ``name``, ``checksum``, ``used`` (bool), ``reason`` (why left out);
- ``STATS``: binary table, one row per amplifier: ``amp``, ``mean``, ``stdev``, ``read_noise_adu``,
  ``overscan_level_adu``, ``dark_current_adu_per_s`` (NaN where not applicable).

No card carries a time or a checksum the caller did not give, so the same inputs give the same bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from processors.calib.isr import MASK_BITS, AmpStats

__all__ = ["BUNITS", "ProvenanceValue", "write_master"]

ProvenanceValue = str | int | float | bool

BUNITS: Final[Mapping[str, str]] = {"bias": "adu", "dark": "adu / s", "flat": ""}
"""BUNIT of the IMAGE HDU per kind of master."""

_KEYWORD_RE: Final = re.compile(r"[A-Z0-9_-]{1,8}")


def _set(header: fits.Header, key: str, value: ProvenanceValue) -> None:
    upper = key.upper()
    if _KEYWORD_RE.fullmatch(upper):
        header[upper] = value
    else:
        header[f"HIERARCH {key}"] = value


def _number(value: float | None) -> float:
    return math.nan if value is None else float(value)


def write_master(
    path: Path | str,
    *,
    kind: str,
    image: NDArray[np.float32],
    variance: NDArray[np.float32],
    mask: NDArray[np.int16],
    amp_stats: Sequence[AmpStats],
    detector_cards: Mapping[str, ProvenanceValue],
    inputs: Sequence[tuple[str, str, bool, str]],
    provenance: Mapping[str, ProvenanceValue],
) -> None:
    """Write a master calibration file (overwriting ``path``; the caller renames it into place).

    Args:
        path: Where to write.
        kind: ``"bias"``, ``"dark"`` or ``"flat"``.
        image: Assembled master, float32.
        variance: Its variance, float32.
        mask: Its mask bits, int16.
        amp_stats: Per-amplifier statistics, in amplifier order.
        detector_cards: Detector-level statistics as cards (e.g. ``NFRAMES``, ``FLATSCAT``).
        inputs: ``(name, checksum, used, reason)`` per input frame, in input order.
        provenance: Cards given by the caller, written in sorted key order.
    """
    primary = fits.PrimaryHDU()
    header = primary.header
    header["CALIBTYP"] = kind.upper()
    header["BUNIT"] = BUNITS.get(kind, "")
    for key, value in detector_cards.items():
        _set(header, key, value)
    for name, bit in MASK_BITS.items():
        header[f"MP_{name}"[:8]] = bit
    for key in sorted(provenance):
        _set(header, key, provenance[key])

    image_hdu = fits.ImageHDU(np.ascontiguousarray(image, dtype=np.float32), name="IMAGE")
    image_hdu.header["BUNIT"] = BUNITS.get(kind, "")
    variance_hdu = fits.ImageHDU(np.ascontiguousarray(variance, dtype=np.float32), name="VARIANCE")
    mask_hdu = fits.ImageHDU(np.ascontiguousarray(mask, dtype=np.int16), name="MASK")
    for name, bit in MASK_BITS.items():
        mask_hdu.header[f"MP_{name}"[:8]] = bit

    width = max([8, *(len(name) for name, _, _, _ in inputs)])
    check_width = max([8, *(len(checksum) for _, checksum, _, _ in inputs)])
    reason_width = max([8, *(len(reason) for _, _, _, reason in inputs)])
    inputs_hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column(name="name", format=f"{width}A", array=np.array([row[0] for row in inputs], dtype=f"U{width}")),
            fits.Column(
                name="checksum",
                format=f"{check_width}A",
                array=np.array([row[1] for row in inputs], dtype=f"U{check_width}"),
            ),
            fits.Column(name="used", format="L", array=np.array([row[2] for row in inputs], dtype=bool)),
            fits.Column(
                name="reason",
                format=f"{reason_width}A",
                array=np.array([row[3] for row in inputs], dtype=f"U{reason_width}"),
            ),
        ],
        name="INPUTS",
    )
    amp_width = max([8, *(len(stat.name) for stat in amp_stats)])
    stats_hdu = fits.BinTableHDU.from_columns(
        [
            fits.Column(
                name="amp", format=f"{amp_width}A", array=np.array([s.name for s in amp_stats], dtype=f"U{amp_width}")
            ),
            *(
                fits.Column(
                    name=column,
                    format="D",
                    array=np.array([_number(getattr(stat, column)) for stat in amp_stats], dtype=np.float64),
                )
                for column in ("mean", "stdev", "read_noise_adu", "overscan_level_adu", "dark_current_adu_per_s")
            ),
        ],
        name="STATS",
    )
    fits.HDUList([primary, image_hdu, variance_hdu, mask_hdu, inputs_hdu, stats_hdu]).writeto(path, overwrite=True)
