"""Per-visit measurements: sky background, PSF FWHM, registration and the quality cut, against simulated truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ops.simulate.sky import FieldSpec, VisitSpec, make_wcs, simulate_visit
from processors.diffim import QualityParams, assess_quality, measure_psf
from processors.diffim.background import background_from_levels, background_levels, estimate_background
from processors.diffim.psf import find_peaks
from processors.diffim.registration import register_to

SHAPE = (512, 512)
FIELD = FieldSpec(name="psf", ra_deg=45.0, dec_deg=10.0, stars_per_arcmin2=40.0)


@pytest.mark.parametrize(
    ("kind", "seeing", "tolerance"), [("gaussian", 0.8, 0.03), ("gaussian", 1.4, 0.03), ("moffat", 1.0, 0.08)]
)
def test_fwhm_recovered(kind: str, seeing: float, tolerance: float) -> None:
    """The FWHM from bright isolated stars matches the simulated seeing (3 % for a Gaussian PSF; a Gaussian
    fit to a Moffat PSF reads up to 8 % broad)."""
    visit = VisitSpec(index=1, seeing_fwhm_arcsec=seeing, psf_kind=kind)  # type: ignore[arg-type]
    image = simulate_visit(FIELD, visit, shape=SHAPE)
    sky = estimate_background(image.image_e, image.mask)
    psf = measure_psf(image.image_e - sky, image.variance_e, image.mask, saturation_e=120_000.0)
    assert psf.n_stars >= 5
    assert psf.fwhm_arcsec == pytest.approx(seeing, rel=tolerance)
    assert psf.fwhm_arcsec >= seeing * 0.99
    assert psf.stamp.sum() == pytest.approx(1.0, abs=1e-5)


def test_background_is_the_sky_level() -> None:
    """The clipped-mesh background of a dense star field is within 1 e- (0.1 %) of the 1000 e- sky, the excess
    being the light of faint stars' wings."""
    image = simulate_visit(FIELD, VisitSpec(index=1, sky_e_per_px=1000.0), shape=SHAPE)
    sky = estimate_background(image.image_e, image.mask)
    assert float(np.median(sky)) == pytest.approx(1000.0, abs=1.0)
    assert float(np.abs(sky - 1000.0).max()) < 2.5


def test_quality_cut_rejects_bad_seeing() -> None:
    """A 2.4" visit fails the default 2.0" cut for its FWHM (measured within 8 % of 2.4"); a 0.8" visit passes."""
    results = {}
    for seeing in (0.8, 2.4):
        image = simulate_visit(FIELD, VisitSpec(index=2, seeing_fwhm_arcsec=seeing), shape=SHAPE)
        bs = image.image_e - estimate_background(image.image_e, image.mask)
        peaks = find_peaks(bs, image.variance_e, image.mask)
        psf = measure_psf(bs, image.variance_e, image.mask, saturation_e=120_000.0, peaks=peaks)
        results[seeing] = assess_quality(psf, len(peaks), QualityParams())
    assert results[0.8].ok and results[0.8].reasons == ()
    assert not results[2.4].ok and "fwhm" in results[2.4].reasons
    assert results[2.4].fwhm_arcsec == pytest.approx(2.4, rel=0.08)


def test_quality_cut_rejects_too_many_sources() -> None:
    """More 5-sigma peaks than max_sources fails the cut with reason 'sources'."""
    image = simulate_visit(FIELD, VisitSpec(index=1), shape=SHAPE)
    bs = image.image_e - estimate_background(image.image_e, image.mask)
    peaks = find_peaks(bs, image.variance_e, image.mask)
    psf = measure_psf(bs, image.variance_e, image.mask, peaks=peaks)
    verdict = assess_quality(psf, len(peaks), QualityParams(max_sources=len(peaks) - 1))
    assert verdict.reasons == ("sources",)


def test_registration_aligns_stars() -> None:
    """Resampling a dithered visit onto another's grid by WCS lines the stars up: the shift found is the
    dither in pixels, and the registered image matches the other visit to the noise."""
    v1 = VisitSpec(index=1, psf_kind="gaussian")
    v2 = VisitSpec(index=2, psf_kind="gaussian", dither_arcsec=(1.37, -2.91))
    a = simulate_visit(FIELD, v1, shape=SHAPE)
    b = simulate_visit(FIELD, v2, shape=SHAPE)
    reg = register_to(a.wcs_header, SHAPE, b.image_e, b.variance_e, b.mask, b.wcs_header)
    assert reg.method == "lanczos3-shift"
    # East is -x and north +y: a pointing 1.37" east / 2.91" south puts the same sky 6.85 px left... of b's grid.
    expected = make_wcs(FIELD, v2, SHAPE).all_world2pix(*make_wcs(FIELD, v1, SHAPE).all_pix2world(255.5, 255.5, 0), 0)
    assert reg.shift_px[0] == pytest.approx(float(expected[0]) - 255.5, abs=0.01)
    assert reg.shift_px[1] == pytest.approx(float(expected[1]) - 255.5, abs=0.01)
    inner = (slice(40, -40), slice(40, -40))
    resid = (a.image_e - reg.image_e)[inner] / np.sqrt(a.variance_e + reg.variance_e2)[inner]
    assert float(np.std(resid)) < 1.1


