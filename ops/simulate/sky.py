"""A sky simulator: star fields seen in quads of visits, with injected transients and their truth.

Each field has a fixed star field (seeded by the field). Each visit has its own pointing dither (a TAN WCS,
0.2"/px as LSST), its own seeing (Gaussian or Moffat PSF, pixel-integrated), its own sky; the image is in
electrons of an assembled detector, with Poisson noise and optionally read noise (or leave read noise to
the raw writer). Injected truth: point sources with a flux per visit (new sources, variables that
brighten or fade) and moving objects on a linear track. Injected fluxes can be chosen by their SNR in the
difference of two visits (:func:`flux_for_difference_snr`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from astropy.io import fits
from astropy.wcs import WCS
from scipy.special import erf

from processors.diffim.calexp import MASK_SAT, CalibratedImage

__all__ = [
    "FieldSpec",
    "Injection",
    "MovingObject",
    "SimulatedVisit",
    "VisitImage",
    "VisitSpec",
    "difference_noise_e",
    "flux_for_difference_snr",
    "grid_positions",
    "make_wcs",
    "simulate_night",
    "simulate_visit",
    "star_catalog",
    "to_calibrated",
]

PIXEL_SCALE_ARCSEC = 0.2
MOFFAT_BETA = 3.5


@dataclass(frozen=True, slots=True, kw_only=True)
class FieldSpec:
    """A field on the sky and its fixed star population.

    Attributes:
        name: field name; with ``seed`` it fixes the star field.
        ra_deg, dec_deg: field centre (the detector centre at zero dither).
        band: filter band.
        stars_per_arcmin2: star density.
        mag_bright, mag_faint: magnitude range of the stars (counts rise as 10^(slope·m)).
        mag_slope: logarithmic slope of the counts.
        zeropoint_mag: magnitude of a source giving 1 electron in one exposure.
        radius_arcmin: stars are drawn within this radius of the centre (covers a 4k detector).
        seed: seed of the star field.
    """

    name: str
    ra_deg: float
    dec_deg: float
    band: str = "r"
    stars_per_arcmin2: float = 25.0
    mag_bright: float = 16.5
    mag_faint: float = 25.0
    mag_slope: float = 0.25
    zeropoint_mag: float = 32.0
    radius_arcmin: float = 10.0
    seed: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class VisitSpec:
    """One visit of a field.

    Attributes:
        index: visit number in the quad, 1..4 (CURINDEX).
        seeing_fwhm_arcsec: PSF FWHM.
        dither_arcsec: pointing offset (east, north) of the detector centre from the field centre.
        rotation_deg: rotation of the pixel grid on the sky.
        mjd_tai: exposure midpoint.
        sky_e_per_px: sky level per pixel.
        psf_kind: ``moffat`` (beta 3.5) or ``gaussian``.
        read_noise_e: Gaussian read noise added here; 0 leaves it to the raw writer.
        saturation_e: full well; pixels above it are clipped and masked.
        obsid: OBSID of the exposure.
        psf_gradient: the FWHM varies across the detector as (1 + psf_gradient * u), u from -1 at the
            left edge to +1 at the right (a PSF that changes over the field, for the spatial kernel).
    """

    index: int
    seeing_fwhm_arcsec: float = 0.8
    dither_arcsec: tuple[float, float] = (0.0, 0.0)
    rotation_deg: float = 0.0
    mjd_tai: float = 61000.0
    sky_e_per_px: float = 1000.0
    psf_kind: Literal["moffat", "gaussian"] = "moffat"
    read_noise_e: float = 0.0
    saturation_e: float = 150_000.0
    obsid: str = ""
    psf_gradient: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.index <= 4:
            raise ValueError(f"visit index (CURINDEX) must be 1..4, not {self.index}")
        if self.seeing_fwhm_arcsec <= 0:
            raise ValueError(f"seeing must be positive, not {self.seeing_fwhm_arcsec}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Injection:
    """A point source injected at a fixed position with a flux per visit (0 where it is absent).

    ``kind`` is free text for the truth file: ``new``, ``variable``, ``faded`` and so on.
    """

    id: str
    ra_deg: float
    dec_deg: float
    flux_e_by_visit: Mapping[int, float]
    kind: str = "new"


@dataclass(frozen=True, slots=True, kw_only=True)
class MovingObject:
    """A point source moving on a straight line at a constant rate (east, north in arcsec per hour)."""

    id: str
    ra_deg: float
    dec_deg: float
    mjd_ref_tai: float
    rate_arcsec_per_h: tuple[float, float]
    flux_e: float

    def position(self, mjd_tai: float) -> tuple[float, float]:
        """RA, Dec in degrees at ``mjd_tai``."""
        hours = (mjd_tai - self.mjd_ref_tai) * 24.0
        east, north = self.rate_arcsec_per_h
        dec = self.dec_deg + north * hours / 3600.0
        ra = self.ra_deg + east * hours / 3600.0 / math.cos(math.radians(self.dec_deg))
        return ra, dec


@dataclass(frozen=True, slots=True, kw_only=True)
class VisitImage:
    """A simulated assembled-detector image in electrons with its WCS and truth.

    ``truth`` is JSON-ready: the visit, the PSF, and every injected object with its pixel position in
    this visit (0-based) and flux.
    """

    image_e: npt.NDArray[np.float32]
    variance_e: npt.NDArray[np.float32]
    mask: npt.NDArray[np.uint16]
    wcs_header: fits.Header
    truth: dict[str, object]


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulatedVisit:
    """One visit of :func:`simulate_night`: its field, spec and image."""

    field_spec: FieldSpec
    visit: VisitSpec
    group_id: str
    image: VisitImage


def _seed_for(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def star_catalog(field_spec: FieldSpec) -> dict[str, npt.NDArray[np.float64]]:
    """The field's fixed stars: ``ra_deg``, ``dec_deg``, ``mag``, ``flux_e`` (deterministic per field)."""
    rng = np.random.default_rng(_seed_for("stars", field_spec.name, field_spec.seed))
    area = math.pi * field_spec.radius_arcmin**2
    n = rng.poisson(field_spec.stars_per_arcmin2 * area)
    r = field_spec.radius_arcmin / 60.0 * np.sqrt(rng.uniform(0, 1, n))
    theta = rng.uniform(0, 2 * math.pi, n)
    dec = field_spec.dec_deg + r * np.sin(theta)
    ra = field_spec.ra_deg + r * np.cos(theta) / math.cos(math.radians(field_spec.dec_deg))
    # Inverse transform sampling of N(<m) ∝ 10^(slope·m).
    a = 10 ** (field_spec.mag_slope * field_spec.mag_bright)
    b = 10 ** (field_spec.mag_slope * field_spec.mag_faint)
    mag = np.log10(a + rng.uniform(0, 1, n) * (b - a)) / field_spec.mag_slope
    flux = 10 ** (-0.4 * (mag - field_spec.zeropoint_mag))
    return {"ra_deg": ra, "dec_deg": dec, "mag": mag, "flux_e": flux}


