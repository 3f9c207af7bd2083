"""MEANCLIP combination across frames, per pixel, as cp_pipe combines calibration frames.

The first window is the median ± ``sigma`` x 0.7413 x IQR (the interquartile range scaled to a Gaussian
sigma); then ``iterations`` times the mean and standard deviation of the values inside the window are taken
and the window becomes mean ± ``sigma`` x sigma. The result is the last mean. Unlike a clip centred on the
mean, the median start rejects one strong outlier among a few frames.

Because the values of each pixel are sorted once, every window is a contiguous run of the sorted values:
its sum and sum of squares come from cumulative sums, and its ends from a vectorised binary search, so
each iteration costs a few operations per pixel instead of a pass over every frame.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import NDArray

__all__ = ["IQR_TO_SIGMA", "ClipResult", "clipped_mean_std", "meanclip_stack"]

IQR_TO_SIGMA: Final = 0.741301109252802
"""sigma of a Gaussian per unit of interquartile range (1 / (2 x 0.6744897...))."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClipResult:
    """The MEANCLIP of a stack of frames, per pixel.

    Attributes:
        mean: Clipped mean (float32); NaN where no frame had a value.
        variance: Variance of that mean: the clipped sample variance over the number of values kept
            (float32; 0 where fewer than two were kept).
        n_used: Number of values kept in the last iteration (int16).
    """

    mean: NDArray[np.float32]
    variance: NDArray[np.float32]
    n_used: NDArray[np.int16]


_NETWORK_MAX_FRAMES: Final = 32


