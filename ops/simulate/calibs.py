"""Calibration-sequence simulator: bias, dark and flat frames in the real amplifier layout, with truth.

A detector is ``amps_y`` x ``amps_x`` amplifiers, each an int32 image extension named like LSST's
(``Segment10`` ... ``Segment17`` read out to the left, ``Segment07`` ... ``Segment00`` on the top row,
flipped in y), with prescan, imaging (DATASEC), serial overscan (BIASSEC) columns and parallel overscan
rows; DETSEC places each amplifier in the assembled detector. The primary header is the camera's
(:func:`ops.camera.build_primary_header`).

The model, per amplifier: a bias level with frame-to-frame and row-to-row jitter (in the data and the
overscan alike), a fixed 2-D bias structure of a few ADU (data only), Gaussian read noise, a gain, dark
current with hot pixels, cosmic rays (darks and flats), and for flats a lamp level x pixel response
(seeded, 1.5 % rms) x radial vignetting, with shot noise. Everything about the detector derives from
its instrument and name (:func:`detector_truth`), so biases, darks and flats of one detector agree;
the noise of a sequence derives from its seed. A JSON truth file is written beside each sequence.

``skyrelay simulate calibs`` calls :func:`write_calib_day` (one :func:`write_calib_sequence` per kind);
the sky simulator calls
:func:`raw_from_electrons` with its own image in electrons.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Final, Literal

import numpy as np
from astropy.io import fits
from numpy.typing import NDArray

from ops.camera import build_primary_header
from ops.camera_templates import SHUTTER_OVERHEAD_S
from processors.detectors import canonical_instrument

__all__ = [
    "AmpTruth",
    "CalibKind",
    "DetectorSpec",
    "DetectorTruth",
    "FrameTruth",
    "SequenceTruth",
    "bias_structure",
    "calib_frames",
    "detector_truth",
    "plan_calib_sequence",
    "raw_from_electrons",
    "true_flat",
    "write_calib_day",
    "write_calib_sequence",
]

CalibKind = Literal["bias", "dark", "flat"]
_IMGTYPES: Final[Mapping[str, str]] = {"bias": "BIAS", "dark": "DARK", "flat": "FLAT"}
_DEFAULT_EXPTIME_S: Final[Mapping[str, float]] = {"bias": 0.0, "dark": 30.0, "flat": 15.0}
_READOUT_S: Final = 2.3
_SATURATION_ADU: Final = 262_143
_FRAME_JITTER_ADU: Final = 2.0
_ROW_JITTER_ADU: Final = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorSpec:
    """Sizes of a simulated detector; the default is a full LSST ITL sensor (2 x 8 amplifiers).

    Attributes:
        amps_x: Amplifiers per row (8 for LSST).
        amps_y: Rows of amplifiers, 1 or 2.
        amp_width_px: Imaging columns per amplifier (509).
        amp_height_px: Imaging rows per amplifier (2000).
        prescan_px: Prescan columns before the imaging columns (3).
        overscan_px: Serial overscan columns after them (64).
        parallel_overscan_px: Parallel overscan rows after the imaging rows (48).
    """

    amps_x: int = 8
    amps_y: int = 2
    amp_width_px: int = 509
    amp_height_px: int = 2000
    prescan_px: int = 3
    overscan_px: int = 64
    parallel_overscan_px: int = 48

    @classmethod
    def small(cls) -> DetectorSpec:
        """A small test detector: 2 x 4 amplifiers of 32 x 64 pixels, 16 overscan columns."""
        return cls(amps_x=4, amps_y=2, amp_width_px=32, amp_height_px=64, overscan_px=16, parallel_overscan_px=4)

    @property
    def detector_shape_px(self) -> tuple[int, int]:
        """(rows, columns) of the assembled detector."""
        return self.amps_y * self.amp_height_px, self.amps_x * self.amp_width_px

    @property
    def raw_shape_px(self) -> tuple[int, int]:
        """(rows, columns) of one amplifier extension."""
        return (
            self.amp_height_px + self.parallel_overscan_px,
            self.prescan_px + self.amp_width_px + self.overscan_px,
        )

    def amp_names(self) -> tuple[str, ...]:
        """EXTNAMEs in the order the camera writes them."""
        bottom = tuple(f"Segment1{x}" for x in range(self.amps_x))
        top = tuple(f"Segment0{x}" for x in range(self.amps_x - 1, -1, -1)) if self.amps_y == 2 else ()
        return bottom + top

    def amp_cards(self, name: str) -> dict[str, object]:
        """Geometry cards of one amplifier extension (DATASEC, BIASSEC, DETSEC, DETSIZE...)."""
        row, column = int(name[-2]), int(name[-1])
        w, h = self.amp_width_px, self.amp_height_px
        if row == 1:
            detsec = f"[{w * (column + 1)}:{w * column + 1},1:{h}]"
        else:
            detsec = f"[{w * column + 1}:{w * (column + 1)},{2 * h}:{h + 1}]"
        rows, columns = self.detector_shape_px
        first, last = self.prescan_px + 1, self.prescan_px + w
        return {
            "EXTNAME": name,
            "CHANNEL": self.amp_names().index(name) + 1,
            "CCDSUM": "1 1",
            "DATASEC": f"[{first}:{last},1:{h}]",
            "BIASSEC": f"[{last + 1}:{last + self.overscan_px},1:{h}]",
            "DETSEC": detsec,
            "DETSIZE": f"[1:{columns},1:{rows}]",
            "BUNIT": "adu",
        }

    def amp_region(self, name: str) -> tuple[slice, slice, bool, bool]:
        """(rows, columns, flip_y, flip_x) of an amplifier in the assembled detector."""
        row, column = int(name[-2]), int(name[-1])
        w, h = self.amp_width_px, self.amp_height_px
        columns = slice(w * column, w * (column + 1))
        if row == 1:
            return slice(0, h), columns, False, True
        return slice(h, 2 * h), columns, True, False


def _to_amp(image: NDArray[np.floating], spec: DetectorSpec, name: str) -> NDArray[np.float64]:
    rows, columns, flip_y, flip_x = spec.amp_region(name)
    local = np.asarray(image[rows, columns], dtype=np.float64)
    if flip_y:
        local = local[::-1]
    if flip_x:
        local = local[:, ::-1]
    return local


@dataclass(frozen=True, slots=True, kw_only=True)
class AmpTruth:
    """The true properties of one amplifier.

    Attributes:
        name: EXTNAME.
        bias_level_adu: Mean bias level (data and overscan alike).
        read_noise_adu: Gaussian read noise per pixel (before rounding to integers).
        gain_e_per_adu: Electrons per ADU.
        dark_current_e_per_s: Dark current of ordinary pixels.
    """

    name: str
    bias_level_adu: float
    read_noise_adu: float
    gain_e_per_adu: float
    dark_current_e_per_s: float

    @property
    def dark_current_adu_per_s(self) -> float:
        """Dark current in ADU per second."""
        return self.dark_current_e_per_s / self.gain_e_per_adu


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorTruth:
    """The true properties of one detector, derived from its instrument and name.

    Attributes:
        instrument: Canonical instrument name.
        detector: ``RAFTBAY_CCDSLOT``.
        spec: Sizes.
        amps: Per amplifier, in :meth:`DetectorSpec.amp_names` order.
        structure_seed: Seed of the fixed bias structure (:func:`bias_structure`).
        flat_seed: Seed of the pixel response (:func:`true_flat`).
        hot_pixels: ``(row, column, dark current e/s)`` in assembled-detector coordinates.
    """

    instrument: str
    detector: str
    spec: DetectorSpec
    amps: tuple[AmpTruth, ...]
    structure_seed: int
    flat_seed: int
    hot_pixels: tuple[tuple[int, int, float], ...]

    def amp(self, name: str) -> AmpTruth:
        """Return the truth of the amplifier named ``name``."""
        return next(a for a in self.amps if a.name == name)


def detector_truth(
    spec: DetectorSpec, instrument: str, detector: str, *, dark_current_e_per_s: float = 0.05
) -> DetectorTruth:
    """Return the true properties of a detector (the same for every call with the same arguments).

    Bias levels are 10000-30000 ADU, read noise 4-10 ADU, gains 1.2-1.8 e/ADU, dark current within
    ±20 % of ``dark_current_e_per_s`` per amplifier; one hot pixel (20-200 e/s) per 20000 pixels
    (at least 3).

    Args:
        spec: Sizes.
        instrument: Instrument name (any alias).
        detector: ``RAFTBAY_CCDSLOT``.
        dark_current_e_per_s: Typical dark current.
    """
    name = canonical_instrument(instrument)
    digest = hashlib.blake2b(f"{name}/{detector}".encode(), digest_size=8).digest()
    base_seed = int.from_bytes(digest, "big") >> 2
    rng = np.random.default_rng(base_seed)
    amps = tuple(
        AmpTruth(
            name=amp,
            bias_level_adu=float(rng.uniform(10_000, 30_000)),
            read_noise_adu=float(rng.uniform(4.0, 10.0)),
            gain_e_per_adu=float(rng.uniform(1.2, 1.8)),
            dark_current_e_per_s=float(dark_current_e_per_s * rng.uniform(0.8, 1.2)),
        )
        for amp in spec.amp_names()
    )
    rows, columns = spec.detector_shape_px
    n_hot = max(3, rows * columns // 20_000)
    flat_index = rng.choice(rows * columns, size=n_hot, replace=False)
    hot = tuple(
        (int(i // columns), int(i % columns), float(rate))
        for i, rate in zip(np.sort(flat_index), rng.uniform(20.0, 200.0, n_hot), strict=True)
    )
    return DetectorTruth(
        instrument=name,
        detector=detector,
        spec=spec,
        amps=amps,
        structure_seed=base_seed + 1,
        flat_seed=base_seed + 2,
        hot_pixels=hot,
    )


def bias_structure(spec: DetectorSpec, seed: int) -> NDArray[np.float32]:
    """The fixed 2-D bias structure (ADU) in assembled-detector coordinates, the same every frame.

    Per amplifier: a serial ramp (3 ADU decaying over ~10 columns from the readout side), a gentle
    wave along the rows (0.5 ADU) and a fixed pixel pattern of 0.8 ADU rms.
    """
    rng = np.random.default_rng(seed)
    rows, columns = spec.detector_shape_px
    structure = np.zeros((rows, columns), dtype=np.float32)
    h, w = spec.amp_height_px, spec.amp_width_px
    x = np.arange(w, dtype=np.float64)
    y = np.arange(h, dtype=np.float64)
    for name in spec.amp_names():
        local = 3.0 * np.exp(-x / 10.0)[None, :] + 0.5 * np.sin(2 * np.pi * y / max(h, 1) * 3)[:, None]
        local = local + rng.normal(0.0, 0.8, (h, w))
        region_rows, region_columns, flip_y, flip_x = spec.amp_region(name)
        if flip_y:
            local = local[::-1]
        if flip_x:
            local = local[:, ::-1]
        structure[region_rows, region_columns] = local
    return structure


def true_flat(
    spec: DetectorSpec, seed: int, *, response_rms: float = 0.015, vignetting: float = 0.15
) -> NDArray[np.float32]:
    """The true pixel response x vignetting, normalised to mean 1, in assembled-detector coordinates.

    This is the flat in electrons; a master flat made in ADU also carries 1/gain per amplifier (see
    :meth:`SequenceTruth.true_flat_adu`).

    Args:
        spec: Sizes.
        seed: The detector's ``flat_seed``.
        response_rms: Pixel-to-pixel response non-uniformity.
        vignetting: Fractional fall-off at the corners (radial, quadratic).
    """
    rows, columns = spec.detector_shape_px
    rng = np.random.default_rng(seed)
    response = 1.0 + response_rms * rng.standard_normal((rows, columns))
    y, x = np.ogrid[0:rows, 0:columns]
    radius2 = ((y - (rows - 1) / 2) / (rows / 2)) ** 2 + ((x - (columns - 1) / 2) / (columns / 2)) ** 2
    flat = response * (1.0 - vignetting * radius2 / 2.0)
    normalised: NDArray[np.float32] = (flat / flat.mean()).astype(np.float32)
    return normalised


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameTruth:
    """One frame of a sequence.

    Attributes:
        index: CURINDEX (1-based).
        obsid: OBSID.
        filename: File name (``<OBSID>_<DETECTOR>.fits``).
        seqnum: SEQNUM.
        date_obs: DATE-OBS (TAI).
        lamp_factor: Lamp level relative to the nominal (flats).
        written: False for the frames cut by an interruption.
        bias_offset_adu: Frame-to-frame bias offset per amplifier (added to its level); the row-to-row
            jitter has zero mean over the imaging rows, so level + offset is the frame's mean bias.
        cosmic_rays: ``(row, column)`` of every pixel hit, in detector coordinates.
    """

    index: int
    obsid: str
    filename: str
    seqnum: int
    date_obs: str
    lamp_factor: float
    written: bool
    bias_offset_adu: tuple[float, ...]
    cosmic_rays: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SequenceTruth:
    """Everything a calibration sequence was made from.

    Attributes:
        kind: ``"bias"``, ``"dark"`` or ``"flat"``.
        groupid: GROUPID of the sequence.
        n: MAXINDEX (frames planned).
        exptime_s: EXPTIME of each frame.
        darktime_s: DARKTIME of each frame.
        flat_level_e: Nominal lamp level (electrons per pixel before response and vignetting).
        filter: Physical filter (FILTER card).
        seed: Seed of the sequence's noise.
        lamp_change_at: First frame whose lamp level is ``lamp_factor`` x nominal, or None.
        lamp_factor: That factor.
        interrupt_at: First frame not written, or None.
        detector: The detector's truth.
        frames: Per frame, in order (written or not).
        paths: Files written, in order (empty for a plan).
    """

    kind: CalibKind
    groupid: str
    n: int
    exptime_s: float
    darktime_s: float
    flat_level_e: float
    filter: str
    seed: int
    lamp_change_at: int | None
    lamp_factor: float
    interrupt_at: int | None
    detector: DetectorTruth
    frames: tuple[FrameTruth, ...]
    paths: tuple[str, ...] = field(default=())

    @property
    def written_frames(self) -> tuple[FrameTruth, ...]:
        """The frames that exist."""
        return tuple(f for f in self.frames if f.written)

    @property
    def changed_frames(self) -> tuple[int, ...]:
        """CURINDEX of the frames whose lamp level was changed."""
        return tuple(f.index for f in self.frames if f.lamp_factor != 1.0)

    @property
    def cut_frames(self) -> tuple[int, ...]:
        """CURINDEX of the frames the interruption cut."""
        return tuple(f.index for f in self.frames if not f.written)

    def true_flat_adu(self) -> NDArray[np.float32]:
        """The flat a master made in ADU should recover: response x vignetting / gain, mean 1."""
        flat = true_flat(self.detector.spec, self.detector.flat_seed).astype(np.float64)
        for amp in self.detector.amps:
            rows, columns, _, _ = self.detector.spec.amp_region(amp.name)
            flat[rows, columns] /= amp.gain_e_per_adu
        normalised: NDArray[np.float32] = (flat / flat.mean()).astype(np.float32)
        return normalised

    def to_json(self) -> str:
        """Return the truth as JSON (what the truth file holds)."""
        document = asdict(self)
        document["changed_frames"] = list(self.changed_frames)
        document["cut_frames"] = list(self.cut_frames)
        document["amps"] = {
            a.name: {
                "bias_level_adu": a.bias_level_adu,
                "read_noise_adu": a.read_noise_adu,
                "gain_e_per_adu": a.gain_e_per_adu,
                "dark_current_e_per_s": a.dark_current_e_per_s,
                "dark_current_adu_per_s": a.dark_current_adu_per_s,
            }
            for a in self.detector.amps
        }
        document["true_flat"] = "ops.simulate.calibs.true_flat(DetectorSpec(**detector.spec), detector.flat_seed)"
        return json.dumps(document, indent=1, sort_keys=True)


def plan_calib_sequence(
    *,
    instrument: str,
    detector: str,
    kind: CalibKind,
    n: int,
    dayobs: str,
    seq_start: int,
    seed: int,
    lamp_change_at: int | None = None,
    lamp_factor: float = 1.0,
    interrupt_at: int | None = None,
    spec: DetectorSpec | None = None,
    exptime_s: float | None = None,
    flat_level_e: float = 30_000.0,
    dark_current_e_per_s: float = 0.05,
    filter_: str = "r",
    cosmic_rays_per_frame: int | None = None,
) -> SequenceTruth:
    """Plan a calibration sequence: every frame's identity, lamp level, bias offsets and cosmic rays.

    Args:
        instrument: ``"ComCam"``, ``"LATISS"`` or ``"LSSTCam"`` (aliases accepted).
        detector: ``RAFTBAY_CCDSLOT``, one of the instrument's.
        kind: ``"bias"``, ``"dark"`` or ``"flat"``.
        n: Frames in the sequence (MAXINDEX).
        dayobs: Observing day ``YYYYMMDD``; frames start at 18:00 TAI that day.
        seq_start: SEQNUM of the first frame.
        seed: Seed of the sequence's noise.
        lamp_change_at: Frames from this CURINDEX on get ``lamp_factor`` x the lamp level (flats).
        lamp_factor: That factor (e.g. 0.7).
        interrupt_at: The sequence stops before this CURINDEX (MAXINDEX still says ``n``).
        spec: Sizes; a full LSST sensor by default.
        exptime_s: EXPTIME; 0 for biases, 30 s for darks, 15 s for flats by default.
        flat_level_e: Nominal flat level in electrons per pixel.
        dark_current_e_per_s: Typical dark current of the detector.
        filter_: Band or physical filter.
        cosmic_rays_per_frame: Cosmic-ray hits per dark or flat frame; by default one per 30000 pixels
            (at least 3).

    Returns:
        The plan (``paths`` empty).
    """
    if n < 1:
        raise ValueError("a sequence has at least one frame")
    spec = spec or DetectorSpec()
    truth = detector_truth(spec, instrument, detector, dark_current_e_per_s=dark_current_e_per_s)
    name = truth.instrument
    exptime = float(_DEFAULT_EXPTIME_S[kind] if exptime_s is None else exptime_s)
    overhead = SHUTTER_OVERHEAD_S[name]
    darktime = round(exptime + overhead, 4)
    start = datetime.strptime(dayobs, "%Y%m%d") + timedelta(hours=18, seconds=40 * ((seq_start - 1) % 900))
    rows, columns = spec.detector_shape_px
    n_rays = 0 if kind == "bias" else (cosmic_rays_per_frame or max(3, rows * columns // 30_000))
    header = build_primary_header(
        name, dayobs=dayobs, seqnum=seq_start, detector=detector, date_obs=start, filter_=filter_
    )
    groupid = str(header["DATE-OBS"])
    frames = []
    moment = start
    for index in range(1, n + 1):
        rng = np.random.default_rng([seed, index, 1])
        seqnum = seq_start + index - 1
        head = build_primary_header(name, dayobs=dayobs, seqnum=seqnum, detector=detector, date_obs=moment)
        rays: list[tuple[int, int]] = []
        for _ in range(n_rays):
            row, column = int(rng.integers(0, rows)), int(rng.integers(0, columns - 2))
            rays.extend((row, column + k) for k in range(int(rng.integers(1, 3))))
        frames.append(
            FrameTruth(
                index=index,
                obsid=str(head["OBSID"]),
                filename=str(head["FILENAME"]),
                seqnum=seqnum,
                date_obs=str(head["DATE-OBS"]),
                lamp_factor=float(lamp_factor) if lamp_change_at is not None and index >= lamp_change_at else 1.0,
                written=interrupt_at is None or index < interrupt_at,
                bias_offset_adu=tuple(float(v) for v in rng.normal(0.0, _FRAME_JITTER_ADU, len(truth.amps))),
                cosmic_rays=tuple(sorted(set(rays))),
            )
        )
        moment = moment + timedelta(seconds=exptime + overhead + _READOUT_S)
    return SequenceTruth(
        kind=kind,
        groupid=groupid,
        n=n,
        exptime_s=exptime,
        darktime_s=darktime,
        flat_level_e=float(flat_level_e),
        filter=str(header["FILTER"]),
        seed=seed,
        lamp_change_at=lamp_change_at,
        lamp_factor=float(lamp_factor),
        interrupt_at=interrupt_at,
        detector=truth,
        frames=tuple(frames),
    )


def raw_from_electrons(
    image_e: NDArray[np.floating],
    spec: DetectorSpec,
    amp_truth: DetectorTruth,
    rng: np.random.Generator,
    *,
    darktime_s: float = 0.0,
    primary_header: fits.Header | None = None,
    bias_offset_adu: tuple[float, ...] | None = None,
    shot_noise: bool = True,
    compress: bool = False,
    structure: NDArray[np.float32] | None = None,
) -> fits.HDUList:
    """Turn an assembled-detector image in electrons into the camera's raw multi-extension file.

    Adds dark current (with hot pixels) x ``darktime_s``, shot noise, divides by each amplifier's
    gain, adds the bias level (plus frame and row jitter, in data and overscan alike), the fixed bias
    structure and read noise, rounds to int32 and clips at the 18-bit saturation level.

    Args:
        image_e: (rows, columns) expected electrons per pixel, as DETSIZE.
        spec: Sizes.
        amp_truth: The detector's truth (levels, noise, gains, dark current, hot pixels).
        rng: Noise generator.
        darktime_s: Seconds of dark current.
        primary_header: Header of the primary HDU (an empty one by default).
        bias_offset_adu: Frame bias offset per amplifier; drawn (2 ADU rms) when None.
        shot_noise: Poisson noise on signal + dark (Gaussian above 1000 e, where it is the same).
        compress: Rice tile-compress the amplifiers (``CompImageHDU``), as real raws are.
        structure: The bias structure if already computed (:func:`bias_structure`).

    Returns:
        Primary HDU then one int32 extension per amplifier, in the camera's order.
    """
    truth = amp_truth
    if image_e.shape != spec.detector_shape_px:
        raise ValueError(f"image is {image_e.shape}, the detector is {spec.detector_shape_px}")
    rows, columns = spec.detector_shape_px
    dark_e = np.zeros((rows, columns), dtype=np.float64)
    for amp in truth.amps:
        region_rows, region_columns, _, _ = spec.amp_region(amp.name)
        dark_e[region_rows, region_columns] = amp.dark_current_e_per_s
    for row, column, rate in truth.hot_pixels:
        dark_e[row, column] = rate
    expected = np.asarray(image_e, dtype=np.float64) + dark_e * darktime_s
    fixed = structure if structure is not None else bias_structure(spec, truth.structure_seed)
    offsets = bias_offset_adu or tuple(rng.normal(0.0, _FRAME_JITTER_ADU, len(truth.amps)))
    raw_rows, raw_columns = spec.raw_shape_px
    first = spec.prescan_px
    hdus: list[fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU] = [
        fits.PrimaryHDU(header=primary_header if primary_header is not None else fits.Header())
    ]
    for amp, offset in zip(truth.amps, offsets, strict=True):
        local = _to_amp(expected, spec, amp.name)
        if shot_noise:
            if float(local.max(initial=0.0)) > 1000.0:
                electrons = local + np.sqrt(np.maximum(local, 0.0)) * rng.standard_normal(local.shape)
            else:
                electrons = rng.poisson(np.maximum(local, 0.0)).astype(np.float64)
        else:
            electrons = local
        row_jitter = rng.normal(0.0, _ROW_JITTER_ADU, raw_rows)
        row_jitter -= row_jitter[: spec.amp_height_px].mean()  # the frame offset carries the mean
        raw = (
            amp.bias_level_adu
            + offset
            + row_jitter[:, None]
            + amp.read_noise_adu * rng.standard_normal((raw_rows, raw_columns))
        )
        raw[: spec.amp_height_px, first : first + spec.amp_width_px] += electrons / amp.gain_e_per_adu + _to_amp(
            fixed, spec, amp.name
        )
        data = np.clip(np.rint(raw), 0, _SATURATION_ADU).astype(np.int32)
        header = fits.Header()
        for key, value in spec.amp_cards(amp.name).items():
            header[key] = value
        header["GAIN"] = (amp.gain_e_per_adu, "electrons per ADU (the simulator's truth)")
        if compress:
            hdus.append(fits.CompImageHDU(data=data, header=header, compression_type="RICE_1"))
        else:
            hdus.append(fits.ImageHDU(data=data, header=header))
    return fits.HDUList(hdus)


def calib_frames(truth: SequenceTruth, *, compress: bool = False) -> Iterator[tuple[FrameTruth, fits.HDUList]]:
    """Generate the written frames of a planned sequence, without touching the disk.

    Args:
        truth: A plan from :func:`plan_calib_sequence`.
        compress: Rice tile-compress the amplifiers.

    Yields:
        ``(frame truth, HDUList)`` for each frame that is written, in order.
    """
    detector = truth.detector
    spec = detector.spec
    structure = bias_structure(spec, detector.structure_seed)
    flat = true_flat(spec, detector.flat_seed).astype(np.float64) if truth.kind == "flat" else None
    for frame in truth.written_frames:
        rng = np.random.default_rng([truth.seed, frame.index, 2])
        if flat is not None:
            image_e = flat * (truth.flat_level_e * frame.lamp_factor)
        else:
            image_e = np.zeros(spec.detector_shape_px, dtype=np.float64)
        for row, column in frame.cosmic_rays:
            image_e[row, column] += float(rng.uniform(2_000.0, 20_000.0))
        header = build_primary_header(
            detector.instrument,
            dayobs=frame.obsid.split("_")[2],
            seqnum=frame.seqnum,
            detector=detector.detector,
            imgtype=_IMGTYPES[truth.kind],
            filter_=truth.filter,
            exptime=truth.exptime_s,
            date_obs=datetime.fromisoformat(frame.date_obs),
            groupid=truth.groupid,
            curindex=frame.index,
            maxindex=truth.n,
        )
        hdul = raw_from_electrons(
            image_e,
            spec,
            detector,
            rng,
            darktime_s=truth.darktime_s,
            primary_header=header,
            bias_offset_adu=frame.bias_offset_adu,
            compress=compress,
            structure=structure,
        )
        yield frame, hdul


def _write_atomically(hdul: fits.HDUList, final: Path) -> None:
    temporary = final.with_name(f"{final.name}.part")
    with temporary.open("wb") as stream:
        hdul.writeto(stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, final)


def write_calib_sequence(
    out_dir: Path,
    *,
    instrument: str,
    detector: str,
    kind: CalibKind,
    n: int,
    dayobs: str,
    seq_start: int,
    seed: int,
    lamp_change_at: int | None = None,
    lamp_factor: float = 1.0,
    interrupt_at: int | None = None,
    compress: bool = False,
    spec: DetectorSpec | None = None,
    exptime_s: float | None = None,
    flat_level_e: float = 30_000.0,
    dark_current_e_per_s: float = 0.05,
    filter_: str = "r",
    truth_dir: Path | None = None,
) -> SequenceTruth:
    """Write a calibration sequence as the camera does (temporary name, fsync, rename) and its truth.

    Arguments are those of :func:`plan_calib_sequence`, plus:

    Args:
        out_dir: Directory the frames appear in (created if missing).
        compress: Rice tile-compress the amplifiers.
        truth_dir: Where the truth file ``<first OBSID>_<detector>.truth.json`` goes; ``out_dir`` by
            default (a watcher of ``out_dir`` should ignore ``*.json``).
        (the others): see :func:`plan_calib_sequence`.

    Returns:
        The truth, with the paths written.
    """
    plan = plan_calib_sequence(
        instrument=instrument,
        detector=detector,
        kind=kind,
        n=n,
        dayobs=dayobs,
        seq_start=seq_start,
        seed=seed,
        lamp_change_at=lamp_change_at,
        lamp_factor=lamp_factor,
        interrupt_at=interrupt_at,
        spec=spec,
        exptime_s=exptime_s,
        flat_level_e=flat_level_e,
        dark_current_e_per_s=dark_current_e_per_s,
        filter_=filter_,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    for frame, hdul in calib_frames(plan, compress=compress):
        final = out_dir / frame.filename
        _write_atomically(hdul, final)
        paths.append(str(final))
    truth = SequenceTruth(**{**{f: getattr(plan, f) for f in plan.__dataclass_fields__}, "paths": tuple(paths)})
    where = truth_dir or out_dir
    where.mkdir(parents=True, exist_ok=True)
    first = plan.frames[0]
    (where / f"{first.obsid}_{detector}.truth.json").write_text(truth.to_json(), encoding="utf-8")
    return truth


def write_calib_day(
    out_dir: Path,
    *,
    instrument: str,
    detector: str,
    dayobs: str,
    bias: int = 0,
    dark: int = 0,
    flat: int = 0,
    seq_start: int = 1,
    seed: int = 0,
    lamp_change_at: int | None = None,
    lamp_factor: float = 1.0,
    interrupt_at: int | None = None,
    interrupt_kind: CalibKind = "flat",
    compress: bool = False,
    spec: DetectorSpec | None = None,
) -> list[SequenceTruth]:
    """Write an afternoon's calibrations: ``bias`` biases, then ``dark`` darks, then ``flat`` flats.

    What ``skyrelay simulate calibs --bias N --dark N --flat N --lamp-change-at K --lamp-factor F
    --interrupt-at K`` does: sequence numbers run on from ``seq_start``; the lamp change applies to the
    flats and the interruption to the ``interrupt_kind`` sequence. Each sequence's seed is ``seed`` plus
    its first sequence number.

    Returns:
        The truth of each sequence written, in order (kinds with 0 frames are skipped).
    """
    truths: list[SequenceTruth] = []
    seqnum = seq_start
    for kind, count in (("bias", bias), ("dark", dark), ("flat", flat)):
        if count <= 0:
            continue
        truth = write_calib_sequence(
            out_dir,
            instrument=instrument,
            detector=detector,
            kind=kind,  # type: ignore[arg-type]
            n=count,
            dayobs=dayobs,
            seq_start=seqnum,
            seed=seed + seqnum,
            lamp_change_at=lamp_change_at if kind == "flat" else None,
            lamp_factor=lamp_factor if kind == "flat" else 1.0,
            interrupt_at=interrupt_at if kind == interrupt_kind else None,
            compress=compress,
            spec=spec,
        )
        truths.append(truth)
        seqnum += count
    return truths