def make_wcs(field_spec: FieldSpec, visit: VisitSpec, shape: tuple[int, int]) -> WCS:
    """The visit's TAN WCS: detector centre at the dithered pointing, 0.2"/px, north up, east left."""
    ny, nx = shape
    east, north = visit.dither_arcsec
    dec0 = field_spec.dec_deg + north / 3600.0
    ra0 = field_spec.ra_deg + east / 3600.0 / math.cos(math.radians(dec0))
    scale = PIXEL_SCALE_ARCSEC / 3600.0
    rot = math.radians(visit.rotation_deg)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    w.wcs.cd = np.array(
        [[-scale * math.cos(rot), scale * math.sin(rot)], [scale * math.sin(rot), scale * math.cos(rot)]]
    )
    w.wcs.radesys = "ICRS"
    return w


def _profile_1d(coords: npt.NDArray[np.float64], centre: float, sigma: float) -> npt.NDArray[np.float64]:
    s = 1.0 / (math.sqrt(2.0) * sigma)
    return np.asarray(0.5 * (erf((coords + 0.5 - centre) * s) - erf((coords - 0.5 - centre) * s)))


def _moffat_stamp(fwhm_px: float, half: int, dx: float, dy: float, oversample: int = 3) -> npt.NDArray[np.float64]:
    alpha = fwhm_px / (2.0 * math.sqrt(2 ** (1 / MOFFAT_BETA) - 1))
    n = 2 * half + 1
    sub = (np.arange(n * oversample) + 0.5) / oversample - 0.5 - half
    yy, xx = np.meshgrid(sub - dy, sub - dx, indexing="ij")
    fine = (1 + (xx**2 + yy**2) / alpha**2) ** (-MOFFAT_BETA)
    stamp = fine.reshape(n, oversample, n, oversample).sum(axis=(1, 3))
    return np.asarray(stamp / stamp.sum())


