"""Templates from simulated visits of known truth: less noise, the right inputs, no moving object, new sources found."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from ops.simulate.sky import (
    FieldSpec,
    Injection,
    MovingObject,
    VisitSpec,
    flux_for_difference_snr,
    grid_positions,
    make_wcs,
    simulate_visit,
    star_catalog,
    to_calibrated,
)
from processors.diffim import CalibratedImage, DiffParams, difference_pair
from processors.diffim.background import estimate_background
from processors.diffim.template import TemplateError, TemplateResult, build_template

SHAPE = (512, 512)
FIELD = FieldSpec(name="tmpl", ra_deg=151.0, dec_deg=1.5)
SEEING = (0.80, 0.76, 0.84, 0.78)
MOVER = MovingObject(
    id="mover", ra_deg=151.0, dec_deg=1.5, mjd_ref_tai=61000.0, rate_arcsec_per_h=(40.0, 10.0), flux_e=20_000.0
)


def _visit(index: int, seeing: float, mjd: float) -> VisitSpec:
    rng = np.random.default_rng(index)
    return VisitSpec(
        index=index,
        seeing_fwhm_arcsec=seeing,
        dither_arcsec=(float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8))),
        mjd_tai=mjd,
        obsid=f"MC_O_20260114_{index:06d}",
    )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], TemplateResult, list[dict[str, object]]]:
    """Four visits (0.76-0.84 arcsec, 20 min apart, a bright object moving through them) stacked into a template."""
    directory = tmp_path_factory.mktemp("template")
    paths, truths = [], []
    for index, seeing in enumerate(SEEING, start=1):
        visit = _visit(index, seeing, 61000.0 + (index - 1) * 20 / 1440)
        image = simulate_visit(FIELD, visit, shape=SHAPE, injections=[MOVER])
        path = directory / f"v{index}.fits"
        to_calibrated(image, obsid=visit.obsid).to_fits(str(path))
        paths.append(path)
        truths.append(image.truth)
    output = directory / "template.fits"
    result = build_template([str(p) for p in paths], str(output), template_id="template-test-0001")
    return output, paths, result, truths


def _binned_noise(image: np.ndarray, mask: np.ndarray) -> float:
    """Robust sigma of 4x4 block sums of the sky-subtracted image (PSF-scale noise, stars barely matter)."""
    sky = image - estimate_background(image, mask, mesh_px=64)
    ny, nx = (s // 4 * 4 for s in sky.shape)
    blocks = sky[16 : ny - 16, 16 : nx - 16].reshape((ny - 32) // 4, 4, (nx - 32) // 4, 4).sum(axis=(1, 3))
    return float(1.4826 * np.median(np.abs(blocks - np.median(blocks))))


def test_the_template_has_the_noise_of_four_visits_and_names_its_inputs(
    stack: tuple[Path, list[Path], TemplateResult, list[dict[str, object]]],
) -> None:
    """Four similar visits stacked: the noise on PSF scales drops by about 1/sqrt(4) = 0.5 (0.42-0.6), the
    propagated variance says the same, and the template records its four inputs in order with its seeing."""
    output, paths, result, _ = stack
    template = CalibratedImage.from_fits(str(output))
    single = CalibratedImage.from_fits(str(paths[0]))
    ratio = _binned_noise(template.image_e, template.mask) / _binned_noise(single.image_e, single.mask)
    assert 0.42 < ratio < 0.6, ratio
    inner = (slice(40, -40), slice(40, -40))
    variance_ratio = float(np.median(template.variance_e2[inner]) / np.median(single.variance_e2[inner]))
    assert variance_ratio == pytest.approx(0.25, rel=0.15)
    assert result.inputs_obsid == tuple(f"MC_O_20260114_{i:06d}" for i in range(1, 5))
    assert result.n_inputs == 4 and sum(result.weights) == pytest.approx(1.0)
    assert template.obsid == "template-test-0001"
    assert result.fwhm_arcsec is not None and 0.7 < result.fwhm_arcsec < 0.95
    header = fits.getheader(output)
    assert header["NINPUTS"] == 4 and header["INPUT004"] == "MC_O_20260114_000004"


def test_a_moving_object_is_clipped_out_of_the_template(
    stack: tuple[Path, list[Path], TemplateResult, list[dict[str, object]]],
) -> None:
    """The object moving through the four visits leaves no source in the template: at each of its positions the
    template's flux in a 7x7 box is below 3 sigma, while a single visit shows it at > 50 sigma."""
    output, paths, _, truths = stack
    template = CalibratedImage.from_fits(str(output))
    wcs = WCS(template.wcs_header)
    for path, truth in zip(paths, truths, strict=True):
        objects = truth["objects"]
        assert isinstance(objects, list)
        mover = objects[0]
        x, y = (float(v[0]) for v in wcs.all_world2pix([mover["ra_deg"]], [mover["dec_deg"]], 0))
        ix, iy = round(x), round(y)
        box = (slice(iy - 3, iy + 4), slice(ix - 3, ix + 4))
        noise = float(np.sqrt(template.variance_e2[box].sum()))
        assert abs(float(template.image_e[box].sum())) < 3 * noise
        visit = CalibratedImage.from_fits(str(path))
        vx, vy = round(float(mover["x_px"])), round(float(mover["y_px"]))
        vbox = (slice(vy - 3, vy + 4), slice(vx - 3, vx + 4))
        level = float(np.median(visit.image_e))
        assert float(visit.image_e[vbox].sum() - 49 * level) > 50 * float(np.sqrt(visit.variance_e2[vbox].sum()))


