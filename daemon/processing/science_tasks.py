"""The science jobs' worker entry points: ISR of one visit into a calexp, one difference into alerts, a template.

Picklable top-level functions of one small argument, run by the executor (process pool or Dask): they
read and write files by path and return small results; the big arrays stay in the files.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from processors.alerts import AlertError, alerts_for, write_alerts_avro
from processors.calib import MASK_SAT as ISR_SAT
from processors.calib import CalibParams, isr_exposure
from processors.calib.isr import RawExposure
from processors.calib.layout import AmpGeometry
from processors.diffim import MASK_BAD, MASK_SAT, CalibratedImage, DiffParams, difference_pair, visit_quality
from processors.diffim.background import background_levels
from processors.diffim.psf import QualityParams
from processors.diffim.template import TemplateParams, TemplateResult, build_template


@dataclass(frozen=True, slots=True, kw_only=True)
class CalexpTask:
    """ISR of one raw science frame with its masters, and the visit's quality cut."""

    raw_path: str
    output_path: str
    bias_path: str | None
    dark_path: str | None
    flat_path: str | None
    detector: str
    max_fwhm_arcsec: float
    provenance: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class CalexpOutcome:
    """What a calexp job found: the visit's identity and quality figures."""

    obsid: str
    band: str
    field: str
    midpoint_mjd_tai: float
    fwhm_arcsec: float | None
    n_psf_stars: int
    ok: bool
    reasons: tuple[str, ...]
    stage_times_s: dict[str, float] = dataclasses.field(default_factory=dict)
    """Wall seconds of ``isr`` (read, ISR, write the calexp) and ``psf`` (background, PSF, quality)."""
    gains_e_per_adu: dict[str, float] = dataclasses.field(default_factory=dict)
    """The amplifiers' gains from the raw's GAIN cards; empty when a card is missing (the calexp is in ADU)."""