def _psf_stamp(visit: VisitSpec, half: int, dx: float, dy: float, fwhm_scale: float = 1.0) -> npt.NDArray[np.float64]:
    fwhm_px = visit.seeing_fwhm_arcsec / PIXEL_SCALE_ARCSEC * fwhm_scale
    if visit.psf_kind == "gaussian":
        c = np.arange(-half, half + 1, dtype=np.float64)
        sigma = fwhm_px / 2.354820045
        stamp = np.outer(_profile_1d(c, dy, sigma), _profile_1d(c, dx, sigma))
        return np.asarray(stamp / stamp.sum())
    return _moffat_stamp(fwhm_px, half, dx, dy)


def _add_source(model: npt.NDArray[np.float64], visit: VisitSpec, x: float, y: float, flux: float) -> None:
    fwhm_px = visit.seeing_fwhm_arcsec / PIXEL_SCALE_ARCSEC * (1.0 + abs(visit.psf_gradient))
    half = math.ceil(fwhm_px * (4.0 if flux < 1e5 else 10.0))
    ix, iy = round(x), round(y)
    ny, nx = model.shape
    if ix + half < 0 or iy + half < 0 or ix - half >= nx or iy - half >= ny:
        return
    scale = 1.0 + visit.psf_gradient * (x - (nx - 1) / 2.0) / (nx / 2.0)
    stamp = flux * _psf_stamp(visit, half, x - ix, y - iy, scale)
    y0, x0 = iy - half, ix - half
    sy0, sx0 = max(0, -y0), max(0, -x0)
    sy1 = stamp.shape[0] - max(0, y0 + stamp.shape[0] - ny)
    sx1 = stamp.shape[1] - max(0, x0 + stamp.shape[1] - nx)
    model[y0 + sy0 : y0 + sy1, x0 + sx0 : x0 + sx1] += stamp[sy0:sy1, sx0:sx1]


def simulate_visit(
    field_spec: FieldSpec,
    visit: VisitSpec,
    *,
    shape: tuple[int, int] = (1024, 1024),
    injections: Sequence[Injection | MovingObject] = (),
    seed: int = 0,
) -> VisitImage:
    """Simulate one visit of a field.

    Args:
        field_spec: the field and its stars.
        visit: the visit (seeing, dither, sky, time).
        shape: detector shape (ny, nx).
        injections: injected point sources and moving objects.
        seed: seed of the noise (combined with the field and visit index).

    Returns:
        The image in electrons (Poisson noise, plus read noise when the visit asks for it; pixels above
        full well clipped and masked), its expected variance, mask, WCS header and truth.
    """
    wcs = make_wcs(field_spec, visit, shape)
    ny, nx = shape
    model = np.full(shape, visit.sky_e_per_px, dtype=np.float64)
    stars = star_catalog(field_spec)
    sx, sy = wcs.all_world2pix(stars["ra_deg"], stars["dec_deg"], 0)
    margin = 60
    inside = (sx > -margin) & (sy > -margin) & (sx < nx + margin) & (sy < ny + margin)
    for x, y, f in zip(sx[inside], sy[inside], stars["flux_e"][inside], strict=True):
        _add_source(model, visit, float(x), float(y), float(f))
    truth_objects: list[dict[str, object]] = []
    for inj in injections:
        if isinstance(inj, MovingObject):
            ra, dec = inj.position(visit.mjd_tai)
            flux, kind = inj.flux_e, "moving"
        else:
            ra, dec = inj.ra_deg, inj.dec_deg
            flux, kind = float(inj.flux_e_by_visit.get(visit.index, 0.0)), inj.kind
        px, py = (float(v[0]) for v in wcs.all_world2pix([ra], [dec], 0))
        if flux > 0:
            _add_source(model, visit, px, py, flux)
        truth_objects.append(
            {"id": inj.id, "kind": kind, "ra_deg": ra, "dec_deg": dec, "x_px": px, "y_px": py, "flux_e": flux}
        )
    rng = np.random.default_rng(_seed_for("noise", field_spec.name, field_spec.seed, visit.index, seed))
    image = rng.poisson(model).astype(np.float64)
    variance = model.copy()
    if visit.read_noise_e > 0:
        image += rng.normal(0.0, visit.read_noise_e, shape)
        variance += visit.read_noise_e**2
    saturated = image >= visit.saturation_e
    image = np.minimum(image, visit.saturation_e)
    mask = np.where(saturated, MASK_SAT, 0).astype(np.uint16)
    header = wcs.to_header()
    header["MJD-MID"] = (visit.mjd_tai, "exposure midpoint, MJD TAI")
    header["BAND"] = field_spec.band
    truth: dict[str, object] = {
        "field": field_spec.name,
        "band": field_spec.band,
        "visit": asdict(visit),
        "shape": list(shape),
        "psf_fwhm_px": visit.seeing_fwhm_arcsec / PIXEL_SCALE_ARCSEC,
        "n_stars": int(inside.sum()),
        "objects": truth_objects,
    }
    return VisitImage(
        image_e=image.astype(np.float32),
        variance_e=variance.astype(np.float32),
        mask=mask,
        wcs_header=header,
        truth=truth,
    )


