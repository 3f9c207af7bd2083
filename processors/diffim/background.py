"""Sky background: a clipped median over a mesh of boxes, interpolated back to every pixel."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.interpolate import RectBivariateSpline

from processors.diffim.calexp import FloatImage, MaskImage

__all__ = ["estimate_background"]


def _mesh_levels(values: np.ndarray, iterations: int, clip_sigma: float) -> np.ndarray:
    """Clipped median of each row of ``values`` (NaN for excluded pixels)."""
    level = np.nanmedian(values, axis=1)
    for _ in range(iterations):
        mad = np.nanmedian(np.abs(values - level[:, None]), axis=1)
        sigma = 1.4826 * mad
        keep = np.abs(values - level[:, None]) <= clip_sigma * sigma[:, None]
        values = np.where(keep, values, np.nan)
        level = np.nanmedian(values, axis=1)
    return np.asarray(level)


def estimate_background(
    image_e: FloatImage,
    mask: MaskImage,
    *,
    mesh_px: int = 128,
    stride: int = 2,
    clip_sigma: float = 3.0,
    iterations: int = 2,
) -> FloatImage:
    """Estimate the smooth sky under the image.

    Each ``mesh_px`` box gives a median clipped at ``clip_sigma`` (MAD-based, ``iterations`` rounds) of
    every ``stride``-th pixel in each direction; masked pixels are ignored. Boxes with no good pixel take
    the median of the others. The mesh is smoothed by a 3x3 median, then interpolated by a bicubic spline
    through the box centres and held constant beyond the outer centres.

    Args:
        image_e: the image in electrons.
        mask: its mask; non-zero pixels are ignored.
        mesh_px: box size in pixels (the last row/column of boxes may be partial).
        stride: subsampling of pixels inside a box (speed; 2 keeps a quarter of them).
        clip_sigma: clipping half-width in robust sigmas.
        iterations: clipping rounds.

    Returns:
        The background in electrons, same shape as the image.
    """
    ny, nx = image_e.shape
    my, mx = max(1, round(ny / mesh_px)), max(1, round(nx / mesh_px))
    ey = np.linspace(0, ny, my + 1).astype(int)
    ex = np.linspace(0, nx, mx + 1).astype(int)
    sub = np.where(mask[::stride, ::stride] == 0, image_e[::stride, ::stride], np.nan).astype(np.float32)
    sy, sx = ey // stride, ex // stride
    levels = np.full((my, mx), np.nan)
    for i in range(my):
        rows = [sub[sy[i] : sy[i + 1], sx[j] : sx[j + 1]].ravel() for j in range(mx)]
        width = max(r.size for r in rows)
        block = np.full((mx, width), np.nan, dtype=np.float32)
        for j, r in enumerate(rows):
            block[j, : r.size] = r
        with np.errstate(all="ignore"):
            good = np.isfinite(block).any(axis=1)
            if good.any():
                levels[i, good] = _mesh_levels(block[good], iterations, clip_sigma)
    if not np.isfinite(levels).any():
        return np.zeros_like(image_e, dtype=np.float32)
    levels = np.where(np.isfinite(levels), levels, np.nanmedian(levels))
    cy = (ey[:-1] + ey[1:] - 1) / 2.0
    cx = (ex[:-1] + ex[1:] - 1) / 2.0
    if my == 1 and mx == 1:
        return np.full_like(image_e, levels[0, 0], dtype=np.float32)
    ky, kx = min(3, my - 1), min(3, mx - 1)
    if ky == 0 or kx == 0:
        # One row or column of boxes: interpolate along the other axis only.
        line = levels.ravel()
        if ky == 0:
            values = np.interp(np.arange(nx), cx, line)
            return np.broadcast_to(values[None, :], (ny, nx)).astype(np.float32)
        values = np.interp(np.arange(ny), cy, line)
        return np.broadcast_to(values[:, None], (ny, nx)).astype(np.float32)
    if my >= 3 and mx >= 3:
        # A box on a bright star or a galaxy reads high: a 3x3 median of the mesh, as SExtractor does.
        levels = ndimage.median_filter(levels, size=3, mode="nearest")
    spline = RectBivariateSpline(cy, cx, levels, kx=kx, ky=ky, s=0)
    # Beyond the outer box centres the level is held constant (a cubic would overshoot there).
    yu, iy = np.unique(np.clip(np.arange(ny), cy[0], cy[-1]), return_inverse=True)
    xu, ix = np.unique(np.clip(np.arange(nx), cx[0], cx[-1]), return_inverse=True)
    grid = np.asarray(spline(yu, xu), dtype=np.float32)
    return np.asarray(grid[iy][:, ix], dtype=np.float32)
