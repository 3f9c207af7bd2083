"""Templates: the best-seeing calexps of one field, band and detector stacked onto one grid.

:func:`build_template` takes calexp files (best seeing first: the first one's WCS and shape are the
template's grid), subtracts each one's sky, resamples it onto the grid by WCS
(:func:`~processors.diffim.registration.register_to`), and combines them pixel by pixel:

- **clipped**: per pixel, an input more than ``clip_sigma`` of its own noise (plus ``clip_fraction`` of
  the median signal, so that slightly different star cores survive) away from the median of the inputs
  is left out — a moving object, a cosmic ray, a transient of one visit does not enter the template;
  with fewer than three inputs at a pixel nothing is clipped there (a median of two is their mean);
- **variance-weighted**: each input has one weight, the inverse of its median sky variance (a weight
  per pixel would favour the faint side of every star, whose own Poisson noise raises its variance);
  the template's variance is ``Σ w² V / (Σ w)²`` over the inputs kept.

Bounded memory: the registered planes go to memory-mapped scratch files beside the output, and the
combination runs over row strips. The result is a calexp-like file (IMAGE/VARIANCE/MASK with the grid's
WCS) whose OBSID is the template's id, so a difference against it names it as ``referenceObsid``.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np
from astropy.io import fits
from scipy import ndimage

from processors.diffim.background import estimate_background
from processors.diffim.calexp import MASK_NO_DATA, CalibratedImage
from processors.diffim.psf import find_peaks, measure_psf
from processors.diffim.registration import register_to

__all__ = ["TemplateError", "TemplateParams", "TemplateResult", "build_template"]

MIN_INPUTS = 3
"""The fewest calexps a template is made of (two cannot outvote a moving object)."""


class TemplateError(ValueError):
    """A template cannot be built: too few inputs, inputs of different detectors or bands."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateParams:
    """Settings of the stack (part of a template job's key).

    Attributes:
        min_inputs: refuse with fewer calexps.
        clip_sigma: an input this many of its own sigmas from the pixel's median is left out.
        clip_fraction: plus this fraction of the median's absolute value (tolerance for star cores).
        grow_px: what an input has clipped is grown by this radius (the outlier's PSF wings).
        background_mesh_px: sky background box size.
        strip_rows: rows combined at once (memory bound).
    """

    min_inputs: int = MIN_INPUTS
    clip_sigma: float = 4.0
    clip_fraction: float = 0.5
    grow_px: int = 4
    background_mesh_px: int = 64
    strip_rows: int = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateResult:
    """What a template build yielded.

    Attributes:
        template_id: the id written as the template's OBSID.
        n_inputs: calexps stacked.
        inputs_obsid: their OBSIDs, in the order given.
        weights: each input's weight, normalised to sum 1.
        rejected_fraction: per input, the fraction of its covered pixels the clip left out.
        fwhm_arcsec: the template's own PSF FWHM (None when no star could model it).
        inputs_fwhm_arcsec: each input's PSF FWHM (None where not measurable).
        midpoint_mjd_tai: mean of the inputs' midpoints.
    """

    template_id: str
    n_inputs: int
    inputs_obsid: tuple[str, ...]
    weights: tuple[float, ...]
    rejected_fraction: tuple[float, ...]
    fwhm_arcsec: float | None
    inputs_fwhm_arcsec: tuple[float | None, ...]
    midpoint_mjd_tai: float


def _fwhm(image: CalibratedImage, sky_subtracted: np.ndarray) -> float | None:
    peaks = find_peaks(sky_subtracted, image.variance_e2, image.mask)
    try:
        psf = measure_psf(
            sky_subtracted,
            image.variance_e2,
            image.mask,
            pixel_scale_arcsec=image.pixel_scale_arcsec,
            peaks=peaks,
        )
    except ValueError:
        return None
    return float(psf.fwhm_arcsec) if math.isfinite(psf.fwhm_arcsec) else None


