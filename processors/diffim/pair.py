"""The difference-imaging chain for one detector pair: science - reference, sources and cutouts."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from processors.diffim.background import background_from_levels, estimate_background
from processors.diffim.calexp import MASK_EDGE, CalibratedImage, FloatImage, MaskImage
from processors.diffim.cutouts import CutoutWriter
from processors.diffim.detection import DetectionParams, Detections, detect_sources
from processors.diffim.matching import (
    AlardLuptonParams,
    KernelSolution,
    apply_kernel,
    convolve_variance,
    fit_kernel,
)
from processors.diffim.psf import PsfModel, QualityParams, VisitQuality, assess_quality, find_peaks, measure_psf
from processors.diffim.registration import register_to

__all__ = [
    "DiffParams",
    "DiffResult",
    "DiffimError",
    "SourceCutouts",
    "difference_pair",
    "difference_pair_from_files",
    "visit_quality",
]


class DiffimError(ValueError):
    """A pair cannot be differenced: no star to model a PSF, too few stars to fit the kernel."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffParams:
    """Every setting of the chain (part of a job's key: change one and the product changes).

    Attributes:
        background_mesh_px: background box size.
        saturation_e: stars with a peak at or above this are not used for PSF or kernel.
        matching: Alard-Lupton settings.
        detection: detection settings.
        quality: the per-visit quality cut (reported; the caller decides what to do with a failure).
        cutout_px: cutout side.
        keep_images: return the difference and variance planes (off: a lighter result to pickle).
    """

    background_mesh_px: int = 128
    saturation_e: float = 120_000.0
    matching: AlardLuptonParams = field(default_factory=AlardLuptonParams)
    detection: DetectionParams = field(default_factory=DetectionParams)
    quality: QualityParams = field(default_factory=QualityParams)
    cutout_px: int = 31
    keep_images: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceCutouts:
    """FITS bytes of the science, template (registered reference) and difference cutouts of one source."""

    science: bytes
    template: bytes
    difference: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffResult:
    """What one science - reference difference yields.

    Attributes:
        science_obsid, reference_obsid, detector, band, midpoint_mjd_tai: identity (science's time).
        diff_e: the difference in science electrons (None unless ``keep_images``).
        variance_e2: its variance (None unless ``keep_images``).
        mask: pixels excluded from detection (None unless ``keep_images``).
        convolved: which image was convolved to match the other (the sharper one).
        kernel: the kernel solution.
        science_psf, reference_psf: the PSFs.
        science_quality, reference_quality: quality figures and verdicts.
        detections: the sources and detection figures.
        cutouts: one per source, same order.
        stage_times_s: wall time of each stage and ``total``.
    """

    science_obsid: str
    reference_obsid: str
    detector: str
    band: str
    midpoint_mjd_tai: float
    diff_e: FloatImage | None
    variance_e2: FloatImage | None
    mask: MaskImage | None
    convolved: Literal["science", "reference"]
    kernel: KernelSolution
    science_psf: PsfModel
    reference_psf: PsfModel
    science_quality: VisitQuality
    reference_quality: VisitQuality
    detections: Detections
    cutouts: tuple[SourceCutouts, ...]
    stage_times_s: dict[str, float]


class _Clock:
    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._start = time.perf_counter()
        self._last = self._start

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + now - self._last
        self._last = now

    def total(self) -> dict[str, float]:
        self.times["total"] = time.perf_counter() - self._start
        return dict(self.times)