def test_sources_only_in_the_new_visit_are_found_in_the_template_difference(
    stack: tuple[Path, list[Path], TemplateResult, list[dict[str, object]]],
) -> None:
    """A new visit with 12 sources absent from every template input (SNR 20 against one visit): the difference
    against the template finds every one, positive, with a median position error below 0.3 px and a median flux
    within 5 % of the truth (each within 15 %), and names the template as its reference."""
    output, _, _, _ = stack
    new = VisitSpec(
        index=1, seeing_fwhm_arcsec=0.9, dither_arcsec=(3.0, -4.0), mjd_tai=61001.0, obsid="MC_O_20260115_000001"
    )
    header = make_wcs(FIELD, new, SHAPE).to_header()
    stars = star_catalog(FIELD)
    sx, sy = WCS(header).all_world2pix(stars["ra_deg"], stars["dec_deg"], 0)
    bright = stars["flux_e"] > 3e4
    positions = grid_positions(header, SHAPE, 12, margin_px=50, seed=5, avoid_px=12, avoid_xy=(sx[bright], sy[bright]))
    flux = flux_for_difference_snr(20.0, new, VisitSpec(index=2, seeing_fwhm_arcsec=0.8))
    injections = [
        Injection(id=f"new{k}", ra_deg=ra, dec_deg=dec, flux_e_by_visit={1: flux})
        for k, (ra, dec) in enumerate(positions)
    ]
    image = simulate_visit(FIELD, new, shape=SHAPE, injections=[*injections, MOVER])
    result = difference_pair(
        to_calibrated(image, obsid=new.obsid), CalibratedImage.from_fits(str(output)), DiffParams(background_mesh_px=64)
    )
    objects = image.truth["objects"]
    assert isinstance(objects, list) and len(objects) == 13
    errors, ratios = [], []
    for obj in objects[:-1]:
        tx, ty = float(obj["x_px"]), float(obj["y_px"])
        near = [s for s in result.detections.sources if np.hypot(s.x_px - tx, s.y_px - ty) < 2.5]
        assert len(near) == 1 and not near[0].is_negative, (obj, near)
        errors.append(float(np.hypot(near[0].x_px - tx, near[0].y_px - ty)))
        ratios.append(near[0].psf_flux_e / flux)
    assert float(np.median(errors)) < 0.3, errors
    assert float(np.median(ratios)) == pytest.approx(1.0, abs=0.05), ratios
    assert all(0.85 < r < 1.15 for r in ratios), ratios
    assert result.reference_obsid == "template-test-0001"


def test_too_few_visits_are_refused(
    tmp_path: Path, stack: tuple[Path, list[Path], TemplateResult, list[dict[str, object]]]
) -> None:
    """Two calexps are not enough for a template: TemplateError says how many there are and how many are needed,
    and nothing is written."""
    _, paths, _, _ = stack
    output = tmp_path / "t.fits"
    with pytest.raises(TemplateError, match=r"2 usable visit.*at least 3"):
        build_template([str(p) for p in paths[:2]], str(output), template_id="template-x")
    assert not output.exists()
