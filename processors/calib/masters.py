"""Master bias, dark and flat from a calibration sequence: the job the archive's executor runs.

:func:`make_master` is a picklable top-level function of a frozen, picklable :class:`MasterSpec`, so
the same call runs in a thread, a process pool or on a Dask worker. It reads the inputs strip by strip
(``strip_rows`` rows of one amplifier of every frame at a time), so memory grows with the number of
frames x one strip, not with the frames' size.

- bias: each frame overscan-subtracted, trimmed, assembled; MEANCLIP → the bias structure in ADU;
- dark: overscan- and bias-subtracted, ÷ DARKTIME; MEANCLIP → ADU/s;
- flat: overscan-, bias- and (when given) dark-corrected; grouped by illumination
  (:mod:`processors.calib.grouping`); each frame of the chosen group ÷ its clipped mean; MEANCLIP;
  the master ÷ its clipped mean.

Clipped statistics over a whole detector or amplifier use a regular subsample of at most about a
million pixels (every k-th row and column), which is deterministic and precise to far better than 0.1 %.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from processors.calib.combine import clipped_mean_std, meanclip_stack
from processors.calib.grouping import FlatMeasure, group_flats
from processors.calib.isr import (
    MASK_BAD,
    MASK_HOT,
    MASK_NO_DATA,
    MASK_SAT,
    AmpStats,
    CalibError,
    CalibParams,
    MasterFrame,
    RawExposure,
    overscan_columns,
    overscan_noise,
    overscan_row_levels,
)
from processors.calib.layout import AmpGeometry
from processors.calib.product import ProvenanceValue, write_master

__all__ = ["MasterInput", "MasterOutcome", "MasterSpec", "MasterStats", "make_master"]

Kind = Literal["bias", "dark", "flat"]
_SAMPLE_PIXELS = 1_000_000


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterInput:
    """One input frame of a master.

    Attributes:
        name: Its name in the archive (e.g. ``CC_O_20241108_000012_R22_S11.fits``).
        path: Where to read it.
        checksum: Its checksum, recorded in the master's INPUTS table.
    """

    name: str
    path: str
    checksum: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterSpec:
    """Everything :func:`make_master` needs; frozen and picklable.

    Attributes:
        kind: ``"bias"``, ``"dark"`` or ``"flat"``.
        inputs: The sequence's frames, in sequence order.
        output_path: Where to write the master (the caller writes to a temporary name and renames).
        bias_path: Master bias to subtract (darks and flats).
        dark_path: Master dark to subtract (flats).
        params: ISR, combination and grouping parameters.
        provenance: Cards to embed in the primary header (step, code version, parameters hash...).
    """

    kind: Kind
    inputs: tuple[MasterInput, ...]
    output_path: str
    bias_path: str | None = None
    dark_path: str | None = None
    params: CalibParams = field(default_factory=CalibParams)
    provenance: Mapping[str, ProvenanceValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterStats:
    """Verification statistics of a master (as cp_verify measures them).

    Attributes:
        amps: Per amplifier, in the raw's amplifier order.
        frames_used: Number of frames combined.
        mean: Clipped mean over the detector.
        stdev: Clipped standard deviation over the detector.
        flat_scatter: For a flat, the median over amplifiers of clipped sigma / clipped mean within the
            amplifier (cp_verify wants ≤ 5 %; across amplifiers an ADU flat also carries the gains).
        frame_levels_adu: For a flat, each used frame's clipped mean after ISR, in order.
    """

    amps: tuple[AmpStats, ...]
    frames_used: int
    mean: float
    stdev: float
    flat_scatter: float | None = None
    frame_levels_adu: tuple[float, ...] = ()

    def amp(self, name: str) -> AmpStats:
        """Return the statistics of the amplifier named ``name`` (EXTNAME).

        Raises:
            KeyError: No such amplifier.
        """
        for stats in self.amps:
            if stats.name == name:
                return stats
        raise KeyError(name)

    def to_dict(self) -> dict[str, object]:
        """Return the statistics as a JSON-able mapping, amplifiers keyed by EXTNAME."""
        return {
            "frames_used": self.frames_used,
            "mean": self.mean,
            "stdev": self.stdev,
            "flat_scatter": self.flat_scatter,
            "frame_levels_adu": list(self.frame_levels_adu),
            "amps": {stats.name: stats.to_dict() for stats in self.amps},
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterOutcome:
    """What :func:`make_master` did.

    Attributes:
        kind: The kind of master.
        output_path: Where it was written.
        stats: Verification statistics.
        frames_used: Names of the frames combined, in order.
        left_out: ``(name, reason)`` of the frames not combined.
        warnings: Things the operator should know (e.g. an interrupted sequence).
    """

    kind: Kind
    output_path: str
    stats: MasterStats
    frames_used: tuple[str, ...]
    left_out: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]


def _sample(image: NDArray[np.float32]) -> NDArray[np.float32]:
    step = max(1, math.ceil(math.sqrt(image.size / _SAMPLE_PIXELS)))
    return image[::step, ::step]


def _clipped(image: NDArray[np.float32], params: CalibParams) -> tuple[float, float]:
    mean, stdev, _ = clipped_mean_std(_sample(image), sigma=params.sigma, iterations=params.iterations)
    return mean, stdev


def _same_layout(exposures: Sequence[RawExposure], names: Sequence[str]) -> list[AmpGeometry]:
    reference = exposures[0].amps
    for exposure, name in zip(exposures[1:], names[1:], strict=True):
        if exposure.amps != reference:
            raise CalibError(f"{name} has another amplifier layout than {names[0]}")
    return reference


class _Corrections:
    """Bias and dark subtraction of amplifier rows already overscan-subtracted."""

    def __init__(self, bias: MasterFrame | None, dark: MasterFrame | None, shape: tuple[int, int]) -> None:
        for kind, master in (("bias", bias), ("dark", dark)):
            if master is not None and master.image.shape != shape:
                raise CalibError(f"master {kind} is {master.image.shape}, the inputs' DETSIZE is {shape}")
        self.bias, self.dark = bias, dark

    def apply(self, image: NDArray[np.float32], where: tuple[slice, slice], darktime_s: float) -> NDArray[np.float32]:
        if self.bias is not None:
            image = image - self.bias.image[where]
        if self.dark is not None:
            image = image - self.dark.image[where] * np.float32(darktime_s)
        return image


def _interruption(exposures: Sequence[RawExposure]) -> str | None:
    maxindex = [int(v) for e in exposures if isinstance(v := e.header.get("MAXINDEX"), int)]
    curindex = sorted({int(v) for e in exposures if isinstance(v := e.header.get("CURINDEX"), int)})
    if not maxindex or max(maxindex) <= len(exposures):
        return None
    expected = max(maxindex)
    missing = [i for i in range(1, expected + 1) if i not in curindex]
    shown = ", ".join(str(i) for i in missing[:20]) + (" ..." if len(missing) > 20 else "")
    return f"sequence incomplete: {len(exposures)} of {expected} frames (MAXINDEX {expected}); missing CURINDEX {shown}"


def _measure_flat(exposure: RawExposure, name: str, corrections: _Corrections, params: CalibParams) -> FlatMeasure:
    """Level and coarse shape of one flat after ISR, from every k-th row (about a million pixels in all)."""
    rows, columns = exposure.detsize_px
    step = max(1, math.ceil(rows * columns / _SAMPLE_PIXELS))
    darktime_s = exposure.card("DARKTIME", exposure.card("EXPTIME"))
    cells = max(1, params.grid_cells)
    values: list[NDArray[np.float32]] = []
    cell_index: list[NDArray[np.int64]] = []
    for amp, geometry in enumerate(exposure.amps):
        height = geometry.datasec.height_px
        local = np.arange(0, height, step)
        raw = exposure.datasec_rows(amp, 0, height, step)
        if params.overscan_fit == "poly":
            levels = exposure.overscan_profile(amp, params)[local]
        else:
            levels = overscan_row_levels(raw[:, overscan_columns(geometry, params)], params)
        part = exposure.amp_rows(amp, 0, local.size, params, raw=raw, levels=levels)
        detsec = geometry.detsec
        det_rows = detsec.rows.stop - 1 - local if detsec.flip_y else detsec.rows.start + local
        if detsec.flip_y:
            det_rows = det_rows[::-1]  # amp_rows flipped the sampled rows into detector order
        image = part.image
        for master, factor in ((corrections.bias, 1.0), (corrections.dark, darktime_s)):
            if master is not None:
                image = image - master.image[det_rows, part.det_columns] * np.float32(factor)
        image[part.saturated] = np.nan
        det_columns = np.arange(part.det_columns.start, part.det_columns.stop)
        cell = (det_rows * cells // rows)[:, None] * cells + (det_columns * cells // columns)[None, :]
        values.append(image.ravel())
        cell_index.append(cell.ravel())
    flat_values = np.concatenate(values)
    mean, _, _ = clipped_mean_std(flat_values, sigma=params.sigma, iterations=params.iterations)
    if not math.isfinite(mean) or mean <= 0:
        raise CalibError(f"flat {name} has no positive level ({mean})")
    finite = np.isfinite(flat_values)
    index = np.concatenate(cell_index)[finite]
    sums = np.bincount(index, weights=flat_values[finite].astype(np.float64), minlength=cells * cells)
    counts = np.bincount(index, minlength=cells * cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        grid = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).reshape(cells, cells)
    return FlatMeasure(name=name, level_adu=mean, grid=grid / mean)


def make_master(spec: MasterSpec) -> MasterOutcome:
    """Build a master bias, dark or flat and write it to ``spec.output_path``.

    Args:
        spec: Inputs, masters to apply, parameters, output path and provenance.

    Returns:
        Statistics, the frames used, the frames left out with reasons, and warnings.

    Raises:
        CalibError: An input cannot be read, layouts differ, a master does not fit, or fewer than
            ``params.min_frames`` usable frames remain.
    """
    params = spec.params
    if spec.kind not in ("bias", "dark", "flat"):
        raise CalibError(f"unknown kind of master {spec.kind!r}")
    if not spec.inputs:
        raise CalibError(f"no input frames for a master {spec.kind}")
    names = [item.name for item in spec.inputs]
    warnings: list[str] = []
    with ExitStack() as stack:
        exposures = [stack.enter_context(RawExposure(Path(item.path))) for item in spec.inputs]
        amps = _same_layout(exposures, names)
        shape = exposures[0].detsize_px
        bias = MasterFrame.read(spec.bias_path) if spec.bias_path and spec.kind != "bias" else None
        dark = MasterFrame.read(spec.dark_path) if spec.dark_path and spec.kind == "flat" else None
        corrections = _Corrections(bias, dark, shape)
        if (shortfall := _interruption(exposures)) is not None:
            warnings.append(shortfall)
        darktimes = [e.card("DARKTIME", e.card("EXPTIME")) for e in exposures]

        used = list(range(len(exposures)))
        left_out: list[tuple[int, str]] = []
        scales = [1.0] * len(exposures)
        levels: list[float] = []
        if spec.kind == "dark":
            for index, darktime_s in enumerate(darktimes):
                if darktime_s <= 0:
                    left_out.append((index, f"DARKTIME {darktime_s} s is not positive"))
                else:
                    scales[index] = 1.0 / darktime_s
            used = [i for i in used if i not in dict(left_out)]
        elif spec.kind == "flat":
            measures = [_measure_flat(e, n, corrections, params) for e, n in zip(exposures, names, strict=True)]
            grouping = group_flats(measures, params)
            used = list(grouping.used)
            left_out = list(grouping.left_out)
            scales = [1.0 / m.level_adu for m in measures]
            levels = [measures[i].level_adu for i in used]
        if len(used) < params.min_frames:
            detail = "; ".join(f"{names[i]}: {reason}" for i, reason in left_out)
            raise CalibError(
                f"master {spec.kind} refused: {len(used)} usable frame(s) of {len(exposures)}, "
                f"at least {params.min_frames} needed" + (f" ({detail})" if detail else "")
            )

        image = np.full(shape, np.nan, dtype=np.float32)
        variance = np.zeros(shape, dtype=np.float32)
        mask = np.full(shape, MASK_NO_DATA, dtype=np.int16)
        read_noise: dict[str, float] = {}
        overscan_level: dict[str, float] = {}
        for amp, geometry in enumerate(amps):
            profiles = (
                [exposures[i].overscan_profile(amp, params) for i in used] if params.overscan_fit == "poly" else None
            )
            overscan_pixels: list[list[NDArray[np.float32]]] = [[] for _ in used]
            overscan_levels: list[list[NDArray[np.float32]]] = [[] for _ in used]
            for start, stop in exposures[used[0]].strips(amp, params.strip_rows):
                planes: list[NDArray[np.float32]] = []
                saturated_all: NDArray[np.bool_] | None = None
                where = (slice(0), slice(0))
                raws = [exposures[index].datasec_rows(amp, start, stop) for index in used]
                if profiles is None:
                    # One MEANCLIP call for the overscan rows of every frame (each row on its own).
                    columns = overscan_columns(geometry, params)
                    row_levels = np.split(
                        overscan_row_levels(np.concatenate([r[:, columns] for r in raws]), params), len(raws)
                    )
                else:
                    row_levels = [profile[start:stop] for profile in profiles]
                for slot, index in enumerate(used):
                    part = exposures[index].amp_rows(amp, start, stop, params, raw=raws[slot], levels=row_levels[slot])
                    where = (part.det_rows, part.det_columns)
                    plane = corrections.apply(part.image, where, darktimes[index])
                    if scales[index] != 1.0:
                        plane = plane * np.float32(scales[index])
                    saturated = part.saturated if part.saturated.any() else None
                    if saturated is not None:
                        plane[saturated] = np.nan
                    planes.append(plane)
                    saturated_all = (
                        saturated
                        if slot == 0
                        else (None if saturated is None or saturated_all is None else saturated_all & saturated)
                    )
                    overscan_pixels[slot].append(part.overscan_pixels)
                    overscan_levels[slot].append(part.overscan_adu)
                combined = meanclip_stack(np.stack(planes), sigma=params.sigma, iterations=params.iterations)
                image[where] = combined.mean
                variance[where] = combined.variance
                missing = np.isnan(combined.mean)
                if missing.any() or saturated_all is not None:
                    bits = np.where(missing, MASK_NO_DATA, 0)
                    if saturated_all is not None:
                        bits |= np.where(saturated_all, MASK_SAT, 0)
                    mask[where] = bits.astype(np.int16)
                else:
                    mask[where] = 0
            noises = [
                overscan_noise(np.concatenate(pixels), np.concatenate(lv))
                for pixels, lv in zip(overscan_pixels, overscan_levels, strict=True)
            ]
            read_noise[geometry.name] = float(np.median(noises))
            overscan_level[geometry.name] = float(
                np.mean([np.mean(np.concatenate(lv), dtype=np.float64) for lv in overscan_levels])
            )

    flat_scatter: float | None = None
    if spec.kind == "flat":
        norm, _ = _clipped(image, params)
        image /= np.float32(norm)
        variance /= np.float32(norm * norm)
        low = ~(image >= params.flat_low_response)  # also catches NaN
        mask |= np.where(low, MASK_BAD, 0).astype(np.int16)

    amp_stats: list[AmpStats] = []
    for geometry in amps:
        region = image[geometry.det_rows, geometry.det_columns]
        mean, stdev = _clipped(region, params)
        if spec.kind == "dark" and math.isfinite(stdev):
            hot = region > mean + params.hot_pixel_sigma * stdev
            mask[geometry.det_rows, geometry.det_columns] |= np.where(hot, MASK_HOT, 0).astype(np.int16)
        amp_stats.append(
            AmpStats(
                name=geometry.name,
                mean=mean,
                stdev=stdev,
                read_noise_adu=read_noise[geometry.name],
                overscan_level_adu=overscan_level[geometry.name],
                dark_current_adu_per_s=mean if spec.kind == "dark" else None,
            )
        )
    mean, stdev = _clipped(image, params)
    if spec.kind == "flat":
        # Within each amplifier: across amplifiers an ADU flat also carries the gains.
        flat_scatter = float(np.median([s.stdev / s.mean if s.mean else math.nan for s in amp_stats]))
    stats = MasterStats(
        amps=tuple(amp_stats),
        frames_used=len(used),
        mean=mean,
        stdev=stdev,
        flat_scatter=flat_scatter,
        frame_levels_adu=tuple(levels),
    )
    reasons = dict(left_out)
    detector_cards: dict[str, ProvenanceValue] = {"NFRAMES": len(used), "NINPUTS": len(spec.inputs)}
    detector_cards["MEAN"] = _card_number(mean)
    detector_cards["STDEV"] = _card_number(stdev)
    if flat_scatter is not None:
        detector_cards["FLATSCAT"] = _card_number(flat_scatter)
    write_master(
        spec.output_path,
        kind=spec.kind,
        image=image,
        variance=variance,
        mask=mask,
        amp_stats=amp_stats,
        detector_cards=detector_cards,
        inputs=[
            (item.name, item.checksum, index in used, reasons.get(index, "")) for index, item in enumerate(spec.inputs)
        ],
        provenance=spec.provenance,
    )
    return MasterOutcome(
        kind=spec.kind,
        output_path=spec.output_path,
        stats=stats,
        frames_used=tuple(names[i] for i in used),
        left_out=tuple((names[i], reason) for i, reason in left_out),
        warnings=tuple(warnings),
    )


def _card_number(value: float) -> float | str:
    return value if math.isfinite(value) else "NaN"