class _Scratch:
    """A scratch directory removed with everything in it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def cleanup(self) -> None:
        shutil.rmtree(self.name, ignore_errors=True)


def _median_of_good(data: np.ndarray, good: np.ndarray, n_good: np.ndarray) -> np.ndarray:
    """Per pixel, the median over the inputs where ``good`` (0 where none is): a sort, NaNs last."""
    ordered = np.sort(np.where(good, data, np.nan), axis=0)
    lo = np.maximum(n_good - 1, 0) // 2
    hi = np.maximum(n_good, 1) // 2
    a = np.take_along_axis(ordered, lo[None], axis=0)[0]
    b = np.take_along_axis(ordered, np.minimum(hi, ordered.shape[0] - 1)[None], axis=0)[0]
    median = 0.5 * (a + b)
    return np.where(n_good > 0, median, 0.0).astype(np.float32)


def build_template(
    calexp_paths: list[str],
    output_path: str,
    *,
    template_id: str,
    params: TemplateParams | None = None,
    header_cards: dict[str, str | int | float] | None = None,
    scratch_dir: str | None = None,
) -> TemplateResult:
    """Stack calexps (best seeing first) into a template written to ``output_path``.

    Args:
        calexp_paths: calexp files of one detector and band; the first gives the grid.
        output_path: the template file (IMAGE/VARIANCE/MASK, OBSID = ``template_id``).
        template_id: the template's id.
        params: settings.
        header_cards: extra primary-header cards (provenance).
        scratch_dir: where the registered planes are memory-mapped (created, and removed at the end); a
            temporary directory beside the output by default.

    Returns:
        The template's figures.

    Raises:
        TemplateError: fewer than ``min_inputs`` calexps, or calexps of different detectors or bands.
    """
    params = params or TemplateParams()
    if len(calexp_paths) < params.min_inputs:
        raise TemplateError(f"{len(calexp_paths)} usable visit(s); a template needs at least {params.min_inputs}")
    grid = CalibratedImage.from_fits(calexp_paths[0])
    ny, nx = grid.shape
    n = len(calexp_paths)
    if scratch_dir is None:
        scratch_dir = tempfile.mkdtemp(dir=os.path.dirname(os.path.abspath(output_path)) or None, prefix=".tmpl-")
    else:
        os.makedirs(scratch_dir, exist_ok=True)
    scratch = _Scratch(scratch_dir)
    try:
        shape = (n, ny, nx)
        images = np.lib.format.open_memmap(os.path.join(scratch.name, "i.npy"), "w+", np.float32, shape)
        variances = np.lib.format.open_memmap(os.path.join(scratch.name, "v.npy"), "w+", np.float32, shape)
        masks = np.lib.format.open_memmap(os.path.join(scratch.name, "m.npy"), "w+", np.uint16, shape)
        weights: list[float] = []
        fwhms: list[float | None] = []
        obsids: list[str] = []
        midpoints: list[float] = []
        for k, path in enumerate(calexp_paths):
            image = grid if k == 0 else CalibratedImage.from_fits(path)
            if image.detector != grid.detector or image.band != grid.band:
                raise TemplateError(
                    f"{path}: detector {image.detector} band {image.band}, not {grid.detector} {grid.band}"
                )
            sky = image.image_e - estimate_background(image.image_e, image.mask, mesh_px=params.background_mesh_px)
            sky = sky.astype(np.float32)
            fwhms.append(_fwhm(image, sky))
            reg = register_to(grid.wcs_header, grid.shape, sky, image.variance_e2, image.mask, image.wcs_header)
            images[k] = reg.image_e
            variances[k] = reg.variance_e2
            masks[k] = reg.mask
            good = reg.mask == 0
            weights.append(1.0 / float(np.median(reg.variance_e2[good])) if good.any() else 0.0)
            obsids.append(image.obsid)
            midpoints.append(image.midpoint_mjd_tai)
            del image, sky, reg, good
        w = np.asarray(weights, dtype=np.float64)
        if not (w > 0).any():
            raise TemplateError("no input has a good pixel")
        w = w / w.sum()
        out_image = np.zeros((ny, nx), dtype=np.float32)
        out_var = np.full((ny, nx), 1e12, dtype=np.float32)
        out_mask = np.zeros((ny, nx), dtype=np.uint16)
        rejected = np.zeros(n, dtype=np.int64)
        covered = np.zeros(n, dtype=np.int64)
        wcol = w.astype(np.float32)[:, None, None]
        grow = params.grow_px
        structure = np.zeros((1, 2 * grow + 1, 2 * grow + 1), dtype=bool)
        yy, xx = np.mgrid[-grow : grow + 1, -grow : grow + 1]
        structure[0] = yy**2 + xx**2 <= grow**2
        for y0 in range(0, ny, params.strip_rows):
            y1 = min(ny, y0 + params.strip_rows)
            # The clip is computed with ``grow`` rows of margin, so that growing it is seamless across strips.
            m0, m1 = max(0, y0 - grow), min(ny, y1 + grow)
            data = np.asarray(images[:, m0:m1])
            var = np.asarray(variances[:, m0:m1])
            msk = np.asarray(masks[:, m0:m1])
            good = (msk == 0) & (var > 0) & (var < 1e11)
            n_good = good.sum(axis=0)
            median = _median_of_good(data, good, n_good)
            tolerance = params.clip_sigma * np.sqrt(var + (params.clip_fraction * np.abs(median)) ** 2)
            outlier = (np.abs(data - median) > tolerance) & (n_good >= 3)
            if grow > 0 and outlier.any():
                # An outlier's faint wings are below the clip pixel by pixel, not in sum: leave them out too.
                outlier = ndimage.binary_dilation(outlier, structure=structure) & (n_good >= 3)
            keep = good & ~outlier
            inner = slice(y0 - m0, y0 - m0 + (y1 - y0))
            data, var, msk, good, keep = (a[:, inner] for a in (data, var, msk, good, keep))
            covered += good.reshape(n, -1).sum(axis=1)
            rejected += (good & ~keep).reshape(n, -1).sum(axis=1)
            wsum = (wcol * keep).sum(axis=0)
            has = wsum > 0
            safe = np.where(has, wsum, 1.0)
            out_image[y0:y1] = np.where(has, (wcol * keep * data).sum(axis=0) / safe, 0.0)
            out_var[y0:y1] = np.where(has, (wcol**2 * keep * var).sum(axis=0) / safe**2, 1e12)
            none = np.bitwise_or.reduce(msk, axis=0) | MASK_NO_DATA
            out_mask[y0:y1] = np.where(has, 0, none)
        del images, variances, masks
    finally:
        scratch.cleanup()
    template = CalibratedImage(
        image_e=out_image,
        variance_e2=out_var,
        mask=out_mask,
        wcs_header=grid.wcs_header,
        obsid=template_id,
        detector=grid.detector,
        band=grid.band,
        midpoint_mjd_tai=float(np.mean(midpoints)),
    )
    fwhm = _fwhm(template, out_image)
    template.to_fits(output_path)
    with fits.open(output_path, mode="update") as hdul:
        header = hdul[0].header
        header["IMGTYPE"] = ("TEMPLATE", "a stack of calexps")
        header["NINPUTS"] = (n, "calexps stacked")
        for k, obsid in enumerate(obsids):
            header[f"INPUT{k + 1:03d}"] = obsid
        if fwhm is not None:
            header["FWHM"] = (round(fwhm, 4), "template PSF FWHM, arcsec")
        for key, value in (header_cards or {}).items():
            header[key] = value
    return TemplateResult(
        template_id=template_id,
        n_inputs=n,
        inputs_obsid=tuple(obsids),
        weights=tuple(float(x) for x in w),
        rejected_fraction=tuple(float(r / c) if c else 0.0 for r, c in zip(rejected, covered, strict=True)),
        fwhm_arcsec=fwhm,
        inputs_fwhm_arcsec=tuple(fwhms),
        midpoint_mjd_tai=float(np.mean(midpoints)),
    )