def difference_pair(science: CalibratedImage, reference: CalibratedImage, params: DiffParams) -> DiffResult:
    """Difference one science image against one reference (or template) of the same detector.

    Background subtraction, PSF of both, registration of the reference onto the science grid by WCS,
    Alard-Lupton matching of the sharper image to the broader, subtraction (science - reference, in the
    science's flux scale), detection of both signs, measurement and cutouts. Pure and picklable.

    Args:
        science: the later visit.
        reference: the earlier visit, or a template.
        params: settings.

    Returns:
        The result, with stage times.

    Raises:
        DiffimError: a PSF or the kernel could not be fitted (too few stars).
    """
    clock = _Clock()
    sci_bg = _background(science, params.background_mesh_px)
    ref_bg = _background(reference, params.background_mesh_px)
    sci = (science.image_e - sci_bg).astype(np.float32)
    ref = (reference.image_e - ref_bg).astype(np.float32)
    del sci_bg, ref_bg  # a 4k detector holds ~40 planes of 64 MB along the chain: free what is done
    clock.lap("background")
    sci_peaks = find_peaks(sci, science.variance_e2, science.mask)
    # A calexp carries the PSF measured on arrival (and its peak count): only the science's peaks are needed
    # again here, for the kernel's stars.
    ref_peaks = (
        find_peaks(ref, reference.variance_e2, reference.mask)
        if reference.psf is None or reference.n_peaks is None
        else None
    )
    try:
        sci_psf = science.psf or measure_psf(
            sci,
            science.variance_e2,
            science.mask,
            pixel_scale_arcsec=science.pixel_scale_arcsec,
            saturation_e=params.saturation_e,
            peaks=sci_peaks,
        )
        ref_psf = reference.psf or measure_psf(
            ref,
            reference.variance_e2,
            reference.mask,
            pixel_scale_arcsec=reference.pixel_scale_arcsec,
            saturation_e=params.saturation_e,
            peaks=ref_peaks if ref_peaks is not None else find_peaks(ref, reference.variance_e2, reference.mask),
        )
    except ValueError as exc:
        raise DiffimError(f"{science.obsid} - {reference.obsid} {science.detector}: PSF: {exc}") from exc
    sci_quality = assess_quality(sci_psf, len(sci_peaks), params.quality)
    ref_quality = assess_quality(
        ref_psf, len(ref_peaks) if ref_peaks is not None else int(reference.n_peaks or 0), params.quality
    )
    clock.lap("psf")
    reg = register_to(
        science.wcs_header, science.shape, ref, reference.variance_e2, reference.mask, reference.wcs_header
    )
    clock.lap("register")
    bad = (science.mask != 0) | (reg.mask != 0)
    convolve_science = sci_psf.sigma_px < ref_psf.sigma_px
    if convolve_science:
        source, source_var, target, target_var = sci, science.variance_e2, reg.image_e, reg.variance_e2
        sharp, broad = sci_psf, ref_psf
    else:
        source, source_var, target, target_var = reg.image_e, reg.variance_e2, sci, science.variance_e2
        sharp, broad = ref_psf, sci_psf
    try:
        kernel = fit_kernel(
            source,
            source_var,
            target,
            target_var,
            bad.astype(np.uint16),
            stars_x_px=sci_peaks.x_px,
            stars_y_px=sci_peaks.y_px,
            stars_snr=sci_peaks.snr,
            stars_peak_e=np.maximum(sci_peaks.peak_e, ref[sci_peaks.y_px, sci_peaks.x_px]),
            sharp_sigma_px=sharp.sigma_px,
            broad_sigma_px=broad.sigma_px,
            params=params.matching,
            saturation_e=params.saturation_e,
        )
    except ValueError as exc:
        raise DiffimError(f"{science.obsid} - {reference.obsid} {science.detector}: kernel: {exc}") from exc
    clock.lap("match_fit")
    matched = apply_kernel(source, kernel, with_background=False)
    matched_var = convolve_variance(source_var, kernel)
    if convolve_science:
        scale = np.float32(1.0 / kernel.kernel_sum)
        diff = (matched - target) * scale
        variance = (matched_var + target_var) * scale**2
    else:
        diff = target - matched
        variance = target_var + matched_var
    del matched, matched_var
    # The kernel's background term is fitted on the stamps only; the differential background over the
    # whole detector is measured on the difference itself, as a clipped mean: the matched filter responds
    # to the local mean, and the difference's mean sits ~0.2 e- above its median (a median left false
    # peaks of one sign 2x more frequent than the other); faint stars cancel in it, so the mean is safe.
    diff = diff - estimate_background(
        diff, bad.astype(np.uint16), mesh_px=params.background_mesh_px, stride=2, statistic="mean"
    )
    clock.lap("match_apply")
    detections = detect_sources(
        diff,
        variance,
        bad,
        psf_sigma_px=broad.sigma_px,
        gaussian_flux_ratio=broad.gaussian_flux_ratio,
        wcs_header=science.wcs_header,
        edge_px=kernel.half_px,
        params=params.detection,
    )
    clock.lap("detect")
    writer = CutoutWriter(science.wcs_header, params.cutout_px)
    cutouts = tuple(
        SourceCutouts(
            science=writer.write(sci, s.x_px, s.y_px),
            template=writer.write(reg.image_e, s.x_px, s.y_px),
            difference=writer.write(diff, s.x_px, s.y_px),
        )
        for s in detections.sources
    )
    clock.lap("cutouts")
    mask: MaskImage | None = None
    if params.keep_images:
        mask = np.where(bad, science.mask | reg.mask, 0).astype(np.uint16)
        edge = kernel.half_px + params.detection.edge_margin_px
        mask[:edge, :] |= MASK_EDGE
        mask[-edge:, :] |= MASK_EDGE
        mask[:, :edge] |= MASK_EDGE
        mask[:, -edge:] |= MASK_EDGE
    return DiffResult(
        science_obsid=science.obsid,
        reference_obsid=reference.obsid,
        detector=science.detector,
        band=science.band,
        midpoint_mjd_tai=science.midpoint_mjd_tai,
        diff_e=diff if params.keep_images else None,
        variance_e2=variance if params.keep_images else None,
        mask=mask,
        convolved="science" if convolve_science else "reference",
        kernel=kernel,
        science_psf=sci_psf,
        reference_psf=ref_psf,
        science_quality=sci_quality,
        reference_quality=ref_quality,
        detections=detections,
        cutouts=cutouts,
        stage_times_s=clock.total(),
    )


