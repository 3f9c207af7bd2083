"""PSF matching by an Alard-Lupton kernel: Gaussianxpolynomial bases, spatially varying, fitted on stars.

The kernel K(u, v; x, y) = Σ_k a_k(x, y) B_k(u, v) with B_k(u, v) = G_sigmak(u) G_sigmak(v) (u/h)^p (v/h)^q,
p + q ≤ d_k. B_0 (the narrowest Gaussian, p = q = 0) has unit sum and a spatially constant coefficient,
which is the kernel sum, the photometric scale; every other basis is made zero-sum (B_k - ΣB_k · B_0), so
the kernel sum does not vary over the detector. The other coefficients are polynomials of order
``spatial_order`` in the detector position, and a differential background of order ``background_order``
is fitted with them, by weighted least squares on stamps around bright stars, in one global fit with
iterative rejection of stamps that fit badly (variables, blends, cosmic rays).

Applying the kernel uses the linearity of the model: I⊗K = Σ_s P_s(x, y) (I ⊗ K_s), where K_s gathers
the coefficients of the spatial term P_s — one FFT convolution per spatial term, exact for the model.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import fft, ndimage

from processors.diffim.calexp import FloatImage, MaskImage

__all__ = [
    "AlardLuptonParams",
    "KernelSolution",
    "apply_kernel",
    "basis_terms",
    "convolve_variance",
    "fit_kernel",
    "kernel_half_width",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class AlardLuptonParams:
    """Alard-Lupton settings (Rubin's defaults).

    Attributes:
        base_sigmas_px: basis Gaussian sigmas for a matching sigma of ``reference_match_sigma_px``; they
            are scaled by the pair's matching sigma sqrt(sigma_broad² - sigma_sharp²).
        reference_match_sigma_px: the matching sigma at which ``base_sigmas_px`` apply unscaled.
        min_scale: smallest scale factor (near-equal seeing still gets usable bases).
        degrees: polynomial degree of each Gaussian.
        kernel_size_fwhm: kernel size in units of the broader FWHM, clipped to [min, max] px, odd.
        min_kernel_px, max_kernel_px: the clip.
        spatial_order: order of the kernel's spatial variation (1 with fewer than 15 stamps, 0 with fewer than 6).
        background_order: order of the differential background.
        max_stamps: at most this many stars.
        min_stamp_snr: faintest star used (filtered significance in the science image). Fainter
            stars bias the fit: their noisy pixels dilute the regression (errors in variables), shrinking
            the kernel sum by a few per cent at significance 30-50.
        min_stamps: when fewer stars pass ``min_stamp_snr``, fainter ones down to ``fallback_min_snr``
            are added until there are this many.
        fallback_min_snr: the floor of that fallback.
        photometric_sum: take the kernel sum from the stars' flux ratio (else from the least squares).
        clip_sigma: stamps whose chi² per pixel is this many robust sigmas above the median are dropped.
    """

    base_sigmas_px: tuple[float, ...] = (0.7, 1.5, 3.0)
    reference_match_sigma_px: float = 1.5
    min_scale: float = 0.5
    degrees: tuple[int, ...] = (4, 2, 2)
    kernel_size_fwhm: float = 6.0
    min_kernel_px: int = 21
    max_kernel_px: int = 35
    spatial_order: int = 2
    background_order: int = 1
    max_stamps: int = 100
    min_stamp_snr: float = 100.0
    min_stamps: int = 10
    fallback_min_snr: float = 30.0
    clip_sigma: float = 3.0
    photometric_sum: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class KernelSolution:
    """A fitted kernel.

    Attributes:
        half_px: kernel half width (size 2·half + 1).
        sigmas_px, degrees: the bases.
        spatial_order: the order actually fitted.
        spatial_kernels: K_s, one kernel image per spatial term (1, u, v, u², uv, v², ...).
        background_coeffs: differential background polynomial coefficients (1, u, v, ...) fitted to the
            stamps' own levels (each stamp's level is a free parameter of the kernel fit).
        background_order: its order.
        kernel_sum: the kernel's (constant) sum.
        shape: the image shape the spatial coordinates are normalised to.
        n_stamps, n_rejected: stamps used and dropped.
        chi2_per_px: mean chi² per pixel of the stamps kept.
    """

    half_px: int
    sigmas_px: tuple[float, ...]
    degrees: tuple[int, ...]
    spatial_order: int
    spatial_kernels: npt.NDArray[np.float64]
    background_coeffs: npt.NDArray[np.float64]
    background_order: int
    kernel_sum: float
    shape: tuple[int, int]
    n_stamps: int
    n_rejected: int
    chi2_per_px: float

    def kernel_at(self, x_px: float, y_px: float) -> npt.NDArray[np.float64]:
        """The kernel image at a detector position."""
        terms = _spatial_terms(np.array([x_px]), np.array([y_px]), self.shape, self.spatial_order)[:, 0]
        return np.asarray(np.tensordot(terms, self.spatial_kernels, axes=1))


def kernel_half_width(broad_fwhm_px: float, params: AlardLuptonParams) -> int:
    """Half width of the kernel: size = kernel_size_fwhm x FWHM clipped to [min, max], made odd."""
    size = round(params.kernel_size_fwhm * broad_fwhm_px)
    size = min(max(size, params.min_kernel_px), params.max_kernel_px)
    if size % 2 == 0:
        size += 1 if size < params.max_kernel_px else -1
    return size // 2


def basis_terms(sigmas_px: tuple[float, ...], degrees: tuple[int, ...]) -> list[tuple[float, int, int]]:
    """The (sigma, p, q) of every basis, B_0 first."""
    terms: list[tuple[float, int, int]] = []
    for sigma, degree in zip(sigmas_px, degrees, strict=True):
        for p in range(degree + 1):
            for q in range(degree + 1 - p):
                terms.append((sigma, p, q))
    return terms


def _factor(sigma: float, power: int, half: int) -> npt.NDArray[np.float64]:
    u = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-0.5 * (u / sigma) ** 2)
    g /= g.sum()
    return np.asarray(g * (u / half) ** power)


def _basis_images(terms: list[tuple[float, int, int]], half: int) -> npt.NDArray[np.float64]:
    """Basis kernel images, B_0 with unit sum and the others zero-sum."""
    images = np.stack([np.outer(_factor(s, q, half), _factor(s, p, half)) for s, p, q in terms])
    images[0] /= images[0].sum()
    for k in range(1, len(terms)):
        images[k] -= images[k].sum() * images[0]
    return np.asarray(images)


def _spatial_terms(x: np.ndarray, y: np.ndarray, shape: tuple[int, int], order: int) -> npt.NDArray[np.float64]:
    """Polynomial terms u^i v^j (i + j ≤ order) of normalised detector coordinates, shape (n_terms, *x.shape)."""
    ny, nx = shape
    u = (x - (nx - 1) / 2.0) / (nx / 2.0)
    v = (y - (ny - 1) / 2.0) / (ny / 2.0)
    out = [u ** (n - j) * v**j for n in range(order + 1) for j in range(n + 1)]
    return np.asarray(np.stack(out))


def _convolve_stamps(stack: np.ndarray, terms: list[tuple[float, int, int]], half: int) -> np.ndarray:
    """Convolve a stack of stamps (n, H, W) with every basis (separably); shape (n_basis, n, H, W)."""
    out = np.empty((len(terms), *stack.shape), dtype=np.float64)
    cache: dict[tuple[float, int], np.ndarray] = {}
    for k, (sigma, p, q) in enumerate(terms):
        key = (sigma, p)
        if key not in cache:
            cache[key] = ndimage.convolve1d(stack, _factor(sigma, p, half), axis=2, mode="constant")
        out[k] = ndimage.convolve1d(cache[key], _factor(sigma, q, half), axis=1, mode="constant")
    s0 = float(np.outer(_factor(terms[0][0], 0, half), _factor(terms[0][0], 0, half)).sum())
    out[0] /= s0
    for k in range(1, len(terms)):
        sigma, p, q = terms[k]
        total = float(_factor(sigma, q, half).sum() * _factor(sigma, p, half).sum())
        out[k] -= total * out[0]
    return out


def _select_stamps(
    x_px: np.ndarray,
    y_px: np.ndarray,
    snr: np.ndarray,
    peak_e: np.ndarray,
    shape: tuple[int, int],
    bad: np.ndarray,
    *,
    half_stamp: int,
    half_kernel: int,
    params: AlardLuptonParams,
    saturation_e: float,
) -> list[tuple[int, int]]:
    ny, nx = shape
    reach = half_stamp + half_kernel
    chosen: list[tuple[int, int]] = []
    for i in range(x_px.size):
        if snr[i] < params.fallback_min_snr or (snr[i] < params.min_stamp_snr and len(chosen) >= params.min_stamps):
            break
        x, y = int(x_px[i]), int(y_px[i])
        if x < reach or y < reach or x >= nx - reach or y >= ny - reach or peak_e[i] >= saturation_e:
            continue
        if bad[y - reach : y + reach + 1, x - reach : x + reach + 1].any():
            continue
        d2 = (x_px[:i] - x) ** 2 + (y_px[:i] - y) ** 2
        if (d2 < (2 * half_stamp) ** 2).any():
            continue  # overlaps a brighter star's stamp
        chosen.append((x, y))
        if len(chosen) >= params.max_stamps:
            break
    return chosen


def fit_kernel(
    to_convolve: FloatImage,
    to_convolve_var: FloatImage,
    target: FloatImage,
    target_var: FloatImage,
    mask: MaskImage,
    *,
    stars_x_px: np.ndarray,
    stars_y_px: np.ndarray,
    stars_snr: np.ndarray,
    stars_peak_e: np.ndarray,
    sharp_sigma_px: float,
    broad_sigma_px: float,
    params: AlardLuptonParams,
    saturation_e: float = np.inf,
) -> KernelSolution:
    """Fit the kernel that turns ``to_convolve`` (the sharper image) into ``target`` (the broader one).

    Both images are background subtracted and on the same pixel grid.

    Args:
        to_convolve, to_convolve_var: the sharper image and its variance.
        target, target_var: the broader image and its variance.
        mask: union mask of both; stamps touching a masked pixel are not used.
        stars_x_px, stars_y_px, stars_snr, stars_peak_e: candidate stars, brightest first.
        sharp_sigma_px, broad_sigma_px: Gaussian PSF sigmas of the two images.
        params: the settings.
        saturation_e: candidates at or above this peak are skipped.

    Returns:
        The kernel solution.

    Raises:
        ValueError: fewer than 3 usable stamps.
    """
    shape = (int(target.shape[0]), int(target.shape[1]))
    broad_fwhm = broad_sigma_px * 2.354820045
    half = kernel_half_width(broad_fwhm, params)
    match_sigma = math.sqrt(max(broad_sigma_px**2 - sharp_sigma_px**2, 0.0))
    scale = max(match_sigma / params.reference_match_sigma_px, params.min_scale)
    sigmas = tuple(s * scale for s in params.base_sigmas_px)
    terms = basis_terms(sigmas, params.degrees)
    half_stamp = half
    stamps = _select_stamps(
        stars_x_px,
        stars_y_px,
        stars_snr,
        stars_peak_e,
        shape,
        mask != 0,
        half_stamp=half_stamp,
        half_kernel=half,
        params=params,
        saturation_e=saturation_e,
    )
    if len(stamps) < 3:
        raise ValueError(f"only {len(stamps)} usable stars to fit the matching kernel")
    order = params.spatial_order if len(stamps) >= 15 else (1 if len(stamps) >= 6 else 0)
    order = min(order, params.spatial_order)
    reach = half_stamp + half
    big = np.stack([to_convolve[y - reach : y + reach + 1, x - reach : x + reach + 1] for x, y in stamps])
    conv = _convolve_stamps(big.astype(np.float64), terms, half)[:, :, half:-half, half:-half]
    tgt = np.stack(
        [target[y - half_stamp : y + half_stamp + 1, x - half_stamp : x + half_stamp + 1] for x, y in stamps]
    )
    var = np.stack(
        [
            target_var[y - half_stamp : y + half_stamp + 1, x - half_stamp : x + half_stamp + 1]
            + to_convolve_var[y - half_stamp : y + half_stamp + 1, x - half_stamp : x + half_stamp + 1]
            for x, y in stamps
        ]
    ).astype(np.float64)
    # The spatial polynomials hardly change across a stamp: they are taken at its centre (as Rubin does),
    # so each stamp is a small fit of the kernel coefficients and of its own background level (profiled
    # out: the stamps' sky offsets differ on the background mesh scale, and an offset must not leak into
    # the kernel sum), and the spatial model maps the global coefficients onto each stamp's. Normal
    # equations are kept per stamp, so that rejecting a stamp is a subtraction, not a new fit.
    n_stamp = len(stamps)
    cx = np.array([x for x, _ in stamps], dtype=np.float64)
    cy = np.array([y for _, y in stamps], dtype=np.float64)
    spatial = _spatial_terms(cx, cy, shape, order)  # (n_s, n_stamp)
    n_s, n_b = spatial.shape[0], len(terms)
    n_col = 1 + (n_b - 1) * n_s
    weight = 1.0 / np.sqrt(np.maximum(var.reshape(n_stamp, -1), 1e-6))
    n_px = weight.shape[1]
    local = np.concatenate([conv.reshape(n_b, n_stamp, -1), np.ones((1, n_stamp, n_px))])
    wd = local.transpose(1, 2, 0) * weight[..., None]  # (n_stamp, n_px, n_b + 1)
    wr = tgt.reshape(n_stamp, -1).astype(np.float64) * weight
    full_normal = np.matmul(wd.transpose(0, 2, 1), wd)  # (n_stamp, n_b + 1, n_b + 1)
    full_rhs = np.einsum("spc,sp->sc", wd, wr)
    m_bb = full_normal[:, n_b, n_b]
    m_kb = full_normal[:, :n_b, n_b]
    v_b = full_rhs[:, n_b]
    normal = full_normal[:, :n_b, :n_b] - m_kb[:, :, None] * m_kb[:, None, :] / m_bb[:, None, None]
    projected = full_rhs[:, :n_b] - m_kb * (v_b / m_bb)[:, None]
    target_sq = (wr**2).sum(axis=1) - v_b**2 / m_bb
    # mapping[i] turns the global coefficients into stamp i's local ones.
    mapping = np.zeros((n_stamp, n_b, n_col))
    mapping[:, 0, 0] = 1.0
    for k in range(1, n_b):
        mapping[:, k, 1 + (k - 1) * n_s : 1 + k * n_s] = spatial.T
    stamp_normal = np.matmul(mapping.transpose(0, 2, 1), np.matmul(normal, mapping))
    stamp_rhs = np.matmul(mapping.transpose(0, 2, 1), projected[..., None])[..., 0]
    # The kernel sum (the photometric scale) comes from the stars' flux ratio, sums over the stamps
    # (dominated by the brightest) less each stamp's fitted background: in the least squares the noise of
    # the image being convolved sits in the regressors and would shrink it (errors in variables: -1 to
    # -3 % with stars of S/N 30-100).
    source_flux = big[:, half:-half, half:-half].reshape(n_stamp, -1).sum(axis=1)
    target_flux = tgt.reshape(n_stamp, -1).sum(axis=1)
    keep = np.ones(n_stamp, dtype=bool)
    coef = np.zeros(n_col)
    chi2 = np.zeros(n_stamp)
    background = np.zeros(n_stamp)
    kernel_sum: float | None = None
    for _ in range(6):
        if params.photometric_sum:
            kernel_sum = float((target_flux - n_px * background)[keep].sum() / source_flux[keep].sum())
        a = stamp_normal[keep].sum(axis=0)
        b = stamp_rhs[keep].sum(axis=0)
        coef = np.zeros(n_col)
        free = slice(0, n_col)
        if kernel_sum is not None:
            coef[0] = kernel_sum
            b = b - a[:, 0] * kernel_sum
            free = slice(1, n_col)
        af, bf = a[free, free], b[free]
        norms = np.sqrt(np.maximum(np.diag(af), 1e-300))
        coef[free] = np.linalg.lstsq(af / np.outer(norms, norms), bf / norms, rcond=1e-12)[0] / norms
        local_coef = mapping @ coef  # (n_stamp, n_b)
        new_background = (v_b - np.einsum("sk,sk->s", m_kb, local_coef)) / m_bb
        chi2 = (
            target_sq
            - 2 * np.einsum("sa,sa->s", local_coef, projected)
            + np.einsum("sa,sab,sb->s", local_coef, normal, local_coef, optimize=True)
        ) / n_px
        med = float(np.median(chi2[keep]))
        spread = 1.4826 * float(np.median(np.abs(chi2[keep] - med)))
        limit = med + params.clip_sigma * max(spread, 0.05 * med)
        new_keep = keep & (chi2 <= limit)
        if new_keep.sum() < 3:
            new_keep = keep
        settled = (new_keep == keep).all() and float(np.abs(new_background - background).max()) < 0.01
        keep, background = new_keep, new_background
        if settled:
            break
    # The differential background: a polynomial of background_order through the stamps' levels.
    bg_design = _spatial_terms(cx[keep], cy[keep], shape, params.background_order).T
    bg_coef = np.linalg.lstsq(bg_design, background[keep], rcond=None)[0]
    images = _basis_images(terms, half)
    kernels = np.zeros((n_s, 2 * half + 1, 2 * half + 1))
    kernels[0] += coef[0] * images[0]
    col = 1
    for k in range(1, n_b):
        for s in range(n_s):
            kernels[s] += coef[col] * images[k]
            col += 1
    return KernelSolution(
        half_px=half,
        sigmas_px=sigmas,
        degrees=params.degrees,
        spatial_order=order,
        spatial_kernels=kernels,
        background_coeffs=np.asarray(bg_coef),
        background_order=params.background_order,
        kernel_sum=float(coef[0]),
        shape=shape,
        n_stamps=int(keep.sum()),
        n_rejected=int((~keep).sum()),
        chi2_per_px=float(chi2[keep].mean()),
    )


VARIANCE_SENTINEL = 1e10
"""Variances at or above this (or NaN) mark pixels without a usable value (calexps and templates write 1e12)."""


@functools.lru_cache(maxsize=8)
def _row_phases(ny: int, half: int) -> np.ndarray:
    """exp(-2πi p a / ny) for every frequency p and kernel row offset a in -half..half (ny x (2 half + 1))."""
    offsets = np.arange(-half, half + 1)
    return np.asarray(np.exp(-2j * np.pi * np.outer(np.arange(ny), offsets) / ny), dtype=np.complex64)


def _kernel_fft(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``rfft2`` of the kernel centred on pixel (0, 0) of a ``shape`` frame, without a full-frame transform.

    The kernel has only 2h+1 non-zero rows: an ``rfft`` of those rows along x, then the transform along
    y as a product with the (cached) row phases — half the work of ``rfft2`` on the padded frame, and
    the same numbers to float32 rounding.
    """
    ny, nx = shape
    h = kernel.shape[0] // 2
    rows = np.zeros((2 * h + 1, nx), dtype=np.float32)
    rows[:, : 2 * h + 1] = kernel
    rows = np.roll(rows, -h, axis=1)
    along_x = fft.rfft(rows, axis=1, workers=1).astype(np.complex64)
    spectrum: np.ndarray = _row_phases(ny, h) @ along_x
    return spectrum


