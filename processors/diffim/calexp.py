"""The calibrated exposure the differencing chain takes in: pixels, variance, mask, WCS and identity."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

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
        n_peaks: the 5-sigma peaks found when ``psf`` was measured (the quality cut's source count).
        background_levels: the sky's mesh (``background.background_levels``) when already measured.
        background_mesh_px: the box size of that mesh.
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
    n_peaks: int | None = None
    background_levels: npt.NDArray[np.floating[Any]] | None = None
    background_mesh_px: int | None = None
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
            MJD-OBS + EXPTIME/2), and the visit's PSF when the file carries one (a ``PSF`` extension).
        """
        from processors.diffim.psf import PsfModel

        psf: PsfModel | None = None
        n_peaks: int | None = None
        levels: np.ndarray | None = None
        mesh_px: int | None = None
        with fits.open(path, memmap=False) as hdul:
            primary = hdul[0].header
            image = np.asarray(hdul["IMAGE"].data, dtype=np.float32)
            variance = np.asarray(hdul["VARIANCE"].data, dtype=np.float32)
            mask = np.asarray(hdul["MASK"].data).astype(np.uint16)
            wcs_header = hdul["IMAGE"].header.copy()
            if "PSF" in hdul:
                card = hdul["PSF"].header
                psf = PsfModel(
                    sigma_px=float(card["SIGMAPX"]),
                    fwhm_px=float(card["FWHMPX"]),
                    fwhm_arcsec=float(card["FWHMAS"]),
                    n_stars=int(card["NSTARS"]),
                    stamp=np.asarray(hdul["PSF"].data, dtype=np.float32),
                    gaussian_flux_ratio=float(card["GFRATIO"]),
                )
                n_peaks = int(card["NPEAKS"]) if "NPEAKS" in card else None
            if "BKGMESH" in hdul:
                levels = np.asarray(hdul["BKGMESH"].data)
                mesh_px = int(hdul["BKGMESH"].header["MESHPX"])
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
            psf=psf,
            n_peaks=n_peaks,
            background_levels=levels,
            background_mesh_px=mesh_px,
        )

    def to_fits(self, path: str, primary_cards: Mapping[str, Any] | None = None) -> None:
        """Write the image as a calexp, in one pass: a primary with identity (and ``primary_cards``), IMAGE
        (with WCS), VARIANCE, MASK, PSF (its stamp and figures) when the PSF is known and BKGMESH (the sky's
        mesh) when the background is, so that a difference need not measure either again."""
        primary = fits.Header()
        primary["OBSID"] = self.obsid
        primary["DETECTOR"] = self.detector
        primary["BAND"] = self.band
        primary["MJD-MID"] = self.midpoint_mjd_tai
        for key, value in (primary_cards or {}).items():
            primary[key] = value
        hdus: list[fits.PrimaryHDU | fits.ImageHDU] = [
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(self.image_e, header=self.wcs_header, name="IMAGE"),
            fits.ImageHDU(self.variance_e2, name="VARIANCE"),
            fits.ImageHDU(self.mask, name="MASK"),
        ]
        if self.psf is not None:
            card = fits.Header()
            card["SIGMAPX"] = (self.psf.sigma_px, "sigma of the best-fitting Gaussian, px")
            card["FWHMPX"] = (self.psf.fwhm_px, "FWHM, px")
            card["FWHMAS"] = (self.psf.fwhm_arcsec, "FWHM, arcsec")
            card["NSTARS"] = (self.psf.n_stars, "stars the PSF rests on")
            card["GFRATIO"] = (self.psf.gaussian_flux_ratio, "Gaussian-weighted flux per unit flux")
            if self.n_peaks is not None:
                card["NPEAKS"] = (self.n_peaks, "5-sigma peaks found with the PSF")
            hdus.append(fits.ImageHDU(self.psf.stamp, header=card, name="PSF"))
        if self.background_levels is not None and self.background_mesh_px is not None:
            mesh = fits.Header()
            mesh["MESHPX"] = (self.background_mesh_px, "box size of the sky mesh, px")
            hdus.append(fits.ImageHDU(self.background_levels, header=mesh, name="BKGMESH"))
        fits.HDUList(hdus).writeto(path, overwrite=True)
