"""Instrument signature removal: overscan, trim, assembly, bias, dark and flat, with variance and mask planes.

The same building blocks serve the masters (one strip of one amplifier of many frames at a time) and the
ISR of a science exposure (:func:`isr_exposure`). Images are in ADU; the variance plane is in ADU²
(read noise² + signal / gain, plus the masters' variances, divided by the flat²).

Mask bits (:data:`MASK_BITS`), the same in masters and ISR results:

=========  =====  =================================================================
``BAD``    1      unusable: flat response below the limit or not finite, bad in a master
``SAT``    2      the raw value was at or above the saturation level
``NO_DATA`` 4     no value: no frame contributed to a master, or NaN after ISR
``HOT``    8      hot pixel: the master dark is far above its amplifier's level
=========  =====  =================================================================
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from processors.calib.combine import IQR_TO_SIGMA, clipped_mean_std, meanclip_stack
from processors.calib.layout import AmpGeometry, LayoutError, amp_geometry

__all__ = [
    "MASK_BAD",
    "MASK_BITS",
    "MASK_HOT",
    "MASK_NO_DATA",
    "MASK_SAT",
    "AmpRows",
    "AmpStats",
    "CalibError",
    "CalibParams",
    "IsrResult",
    "MasterFrame",
    "RawExposure",
    "isr_exposure",
    "overscan_columns",
    "overscan_noise",
    "overscan_row_levels",
]

_NOISE_PIXELS: Final = 20_000

MASK_BAD: Final = 1
MASK_SAT: Final = 2
MASK_NO_DATA: Final = 4
MASK_HOT: Final = 8
MASK_BITS: Final[Mapping[str, int]] = {"BAD": MASK_BAD, "SAT": MASK_SAT, "NO_DATA": MASK_NO_DATA, "HOT": MASK_HOT}
"""Mask plane bit values by name (also written as ``MP_<NAME>`` cards in the MASK HDU)."""


class CalibError(Exception):
    """Calibration cannot be done with these inputs (too few frames, inconsistent layouts, bad files)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibParams:
    """Parameters of ISR, combination and flat grouping.

    Attributes:
        sigma: Clip half-width in sigma for MEANCLIP (frames and per-amplifier statistics).
        iterations: MEANCLIP iterations after the median start.
        strip_rows: Rows of an amplifier processed at once when combining (bounds memory).
        min_frames: Fewest usable frames a master is built from.
        overscan_skip_columns: Leading overscan columns skipped (they carry the serial CTI tail).
        overscan_fit: ``"row"``: each row's clipped mean; ``"poly"``: a polynomial in the row
            number fitted to those means (smooth, less noisy).
        overscan_poly_order: Order of the ``"poly"`` fit.
        saturation_adu: Raw values at or above this are saturated (masked, left out of masters).
        gains_e_per_adu: Gain per amplifier name; amplifiers not listed use ``default_gain_e_per_adu``.
        default_gain_e_per_adu: Gain of amplifiers not in ``gains_e_per_adu``.
        level_tolerance: Flats whose level differs from the group's by more than this fraction are
            another group.
        shape_tolerance: Flats whose large-scale illumination (normalised, on a coarse grid) differs
            from the group's by more than this fraction anywhere are another group.
        grid_cells: Cells per side of the coarse grid used to compare illumination shapes.
        hot_pixel_sigma: A master dark pixel this many sigma above its amplifier's level is flagged HOT.
        flat_low_response: Master flat pixels below this response are flagged BAD.
    """

    sigma: float = 3.0
    iterations: int = 3
    strip_rows: int = 128
    min_frames: int = 3
    overscan_skip_columns: int = 3
    overscan_fit: Literal["row", "poly"] = "row"
    overscan_poly_order: int = 3
    saturation_adu: float = 262_143.0
    gains_e_per_adu: tuple[tuple[str, float], ...] = ()
    default_gain_e_per_adu: float = 1.0
    level_tolerance: float = 0.05
    shape_tolerance: float = 0.01
    grid_cells: int = 8
    hot_pixel_sigma: float = 8.0
    flat_low_response: float = 0.5

    def gain(self, amp: str) -> float:
        """Return the gain (e/ADU) of an amplifier."""
        return dict(self.gains_e_per_adu).get(amp, self.default_gain_e_per_adu)


