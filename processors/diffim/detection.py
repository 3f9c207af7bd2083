"""Detection and measurement of positive and negative point sources in a difference image.

The difference is filtered with its PSF (a Gaussian of the broader visit's sigma) and divided by the
noise of the filtered image predicted from the variance plane (sqrt(V ⊗ P²)). The variance plane misses
the pixel-to-pixel correlation that convolution and resampling add, so the significance map is then
rescaled by its own robust standard deviation (MAD of the good pixels); the same factor scales the
flux errors. Peaks of either sign above the threshold are local maxima of |significance|; each is
measured by a Gaussian PSF fit at its sub-pixel position (parabolic peak of the filtered map), the flux
corrected from Gaussian to total with the visit's empirical PSF. A positive and a negative detection
closer than ``dipole_separation_fwhm`` FWHM are both flagged as a dipole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from processors.diffim.psf import FWHM_PER_SIGMA, gaussian_psf_stamp, local_maxima

__all__ = ["DetectionParams", "Detections", "DiaSource", "detect_sources"]


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectionParams:
    """Detection settings.

    Attributes:
        threshold_sigma: detection threshold on the rescaled significance.
        edge_margin_px: excluded band at the edges beyond the kernel half width.
        merge_fwhm: peaks of one sign closer than this many FWHM are one source (the brightest).
        dipole_separation_fwhm: opposite-sign pairs closer than this are dipoles.
        max_sources: more detections than this flags the detector.
        rescale_noise: rescale the significance by its measured robust sigma.
    """

    threshold_sigma: float = 5.0
    edge_margin_px: int = 5
    merge_fwhm: float = 1.0
    dipole_separation_fwhm: float = 2.0
    max_sources: int = 500
    rescale_noise: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class DiaSource:
    """One detection in a difference image (science frame, 0-based pixels, fluxes in science electrons)."""

    index: int
    x_px: float
    y_px: float
    ra_deg: float
    dec_deg: float
    psf_flux_e: float
    psf_flux_err_e: float
    snr: float
    significance: float
    is_negative: bool
    is_dipole: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Detections:
    """The sources of one difference and the figures of the detection.

    Attributes:
        sources: detections, ordered by position (y, then x).
        noise_rescale: measured robust sigma of the variance-normalised filtered difference.
        n_good_px: pixels searched.
        too_many: more than ``max_sources`` detections (the detector is flagged, not alerted).
    """

    sources: tuple[DiaSource, ...]
    noise_rescale: float
    n_good_px: int
    too_many: bool


def _merge(x: np.ndarray, y: np.ndarray, strength: np.ndarray, radius: float) -> np.ndarray:
    """Indices of the peaks kept when peaks closer than ``radius`` collapse onto the strongest."""
    order = np.argsort(-strength)
    kept: list[int] = []
    for i in order:
        if kept:
            d2 = (x[kept] - x[i]) ** 2 + (y[kept] - y[i]) ** 2
            if (d2 < radius**2).any():
                continue
        kept.append(int(i))
    return np.array(sorted(kept), dtype=np.int64)


def _parabola(fm: np.ndarray, f0: np.ndarray, fp: np.ndarray) -> np.ndarray:
    denom = fm - 2.0 * f0 + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        off = np.where(denom < 0, 0.5 * (fm - fp) / denom, 0.0)
    return np.asarray(np.clip(off, -0.5, 0.5))


def detect_sources(
    diff_e: npt.NDArray[np.float32],
    variance_e2: npt.NDArray[np.float32],
    bad: npt.NDArray[np.bool_],
    *,
    psf_sigma_px: float,
    gaussian_flux_ratio: float,
    wcs_header: fits.Header,
    edge_px: int,
    params: DetectionParams,
) -> Detections:
    """Find and measure sources of both signs above the threshold.

    Args:
        diff_e: the difference image.
        variance_e2: its variance.
        bad: pixels excluded (masked in either image); peaks on or next to them are dropped.
        psf_sigma_px: Gaussian sigma of the difference's PSF.
        gaussian_flux_ratio: Gaussian-weighted flux per unit total flux of that PSF (aperture correction).
        wcs_header: the science WCS, for RA/Dec.
        edge_px: excluded band at each edge (the kernel half width; the margin is added here).
        params: settings.

    Returns:
        The detections.
    """
    ny, nx = diff_e.shape
    sigma = psf_sigma_px
    good = ~bad
    edge = edge_px + params.edge_margin_px
    search = good.copy()
    search[:edge, :] = False
    search[ny - edge :, :] = False
    search[:, :edge] = False
    search[:, nx - edge :] = False
    # Peaks beside a masked pixel measure half a source: drop a PSF sigma around masked pixels.
    if bad.any():
        search &= ~ndimage.binary_dilation(bad, iterations=max(1, math.ceil(sigma)))
    # the value masked pixels take in the variance plane (they are out of the search): a typical one, from a
    # 1-in-16 sample
    sampled = variance_e2[::4, ::4][good[::4, ::4]]
    typical_var = float(np.median(sampled)) if sampled.size else 1.0
    d0 = np.where(good, diff_e, 0.0).astype(np.float32)
    v0 = np.where(good, variance_e2, typical_var).astype(np.float32)
    # separable Gaussian filters (two 1-D passes: half the cost of a full-frame FFT pair on a 4k detector)
    filtered = ndimage.gaussian_filter(d0, sigma, mode="nearest", truncate=5.0)
    noise = np.sqrt(
        np.maximum(ndimage.gaussian_filter(v0, sigma / math.sqrt(2.0), mode="nearest", truncate=5.0), 1e-12)
        / np.float32(4 * math.pi * sigma**2)
    )
    significance = filtered / noise
    rescale = 1.0
    if params.rescale_noise and search.any():
        sample = significance[search][::7]
        med = float(np.median(sample))
        rescale = float(1.4826 * np.median(np.abs(sample - med)))
        if not math.isfinite(rescale) or rescale <= 0:
            rescale = 1.0
        significance = significance / rescale
    n_good = int(search.sum())
    xs_all: list[np.ndarray] = []
    ys_all: list[np.ndarray] = []
    sign_all: list[np.ndarray] = []
    fwhm = sigma * FWHM_PER_SIGMA
    for sign in (1.0, -1.0):
        s = sign * significance
        py, px = local_maxima(s, (s >= params.threshold_sigma) & search)
        keep = _merge(px.astype(float), py.astype(float), s[py, px], params.merge_fwhm * fwhm)
        xs_all.append(px[keep])
        ys_all.append(py[keep])
        sign_all.append(np.full(keep.size, sign))
    ix = np.concatenate(xs_all).astype(np.int64)
    iy = np.concatenate(ys_all).astype(np.int64)
    signs = np.concatenate(sign_all)
    if ix.size == 0:
        return Detections(sources=(), noise_rescale=rescale, n_good_px=n_good, too_many=False)
    s = significance * 1.0
    fx = _parabola(s[iy, ix - 1] * signs, s[iy, ix] * signs, s[iy, ix + 1] * signs)
    fy = _parabola(s[iy - 1, ix] * signs, s[iy, ix] * signs, s[iy + 1, ix] * signs)
    x = ix + fx
    y = iy + fy
    half = max(3, math.ceil(3 * sigma))
    fluxes = np.empty(ix.size)
    errors = np.empty(ix.size)
    for n in range(ix.size):
        cx, cy = int(ix[n]), int(iy[n])
        psf = gaussian_psf_stamp(sigma, half, float(fx[n]), float(fy[n])).astype(np.float64)
        cut = d0[cy - half : cy + half + 1, cx - half : cx + half + 1].astype(np.float64)
        var = v0[cy - half : cy + half + 1, cx - half : cx + half + 1].astype(np.float64)
        w = np.where(good[cy - half : cy + half + 1, cx - half : cx + half + 1], 1.0 / var, 0.0)
        denom = float((psf * psf * w).sum())
        fluxes[n] = float((psf * cut * w).sum()) / denom
        errors[n] = rescale / math.sqrt(denom)
    fluxes /= gaussian_flux_ratio
    errors /= gaussian_flux_ratio
    ra, dec = WCS(wcs_header).all_pix2world(x, y, 0)
    dipole = np.zeros(ix.size, dtype=bool)
    pos, neg = np.nonzero(signs > 0)[0], np.nonzero(signs < 0)[0]
    if pos.size and neg.size:
        d2 = (x[pos, None] - x[None, neg]) ** 2 + (y[pos, None] - y[None, neg]) ** 2
        close = d2 < (params.dipole_separation_fwhm * fwhm) ** 2
        dipole[pos[close.any(axis=1)]] = True
        dipole[neg[close.any(axis=0)]] = True
    order = np.lexsort((x, y))
    sources = tuple(
        DiaSource(
            index=k,
            x_px=float(x[i]),
            y_px=float(y[i]),
            ra_deg=float(ra[i]),
            dec_deg=float(dec[i]),
            psf_flux_e=float(fluxes[i]),
            psf_flux_err_e=float(errors[i]),
            snr=float(abs(fluxes[i]) / errors[i]),
            significance=float(significance[iy[i], ix[i]]),
            is_negative=bool(signs[i] < 0),
            is_dipole=bool(dipole[i]),
        )
        for k, i in enumerate(order)
    )
    return Detections(
        sources=sources, noise_rescale=rescale, n_good_px=n_good, too_many=len(sources) > params.max_sources
    )
