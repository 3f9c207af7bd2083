"""Per-visit PSF: bright isolated stars, a Gaussian fit for the FWHM, an empirical stamp, and quality."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import fft, ndimage
from scipy.optimize import least_squares
from scipy.special import erf

from processors.diffim.calexp import FloatImage, MaskImage

__all__ = [
    "FWHM_PER_SIGMA",
    "PsfModel",
    "QualityParams",
    "StarList",
    "VisitQuality",
    "assess_quality",
    "find_peaks",
    "gaussian_psf_stamp",
    "measure_psf",
]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""FWHM of a Gaussian in units of its sigma (2.3548)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StarList:
    """Peaks found in an image: 0-based pixel positions (integer peak pixels) and their significance."""

    x_px: npt.NDArray[np.int64]
    y_px: npt.NDArray[np.int64]
    snr: npt.NDArray[np.float64]
    peak_e: npt.NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.x_px.size)


@dataclass(frozen=True, slots=True, kw_only=True)
class PsfModel:
    """The PSF of one visit.

    Attributes:
        sigma_px: sigma of the best-fitting pixel-integrated circular Gaussian (median over stars).
        fwhm_px: its FWHM in pixels.
        fwhm_arcsec: its FWHM in arcsec.
        n_stars: stars the estimate rests on.
        stamp: empirical PSF (median of normalised, recentred star stamps), odd square, sum 1.
        gaussian_flux_ratio: flux a Gaussian-weighted PSF fit gives a true-PSF star, per unit flux
            (divide a Gaussian PSF flux by it to get the total flux).
    """

    sigma_px: float
    fwhm_px: float
    fwhm_arcsec: float
    n_stars: int
    stamp: FloatImage
    gaussian_flux_ratio: float


@dataclass(frozen=True, slots=True, kw_only=True)
class QualityParams:
    """Quality cut of a visit: too broad a PSF, too few stars to model it, or far too many sources."""

    max_fwhm_arcsec: float = 2.0
    min_psf_stars: int = 5
    max_sources: int = 50_000


@dataclass(frozen=True, slots=True, kw_only=True)
class VisitQuality:
    """Quality figures of a visit and the verdict of the cut."""

    fwhm_arcsec: float
    n_psf_stars: int
    n_sources: int
    ok: bool
    reasons: tuple[str, ...]


def _integrated_profile(coords: np.ndarray, centre: float, sigma: float) -> np.ndarray:
    """A unit 1-D Gaussian integrated over pixels centred at ``coords``."""
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    return np.asarray(0.5 * (erf((coords + 0.5 - centre) * scale) - erf((coords - 0.5 - centre) * scale)))


def gaussian_psf_stamp(sigma_px: float, half_px: int, dx_px: float = 0.0, dy_px: float = 0.0) -> FloatImage:
    """A pixel-integrated unit-flux circular Gaussian on a (2·half+1)² grid, centred at (dx, dy) off centre."""
    c = np.arange(-half_px, half_px + 1, dtype=np.float64)
    return np.outer(_integrated_profile(c, dy_px, sigma_px), _integrated_profile(c, dx_px, sigma_px)).astype(np.float32)


def local_maxima(
    values: npt.NDArray[np.floating[Any]], candidates: npt.NDArray[np.bool_]
) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of the candidate pixels not below any of their 8 neighbours (candidates must avoid the border)."""
    y, x = np.nonzero(candidates)
    keep = (y > 0) & (x > 0) & (y < values.shape[0] - 1) & (x < values.shape[1] - 1)
    y, x = y[keep], x[keep]
    centre = values[y, x]
    ok = np.ones(y.size, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                ok &= centre >= values[y + dy, x + dx]
    return y[ok], x[ok]


def gaussian_filter_fft(image: npt.NDArray[np.float32], sigma_px: float) -> npt.NDArray[np.float32]:
    """A unit-sum Gaussian filter by FFT (circular: callers exclude the edge band it wraps)."""
    ny, nx = image.shape
    fy = fft.fftfreq(ny).astype(np.float32)[:, None]
    fx = fft.rfftfreq(nx).astype(np.float32)[None, :]
    c = np.float32(-2.0 * math.pi**2 * sigma_px**2)
    transfer = np.exp(c * fy**2) * np.exp(c * fx**2)
    return np.asarray(fft.irfft2(fft.rfft2(image, workers=1) * transfer, s=image.shape, workers=1), dtype=np.float32)


def _coarse_noise(variance_e2: FloatImage, sigma_px: float, factor: int) -> FloatImage:
    """Noise of a Gaussian-filtered image, sqrt(V (x) P^2), per factor x factor box of the variance."""
    ny, nx = variance_e2.shape
    py, px = -ny % factor, -nx % factor
    padded = np.pad(variance_e2, ((0, py), (0, px)), mode="edge") if py or px else variance_e2
    coarse = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))
    return np.asarray(np.sqrt(np.maximum(coarse, 1e-12) / (4.0 * math.pi * sigma_px**2)), dtype=np.float32)