def _psf_sum_sq(visit: VisitSpec) -> float:
    fwhm_px = visit.seeing_fwhm_arcsec / PIXEL_SCALE_ARCSEC
    stamp = _psf_stamp(visit, math.ceil(6 * fwhm_px), 0.0, 0.0)
    return float((stamp**2).sum())


def difference_noise_e(science: VisitSpec, reference: VisitSpec) -> float:
    """Noise of an optimal PSF flux measurement of a faint point source in the science - reference difference.

    The difference has the broader visit's PSF P and, per pixel, the variance of both images
    (sky-limited): sigma_F² = (V_sci + V_ref) / Σ P².
    """
    broad = science if science.seeing_fwhm_arcsec >= reference.seeing_fwhm_arcsec else reference
    var = science.sky_e_per_px + reference.sky_e_per_px + science.read_noise_e**2 + reference.read_noise_e**2
    return math.sqrt(var / _psf_sum_sq(broad))


def flux_for_difference_snr(snr: float, science: VisitSpec, reference: VisitSpec) -> float:
    """Flux in electrons that a point source needs to have ``snr`` in the science - reference difference."""
    return snr * difference_noise_e(science, reference)


def grid_positions(
    wcs_header: fits.Header,
    shape: tuple[int, int],
    n: int,
    *,
    margin_px: int,
    seed: int,
    avoid_px: float = 0.0,
    avoid_xy: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
) -> list[tuple[float, float]]:
    """RA, Dec of up to ``n`` positions on a jittered grid inside the frame, optionally away from given pixels."""
    ny, nx = shape
    rng = np.random.default_rng(seed)
    side = math.ceil(math.sqrt(n * 1.3))
    step_x, step_y = (nx - 2 * margin_px) / side, (ny - 2 * margin_px) / side
    cells = [(i, j) for i in range(side) for j in range(side)]
    order = rng.permutation(len(cells))
    wcs = WCS(wcs_header)
    out: list[tuple[float, float]] = []
    for k in order:
        i, j = cells[k]
        x = margin_px + (j + rng.uniform(0.25, 0.75)) * step_x
        y = margin_px + (i + rng.uniform(0.25, 0.75)) * step_y
        if avoid_xy is not None and avoid_px > 0:
            ax, ay = avoid_xy
            if ((ax - x) ** 2 + (ay - y) ** 2 < avoid_px**2).any():
                continue
        ra, dec = wcs.all_pix2world([x], [y], 0)
        out.append((float(ra[0]), float(dec[0])))
        if len(out) >= n:
            break
    return out


def to_calibrated(
    image: VisitImage, *, obsid: str, detector: str = "R22_S11", use_data_variance: bool = False
) -> CalibratedImage:
    """The simulated image as the differencing chain takes it (as if ISR had run on a perfect detector).

    Args:
        image: the simulated visit.
        obsid: OBSID to give it.
        detector: detector name.
        use_data_variance: variance from the pixels (max(image, 0) + read noise²) rather than the model.
    """
    visit = image.truth["visit"]
    if not isinstance(visit, dict):
        raise TypeError("the image's truth has no visit record: not made by simulate_visit")
    if use_data_variance:
        variance = (np.maximum(image.image_e, 0) + float(visit["read_noise_e"]) ** 2).astype(np.float32)
    else:
        variance = image.variance_e
    return CalibratedImage(
        image_e=image.image_e,
        variance_e2=variance,
        mask=image.mask,
        wcs_header=image.wcs_header,
        obsid=obsid,
        detector=detector,
        band=str(image.truth["band"]),
        midpoint_mjd_tai=float(visit["mjd_tai"]),
    )


