"""Split a flat sequence into groups of consistent illumination: level and large-scale shape.

A lamp that dims part-way, or an illumination that shifts, makes a sequence whose frames must not be
combined together. Each frame is measured (clipped mean, and its image on a coarse grid divided by that
level and by the sequence's median frame); frames join the first group whose first frame agrees in
level within ``level_tolerance`` and in shape within ``shape_tolerance`` everywhere on the grid. The
master is built from the largest group (a tie goes to the group whose frames came first).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from processors.calib.isr import CalibParams

__all__ = ["FlatGrouping", "FlatMeasure", "coarse_grid", "group_flats"]


@dataclass(frozen=True, slots=True, kw_only=True)
class FlatMeasure:
    """What grouping needs of one flat frame.

    Attributes:
        name: The input's name.
        level_adu: Clipped mean of the frame after ISR.
        grid: Mean of each coarse-grid cell divided by ``level_adu`` (cells x cells).
    """

    name: str
    level_adu: float
    grid: NDArray[np.float64]


@dataclass(frozen=True, slots=True, kw_only=True)
class FlatGrouping:
    """The outcome of :func:`group_flats`.

    Attributes:
        used: Indices (into the measures) of the frames of the chosen group, in order.
        left_out: ``(index, reason)`` of every other frame, in order.
        groups: All groups found, each a tuple of indices, in order of their first frame.
    """

    used: tuple[int, ...]
    left_out: tuple[tuple[int, str], ...]
    groups: tuple[tuple[int, ...], ...]


def coarse_grid(image: NDArray[np.floating], cells: int) -> NDArray[np.float64]:
    """Mean of each cell of a ``cells`` x ``cells`` grid over an image, ignoring NaN.

    Args:
        image: A 2-D image.
        cells: Cells per side (fewer when the image is smaller).

    Returns:
        (cells, cells) float64 means.
    """
    rows, columns = image.shape
    n_y, n_x = max(1, min(cells, rows)), max(1, min(cells, columns))
    y_edges = np.linspace(0, rows, n_y + 1).astype(int)
    x_edges = np.linspace(0, columns, n_x + 1).astype(int)
    grid = np.empty((n_y, n_x), dtype=np.float64)
    for i in range(n_y):
        for j in range(n_x):
            cell = image[y_edges[i] : y_edges[i + 1], x_edges[j] : x_edges[j + 1]]
            finite = cell[np.isfinite(cell)]
            grid[i, j] = float(np.mean(finite, dtype=np.float64)) if finite.size else np.nan
    return grid


def _gradient(ratio: NDArray[np.float64]) -> float:
    """Total change of a plane fitted to a grid of ratios, from one corner of the detector to the other."""
    n_y, n_x = ratio.shape
    y, x = np.mgrid[0:n_y, 0:n_x]
    good = np.isfinite(ratio)
    if good.sum() < 3:
        return 0.0
    design = np.column_stack([np.ones(good.sum()), x[good] / max(n_x - 1, 1), y[good] / max(n_y - 1, 1)])
    coefficients, *_ = np.linalg.lstsq(design, ratio[good], rcond=None)
    return float(np.hypot(coefficients[1], coefficients[2]))


def group_flats(measures: Sequence[FlatMeasure], params: CalibParams) -> FlatGrouping:
    """Group flat frames by illumination level and shape and choose the group to build from.

    Args:
        measures: One per frame, in sequence order.
        params: ``level_tolerance`` and ``shape_tolerance``.

    Returns:
        The chosen group, the frames left out with a reason each, and all groups.
    """
    if not measures:
        return FlatGrouping(used=(), left_out=(), groups=())
    median_grid = np.nanmedian(np.stack([m.grid for m in measures]), axis=0)
    shapes = [m.grid / median_grid for m in measures]
    groups: list[list[int]] = []
    for index, measure in enumerate(measures):
        for group in groups:
            first = group[0]
            level_ratio = measure.level_adu / measures[first].level_adu
            deviation = float(np.nanmax(np.abs(shapes[index] / shapes[first] - 1.0)))
            if abs(level_ratio - 1.0) <= params.level_tolerance and deviation <= params.shape_tolerance:
                group.append(index)
                break
        else:
            groups.append([index])
    main = max(groups, key=len)  # max keeps the first of equal lengths: the group whose frames came first
    main_level = float(np.mean([measures[i].level_adu for i in main]))
    main_shape = np.mean(np.stack([shapes[i] for i in main]), axis=0)
    left_out: list[tuple[int, str]] = []
    for index, measure in enumerate(measures):
        if index in main:
            continue
        ratio = measure.level_adu / main_level
        relative = shapes[index] / main_shape
        if abs(ratio - 1.0) > params.level_tolerance:
            reason = f"illumination level {ratio:.2f}x the main group"
        else:
            deviation = float(np.nanmax(np.abs(relative - 1.0)))
            reason = (
                f"illumination shape differs from the main group by up to {100 * deviation:.1f}% "
                f"(gradient {100 * _gradient(relative):.1f}% across the detector)"
            )
        left_out.append((index, reason))
    return FlatGrouping(used=tuple(main), left_out=tuple(left_out), groups=tuple(tuple(g) for g in groups))