def _celestial_wcs(primary: fits.Header) -> fits.Header:
    """The raw's TAN WCS (on the assembled grid) as a header of WCS cards only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # NAXIS = 0 and OBSGEO fix-ups: irrelevant here
        full = WCS(primary, fix=False).celestial.to_header()
    keep = (
        "WCSAXES",
        "CTYPE",
        "CRVAL",
        "CRPIX",
        "CDELT",
        "CUNIT",
        "PC",
        "CD",
        "RADESYS",
        "EQUINOX",
        "LONPOLE",
        "LATPOLE",
    )
    out = fits.Header()
    for card in full.cards:
        if card.keyword.startswith(keep):
            out.append(card)
    return out


def _amp_gains(raw_path: str) -> tuple[list[AmpGeometry], dict[str, float]]:
    """The raw's amplifiers and their gains (e-/ADU) from each one's GAIN card; no gains when one lacks it."""
    with RawExposure(raw_path) as exposure:
        geometry = list(exposure.amps)
        gains: dict[str, float] = {}
        for hdu in exposure.hdul[1:]:
            name, value = hdu.header.get("EXTNAME"), hdu.header.get("GAIN")
            if isinstance(name, str) and isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                gains[name] = float(value)
    if any(amp.name not in gains for amp in geometry):
        return geometry, {}
    return geometry, {amp.name: gains[amp.name] for amp in geometry}


def _to_electrons(
    image: np.ndarray, variance: np.ndarray, geometry: list[AmpGeometry], gains: dict[str, float], *, flat_applied: bool
) -> float | None:
    """Scale an ISR'd image (and variance) from ADU to electrons, in place; return the one gain used, if one.

    A master flat made from ADU frames carries each amplifier's 1/gain, normalised to mean 1 over the
    detector: dividing by it already evens out the amplifiers, leaving the image in units of electrons
    times the detector's mean 1/gain, so one factor (the area-weighted harmonic mean gain) is left to
    apply. Without a flat each amplifier is scaled by its own gain.
    """
    if not gains:
        return None
    if flat_applied:
        areas = np.array([a.detsec.height_px * a.detsec.width_px for a in geometry], dtype=np.float64)
        inverse = np.array([1.0 / gains[a.name] for a in geometry])
        gain = float(areas.sum() / (areas * inverse).sum())
        image *= np.float32(gain)
        variance *= np.float32(gain**2)
        return gain
    for amp in geometry:
        where = (amp.det_rows, amp.det_columns)
        image[where] *= np.float32(gains[amp.name])
        variance[where] *= np.float32(gains[amp.name] ** 2)
    return None


def make_calexp(task: CalexpTask) -> CalexpOutcome:
    """ISR (overscan, bias, dark, flat), assembly, mask mapping; write the calexp; measure the visit's PSF.

    Raises:
        CalibError: the raw cannot be read or a master does not fit it.
    """
    start = time.perf_counter()
    geometry, gains = _amp_gains(task.raw_path)
    calib = CalibParams(gains_e_per_adu=tuple(gains.items())) if gains else None
    isr = isr_exposure(task.raw_path, bias=task.bias_path, dark=task.dark_path, flat=task.flat_path, params=calib)
    primary = fits.getheader(task.raw_path, 0)
    mask = np.where(isr.mask != 0, MASK_BAD, 0).astype(np.uint16)
    mask[(isr.mask & ISR_SAT) != 0] = MASK_SAT
    image = np.where(np.isfinite(isr.image), isr.image, 0.0).astype(np.float32)
    variance = np.where(np.isfinite(isr.variance) & (isr.variance > 0), isr.variance, 1e12).astype(np.float32)
    gain = _to_electrons(image, variance, geometry, gains, flat_applied=task.flat_path is not None)
    mask[~np.isfinite(isr.image)] = MASK_BAD
    if "MJD-MID" in primary:
        midpoint = float(primary["MJD-MID"])
    else:
        midpoint = float(primary["MJD-OBS"]) + float(primary.get("EXPTIME", 0.0)) / 2 / 86400
    band = str(primary.get("FILTER", "")).split("_")[0]
    calexp = CalibratedImage(
        image_e=image,
        variance_e2=variance,
        mask=mask,
        wcs_header=_celestial_wcs(primary),
        obsid=str(primary["OBSID"]),
        detector=task.detector,
        band=band,
        midpoint_mjd_tai=midpoint,
    )
    isr_done = time.perf_counter()
    params = DiffParams(quality=QualityParams(max_fwhm_arcsec=task.max_fwhm_arcsec))
    mesh_px = params.background_mesh_px
    calexp = dataclasses.replace(
        calexp, background_levels=background_levels(image, mask, mesh_px=mesh_px), background_mesh_px=mesh_px
    )
    psf, quality = visit_quality(calexp, params)
    psf_done = time.perf_counter()
    cards: dict[str, Any] = dict(task.provenance)
    cards["BUNIT"] = ("electron", "image in electrons, variance in electrons^2") if gains else "adu"
    if gain is not None:
        cards["GAIN"] = (gain, "e-/ADU applied after the flat")
    for key in ("GROUPID", "CURINDEX", "MAXINDEX", "FILTER", "OBJECT", "INSTRUME"):
        if key in primary:
            cards[key] = primary[key]
    # one write, with the PSF: the differences of this visit read it instead of measuring it again
    dataclasses.replace(calexp, psf=psf, n_peaks=quality.n_sources).to_fits(task.output_path, cards)
    fwhm = quality.fwhm_arcsec if psf is not None and np.isfinite(quality.fwhm_arcsec) else None
    return CalexpOutcome(
        obsid=calexp.obsid,
        band=band,
        field=str(primary.get("OBJECT", "")),
        midpoint_mjd_tai=midpoint,
        fwhm_arcsec=fwhm,
        n_psf_stars=quality.n_psf_stars,
        ok=quality.ok,
        reasons=quality.reasons,
        stage_times_s={"isr": isr_done - start + time.perf_counter() - psf_done, "psf": psf_done - isr_done},
        gains_e_per_adu=gains,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffTask:
    """One science - reference difference of two calexps, its file and its visit's alerts."""

    science_path: str
    reference_path: str
    output_path: str
    alerts_path: str
    time_processed_mjd_tai: float
    params: DiffParams
    provenance: dict[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffOutcome:
    """What a difference yielded: its alerts (JSON packets) and a few figures."""

    science_obsid: str
    reference_obsid: str
    alerts: tuple[dict[str, Any], ...]
    n_sources: int
    flagged: bool
    convolved: str
    kernel_stamps: int
    stage_times_s: dict[str, float] = dataclasses.field(default_factory=dict)
    """Wall seconds of ``read``, the chain's stages (:attr:`DiffResult.stage_times_s`), ``write`` and ``alerts``."""


def make_diff(task: DiffTask) -> DiffOutcome:
    """Difference two calexps; write the difference (IMAGE/VARIANCE/MASK) and the alerts (Avro).

    Raises:
        DiffimError: no PSF star, or too few stars for the kernel.
    """
    start = time.perf_counter()
    science = CalibratedImage.from_fits(task.science_path)
    reference = CalibratedImage.from_fits(task.reference_path)
    read_s = time.perf_counter() - start
    result = difference_pair(science, reference, dataclasses.replace(task.params, keep_images=True))
    written = time.perf_counter()
    assert result.diff_e is not None and result.variance_e2 is not None and result.mask is not None
    primary = fits.Header()
    primary["OBSID"] = result.science_obsid
    primary["REFOBSID"] = result.reference_obsid
    primary["DETECTOR"] = result.detector
    primary["BAND"] = result.band
    primary["MJD-MID"] = result.midpoint_mjd_tai
    primary["CONVOLVD"] = result.convolved
    for key, value in task.provenance.items():
        primary[key] = value
    fits.HDUList(
        [
            fits.PrimaryHDU(header=primary),
            fits.ImageHDU(result.diff_e, header=science.wcs_header, name="IMAGE"),
            fits.ImageHDU(result.variance_e2, name="VARIANCE"),
            fits.ImageHDU(result.mask, name="MASK"),
        ]
    ).writeto(task.output_path, overwrite=True)
    alerts_start = time.perf_counter()
    try:
        alerts = alerts_for(result, time_processed_mjd_tai=task.time_processed_mjd_tai)
        flagged = False
    except AlertError:
        alerts, flagged = [], True
    with open(task.alerts_path, "wb") as stream:
        stream.write(write_alerts_avro(alerts))
    return DiffOutcome(
        science_obsid=result.science_obsid,
        reference_obsid=result.reference_obsid,
        alerts=tuple(a.to_json() for a in alerts),
        n_sources=len(result.detections.sources),
        flagged=flagged,
        convolved=result.convolved,
        kernel_stamps=result.kernel.n_stamps,
        stage_times_s={
            "read": read_s,
            **{k: v for k, v in result.stage_times_s.items() if k != "total"},
            "write": alerts_start - written,
            "alerts": time.perf_counter() - alerts_start,
        },
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateTask:
    """A stack of calexps (best seeing first) into one template file."""

    calexp_paths: tuple[str, ...]
    output_path: str
    template_id: str
    params: TemplateParams
    provenance: dict[str, str]
    scratch_dir: str | None = None


def make_template(task: TemplateTask) -> TemplateResult:
    """Build and write the template (:func:`processors.diffim.template.build_template`).

    Raises:
        TemplateError: too few calexps, or calexps of different detectors or bands.
    """
    return build_template(
        list(task.calexp_paths),
        task.output_path,
        template_id=task.template_id,
        params=task.params,
        header_cards=dict(task.provenance),
        scratch_dir=task.scratch_dir,
    )