def find_peaks(
    image_bs: FloatImage,
    variance_e2: FloatImage,
    mask: MaskImage,
    *,
    sigma_px: float = 1.5,
    min_snr: float = 5.0,
    edge_px: int = 10,
) -> StarList:
    """Local maxima of the matched-filtered image above ``min_snr`` (noise from a 4x4-binned variance).

    Args:
        image_bs: background-subtracted image.
        variance_e2: its variance.
        mask: non-zero pixels are not peaks.
        sigma_px: Gaussian filter sigma (a guess of the PSF is enough).
        min_snr: threshold on filtered signal / its noise.
        edge_px: peaks this close to an edge are dropped.

    Returns:
        The peaks, brightest first.
    """
    factor = 4
    filtered = gaussian_filter_fft(image_bs, sigma_px)
    # The variance is smooth on the PSF scale away from bright stars, which is all peak finding needs:
    # its noise is taken per 4x4 box, and only pixels above the threshold of the quietest box are looked at.
    noise = _coarse_noise(variance_e2, sigma_px, factor)
    ny, nx = image_bs.shape
    candidates = filtered >= min_snr * float(noise.min())
    candidates &= mask == 0
    candidates[:edge_px, :] = False
    candidates[ny - edge_px :, :] = False
    candidates[:, :edge_px] = False
    candidates[:, nx - edge_px :] = False
    y, x = local_maxima(filtered, candidates)
    snr = filtered[y, x] / noise[y // factor, x // factor]
    above = snr >= min_snr
    y, x, s = y[above], x[above], snr[above].astype(np.float64)
    order = np.argsort(-s)
    return StarList(
        x_px=x[order].astype(np.int64),
        y_px=y[order].astype(np.int64),
        snr=s[order],
        peak_e=image_bs[y[order], x[order]].astype(np.float64),
    )


def _select_psf_stars(
    peaks: StarList,
    image_bs: FloatImage,
    mask: MaskImage,
    *,
    half_px: int,
    isolation_px: float,
    min_snr: float,
    max_stars: int,
    saturation_e: float,
) -> list[tuple[int, int]]:
    """Bright, isolated, unmasked peaks whose stamps hold no masked pixel."""
    ny, nx = image_bs.shape
    chosen: list[tuple[int, int]] = []
    xs, ys = peaks.x_px.astype(np.float64), peaks.y_px.astype(np.float64)
    for i in range(len(peaks)):
        if peaks.snr[i] < min_snr:
            break
        x, y = int(peaks.x_px[i]), int(peaks.y_px[i])
        if x < half_px + 1 or y < half_px + 1 or x >= nx - half_px - 1 or y >= ny - half_px - 1:
            continue
        if peaks.peak_e[i] >= saturation_e:
            continue
        d2 = (xs - x) ** 2 + (ys - y) ** 2
        near = (d2 > 0) & (d2 < isolation_px**2)
        if near.any():
            continue
        if mask[y - half_px : y + half_px + 1, x - half_px : x + half_px + 1].any():
            continue
        chosen.append((x, y))
        if len(chosen) >= max_stars:
            break
    return chosen


def _fit_gaussian(stamp: np.ndarray, weights: np.ndarray, sigma0: float) -> tuple[float, float, float, float]:
    """Fit flux, dx, dy, sigma (and a constant) of a pixel-integrated Gaussian to a stamp."""
    half = stamp.shape[0] // 2
    c = np.arange(-half, half + 1, dtype=np.float64)
    total = float(stamp.sum())

    def residual(p: np.ndarray) -> np.ndarray:
        flux, dx, dy, sigma, bg = p
        model = flux * np.outer(_integrated_profile(c, dy, sigma), _integrated_profile(c, dx, sigma)) + bg
        return np.asarray(((model - stamp) * weights).ravel())

    fit = least_squares(
        residual,
        np.array([max(total, 1.0), 0.0, 0.0, sigma0, 0.0]),
        bounds=([0.0, -2.0, -2.0, 0.3, -np.inf], [np.inf, 2.0, 2.0, 15.0, np.inf]),
        x_scale=np.array([max(total, 1.0), 0.1, 0.1, 0.1, 1.0]),
        method="trf",
    )
    flux, dx, dy, sigma, _ = fit.x
    return float(flux), float(dx), float(dy), float(sigma)


def measure_psf(
    image_bs: FloatImage,
    variance_e2: FloatImage,
    mask: MaskImage,
    *,
    pixel_scale_arcsec: float = 0.2,
    saturation_e: float = np.inf,
    min_star_snr: float = 50.0,
    max_stars: int = 40,
    peaks: StarList | None = None,
) -> PsfModel:
    """Estimate the PSF from bright, isolated, unsaturated stars.

    Args:
        image_bs: background-subtracted image in electrons.
        variance_e2: its variance.
        mask: non-zero pixels (saturation among them) disqualify a star whose stamp holds one.
        pixel_scale_arcsec: for the FWHM in arcsec.
        saturation_e: stars whose peak pixel reaches this are skipped even when unmasked.
        min_star_snr: minimum filtered significance of a PSF star.
        max_stars: at most this many stars (the brightest suitable ones).
        peaks: peaks already found by :func:`find_peaks` (found here when None).

    Returns:
        The PSF model.

    Raises:
        ValueError: no suitable star.
    """
    if peaks is None:
        peaks = find_peaks(image_bs, variance_e2, mask)
    fits_: list[tuple[int, int, float, float, float, float]] = []
    fit_half, sigma_guess = 7, 2.0
    # Two passes: a first guess from the brightest stars on small stamps, then stamps sized to the PSF.
    for n_fit in (10, max_stars):
        stars = _select_psf_stars(
            peaks,
            image_bs,
            mask,
            half_px=fit_half + 8,
            isolation_px=max(20.0, 3.0 * fit_half),
            min_snr=min_star_snr,
            max_stars=n_fit,
            saturation_e=saturation_e,
        )
        if not stars:
            raise ValueError("no bright isolated unsaturated star to model the PSF")
        fits_ = []
        for x, y in stars:
            stamp = image_bs[y - fit_half : y + fit_half + 1, x - fit_half : x + fit_half + 1].astype(np.float64)
            var = variance_e2[y - fit_half : y + fit_half + 1, x - fit_half : x + fit_half + 1].astype(np.float64)
            flux, dx, dy, sigma = _fit_gaussian(stamp, 1.0 / np.sqrt(np.maximum(var, 1e-6)), sigma_guess)
            fits_.append((x, y, flux, dx, dy, sigma))
        sigma_guess = float(np.median([f[5] for f in fits_]))
        fit_half = min(max(7, math.ceil(3.0 * sigma_guess)), 20)
    sigmas = np.array([f[5] for f in fits_])
    sigma_px = float(np.median(sigmas))
    # Drop stars whose width is far from the median (a galaxy, a blend, a cosmic ray), then re-take it.
    mad = 1.4826 * float(np.median(np.abs(sigmas - sigma_px))) + 0.02 * sigma_px
    good = [f for f in fits_ if abs(f[5] - sigma_px) <= 3.0 * mad]
    sigma_px = float(np.median([f[5] for f in good]))
    fwhm_px = sigma_px * FWHM_PER_SIGMA
    half = max(8, math.ceil(3.0 * fwhm_px))
    stamps = []
    for x, y, _flux, dx, dy, _sigma in good:
        if x < half + 2 or y < half + 2 or x >= image_bs.shape[1] - half - 2 or y >= image_bs.shape[0] - half - 2:
            continue
        if mask[y - half - 1 : y + half + 2, x - half - 1 : x + half + 2].any():
            continue
        cut = image_bs[y - half - 2 : y + half + 3, x - half - 2 : x + half + 3].astype(np.float64)
        shifted = ndimage.shift(cut, (-dy, -dx), order=3, mode="nearest")[2:-2, 2:-2]
        total = shifted.sum()
        if total > 0:
            stamps.append(shifted / total)
    if stamps:
        empirical = np.median(np.stack(stamps), axis=0)
        empirical /= empirical.sum()
    else:
        empirical = gaussian_psf_stamp(sigma_px, half).astype(np.float64)
    gauss = gaussian_psf_stamp(sigma_px, half).astype(np.float64)
    ratio = float((gauss * empirical).sum() / (gauss * gauss).sum())
    return PsfModel(
        sigma_px=sigma_px,
        fwhm_px=fwhm_px,
        fwhm_arcsec=fwhm_px * pixel_scale_arcsec,
        n_stars=len(good),
        stamp=empirical.astype(np.float32),
        gaussian_flux_ratio=ratio,
    )


def assess_quality(psf: PsfModel | None, n_sources: int, params: QualityParams) -> VisitQuality:
    """Apply the quality cut to a visit's PSF and source count.

    Args:
        psf: the visit's PSF, or None when it could not be measured.
        n_sources: 5sigma peaks found in the visit.
        params: the cut.

    Returns:
        The figures and ``ok`` with the reasons it failed (``fwhm``, ``psf_stars``, ``sources``).
    """
    reasons: list[str] = []
    fwhm = psf.fwhm_arcsec if psf is not None else math.nan
    n_stars = psf.n_stars if psf is not None else 0
    if psf is None or not fwhm <= params.max_fwhm_arcsec:
        reasons.append("fwhm")
    if n_stars < params.min_psf_stars:
        reasons.append("psf_stars")
    if n_sources > params.max_sources:
        reasons.append("sources")
    return VisitQuality(
        fwhm_arcsec=fwhm, n_psf_stars=n_stars, n_sources=n_sources, ok=not reasons, reasons=tuple(reasons)
    )
