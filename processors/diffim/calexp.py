"""The calibrated exposure the differencing chain takes in: pixels, variance, mask, WCS and identity."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt
from astropy.io import fits

if TYPE_CHECKING:
    from processors.diffim.psf import PsfModel

__all__ = [
    "MASK_BAD",
    "MASK_CR",
    "MASK_EDGE",
    "MASK_NO_DATA",
    "MASK_SAT",
    "CalibratedImage",
    "FloatImage",
    "MaskImage",
]

FloatImage = npt.NDArray[np.float32]
MaskImage = npt.NDArray[np.uint16]

MASK_BAD: Final = 1
"""Defective pixel (bad column, hot pixel) from the defect list."""
MASK_SAT: Final = 2
"""Saturated, or bled from a saturated pixel."""
MASK_CR: Final = 4
"""Cosmic ray."""
MASK_EDGE: Final = 8
"""Too close to the detector edge for the kernel or the detection filter."""
MASK_NO_DATA: Final = 16
"""No data: the registered reference does not cover this pixel."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibratedImage:
    """One ISR'd, assembled detector image in electrons, as the differencing chain takes it.

    Any non-zero ``mask`` pixel is excluded from fits and detection; the bits above say why.

    Attributes:
        image_e: pixel values in electrons (not background subtracted), shape (ny, nx).
        variance_e2: per-pixel variance in electrons squared.
        mask: bit mask (``MASK_*``), zero for good pixels.
        wcs_header: a FITS header holding the image's celestial WCS (TAN).
        obsid: the exposure's OBSID (``MC_O_20260114_000123``), or a template's id.
        detector: detector name (``R22_S11``).
        band: filter band (``r``).
        midpoint_mjd_tai: exposure midpoint, MJD in TAI.
        pixel_scale_arcsec: pixel scale, used to report FWHM in arcsec.
        psf: the visit's PSF when already measured (measured by the chain when None).
        extra: free-form identity the caller wants carried along (GROUPID, CURINDEX...).
    """

    image_e: FloatImage
    variance_e2: FloatImage
    mask: MaskImage
    wcs_header: fits.Header
    obsid: str
    detector: str
    band: str
    midpoint_mjd_tai: float
    pixel_scale_arcsec: float = 0.2
    psf: PsfModel | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = self.image_e.shape
        if len(shape) != 2 or self.variance_e2.shape != shape or self.mask.shape != shape:
            raise ValueError(
                f"image, variance and mask must be 2-D of one shape: "
                f"{shape}, {self.variance_e2.shape}, {self.mask.shape}"
            )

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (ny, nx)."""
        return (int(self.image_e.shape[0]), int(self.image_e.shape[1]))

    @classmethod
    def from_fits(cls, path: str, *, detector: str | None = None) -> CalibratedImage:
        """Read a calexp written by :meth:`to_fits` (or any file with IMAGE/VARIANCE/MASK extensions).

        Args:
            path: the FITS file.
            detector: the detector name when the header has no ``DETECTOR`` (or RAFTBAY/CCDSLOT).

        Returns:
            The image, with identity read from the primary header (OBSID, FILTER or BAND, MJD-MID or
            MJD-OBS + EXPTIME/2).
        """
        with fits.open(path, memmap=False) as hdul:
            primary = hdul[0].header
            image = np.asarray(hdul["IMAGE"].data, dtype=np.float32)
            variance = np.asarray(hdul["VARIANCE"].data, dtype=np.float32)
            mask = np.asarray(hdul["MASK"].data).astype(np.uint16)
            wcs_header = hdul["IMAGE"].header.copy()
        det = detector or primary.get("DETECTOR")
        if det is None and primary.get("RAFTBAY") and primary.get("CCDSLOT"):
            det = f"{primary['RAFTBAY']}_{primary['CCDSLOT']}"
        if "MJD-MID" in primary:
            mjd = float(primary["MJD-MID"])
        else:
            mjd = float(primary["MJD-OBS"]) + float(primary.get("EXPTIME", 0.0)) / 2 / 86400
        band = primary.get("BAND") or str(primary.get("FILTER", "")).split("_")[0]
        return cls(
            image_e=image,
            variance_e2=variance,
            mask=mask,
            wcs_header=wcs_header,
            obsid=str(primary["OBSID"]),
            detector=str(det),
            band=str(band),
            midpoint_mjd_tai=mjd,
        )

    def to_fits(self, path: str) -> None:
        """Write the image as a calexp: empty primary with identity, IMAGE (with WCS), VARIANCE, MASK."""
        primary = fits.Header()
        primary["OBSID"] = self.obsid
        primary["DETECTOR"] = self.detector
        primary["BAND"] = self.band
        primary["MJD-MID"] = self.midpoint_mjd_tai
        hdul = fits.HDUList(
            [
                fits.PrimaryHDU(header=primary),
                fits.ImageHDU(self.image_e, header=self.wcs_header, name="IMAGE"),
                fits.ImageHDU(self.variance_e2, name="VARIANCE"),
                fits.ImageHDU(self.mask, name="MASK"),
            ]
        )
        hdul.writeto(path, overwrite=True)