def _background(image: CalibratedImage, mesh_px: int) -> FloatImage:
    """The image's sky: from the mesh it carries (measured on arrival), or measured now."""
    if image.background_levels is not None and image.background_mesh_px == mesh_px:
        return background_from_levels(image.background_levels, image.shape, mesh_px=mesh_px)
    return estimate_background(image.image_e, image.mask, mesh_px=mesh_px)


def visit_quality(image: CalibratedImage, params: DiffParams) -> tuple[PsfModel | None, VisitQuality]:
    """PSF and quality verdict of one visit on arrival, before any pairing (pure, picklable).

    Pass the PSF on with ``dataclasses.replace(image, psf=psf)`` so that :func:`difference_pair` does not
    measure it again.

    Returns:
        The PSF (None when no star could model it) and the quality figures with the verdict.
    """
    bs = (image.image_e - _background(image, params.background_mesh_px)).astype(np.float32)
    peaks = find_peaks(bs, image.variance_e2, image.mask)
    try:
        psf: PsfModel | None = measure_psf(
            bs,
            image.variance_e2,
            image.mask,
            pixel_scale_arcsec=image.pixel_scale_arcsec,
            saturation_e=params.saturation_e,
            peaks=peaks,
        )
    except ValueError:
        psf = None  # no star: the verdict says so (reason "fwhm" and "psf_stars")
    return psf, assess_quality(psf, len(peaks), params.quality)


def difference_pair_from_files(science_path: str, reference_path: str, params: DiffParams) -> DiffResult:
    """:func:`difference_pair` on two calexp files (IMAGE/VARIANCE/MASK, see ``CalibratedImage.to_fits``)."""
    return difference_pair(CalibratedImage.from_fits(science_path), CalibratedImage.from_fits(reference_path), params)
