"""Postage stamps: a small square of an image around a source, as FITS bytes with a minimal WCS."""

from __future__ import annotations

import numpy as np
from astropy.io import fits

from processors.diffim.calexp import FloatImage

__all__ = ["CutoutWriter", "cutout_array", "cutout_fits"]

_WCS_KEYS = ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CUNIT1", "CUNIT2", "RADESYS", "EQUINOX")
_MATRIX_KEYS = ("CD1_1", "CD1_2", "CD2_1", "CD2_2", "PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2")
_BLOCK = 2880


def cutout_array(image: FloatImage, x_px: float, y_px: float, size: int = 31) -> tuple[FloatImage, int, int]:
    """A ``size`` x ``size`` cut centred on the pixel nearest (x, y), zero-padded beyond the image.

    Returns:
        The cut and the (x0, y0) image pixel of its corner (may be negative).
    """
    half = size // 2
    cx, cy = round(x_px), round(y_px)
    x0, y0 = cx - half, cy - half
    out = np.zeros((size, size), dtype=np.float32)
    ny, nx = image.shape
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(nx, x0 + size), min(ny, y0 + size)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out, x0, y0


class CutoutWriter:
    """Writes many cutouts of one image's grid fast: the header is built once, only CRPIX changes.

    The bytes are a standard one-HDU FITS file (BITPIX -32) that astropy reads back unchanged.
    """

    def __init__(self, wcs_header: fits.Header, size: int = 31) -> None:
        self.size = size
        self._crpix = (float(wcs_header["CRPIX1"]), float(wcs_header["CRPIX2"]))
        header = fits.Header()
        header["SIMPLE"] = True
        header["BITPIX"] = -32
        header["NAXIS"] = 2
        header["NAXIS1"] = size
        header["NAXIS2"] = size
        for key in (*_WCS_KEYS, *_MATRIX_KEYS):
            if key in wcs_header:
                header[key] = wcs_header[key]
        self._head = "".join(card.image for card in header.cards)

    def write(self, image: FloatImage, x_px: float, y_px: float) -> bytes:
        """The FITS bytes of the cutout of ``image`` around (x, y) (0-based pixels)."""
        data, x0, y0 = cutout_array(image, x_px, y_px, self.size)
        cards = [
            fits.Card("CRPIX1", self._crpix[0] - x0).image,
            fits.Card("CRPIX2", self._crpix[1] - y0).image,
            fits.Card("LTV1", -x0, "cutout origin offset, x").image,
            fits.Card("LTV2", -y0, "cutout origin offset, y").image,
            "END".ljust(80),
        ]
        text = self._head + "".join(cards)
        text += " " * (-len(text) % _BLOCK)
        raw = data.astype(">f4").tobytes()
        return text.encode("ascii") + raw + b"\0" * (-len(raw) % _BLOCK)


def cutout_fits(image: FloatImage, x_px: float, y_px: float, wcs_header: fits.Header, size: int = 31) -> bytes:
    """A cutout as the bytes of a one-HDU FITS file whose WCS is the image's, moved to the cutout's origin.

    Args:
        image: the full image.
        x_px, y_px: source position, 0-based pixels.
        wcs_header: the full image's WCS header (TAN, CD or PC/CDELT).
        size: side in pixels (odd).

    Returns:
        FITS file bytes.
    """
    return CutoutWriter(wcs_header, size).write(image, x_px, y_px)
