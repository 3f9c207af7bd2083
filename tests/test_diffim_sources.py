"""Detections of a quad: a faded variable is negative, a moving object is found at each visit's position."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from ops.simulate.sky import (
    FieldSpec,
    Injection,
    MovingObject,
    VisitImage,
    VisitSpec,
    flux_for_difference_snr,
    simulate_visit,
    to_calibrated,
)
from processors.diffim import (
    CalibratedImage,
    DetectionParams,
    DiaSource,
    DiffimError,
    DiffParams,
    DiffResult,
    difference_pair,
    difference_pair_from_files,
)
from processors.diffim.cutouts import cutout_array

SHAPE = (640, 640)
FIELD = FieldSpec(name="quad", ra_deg=210.0, dec_deg=-5.0)
MJD0 = 61054.1
VISITS = [
    VisitSpec(
        index=i,
        seeing_fwhm_arcsec=s,
        dither_arcsec=d,
        mjd_tai=MJD0 + (i - 1) * 15 / 1440,
        obsid=f"MC_O_20260114_{i:06d}",
    )
    for i, s, d in ((1, 0.8, (0.0, 0.0)), (2, 1.0, (3.0, -2.0)), (3, 0.9, (-4.0, 1.5)), (4, 0.85, (2.5, 3.5)))
]
MOVER = MovingObject(
    id="mover",
    ra_deg=210.0 - 20 / 3600,
    dec_deg=-5.0 - 20 / 3600,
    mjd_ref_tai=MJD0,
    rate_arcsec_per_h=(24.0, 12.0),
    flux_e=flux_for_difference_snr(25.0, VISITS[1], VISITS[0]),
)
SLOW = MovingObject(
    id="slow",
    ra_deg=210.0 + 30 / 3600,
    dec_deg=-5.0 - 25 / 3600,
    mjd_ref_tai=MJD0,
    rate_arcsec_per_h=(0.0, 5.0),
    flux_e=flux_for_difference_snr(40.0, VISITS[1], VISITS[0]),
)
FADED = Injection(
    id="faded",
    ra_deg=210.0 + 25 / 3600,
    dec_deg=-5.0 + 18 / 3600,
    kind="faded",
    flux_e_by_visit={1: 5000.0 + flux_for_difference_snr(15.0, VISITS[1], VISITS[0]), 2: 5000.0, 3: 5000.0, 4: 5000.0},
)


@pytest.fixture(scope="module")
def quad() -> dict[int, VisitImage]:
    """Four visits of a field with a moving object and a variable that fades after visit 1."""
    return {v.index: simulate_visit(FIELD, v, shape=SHAPE, injections=[MOVER, SLOW, FADED]) for v in VISITS}


def _calexp(quad: dict[int, VisitImage], index: int) -> CalibratedImage:
    return to_calibrated(quad[index], obsid=VISITS[index - 1].obsid)


@pytest.fixture(scope="module")
def diffs(quad: dict[int, VisitImage]) -> dict[tuple[int, int], DiffResult]:
    """The regular differences 2-1 and 4-3."""
    return {(s, r): difference_pair(_calexp(quad, s), _calexp(quad, r), DiffParams()) for s, r in ((2, 1), (4, 3))}


def _truth(quad: dict[int, VisitImage], index: int, object_id: str) -> tuple[float, float]:
    objects = quad[index].truth["objects"]
    assert isinstance(objects, list)
    obj = next(o for o in objects if o["id"] == object_id)
    return float(obj["x_px"]), float(obj["y_px"])


def _nearest(sources: tuple[DiaSource, ...], x: float, y: float) -> tuple[DiaSource, float]:
    d = [float(np.hypot(s.x_px - x, s.y_px - y)) for s in sources]
    j = int(np.argmin(d))
    return sources[j], d[j]


def test_faded_variable_is_negative(quad: dict[int, VisitImage], diffs: dict[tuple[int, int], DiffResult]) -> None:
    """A variable fainter in visit 2 than in visit 1 is detected in 2-1 with isNegative and a negative flux
    within 25 % of the change; it is absent from 4-3, where it did not vary."""
    x, y = _truth(quad, 2, "faded")
    source, distance = _nearest(diffs[(2, 1)].detections.sources, x, y)
    assert distance < 1.0
    assert source.is_negative
    change = FADED.flux_e_by_visit[1] - FADED.flux_e_by_visit[2]
    assert source.psf_flux_e == pytest.approx(-change, rel=0.25)
    x4, y4 = _truth(quad, 4, "faded")
    assert all(np.hypot(s.x_px - x4, s.y_px - y4) > 3 for s in diffs[(4, 3)].detections.sources)


@pytest.mark.parametrize(("science", "reference"), [(2, 1), (4, 3)])
def test_moving_object_at_each_visit_position(
    quad: dict[int, VisitImage], diffs: dict[tuple[int, int], DiffResult], science: int, reference: int
) -> None:
    """A moving object gives a positive detection at its science-visit position and a negative one at its
    reference-visit position (in science pixels), each within 0.5 px of the truth."""
    result = diffs[(science, reference)]
    sx, sy = _truth(quad, science, "mover")
    positive, d_pos = _nearest(result.detections.sources, sx, sy)
    assert d_pos < 0.5 and not positive.is_negative
    ra, dec = MOVER.position(VISITS[reference - 1].mjd_tai)
    rx, ry = (float(v) for v in WCS(result_science_wcs(quad, science)).all_world2pix(ra, dec, 0))
    negative, d_neg = _nearest(result.detections.sources, rx, ry)
    assert d_neg < 0.5 and negative.is_negative
    assert positive.ra_deg == pytest.approx(MOVER.position(VISITS[science - 1].mjd_tai)[0], abs=0.2 / 3600)


def result_science_wcs(quad: dict[int, VisitImage], index: int) -> fits.Header:
    return quad[index].wcs_header


def test_no_spurious_sources_in_the_quad(diffs: dict[tuple[int, int], DiffResult]) -> None:
    """Besides the movers' lobes and the variable, 2-1 and 4-3 have at most one detection each."""
    assert len(diffs[(2, 1)].detections.sources) <= 5 + 1
    assert len(diffs[(4, 3)].detections.sources) <= 4 + 1


