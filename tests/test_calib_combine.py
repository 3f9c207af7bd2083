"""MEANCLIP across frames: the median start, the iterations, missing values and strip independence."""

from __future__ import annotations

import numpy as np

from processors.calib import clipped_mean_std, meanclip_stack
from processors.calib.combine import IQR_TO_SIGMA


def _reference(values: np.ndarray, sigma: float = 3.0, iterations: int = 3) -> float:
    """cp_pipe's MEANCLIP of one pixel, written plainly: median ± sigma·0.7413·IQR, then mean ± sigma·std."""
    data = values[np.isfinite(values)].astype(np.float64)
    q1, median, q3 = np.percentile(data, [25, 50, 75])
    centre, half = median, sigma * IQR_TO_SIGMA * (q3 - q1)
    mean = median
    for _ in range(iterations):
        inside = data[np.abs(data - centre) <= half]
        mean, std = inside.mean(), inside.std(ddof=1)
        centre, half = mean, sigma * std
    return float(mean)


def test_one_strong_outlier_among_ten_is_rejected() -> None:
    """One frame 50 sigma high among 10 is rejected by MEANCLIP, where a mean-centred 3 sigma clip keeps it."""
    rng = np.random.default_rng(1)
    clean = rng.normal(0.0, 1.0, (9, 4, 5)).astype(np.float32)
    stack = np.concatenate([clean, np.full((1, 4, 5), 50.0, dtype=np.float32)])
    result = meanclip_stack(stack)
    assert np.all(result.n_used <= 9)  # the outlier is out (a clean value near 3 sigma may go too)
    assert np.all(np.abs(result.mean - clean.mean(axis=0)) < 0.5)  # the outlier would add 5
    for y in range(4):
        for x in range(5):
            assert abs(float(result.mean[y, x]) - _reference(stack[:, y, x])) < 1e-5
    # A clip centred on the mean: the outlier is at most (N-1)/sqrt(N) = 2.85 sigma away, so it stays.
    mean, std = stack.mean(axis=0), stack.std(axis=0)
    assert np.all(np.abs(stack[-1] - mean) < 3 * std)


def test_matches_a_plain_implementation_with_missing_values() -> None:
    """Per pixel, the vectorised MEANCLIP equals a plain loop, NaN values ignored."""
    rng = np.random.default_rng(2)
    stack = rng.normal(100.0, 5.0, (13, 6, 7)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.02] += 400.0
    stack[rng.random(stack.shape) < 0.1] = np.nan
    result = meanclip_stack(stack)
    for y in range(6):
        for x in range(7):
            assert abs(float(result.mean[y, x]) - _reference(stack[:, y, x])) < 1e-4


def test_a_pixel_with_no_values_is_nan() -> None:
    """A pixel missing from every frame combines to NaN with no values used."""
    stack = np.ones((5, 2, 2), dtype=np.float32)
    stack[:, 0, 0] = np.nan
    result = meanclip_stack(stack)
    assert np.isnan(result.mean[0, 0]) and result.n_used[0, 0] == 0
    assert float(result.mean[1, 1]) == 1.0


def test_the_result_does_not_depend_on_how_the_frame_is_cut() -> None:
    """Combining a frame whole or in row strips gives byte-identical means and variances."""
    rng = np.random.default_rng(3)
    stack = rng.normal(10.0, 2.0, (11, 40, 30)).astype(np.float32)
    whole = meanclip_stack(stack)
    parts = [meanclip_stack(stack[:, start : start + 7]) for start in range(0, 40, 7)]
    assert np.concatenate([p.mean for p in parts]).tobytes() == whole.mean.tobytes()
    assert np.concatenate([p.variance for p in parts]).tobytes() == whole.variance.tobytes()


def test_variance_is_that_of_the_clipped_mean() -> None:
    """The variance plane is about sigma² / N for Gaussian frames (here within 10 % on average)."""
    rng = np.random.default_rng(4)
    stack = rng.normal(0.0, 2.0, (20, 100, 100)).astype(np.float32)
    result = meanclip_stack(stack)
    assert abs(float(result.variance.mean()) / (4.0 / 20) - 1) < 0.1


def test_clipped_statistics_of_one_set() -> None:
    """clipped_mean_std of Gaussian values with 1 % strong outliers returns the Gaussian's mean and sigma."""
    rng = np.random.default_rng(5)
    values = rng.normal(7.0, 3.0, 100_000)
    values[:1000] = 1e4
    mean, std, kept = clipped_mean_std(values)
    assert abs(mean - 7.0) < 0.05 and abs(std / 3.0 - 1) < 0.03 and kept < 99_000


def test_a_huge_low_outlier_does_not_spoil_the_sums() -> None:
    """A value of -1e9 among frames at 30 000 ± 5 leaves the clipped mean exact to 1e-3 (float32 sums are clamped)."""
    rng = np.random.default_rng(6)
    stack = rng.normal(30_000.0, 5.0, (12, 3, 3)).astype(np.float32)
    stack[0] = -1e9
    result = meanclip_stack(stack)
    for y in range(3):
        for x in range(3):
            assert abs(float(result.mean[y, x]) - _reference(stack[:, y, x])) < 1e-3
            assert result.n_used[y, x] <= 11