def simulate_night(
    fields: Sequence[FieldSpec],
    *,
    shape: tuple[int, int] = (1024, 1024),
    dayobs: str = "20260114",
    camera_code: str = "MC",
    first_seqnum: int = 1,
    mjd_start_tai: float = 61054.1,
    visit_gap_min: float = 15.0,
    seeing_arcsec: float = 0.8,
    bad_seeing_arcsec: float = 2.4,
    lose: Sequence[str] = (),
    bad_seeing: Sequence[str] = (),
    injections: Mapping[str, Sequence[Injection | MovingObject]] | None = None,
    truth_dir: Path | None = None,
    seed: int = 0,
) -> Iterator[SimulatedVisit]:
    """Simulate one quad per field, one visit at a time (a generator: a 4k night does not fit in memory).

    Fields are observed in turn, the four visits of a field ``visit_gap_min`` apart; sequence numbers run
    in observing order. Seeing varies by ±10 % around ``seeing_arcsec``.

    Args:
        fields: the fields, in order.
        shape: detector shape.
        dayobs: DAYOBS of the night, for OBSIDs.
        camera_code: OBSID camera code.
        first_seqnum: sequence number of the first visit.
        mjd_start_tai: midpoint of the first visit.
        visit_gap_min: minutes between the visits of a quad.
        seeing_arcsec: typical seeing.
        bad_seeing_arcsec: seeing of the visits named in ``bad_seeing``.
        lose: visits (``"v1"``..``"v4"``, or ``"<field>:v3"`` for one field) that are not yielded at all;
            their truth file is still written, with ``"lost": true``.
        bad_seeing: visits simulated with ``bad_seeing_arcsec``.
        injections: per field name, the objects to inject.
        truth_dir: when given, ``<OBSID>.truth.json`` is written there for every visit.
        seed: noise seed.

    Yields:
        The visits that were not lost, in observing order; OBSID, GROUPID (``<dayobs>_<field>``) and
        CURINDEX are in the visit spec and the group id.
    """
    rng = np.random.default_rng(_seed_for("night", dayobs, seed))
    seqnum = first_seqnum
    quad_minutes = 4 * visit_gap_min
    for n, fs in enumerate(fields):
        for index in range(1, 5):
            name = f"v{index}"
            tags = {name, f"{fs.name}:{name}"}
            seeing = bad_seeing_arcsec if tags & set(bad_seeing) else seeing_arcsec * float(rng.uniform(0.9, 1.1))
            obsid = f"{camera_code}_O_{dayobs}_{seqnum:06d}"
            visit = VisitSpec(
                index=index,
                seeing_fwhm_arcsec=seeing,
                dither_arcsec=(float(rng.uniform(-10, 10)), float(rng.uniform(-10, 10))),
                mjd_tai=mjd_start_tai + (n * quad_minutes + (index - 1) * visit_gap_min) / 1440.0,
                sky_e_per_px=1000.0 * float(rng.uniform(0.9, 1.1)),
                obsid=obsid,
            )
            seqnum += 1
            lost = bool(tags & set(lose))
            group_id = f"{dayobs}_{fs.name}"
            if lost:
                if truth_dir is not None:
                    record = {"field": fs.name, "visit": asdict(visit), "group_id": group_id, "lost": True}
                    (truth_dir / f"{obsid}.truth.json").write_text(json.dumps(record, indent=1))
                continue
            image = simulate_visit(fs, visit, shape=shape, injections=(injections or {}).get(fs.name, ()), seed=seed)
            if truth_dir is not None:
                record = dict(image.truth, group_id=group_id, lost=False, obsid=obsid)
                (truth_dir / f"{obsid}.truth.json").write_text(json.dumps(record, indent=1))
            yield SimulatedVisit(field_spec=fs, visit=visit, group_id=group_id, image=image)