def apply_kernel(image: FloatImage, solution: KernelSolution, *, with_background: bool = True) -> FloatImage:
    """Convolve an image with the spatially varying kernel (and add the differential background).

    Pixels within the kernel half width of an edge wrap around (the FFT is circular): callers mask them.
    """
    shape = (int(image.shape[0]), int(image.shape[1]))
    spectrum = fft.rfft2(image.astype(np.float32), workers=1)
    yy = np.arange(shape[0], dtype=np.float32)[:, None]
    xx = np.arange(shape[1], dtype=np.float32)[None, :]
    ny, nx = shape
    u = (xx - (nx - 1) / 2.0) / (nx / 2.0)
    v = (yy - (ny - 1) / 2.0) / (ny / 2.0)
    out = np.zeros(shape, dtype=np.float32)
    exponents = [(n - j, j) for n in range(solution.spatial_order + 1) for j in range(n + 1)]
    for s, (i, j) in enumerate(exponents):
        conv = fft.irfft2(spectrum * _kernel_fft(solution.spatial_kernels[s], shape), s=shape, workers=1)
        if s == 0:
            out += conv.astype(np.float32)
        else:
            out += (conv * (u**i * v**j)).astype(np.float32)
    if with_background:
        bexp = [(n - j, j) for n in range(solution.background_order + 1) for j in range(n + 1)]
        for c, (i, j) in zip(solution.background_coeffs, bexp, strict=True):
            out += np.float32(c) * (u**i * v**j)
    return out


def convolve_variance(variance: FloatImage, solution: KernelSolution) -> FloatImage:
    """Variance of the convolved image: V ⊗ K², with the kernel of the detector centre."""
    shape = (int(variance.shape[0]), int(variance.shape[1]))
    k = solution.kernel_at((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
    plane = variance.astype(np.float32)
    # Masked pixels carry sentinel variances (1e12): in a float32 FFT their rounding error (~1e-7 of the
    # largest values) lands on every pixel, thousands of e² on a sky of ~1000. Convolve a typical value
    # there instead and put the sentinels back: those pixels are masked, their neighbours dropped by detection.
    sentinel = ~(plane < VARIANCE_SENTINEL)
    if sentinel.any():
        typical = float(np.median(plane[~sentinel])) if not sentinel.all() else 0.0
        plane = np.where(sentinel, np.float32(typical), plane)
    conv = fft.irfft2(fft.rfft2(plane, workers=1) * _kernel_fft(k**2, shape), s=shape, workers=1)
    out = np.maximum(conv, 0.0).astype(np.float32)
    if sentinel.any():
        out = np.where(sentinel, variance.astype(np.float32), out)
    return np.asarray(out, dtype=np.float32)
