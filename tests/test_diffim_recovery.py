"""Injection and recovery: completeness, positions and fluxes of point sources of known SNR in differences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from astropy.wcs import WCS

from ops.simulate.sky import (
    FieldSpec,
    Injection,
    VisitSpec,
    flux_for_difference_snr,
    grid_positions,
    make_wcs,
    simulate_visit,
    star_catalog,
    to_calibrated,
)
from processors.diffim import DiffParams, DiffResult, difference_pair

SHAPE = (1024, 1024)
LEVELS = (5.5, 7.0, 10.0, 30.0)
PER_LEVEL = 40  # per frame; three frames give 120 per level


@dataclass(frozen=True)
class Match:
    level: float
    truth_x: float
    truth_y: float
    truth_flux: float
    found: bool
    dx: float = 0.0
    dy: float = 0.0
    flux: float = 0.0
    snr: float = 0.0


def _run_frame(n: int, science_seeing: float, reference_seeing: float) -> tuple[DiffResult, list[Match]]:
    field = FieldSpec(name=f"recovery{n}", ra_deg=150.0 + n, dec_deg=2.0 - n)
    reference = VisitSpec(index=1, seeing_fwhm_arcsec=reference_seeing, mjd_tai=61000.0)
    science = VisitSpec(
        index=2, seeing_fwhm_arcsec=science_seeing, dither_arcsec=(3.3 + n, -5.1 + 2 * n), mjd_tai=61000.01
    )
    header = make_wcs(field, science, SHAPE).to_header()
    stars = star_catalog(field)
    sx, sy = WCS(header).all_world2pix(stars["ra_deg"], stars["dec_deg"], 0)
    bright = stars["flux_e"] > 3e4
    positions = grid_positions(
        header, SHAPE, len(LEVELS) * PER_LEVEL, margin_px=40, seed=n, avoid_px=12, avoid_xy=(sx[bright], sy[bright])
    )
    injections = [
        Injection(
            id=f"{n}-{i}",
            ra_deg=ra,
            dec_deg=dec,
            flux_e_by_visit={2: flux_for_difference_snr(LEVELS[i % len(LEVELS)], science, reference)},
            kind=str(LEVELS[i % len(LEVELS)]),
        )
        for i, (ra, dec) in enumerate(positions)
    ]
    ref_image = simulate_visit(field, reference, shape=SHAPE, injections=injections)
    sci_image = simulate_visit(field, science, shape=SHAPE, injections=injections)
    result = difference_pair(
        to_calibrated(sci_image, obsid="MC_O_20260114_000002"),
        to_calibrated(ref_image, obsid="MC_O_20260114_000001"),
        DiffParams(),
    )
    sources = [s for s in result.detections.sources if not s.is_negative]
    x = np.array([s.x_px for s in sources])
    y = np.array([s.y_px for s in sources])
    matches = []
    objects = sci_image.truth["objects"]
    assert isinstance(objects, list)
    for obj in objects:
        level, tx, ty, flux = float(obj["kind"]), float(obj["x_px"]), float(obj["y_px"]), float(obj["flux_e"])
        d = np.hypot(x - tx, y - ty)
        j = int(np.argmin(d))
        if d[j] < 2.5:
            s = sources[j]
            matches.append(Match(level, tx, ty, flux, True, s.x_px - tx, s.y_px - ty, s.psf_flux_e, s.snr))
        else:
            matches.append(Match(level, tx, ty, flux, False))
    return result, matches


@pytest.fixture(scope="module")
def recovery() -> tuple[list[DiffResult], list[Match]]:
    """Three 1024² frames: two with a sharper reference (0.8" vs 1.2"), one with a sharper science."""
    results, matches = [], []
    for n, (sci, ref) in enumerate(((1.2, 0.8), (1.2, 0.8), (0.8, 1.2))):
        result, frame_matches = _run_frame(n, sci, ref)
        results.append(result)
        matches += frame_matches
    return results, matches


def _at(matches: list[Match], level: float) -> list[Match]:
    return [m for m in matches if m.level == level]


def test_the_sharper_image_is_convolved(recovery: tuple[list[DiffResult], list[Match]]) -> None:
    """The kernel is applied to whichever image has the smaller PSF, and its sum is 1 within 2 % (same zero point)."""
    results, _ = recovery
    assert [r.convolved for r in results] == ["reference", "reference", "science"]
    for r in results:
        assert r.kernel.kernel_sum == pytest.approx(1.0, abs=0.02)
        assert r.kernel.n_stamps >= 6


@pytest.mark.parametrize(("level", "minimum"), [(5.5, 0.50), (7.0, 0.90), (10.0, 0.98), (30.0, 1.0)])
def test_completeness_at_difference_snr(
    recovery: tuple[list[DiffResult], list[Match]], level: float, minimum: float
) -> None:
    """Sources injected at a given SNR in the difference are found at least as often as the requirement."""
    at = _at(recovery[1], level)
    assert len(at) >= 100
    completeness = sum(m.found for m in at) / len(at)
    assert completeness >= minimum, f"SNR {level}: {completeness:.1%} of {len(at)}"


@pytest.mark.parametrize(("level", "max_median_px"), [(10.0, 0.7), (30.0, 0.3)])
def test_position_errors(recovery: tuple[list[DiffResult], list[Match]], level: float, max_median_px: float) -> None:
    """Median radial position error is within the requirement, with no systematic offset (mean within 3 sigma of 0)."""
    found = [m for m in _at(recovery[1], level) if m.found]
    dx = np.array([m.dx for m in found])
    dy = np.array([m.dy for m in found])
    assert float(np.median(np.hypot(dx, dy))) <= max_median_px
    for d in (dx, dy):
        assert abs(d.mean()) <= 3 * d.std(ddof=1) / np.sqrt(d.size)
        assert abs(d.mean()) < 0.1


def test_psf_flux_is_the_injected_flux(recovery: tuple[list[DiffResult], list[Match]]) -> None:
    """PSF fluxes of SNR-30 sources have a median within 4 % of the truth, and their SNR is near 30."""
    found = [m for m in _at(recovery[1], 30.0) if m.found]
    ratio = np.median([m.flux / m.truth_flux for m in found])
    assert ratio == pytest.approx(1.0, abs=0.04)
    assert float(np.median([m.snr for m in found])) == pytest.approx(30.0, rel=0.25)


def test_few_unmatched_detections(recovery: tuple[list[DiffResult], list[Match]]) -> None:
    """Beyond the injections, each frame has at most a handful of detections (star residuals)."""
    results, matches = recovery
    found = sum(m.found for m in matches)
    total = sum(len(r.detections.sources) for r in results)
    assert total - found <= 5 * len(results)