@dataclass(frozen=True, slots=True, kw_only=True)
class AmpStats:
    """Statistics of one amplifier's region of an image (cp_verify's per-amplifier numbers).

    Attributes:
        name: EXTNAME of the amplifier.
        mean: Clipped mean of the region.
        stdev: Clipped standard deviation of the region.
        read_noise_adu: Read noise measured in the overscan (median over frames for a master).
        overscan_level_adu: Mean level the overscan subtraction removed (mean over frames).
        dark_current_adu_per_s: Clipped mean of a master dark's region.
    """

    name: str
    mean: float
    stdev: float
    read_noise_adu: float | None = None
    overscan_level_adu: float | None = None
    dark_current_adu_per_s: float | None = None

    def to_dict(self) -> dict[str, float | str | None]:
        """Return the statistics as a JSON-able mapping."""
        return {
            "name": self.name,
            "mean": self.mean,
            "stdev": self.stdev,
            "read_noise_adu": self.read_noise_adu,
            "overscan_level_adu": self.overscan_level_adu,
            "dark_current_adu_per_s": self.dark_current_adu_per_s,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterFrame:
    """A master calibration in memory: assembled detector planes.

    Attributes:
        image: float32 (rows, columns) as DETSIZE.
        variance: float32, same shape (the master's own variance).
        mask: int16 mask bits (:data:`MASK_BITS`).
        kind: ``"bias"``, ``"dark"`` or ``"flat"``.
    """

    image: NDArray[np.float32]
    variance: NDArray[np.float32]
    mask: NDArray[np.int16]
    kind: str = ""

    @classmethod
    def read(cls, path: Path | str) -> MasterFrame:
        """Read a master written by :func:`processors.calib.product.write_master`.

        Raises:
            CalibError: The file cannot be read or lacks the IMAGE, VARIANCE or MASK HDU.
        """
        try:
            with fits.open(path, memmap=False) as hdul:
                kind = hdul[0].header.get("CALIBTYP", "")
                return cls(
                    image=np.asarray(hdul["IMAGE"].data, dtype=np.float32),
                    variance=np.asarray(hdul["VARIANCE"].data, dtype=np.float32),
                    mask=np.asarray(hdul["MASK"].data, dtype=np.int16),
                    kind=str(kind).lower(),
                )
        except (OSError, KeyError, TypeError) as exc:
            raise CalibError(f"cannot read master {path}: {exc}") from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class AmpRows:
    """Some rows of one amplifier after overscan subtraction and trim, oriented as in the detector.

    Attributes:
        image: float32 (rows, columns) in ADU.
        saturated: True where the raw value was saturated.
        det_rows: Rows of the assembled detector these pixels go to.
        det_columns: Columns of the assembled detector.
        overscan_adu: The per-row overscan levels subtracted (in raw row order).
        overscan_pixels: The overscan pixels the levels came from (raw row order, skipped columns out).
    """

    image: NDArray[np.float32]
    saturated: NDArray[np.bool_]
    det_rows: slice
    det_columns: slice
    overscan_adu: NDArray[np.float32]
    overscan_pixels: NDArray[np.float32]


def overscan_row_levels(overscan: NDArray[np.floating], params: CalibParams) -> NDArray[np.float32]:
    """Per-row clipped mean of overscan pixels (MEANCLIP across the columns; not a median of integers).

    Args:
        overscan: (rows, columns) overscan pixels, leading columns already skipped.
        params: ``sigma`` and ``iterations`` of the clip.

    Returns:
        float32 level per row.
    """
    columns = np.ascontiguousarray(np.asarray(overscan, dtype=np.float32).T)
    return meanclip_stack(columns, sigma=params.sigma, iterations=params.iterations).mean


def overscan_noise(overscan: NDArray[np.floating], levels: NDArray[np.floating]) -> float:
    """Read noise (ADU) from overscan residuals about the per-row levels.

    Outliers beyond 5sigma (sigma from the IQR) are dropped; the standard deviation is corrected for the
    per-row level having been fitted from the same pixels. Every k-th row is used, for at most
    about 20000 pixels (the estimate is then good to 0.5 %).

    Args:
        overscan: (rows, columns) overscan pixels used for the levels.
        levels: Per-row levels subtracted.
    """
    step = max(1, math.ceil(overscan.size / _NOISE_PIXELS))
    residual = (
        np.asarray(overscan[::step], dtype=np.float64) - np.asarray(levels[::step], dtype=np.float64)[:, None]
    ).ravel()
    if residual.size < 2:
        return math.nan
    q1, median, q3 = np.percentile(residual, [25.0, 50.0, 75.0])
    sigma0 = IQR_TO_SIGMA * float(q3 - q1)
    kept = residual[np.abs(residual - median) <= 5.0 * sigma0] if sigma0 > 0 else residual
    columns = overscan.shape[1]
    correction = math.sqrt(columns / (columns - 1)) if columns > 1 else 1.0
    return float(kept.std(ddof=1)) * correction


class RawExposure:
    """An open raw file: its primary header and amplifier geometry, read strip by strip.

    Pixels are read through ``section``: only the rows asked for are read from the file (and, for
    tile-compressed amplifiers, only their tiles decompressed), so memory stays at one strip per file.
    """

    def __init__(self, raw: fits.HDUList | Path | str) -> None:
        """Open ``raw`` (a path is opened read-only, not memory-mapped; an HDUList is used as is).

        Raises:
            CalibError: The file cannot be opened or has no amplifier with DATASEC and DETSEC.
        """
        self._owned = not isinstance(raw, fits.HDUList)
        try:
            self.hdul: fits.HDUList = raw if isinstance(raw, fits.HDUList) else fits.open(raw, memmap=False)
            self.header: fits.Header = self.hdul[0].header
            self.amps: list[AmpGeometry] = []
            self._hdus: list[fits.ImageHDU | fits.CompImageHDU] = []
            for index, hdu in enumerate(self.hdul):
                if index == 0 or not isinstance(hdu, fits.ImageHDU | fits.CompImageHDU):
                    continue
                if "DATASEC" not in hdu.header or "DETSEC" not in hdu.header:
                    continue
                shape = (int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"]))
                if isinstance(hdu, fits.CompImageHDU):
                    shape = (int(hdu.header.get("ZNAXIS2", shape[0])), int(hdu.header.get("ZNAXIS1", shape[1])))
                self.amps.append(amp_geometry(hdu.header, shape))
                self._hdus.append(hdu)
        except (OSError, LayoutError, KeyError, ValueError) as exc:
            self.close()
            raise CalibError(f"cannot read raw {raw}: {exc}") from exc
        if not self.amps:
            self.close()
            raise CalibError(f"{raw}: no amplifier extension with DATASEC and DETSEC")
        self.detsize_px = self.amps[0].detsize_px

    def close(self) -> None:
        """Close the file if this object opened it."""
        if self._owned and hasattr(self, "hdul"):
            self.hdul.close()

    def __enter__(self) -> RawExposure:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def card(self, key: str, default: float = 0.0) -> float:
        """Return a numeric primary card (EXPTIME, DARKTIME), ``default`` when absent or null."""
        value = self.header.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default

    def read_rows(self, amp: int, start: int, stop: int, step: int = 1) -> NDArray[np.float32]:
        """Rows ``start:stop:step`` (0-based, extension coordinates) of amplifier ``amp``, full width, float32."""
        hdu = self._hdus[amp]
        block = hdu.data[start:stop, :] if hdu.fileinfo() is None else hdu.section[start:stop, :]
        return np.asarray(block[::step] if step > 1 else block, dtype=np.float32)

    def overscan_profile(self, amp: int, params: CalibParams) -> NDArray[np.float32]:
        """Overscan level of every DATASEC row of an amplifier, as ``params.overscan_fit`` says."""
        geometry = self.amps[amp]
        rows = geometry.datasec.rows
        overscan = self.read_rows(amp, rows.start, rows.stop)[:, overscan_columns(geometry, params)]
        levels = overscan_row_levels(overscan, params)
        if params.overscan_fit == "poly" and levels.size > params.overscan_poly_order + 1:
            x = np.linspace(-1.0, 1.0, levels.size)
            coefficients = np.polynomial.legendre.legfit(x, levels.astype(np.float64), params.overscan_poly_order)
            levels = np.polynomial.legendre.legval(x, coefficients).astype(np.float32)
        return levels

    def datasec_rows(self, amp: int, start: int, stop: int, step: int = 1) -> NDArray[np.float32]:
        """Raw rows ``start:stop:step`` (0-based within DATASEC) of an amplifier, full width, float32."""
        first = self.amps[amp].datasec.rows.start
        return self.read_rows(amp, first + start, first + stop, step)

    def amp_rows(
        self,
        amp: int,
        start: int,
        stop: int,
        params: CalibParams,
        *,
        profile: NDArray[np.float32] | None = None,
        raw: NDArray[np.float32] | None = None,
        levels: NDArray[np.float32] | None = None,
    ) -> AmpRows:
        """Overscan-subtract and trim DATASEC rows ``start:stop`` (0-based within DATASEC) of one amplifier.

        Args:
            amp: Index of the amplifier in :attr:`amps`.
            start: First DATASEC row.
            stop: Row after the last.
            params: Overscan parameters and saturation level.
            profile: Levels of every DATASEC row (from :meth:`overscan_profile`); required for the
                ``"poly"`` fit, computed per row otherwise.
            raw: These rows as :meth:`datasec_rows` returns them, if already read.
            levels: Overscan levels of these rows, if already computed (e.g. for many frames at once).

        Returns:
            The rows, oriented and placed as in the assembled detector.
        """
        geometry = self.amps[amp]
        if raw is None:
            raw = self.datasec_rows(amp, start, stop)
        overscan = raw[:, overscan_columns(geometry, params)]
        if levels is not None:
            pass
        elif profile is not None:
            levels = profile[start:stop]
        elif params.overscan_fit == "poly":
            levels = self.overscan_profile(amp, params)[start:stop]
        else:
            levels = overscan_row_levels(overscan, params)
        data = raw[:, geometry.datasec.columns]
        saturated = data >= params.saturation_adu
        image = data - levels[:, None]
        detsec = geometry.detsec
        if detsec.flip_x:
            image, saturated = image[:, ::-1], saturated[:, ::-1]
        if detsec.flip_y:
            image, saturated = image[::-1], saturated[::-1]
            rows = slice(detsec.rows.stop - stop, detsec.rows.stop - start)
        else:
            rows = slice(detsec.rows.start + start, detsec.rows.start + stop)
        return AmpRows(
            image=np.ascontiguousarray(image),
            saturated=np.ascontiguousarray(saturated),
            det_rows=rows,
            det_columns=detsec.columns,
            overscan_adu=levels,
            overscan_pixels=np.ascontiguousarray(overscan),
        )

    def strips(self, amp: int, strip_rows: int) -> Iterator[tuple[int, int]]:
        """DATASEC row ranges ``(start, stop)`` of ``strip_rows`` rows covering an amplifier."""
        height = self.amps[amp].datasec.height_px
        step = max(1, strip_rows)
        for start in range(0, height, step):
            yield start, min(height, start + step)


def overscan_columns(geometry: AmpGeometry, params: CalibParams) -> slice:
    """Columns of the extension used for the overscan level: BIASSEC without its first columns."""
    columns = geometry.biassec.columns
    skip = min(max(params.overscan_skip_columns, 0), max(geometry.biassec.width_px - 2, 0))
    return slice(columns.start + skip, columns.stop)


@dataclass(frozen=True, slots=True, kw_only=True)
class IsrResult:
    """An exposure after ISR, assembled as DETSIZE.

    Attributes:
        image: float32 ADU (flat-fielded when a flat was given).
        variance: float32 ADU².
        mask: int16 mask bits (:data:`MASK_BITS`).
        stats: Per-amplifier statistics (overscan level, read noise, clipped mean and sigma).
    """

    image: NDArray[np.float32]
    variance: NDArray[np.float32]
    mask: NDArray[np.int16]
    stats: tuple[AmpStats, ...] = field(default=())


def _as_master(master: MasterFrame | Path | str | None) -> MasterFrame | None:
    if master is None or isinstance(master, MasterFrame):
        return master
    return MasterFrame.read(master)


def isr_exposure(
    raw: fits.HDUList | Path | str,
    *,
    bias: MasterFrame | Path | str | None = None,
    dark: MasterFrame | Path | str | None = None,
    flat: MasterFrame | Path | str | None = None,
    params: CalibParams | None = None,
) -> IsrResult:
    """Remove the instrument signature from one raw exposure.

    Steps: per-row overscan subtraction, trim, assembly by DETSEC, bias subtraction, dark x DARKTIME
    subtraction, flat division. Saturated pixels and the masters' flagged pixels are masked; the
    variance is read noise² (measured in the overscan) + signal / gain, plus the masters' variances,
    all divided by the flat².

    Args:
        raw: The raw file or HDUList.
        bias: Master bias (ADU), or its path.
        dark: Master dark (ADU/s), or its path.
        flat: Master flat (normalised), or its path.
        params: Parameters; defaults when None.

    Returns:
        The ISR result.

    Raises:
        CalibError: The raw cannot be read, or a master's shape differs from DETSIZE.
    """
    params = params or CalibParams()
    masters = {"bias": _as_master(bias), "dark": _as_master(dark), "flat": _as_master(flat)}
    with RawExposure(raw) as exposure:
        shape = exposure.detsize_px
        for kind, master in masters.items():
            if master is not None and master.image.shape != shape:
                raise CalibError(f"master {kind} is {master.image.shape}, the raw's DETSIZE is {shape}")
        darktime_s = exposure.card("DARKTIME", exposure.card("EXPTIME"))
        image = np.full(shape, np.nan, dtype=np.float32)
        variance = np.zeros(shape, dtype=np.float32)
        mask = np.full(shape, MASK_NO_DATA, dtype=np.int16)
        stats: list[AmpStats] = []
        for amp, geometry in enumerate(exposure.amps):
            profile = exposure.overscan_profile(amp, params)
            part = exposure.amp_rows(amp, 0, geometry.datasec.height_px, params, profile=profile)
            read_noise = overscan_noise(part.overscan_pixels, overscan_row_levels(part.overscan_pixels, params))
            where = (part.det_rows, part.det_columns)
            signal = part.image
            amp_mask = np.where(part.saturated, MASK_SAT, 0).astype(np.int16)
            amp_var = np.full(signal.shape, read_noise**2, dtype=np.float32)
            bias_m, dark_m, flat_m = masters["bias"], masters["dark"], masters["flat"]
            if bias_m is not None:
                signal = signal - bias_m.image[where]
                amp_var += bias_m.variance[where]
                amp_mask |= np.where(bias_m.mask[where] != 0, MASK_BAD, 0).astype(np.int16)
            if dark_m is not None:
                signal = signal - dark_m.image[where] * np.float32(darktime_s)
                amp_var += dark_m.variance[where] * np.float32(darktime_s**2)
                amp_mask |= (dark_m.mask[where] & MASK_HOT) | np.where(
                    dark_m.mask[where] & (MASK_BAD | MASK_NO_DATA), MASK_BAD, 0
                ).astype(np.int16)
            amp_var += np.maximum(signal, 0.0) / np.float32(params.gain(geometry.name))
            if flat_m is not None:
                response = flat_m.image[where]
                usable = np.isfinite(response) & (response > 0)
                safe = np.where(usable, response, 1.0).astype(np.float32)
                signal = signal / safe
                amp_var = amp_var / safe**2 + signal**2 * flat_m.variance[where] / safe**2
                amp_mask |= np.where(~usable | (flat_m.mask[where] != 0), MASK_BAD, 0).astype(np.int16)
            amp_mask |= np.where(np.isfinite(signal), 0, MASK_NO_DATA).astype(np.int16)
            image[where] = signal
            variance[where] = amp_var
            mask[where] = amp_mask
            mean, stdev, _ = clipped_mean_std(signal[amp_mask == 0], sigma=params.sigma, iterations=params.iterations)
            stats.append(
                AmpStats(
                    name=geometry.name,
                    mean=mean,
                    stdev=stdev,
                    read_noise_adu=read_noise,
                    overscan_level_adu=float(np.mean(profile, dtype=np.float64)),
                )
            )
    return IsrResult(image=image, variance=variance, mask=mask, stats=tuple(stats))