def test_slow_mover_is_a_dipole(quad: dict[int, VisitImage], diffs: dict[tuple[int, int], DiffResult]) -> None:
    """An object moving 1.25" (about 1.2 FWHM) between visits gives adjacent positive and negative lobes,
    both flagged isDipole; the fast mover's lobes, 30 px apart, are not."""
    result = diffs[(2, 1)]
    sx, sy = _truth(quad, 2, "slow")
    positive, d = _nearest(result.detections.sources, sx, sy)
    assert d < 1.0 and not positive.is_negative and positive.is_dipole
    negative = [s for s in result.detections.sources if s.is_negative and np.hypot(s.x_px - sx, s.y_px - sy) < 10]
    assert len(negative) == 1 and negative[0].is_dipole
    fx, fy = _truth(quad, 2, "mover")
    fast, _ = _nearest(result.detections.sources, fx, fy)
    assert not fast.is_dipole


def test_cutouts_are_31px_fits_centred_on_the_source(diffs: dict[tuple[int, int], DiffResult]) -> None:
    """Each source has science, template and difference cutouts: 31x31 FITS whose WCS puts the source's
    RA/Dec at the position of the source within the cutout."""
    result = diffs[(2, 1)]
    assert len(result.cutouts) == len(result.detections.sources)
    for source, cut in zip(result.detections.sources, result.cutouts, strict=True):
        for blob in (cut.science, cut.template, cut.difference):
            with fits.open(io.BytesIO(blob)) as hdul:
                hdul.verify("exception")
                data = hdul[0].data
                assert data.shape == (31, 31)
                x, y = WCS(hdul[0].header).all_world2pix(source.ra_deg, source.dec_deg, 0)
            assert float(x) == pytest.approx(15 + source.x_px - round(source.x_px), abs=1e-3)
            assert float(y) == pytest.approx(15 + source.y_px - round(source.y_px), abs=1e-3)
        with fits.open(io.BytesIO(cut.difference)) as hdul:
            peak = hdul[0].data[14:17, 14:17]
        assert (peak.min() < 0) if source.is_negative else (peak.max() > 0)


def test_cutout_is_zero_padded_at_the_edge() -> None:
    """A cutout reaching past the image corner holds the image where it exists and zeros beyond."""
    image = np.arange(100, dtype=np.float32).reshape(10, 10) + 1
    cut, x0, y0 = cutout_array(image, 1.0, 2.0, size=7)
    assert (x0, y0) == (-2, -1)
    assert (cut[:1, :] == 0).all() and (cut[:, :2] == 0).all()
    assert cut[1, 2] == image[0, 0] and cut[6, 6] == image[5, 4]


def test_too_many_detections_flags_the_detector(quad: dict[int, VisitImage]) -> None:
    """More detections than max_sources sets the flag (here: a limit of 1 against the quad's 5 sources)."""
    params = DiffParams(detection=DetectionParams(max_sources=1), keep_images=False)
    result = difference_pair(_calexp(quad, 2), _calexp(quad, 1), params)
    assert result.detections.too_many
    assert result.diff_e is None


def test_too_few_stars_is_a_diffim_error(quad: dict[int, VisitImage]) -> None:
    """A pair whose stars are all masked cannot be matched: DiffimError names the pair, nothing is guessed."""
    science = _calexp(quad, 2)
    blind = CalibratedImage(
        image_e=science.image_e,
        variance_e2=science.variance_e2,
        mask=np.ones_like(science.mask),
        wcs_header=science.wcs_header,
        obsid=science.obsid,
        detector=science.detector,
        band=science.band,
        midpoint_mjd_tai=science.midpoint_mjd_tai,
    )
    with pytest.raises(DiffimError, match=science.obsid):
        difference_pair(blind, _calexp(quad, 1), DiffParams())


def test_result_and_function_pickle(diffs: dict[tuple[int, int], DiffResult]) -> None:
    """The chain is a top-level function and its result pickles (for a process pool or Dask)."""
    assert pickle.loads(pickle.dumps(difference_pair)) is difference_pair
    result = pickle.loads(pickle.dumps(diffs[(2, 1)]))
    assert result.detections == diffs[(2, 1)].detections
    assert set(result.stage_times_s) >= {
        "background",
        "psf",
        "register",
        "match_fit",
        "match_apply",
        "detect",
        "cutouts",
        "total",
    }


def test_from_calexp_files(
    quad: dict[int, VisitImage], diffs: dict[tuple[int, int], DiffResult], tmp_path: Path
) -> None:
    """Calexps written to FITS and read back give the same detections as the in-memory images."""
    paths = []
    for index in (2, 1):
        path = tmp_path / f"calexp-{index}.fits"
        _calexp(quad, index).to_fits(str(path))
        paths.append(str(path))
    result = difference_pair_from_files(paths[0], paths[1], DiffParams())
    assert result.science_obsid == VISITS[1].obsid and result.reference_obsid == VISITS[0].obsid
    assert [(s.x_px, s.y_px) for s in result.detections.sources] == [
        (s.x_px, s.y_px) for s in diffs[(2, 1)].detections.sources
    ]
