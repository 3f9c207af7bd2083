"""Registration by WCS: resample a reference image onto a science image's pixel grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage

from processors.diffim.calexp import MASK_NO_DATA, FloatImage, MaskImage

__all__ = ["Registered", "pixel_mapping", "register_to"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Registered:
    """A reference resampled onto the science grid.

    Attributes:
        image_e, variance_e2, mask: the resampled planes (``MASK_NO_DATA`` where the reference has none).
        shift_px: (dx, dy) mean shift, science pixel → reference pixel.
        method: ``lanczos3-shift`` (a pure translation) or ``spline3-affine``.
    """

    image_e: FloatImage
    variance_e2: FloatImage
    mask: MaskImage
    shift_px: tuple[float, float]
    method: str


def pixel_mapping(science_wcs: fits.Header, reference_wcs: fits.Header, shape: tuple[int, int]) -> np.ndarray:
    """The affine map from science pixels to reference pixels, fitted on a 9x9 grid through the WCSs.

    Returns:
        A 2x3 matrix ``A`` with ``[x_ref, y_ref] = A @ [x_sci, y_sci, 1]`` (0-based pixels).
    """
    ny, nx = shape
    gy, gx = np.meshgrid(np.linspace(0, ny - 1, 9), np.linspace(0, nx - 1, 9), indexing="ij")
    sw, rw = WCS(science_wcs), WCS(reference_wcs)
    ra, dec = sw.all_pix2world(gx.ravel(), gy.ravel(), 0)
    rx, ry = rw.all_world2pix(ra, dec, 0)
    design = np.column_stack([gx.ravel(), gy.ravel(), np.ones(gx.size)])
    coef_x = np.linalg.lstsq(design, rx, rcond=None)[0]
    coef_y = np.linalg.lstsq(design, ry, rcond=None)[0]
    return np.vstack([coef_x, coef_y])


def _lanczos3(frac: float) -> np.ndarray:
    """Taps of a Lanczos-3 interpolator sampling at offset ``frac`` (in [0, 1)) from taps -2..3."""
    t = np.arange(-2, 4, dtype=np.float64) - frac
    taps = np.sinc(t) * np.sinc(t / 3.0)
    return np.asarray(taps / taps.sum())


def _shift_lanczos(plane: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """Sample ``plane`` at (x + dx, y + dy) for every pixel, separable Lanczos-3."""
    out = plane.astype(np.float32)
    for axis, d in ((1, dx), (0, dy)):
        integer = math.floor(d)
        frac = d - integer
        taps = _lanczos3(frac)
        # correlate1d centres a 6-tap kernel between taps 2 and 3 (origin -1 puts the centre on tap 2).
        out = ndimage.correlate1d(out, taps.astype(np.float32), axis=axis, mode="constant", cval=0.0, origin=-1)
        if integer:
            out = np.roll(out, -integer, axis=axis)
            if integer > 0:
                sl = [slice(None)] * 2
                sl[axis] = slice(out.shape[axis] - integer, None)
                out[tuple(sl)] = 0
            else:
                sl = [slice(None)] * 2
                sl[axis] = slice(0, -integer)
                out[tuple(sl)] = 0
    return out


def register_to(
    science_wcs: fits.Header,
    shape: tuple[int, int],
    reference_image: FloatImage,
    reference_variance: FloatImage,
    reference_mask: MaskImage,
    reference_wcs: fits.Header,
) -> Registered:
    """Resample the reference onto the science grid.

    When the WCS map is a translation to 0.01 px over the frame (small dithers, same scale and rotation),
    the image is resampled by a separable Lanczos-3 shift and the variance shifted to the nearest pixel;
    otherwise by a cubic spline through the affine map (variance: linear interpolation). The variance is
    not propagated with squared weights on purpose: interpolation lowers the per-pixel noise but not the
    noise on PSF scales (the pixels become correlated), and it is the noise on PSF scales that detection
    needs. The mask is nearest-pixel, grown by 2 px, with ``MASK_NO_DATA``
    where the reference does not reach.

    Args:
        science_wcs: the science image's WCS header.
        shape: the science image's shape.
        reference_image, reference_variance, reference_mask, reference_wcs: the reference planes.

    Returns:
        The registered planes.
    """
    ny, nx = shape
    amap = pixel_mapping(science_wcs, reference_wcs, shape)
    linear = amap[:, :2]
    dx, dy = float(amap[0, 2]), float(amap[1, 2])
    deviation = float(np.abs(linear - np.eye(2)).max()) * max(nx, ny)
    same_shape = reference_image.shape == shape
    if deviation < 0.01 and same_shape:
        # Evaluate the shift at the frame centre so the residual linear part stays below 0.01 px.
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
        sx = float(amap[0] @ [cx, cy, 1.0]) - cx
        sy = float(amap[1] @ [cx, cy, 1.0]) - cy
        image = _shift_lanczos(reference_image, sx, sy)
        # The variance is smooth on the pixel scale: the nearest-pixel shift is enough, and cheaper.
        variance = np.roll(np.roll(reference_variance, -round(sy), axis=0), -round(sx), axis=1).astype(np.float32)
        ix, iy = round(sx), round(sy)
        mask = np.roll(np.roll(reference_mask, -iy, axis=0), -ix, axis=1)
        covered = np.zeros(shape, dtype=bool)
        ys = slice(max(0, -iy + 3), min(ny, ny - iy - 3))
        xs = slice(max(0, -ix + 3), min(nx, nx - ix - 3))
        covered[ys, xs] = True
        dx, dy, method = sx, sy, "lanczos3-shift"
    else:
        yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
        rx = amap[0, 0] * xx + amap[0, 1] * yy + amap[0, 2]
        ry = amap[1, 0] * xx + amap[1, 1] * yy + amap[1, 2]
        coords = np.stack([ry, rx])
        image = ndimage.map_coordinates(reference_image, coords, order=3, mode="constant", cval=0.0).astype(np.float32)
        variance = ndimage.map_coordinates(reference_variance, coords, order=1, mode="constant").astype(np.float32)
        mask = ndimage.map_coordinates(reference_mask, coords, order=0, mode="constant").astype(np.uint16)
        rny, rnx = reference_image.shape
        covered = (rx >= 2) & (ry >= 2) & (rx <= rnx - 3) & (ry <= rny - 3)
        method = "spline3-affine"
    if mask.any():
        grown = ndimage.grey_dilation(mask, size=(5, 5))
        mask = np.asarray(grown, dtype=np.uint16)
    mask = np.where(covered, mask, mask | MASK_NO_DATA).astype(np.uint16)
    return Registered(image_e=image, variance_e2=variance, mask=mask, shift_px=(dx, dy), method=method)