def test_registration_through_a_rotation() -> None:
    """A reference rotated by 0.1 degree (0.9 px at the corners of 512 px) takes the affine spline path and
    still lines the stars up to the noise."""
    v1 = VisitSpec(index=1, psf_kind="gaussian")
    v2 = VisitSpec(index=2, psf_kind="gaussian", dither_arcsec=(0.7, 0.4), rotation_deg=0.1)
    a = simulate_visit(FIELD, v1, shape=SHAPE)
    b = simulate_visit(FIELD, v2, shape=SHAPE)
    reg = register_to(a.wcs_header, SHAPE, b.image_e, b.variance_e, b.mask, b.wcs_header)
    assert reg.method == "spline3-affine"
    inner = (slice(40, -40), slice(40, -40))
    resid = (a.image_e - reg.image_e)[inner] / np.sqrt(a.variance_e + reg.variance_e2)[inner]
    assert float(np.std(resid)) < 1.1
    # Without registration the stars would leave residuals far above the noise.
    raw = (a.image_e - b.image_e)[inner] / np.sqrt(a.variance_e + b.variance_e)[inner]
    assert float(np.std(raw)) > 1.5 * float(np.std(resid))


def test_visit_quality_on_arrival() -> None:
    """visit_quality gives the PSF and verdict of a single visit; a blank frame has no PSF and fails."""
    from ops.simulate.sky import to_calibrated
    from processors.diffim import DiffParams, visit_quality

    image = to_calibrated(simulate_visit(FIELD, VisitSpec(index=1, seeing_fwhm_arcsec=0.9), shape=SHAPE), obsid="x")
    psf, verdict = visit_quality(image, DiffParams())
    assert psf is not None and verdict.ok and psf.fwhm_arcsec == pytest.approx(0.9, rel=0.12)  # Moffat reads broad
    blank = FieldSpec(name="blank", ra_deg=0.0, dec_deg=0.0, stars_per_arcmin2=0.0)
    none, bad = visit_quality(
        to_calibrated(simulate_visit(blank, VisitSpec(index=1), shape=SHAPE), obsid="y"), DiffParams()
    )
    assert none is None and not bad.ok and "psf_stars" in bad.reasons


def test_a_calexp_file_carries_its_psf_and_a_difference_uses_it(tmp_path: Path) -> None:
    """A calexp written with its PSF and sky mesh reads back with the same PSF, peak count and mesh; a
    difference of two such files gives exactly the sources and kernel of one that measures both itself."""
    import dataclasses

    from ops.simulate.sky import to_calibrated
    from processors.diffim import DiffParams, difference_pair, visit_quality
    from processors.diffim.calexp import CalibratedImage

    params = DiffParams()
    written = []
    for index, seeing, dither in ((1, 0.8, (0.0, 0.0)), (2, 1.1, (2.5, -3.0))):
        visit = VisitSpec(index=index, seeing_fwhm_arcsec=seeing, dither_arcsec=dither, mjd_tai=61000.0 + index / 100)
        image = to_calibrated(simulate_visit(FIELD, visit, shape=SHAPE), obsid=f"MC_O_20260114_00000{index}")
        psf, quality = visit_quality(image, params)
        path = tmp_path / f"{index}.fits"
        levels = background_levels(image.image_e, image.mask, mesh_px=params.background_mesh_px)
        carried = dataclasses.replace(
            image, psf=psf, n_peaks=quality.n_sources, background_levels=levels, background_mesh_px=128
        )
        carried.to_fits(str(path), {"GROUPID": "g"})
        written.append((image, psf, quality, path))
    for _image, psf, quality, path in written:
        back = CalibratedImage.from_fits(str(path))
        assert back.psf is not None and psf is not None
        assert back.psf.sigma_px == psf.sigma_px and back.psf.n_stars == psf.n_stars
        assert np.array_equal(back.psf.stamp, psf.stamp) and back.n_peaks == quality.n_sources
        assert back.background_levels is not None and back.background_mesh_px == params.background_mesh_px
        shape = back.shape
        assert np.array_equal(
            background_from_levels(back.background_levels, shape), estimate_background(back.image_e, back.mask)
        )
    (sci, _, _, sci_path), (ref, _, _, ref_path) = written[1], written[0]
    measured = difference_pair(sci, ref, params)
    carried = difference_pair(
        CalibratedImage.from_fits(str(sci_path)), CalibratedImage.from_fits(str(ref_path)), params
    )
    assert carried.science_psf.sigma_px == measured.science_psf.sigma_px
    assert carried.reference_quality == measured.reference_quality
    assert [(s.x_px, s.y_px) for s in carried.detections.sources] == [
        (s.x_px, s.y_px) for s in measured.detections.sources
    ]