@functools.lru_cache(maxsize=64)
def _sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sorting network for ``n`` inputs (comparators beyond ``n`` pruned)."""
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            for j in range(k % p, n - k, 2 * k):
                for i in range(min(k, n - j - k)):
                    if (i + j) // (p * 2) == (i + j + k) // (p * 2):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return tuple(pairs)


def _sorted_frames(values: NDArray[np.float32]) -> NDArray[np.float32]:
    """Sort (frames, pixels) along the frames, NaN last; a vectorised sorting network for few frames."""
    n_frames = values.shape[0]
    if n_frames > _NETWORK_MAX_FRAMES or n_frames < 2:
        ordered = np.array(values, dtype=np.float32)
        ordered.sort(axis=0)
        return ordered
    missing = np.isnan(values)
    has_missing = bool(missing.any())
    rows = [np.where(missing[i], np.float32(np.inf), values[i]) if has_missing else values[i] for i in range(n_frames)]
    for i, j in _sorting_network(n_frames):
        low = np.minimum(rows[i], rows[j])
        rows[j] = np.maximum(rows[i], rows[j])
        rows[i] = low
    ordered = np.stack(rows).astype(np.float32, copy=False)
    if has_missing:
        ordered[np.isinf(ordered) & (ordered > 0)] = np.nan
    return ordered


def _count(values: NDArray[np.float32], threshold: NDArray[np.float32], *, inclusive: bool) -> NDArray[np.int64]:
    """Per pixel, how many of its values are < threshold (<= when inclusive); NaN counts as above."""
    counter = np.int8 if values.shape[0] < 127 else np.int32
    below = np.less_equal(values, threshold) if inclusive else np.less(values, threshold)
    counts: NDArray[np.int64] = below.sum(axis=0, dtype=counter).astype(np.int64)
    return counts


def meanclip_stack(stack: NDArray[np.float32], *, sigma: float = 3.0, iterations: int = 3) -> ClipResult:
    """MEANCLIP of a stack of frames along its first axis.

    Args:
        stack: (frames, ...) values; NaN marks a missing value (a masked pixel of one frame).
        sigma: Half-width of the windows in sigma (the first window's sigma is 0.7413 x IQR).
        iterations: Number of mean/sigma iterations after the median start.

    Returns:
        Clipped mean, its variance and the number of values kept, each shaped like one frame.
    """
    n_frames = stack.shape[0]
    shape = stack.shape[1:]
    n_pixels = math.prod(shape)
    values = _sorted_frames(np.asarray(stack, dtype=np.float32).reshape(n_frames, n_pixels))  # NaN last
    flat = values.reshape(-1)
    columns = np.arange(n_pixels, dtype=np.int64)
    complete = n_frames > 0 and not bool(np.isnan(values[-1]).any())

    if complete:
        n_valid = np.full(n_pixels, n_frames, dtype=np.int64)

        def quantile(q: float) -> NDArray[np.float32]:
            position = q * (n_frames - 1)
            below = math.floor(position)
            above = min(below + 1, n_frames - 1)
            picked: NDArray[np.float32] = values[below] + np.float32(position - below) * (values[above] - values[below])
            return picked
    else:
        n_valid = np.count_nonzero(~np.isnan(values), axis=0).astype(np.int64)
        last = np.maximum(n_valid - 1, 0)

        def quantile(q: float) -> NDArray[np.float32]:
            position = q * last.astype(np.float64)
            below = np.floor(position).astype(np.int64)
            above = np.minimum(below + 1, last)
            low = flat.take(below * n_pixels + columns)
            high = flat.take(above * n_pixels + columns)
            picked: NDArray[np.float32] = low + (position - below).astype(np.float32) * (high - low)
            return picked

    median = quantile(0.5)
    iqr = quantile(0.75) - quantile(0.25)
    half = np.float32(sigma * IQR_TO_SIGMA) * iqr

    # Every window lies within `reach` of the median (each half-width is at most sigma x the previous
    # one and each centre moves by at most a half-width). Values below the window sit in both cumulative
    # sums that bound it and cancel; clamping them at -reach (where they are never summed) keeps the
    # float32 sums of (value - median) precise despite low outliers. Values above the window never
    # enter the sums that bound it, and rows at or above the median have no offset below zero.
    reach = half * np.float32(2.0 * sum(max(sigma, 1.0) ** i for i in range(max(iterations, 1))))
    low_limit = -reach
    clamp_rows = math.ceil((n_frames - 1) / 2) if complete else n_frames
    sums = np.empty((n_frames + 1, n_pixels), dtype=np.float32)
    squares = np.empty((n_frames + 1, n_pixels), dtype=np.float32)
    sums[0] = 0.0
    squares[0] = 0.0
    offset = np.empty(n_pixels, dtype=np.float32)
    for index in range(n_frames):
        np.subtract(values[index], median, out=offset)
        if index < clamp_rows:
            np.maximum(offset, low_limit, out=offset)
        if not complete:
            offset[np.isnan(offset)] = 0.0
        np.add(sums[index], offset, out=sums[index + 1])
        np.multiply(offset, offset, out=offset)
        np.add(squares[index], offset, out=squares[index + 1])
    sums_flat, squares_flat = sums.reshape(-1), squares.reshape(-1)

    centre = median
    shift = np.zeros(n_pixels, dtype=np.float32)
    spread = np.zeros(n_pixels, dtype=np.float32)
    kept = n_valid
    for _ in range(max(iterations, 1)):
        start = _count(values, centre - half, inclusive=False)
        stop = _count(values, centre + half, inclusive=True)
        kept = stop - start
        low, high = start * n_pixels + columns, stop * n_pixels + columns
        total = sums_flat.take(high) - sums_flat.take(low)
        total_sq = squares_flat.take(high) - squares_flat.take(low)
        # An empty window (possible only when the IQR is zero) keeps the median.
        count = np.maximum(kept, 1).astype(np.float32)
        shift = (total / count).astype(np.float32)
        spread = np.maximum((total_sq - total * shift) / np.maximum(count - 1, 1), 0.0).astype(np.float32)
        spread[kept < 2] = 0.0
        centre = median + shift
        half = np.float32(sigma) * np.sqrt(spread)
    result = median + shift
    result[n_valid == 0] = np.nan
    variance_of_mean: NDArray[np.float32] = (spread / np.maximum(kept, 1)).astype(np.float32)
    return ClipResult(
        mean=result.reshape(shape),
        variance=variance_of_mean.reshape(shape),
        n_used=kept.astype(np.int16).reshape(shape),
    )


def clipped_mean_std(
    values: NDArray[np.floating], *, sigma: float = 3.0, iterations: int = 3
) -> tuple[float, float, int]:
    """MEANCLIP of one set of values (e.g. all pixels of an amplifier), ignoring NaN.

    Args:
        values: Any shape; NaN values are ignored.
        sigma: Half-width of the windows in sigma.
        iterations: Number of mean/sigma iterations after the median start.

    Returns:
        (clipped mean, clipped standard deviation, number of values kept); (NaN, NaN, 0) when empty.
    """
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    data = data[np.isfinite(data)]
    if data.size == 0:
        return math.nan, math.nan, 0
    q1, median, q3 = np.percentile(data, [25.0, 50.0, 75.0])
    centre, half = float(median), sigma * IQR_TO_SIGMA * float(q3 - q1)
    mean, std, kept = float(median), 0.0, int(data.size)
    for _ in range(max(iterations, 1)):
        inside = data[np.abs(data - centre) <= half]
        kept = int(inside.size)
        if kept == 0:
            return float(median), 0.0, 0
        mean = float(inside.mean())
        std = float(inside.std(ddof=1)) if kept > 1 else 0.0
        centre, half = mean, sigma * std
    return mean, std, kept
