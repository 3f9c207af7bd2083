"""The sky simulator: deterministic star fields, dithered WCS, noise, injections and a night of quads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.wcs import WCS

from ops.simulate.sky import (
    FieldSpec,
    Injection,
    VisitSpec,
    difference_noise_e,
    simulate_night,
    simulate_visit,
    star_catalog,
)
from processors.diffim import MASK_SAT

SHAPE = (256, 256)
FIELD = FieldSpec(name="sky", ra_deg=80.0, dec_deg=-60.0)


def test_same_field_same_stars_and_seeded_noise() -> None:
    """A field's stars depend only on the field; the same visit and seed give the same pixels, another seed
    other noise."""
    assert np.array_equal(star_catalog(FIELD)["ra_deg"], star_catalog(FIELD)["ra_deg"])
    other = star_catalog(FieldSpec(name="other", ra_deg=80.0, dec_deg=-60.0))
    assert other["ra_deg"].size != star_catalog(FIELD)["ra_deg"].size or not np.allclose(
        other["ra_deg"], star_catalog(FIELD)["ra_deg"]
    )
    visit = VisitSpec(index=1)
    a = simulate_visit(FIELD, visit, shape=SHAPE, seed=1)
    b = simulate_visit(FIELD, visit, shape=SHAPE, seed=1)
    c = simulate_visit(FIELD, visit, shape=SHAPE, seed=2)
    assert np.array_equal(a.image_e, b.image_e)
    assert not np.array_equal(a.image_e, c.image_e)


def test_noise_matches_variance_with_optional_read_noise() -> None:
    """Sky pixels scatter as the variance plane says: Poisson, plus read noise squared when asked for."""
    empty = FieldSpec(name="empty", ra_deg=0.0, dec_deg=0.0, stars_per_arcmin2=0.0)
    for read_noise in (0.0, 20.0):
        image = simulate_visit(empty, VisitSpec(index=1, read_noise_e=read_noise), shape=SHAPE)
        assert float(image.variance_e.mean()) == pytest.approx(1000.0 + read_noise**2)
        assert float(image.image_e.var()) == pytest.approx(1000.0 + read_noise**2, rel=0.03)


def test_dither_moves_the_wcs_and_injections_follow() -> None:
    """An injection lands at the pixel the visit's WCS gives for its RA/Dec (truth within 0.01 px of the
    flux-weighted centroid), and a 2" dither moves it by 10 px."""
    empty = FieldSpec(name="empty", ra_deg=10.0, dec_deg=20.0, stars_per_arcmin2=0.0)
    inj = Injection(id="a", ra_deg=10.0, dec_deg=20.0, flux_e_by_visit={1: 1e6, 2: 1e6})
    one = simulate_visit(empty, VisitSpec(index=1, sky_e_per_px=0.0), shape=SHAPE, injections=[inj])
    two = simulate_visit(
        empty, VisitSpec(index=2, sky_e_per_px=0.0, dither_arcsec=(0.0, 2.0)), shape=SHAPE, injections=[inj]
    )
    objects = [img.truth["objects"] for img in (one, two)]
    assert isinstance(objects[0], list) and isinstance(objects[1], list)
    y1, y2 = float(objects[0][0]["y_px"]), float(objects[1][0]["y_px"])
    assert y1 - y2 == pytest.approx(10.0, abs=1e-3)
    x, y = WCS(one.wcs_header).all_world2pix(10.0, 20.0, 0)
    yy, xx = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    total = one.image_e.sum()
    assert float((one.image_e * xx).sum() / total) == pytest.approx(float(x), abs=0.01)
    assert float((one.image_e * yy).sum() / total) == pytest.approx(float(y), abs=0.01)


def test_saturated_pixels_are_clipped_and_masked() -> None:
    """A star brighter than full well is clipped at it and its pixels carry MASK_SAT."""
    empty = FieldSpec(name="empty", ra_deg=10.0, dec_deg=20.0, stars_per_arcmin2=0.0)
    inj = Injection(id="bright", ra_deg=10.0, dec_deg=20.0, flux_e_by_visit={1: 5e7})
    image = simulate_visit(empty, VisitSpec(index=1), shape=SHAPE, injections=[inj])
    assert float(image.image_e.max()) == 150_000.0
    assert (image.mask[image.image_e >= 150_000.0] == MASK_SAT).all() and image.mask.any()


def test_difference_noise_uses_the_broader_psf() -> None:
    """The difference's flux noise grows with the broader seeing and with both skies."""
    sharp, broad = VisitSpec(index=1, seeing_fwhm_arcsec=0.7), VisitSpec(index=2, seeing_fwhm_arcsec=1.4)
    assert difference_noise_e(broad, sharp) == difference_noise_e(sharp, broad)
    assert difference_noise_e(broad, sharp) > difference_noise_e(sharp, sharp)
    bright = VisitSpec(index=2, seeing_fwhm_arcsec=0.7, sky_e_per_px=3000.0)
    assert difference_noise_e(bright, sharp) == pytest.approx(difference_noise_e(sharp, sharp) * np.sqrt(2.0))


def test_night_with_a_lost_and_a_bad_seeing_visit(tmp_path: Path) -> None:
    """Two fields, v3 of the first lost and v2 bad everywhere: seven visits yielded in observing order,
    eight truth files (the lost one marked), OBSIDs in sequence, GROUPID per field."""
    fields = [FieldSpec(name="A", ra_deg=10.0, dec_deg=0.0), FieldSpec(name="B", ra_deg=20.0, dec_deg=0.0)]
    visits = list(simulate_night(fields, shape=(128, 128), lose=["A:v3"], bad_seeing=["v2"], truth_dir=tmp_path))
    assert [(v.field_spec.name, v.visit.index) for v in visits] == [
        ("A", 1),
        ("A", 2),
        ("A", 4),
        ("B", 1),
        ("B", 2),
        ("B", 3),
        ("B", 4),
    ]
    assert [v.visit.obsid[-6:] for v in visits] == [
        "000001",
        "000002",
        "000004",
        "000005",
        "000006",
        "000007",
        "000008",
    ]
    assert {v.group_id for v in visits} == {"20260114_A", "20260114_B"}
    assert all(v.visit.seeing_fwhm_arcsec == 2.4 for v in visits if v.visit.index == 2)
    assert all(0.7 < v.visit.seeing_fwhm_arcsec < 0.9 for v in visits if v.visit.index != 2)
    mjds = [v.visit.mjd_tai for v in visits]
    assert mjds == sorted(mjds) and mjds[1] - mjds[0] == pytest.approx(15 / 1440)
    truths = sorted(tmp_path.glob("*.truth.json"))
    assert len(truths) == 8
    lost = json.loads((tmp_path / "MC_O_20260114_000003.truth.json").read_text())
    assert lost["lost"] is True and lost["visit"]["index"] == 3
