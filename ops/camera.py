"""Camera simulator: writes real multi-extension FITS exposures into a summit inbox, as a camera does.

Each detector file is written under a temporary name (``<name>.part`` in the inbox, or in a staging
directory on the same filesystem), flushed and fsynced, then renamed into
``<inbox>/<OBSID>_<DETECTOR>.fits`` with :func:`os.replace`, so a watcher only ever sees complete files
appear. Headers follow the real camera templates in :mod:`ops.camera_templates`.

``skyrelay simulate camera`` is wired to :func:`add_camera_arguments` and :func:`camera_main`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import numpy as np
import structlog
from astropy.io import fits
from astropy.time import Time

from ops.camera_templates import (
    AMPLIFIERS,
    FILTERS,
    PRIMARY_TEMPLATES,
    SHUTTER_OVERHEAD_S,
    amplifier_cards,
)
from processors.detectors import CAMERA_CODES, UnknownInstrument, canonical_instrument, expected_detectors

__all__ = [
    "REMOVE",
    "CameraError",
    "UnknownDetector",
    "add_camera_arguments",
    "build_primary_header",
    "camera_main",
    "exposure_date_obs",
    "rubin_dayobs",
    "run_camera",
    "write_exposure",
]

_FITS_BLOCK: Final = 2880
_BYTES_PER_PIXEL: Final = 4
_AMP_WIDTH: Final = 576
_OFFSET_SLACK: Final = 4096
_DAYOBS_RE: Final = re.compile(r"\d{8}")


class CameraError(Exception):
    """The camera simulator cannot do what was asked."""


class UnknownDetector(CameraError, ValueError):
    """A detector name the instrument does not have."""


class _Remove:
    """Type of :data:`REMOVE`."""

    def __repr__(self) -> str:
        return "REMOVE"


REMOVE: Final = _Remove()
"""Override value that deletes a card (None keeps the card with a null value, as real broken headers do)."""


def rubin_dayobs(moment: datetime | None = None) -> str:
    """Return the Rubin observing day of a moment: its date in UTC-12h, as ``YYYYMMDD``.

    Args:
        moment: An aware datetime (naive is taken as UTC); now by default.
    """
    when = moment or datetime.now(UTC)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return (when.astimezone(UTC) - timedelta(hours=12)).strftime("%Y%m%d")


def exposure_date_obs(dayobs: str, seqnum: int) -> datetime:
    """Return a plausible start time (naive, TAI) for exposure ``seqnum`` of observing day ``dayobs``.

    Today's exposures start now; those of another day start at 00:00 UTC after the day's noon-to-noon
    boundary plus 40 s per sequence number, so DATE-OBS always falls inside the observing day.

    Args:
        dayobs: Observing day, ``YYYYMMDD``.
        seqnum: Sequence number within the day.
    """
    if rubin_dayobs() == dayobs:
        now = Time(datetime.now(UTC).replace(tzinfo=None), scale="utc").tai
        return datetime.fromisoformat(str(now.isot))
    night = datetime.strptime(dayobs, "%Y%m%d") + timedelta(days=1)
    return night + timedelta(seconds=(40 * seqnum) % (11 * 3600))


def _isot(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _mjd_tai(moment: datetime) -> float:
    return float(Time(moment, scale="tai").mjd)


def build_primary_header(
    instrument: str,
    *,
    dayobs: str,
    seqnum: int,
    detector: str,
    imgtype: str = "OBJECT",
    filter_: str = "r",
    exptime: float = 30.0,
    date_obs: datetime | None = None,
    groupid: str | None = None,
    curindex: int = 1,
    maxindex: int = 1,
    overrides: Mapping[str, object] | None = None,
) -> fits.Header:
    """Build the primary header a camera would write for one detector of one exposure.

    DATE-OBS/DATE-BEG, MJD-OBS/MJD-BEG (TAI), DATE-END/MJD-END, DARKTIME and the OBSID
    (``<camcode>_O_<dayobs>_<seqnum:06d>``) are consistent with each other and with the arguments.

    Args:
        instrument: ``"ComCam"``, ``"LATISS"`` or ``"LSSTCam"`` (aliases accepted).
        dayobs: Observing day, ``YYYYMMDD``.
        seqnum: Sequence number within the day.
        detector: ``<RAFTBAY>_<CCDSLOT>``, e.g. ``"R22_S11"``.
        imgtype: IMGTYPE (and TESTTYPE).
        filter_: A band (``"r"``, mapped to the instrument's physical filter, e.g. ``"r_03"``) or a
            physical filter name used as is.
        exptime: Exposure time in seconds.
        date_obs: Start of the exposure, naive in TAI (an aware datetime is converted from UTC to TAI);
            by default :func:`exposure_date_obs`.
        groupid: GROUPID; by default the start time, as the camera writes it for a single exposure.
        curindex: Index of the exposure within its group (CURINDEX).
        maxindex: Number of exposures in the group (MAXINDEX).
        overrides: Cards to set last; a value of None makes the card null and :data:`REMOVE` deletes it
            (for building broken headers).

    Returns:
        The header.

    Raises:
        UnknownInstrument: The instrument is not known.
        UnknownDetector: The detector is not one of the instrument's.
        CameraError: dayobs is not ``YYYYMMDD``.
    """
    name = canonical_instrument(instrument)
    if not _DAYOBS_RE.fullmatch(dayobs):
        raise CameraError(f"dayobs must be YYYYMMDD, not {dayobs!r}")
    start = _tai(date_obs) if date_obs is not None else exposure_date_obs(dayobs, seqnum)
    overhead = SHUTTER_OVERHEAD_S[name]
    end = start + timedelta(seconds=exptime + overhead)
    obsid = f"{CAMERA_CODES[name]}_O_{dayobs}_{seqnum:06d}"
    physical = FILTERS[name].get(filter_, filter_)
    band = next((key for key, value in FILTERS[name].items() if value == physical), filter_)
    start_text, end_text = _isot(start), _isot(end)
    start_mjd, end_mjd = _mjd_tai(start), _mjd_tai(end)

    cards = dict(PRIMARY_TEMPLATES[name])
    cards.update(
        {
            "DATE": end_text,
            "MJD": end_mjd,
            "IMGTYPE": imgtype,
            "DATE-OBS": start_text,
            "MJD-OBS": start_mjd,
            "DATE-TRG": end_text,
            "MJD-TRG": end_mjd,
            "OBSID": obsid,
            "DATE-BEG": start_text,
            "MJD-BEG": start_mjd,
            "DATE-END": end_text,
            "MJD-END": end_mjd,
            "TIMESYS": "TAI",
            "GROUPID": groupid if groupid is not None else start_text,
            "TESTTYPE": imgtype,
            "DAYOBS": dayobs,
            "SEQNUM": seqnum,
            "CURINDEX": curindex,
            "MAXINDEX": maxindex,
            "IMAGETAG": hashlib.blake2b(f"{obsid}".encode(), digest_size=8).hexdigest(),
            "CCDSLOT": None,  # (the detector's cards, set below: their places in the header)
            "RAFTBAY": None,
            "FILTBAND": band,
            "FILTER": physical,
            "EXPTIME": float(exptime),
            "DARKTIME": round(float(exptime) + overhead, 4),
            "SHUTTIME": float(exptime),
            "FILENAME": None,
        }
    )
    cards.update(_detector_cards(name, obsid, detector))
    header = fits.Header()
    for keyword, value in cards.items():
        _set_card(header, keyword, value)
    _override(header, overrides)
    return header


def _detector_cards(instrument: str, obsid: str, detector: str) -> dict[str, object]:
    """The cards of a primary header that name its detector (all the others are the exposure's)."""
    if detector not in expected_detectors(instrument):
        raise UnknownDetector(f"{instrument} has no detector {detector!r}")
    raft, slot = detector.split("_")
    return {"CCDSLOT": slot, "RAFTBAY": raft, "FILENAME": f"{obsid}_{detector}.fits"}


def _override(header: fits.Header, overrides: Mapping[str, object] | None) -> None:
    for keyword, value in (overrides or {}).items():
        if value is REMOVE:
            header.remove(keyword, ignore_missing=True)
        else:
            _set_card(header, keyword, value)


def _tai(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        return moment
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return datetime.fromisoformat(str(Time(utc, scale="utc").tai.isot))


def _set_card(header: fits.Header, keyword: str, value: object) -> None:
    if keyword in header or (len(keyword) <= 8 and " " not in keyword):
        header[keyword] = value
    else:
        header[f"HIERARCH {keyword}"] = value


def write_exposure(
    inbox: Path,
    instrument: str,
    *,
    dayobs: str,
    seqnum: int,
    size_bytes: int,
    imgtype: str = "OBJECT",
    filter_: str = "r",
    exptime: float = 30.0,
    detectors: Sequence[str] | None = None,
    staging: Path | None = None,
    overrides_by_detector: Mapping[str, Mapping[str, object]] | None = None,
    seed: int | None = None,
    date_obs: datetime | None = None,
    groupid: str | None = None,
    curindex: int = 1,
    maxindex: int = 1,
) -> list[Path]:
    """Write every detector file of one exposure into ``inbox``, each appearing by an atomic rename.

    Each file is a real multi-extension FITS file: a primary HDU holding the header and no data, then
    int32 amplifier extensions (16 named like the camera's, fewer for small sizes) sized so the whole
    file is close to ``size_bytes``. Pixel data comes from one random block generated per call and
    reused at a different offset for each extension and detector.

    Args:
        inbox: Directory the files appear in (created if missing).
        instrument: ``"ComCam"``, ``"LATISS"`` or ``"LSSTCam"`` (aliases accepted).
        dayobs: Observing day, ``YYYYMMDD``.
        seqnum: Sequence number within the day.
        size_bytes: Approximate size of each file.
        imgtype: IMGTYPE of the exposure.
        filter_: Band or physical filter (see :func:`build_primary_header`).
        exptime: Exposure time in seconds.
        detectors: Detectors to write; all the instrument's by default.
        staging: Directory for the temporary files, on the same filesystem as ``inbox``; by default
            ``<inbox>/<name>.part``.
        overrides_by_detector: Detector -> card overrides (see :func:`build_primary_header`).
        seed: Seed of the pixel data; by default derived from dayobs and seqnum.
        date_obs: Start of the exposure (shared by all detectors); see :func:`build_primary_header`.
        groupid: GROUPID of the exposure's group.
        curindex: CURINDEX of the exposure.
        maxindex: MAXINDEX of the group.

    Returns:
        Final paths, in detector order.

    Raises:
        UnknownInstrument: The instrument is not known.
        UnknownDetector: A detector is not one of the instrument's.
        CameraError: A file could not be written or renamed (e.g. staging on another filesystem).
    """
    name = canonical_instrument(instrument)
    chosen = sorted(detectors) if detectors is not None else sorted(expected_detectors(name))
    start = _tai(date_obs) if date_obs is not None else exposure_date_obs(dayobs, seqnum)
    overrides = overrides_by_detector or {}
    if not chosen:
        return []
    # One header for the exposure; each detector's is a copy with its own detector cards and overrides.
    exposure = build_primary_header(
        name,
        dayobs=dayobs,
        seqnum=seqnum,
        detector=chosen[0],
        imgtype=imgtype,
        filter_=filter_,
        exptime=exptime,
        date_obs=start,
        groupid=groupid,
        curindex=curindex,
        maxindex=maxindex,
    )
    headers: dict[str, fits.Header] = {}
    for detector in chosen:
        header = exposure.copy()
        for keyword, value in _detector_cards(name, str(exposure["OBSID"]), detector).items():
            header[keyword] = value
        _override(header, overrides.get(detector))
        headers[detector] = header
    primary_bytes = max(len(header.tostring()) for header in headers.values())
    n_ext, shape = _layout(size_bytes - primary_bytes)
    rng = np.random.default_rng(seed if seed is not None else int(dayobs) * 100_000 + seqnum)
    pixels = shape[0] * shape[1]
    block = rng.integers(14_900, 15_100, size=pixels + _OFFSET_SLACK, dtype=np.int32).astype(">i4")

    inbox.mkdir(parents=True, exist_ok=True)
    if staging is not None:
        staging.mkdir(parents=True, exist_ok=True)
    # The amplifier headers are the same for every detector: made (and checked by astropy) once.
    extensions = [_extension(amp, block[:pixels].reshape(shape)) for amp in range(n_ext)]
    ext_headers = [_padded(hdu.header.tostring().encode("ascii")) for hdu in extensions]
    written: list[Path] = []
    for det_index, header in enumerate(headers.values()):
        hdul = fits.HDUList([fits.PrimaryHDU(header=header), extensions[0]])
        hdul.update_extend()  # EXTEND = T, as writing the whole list would add it
        parts = [_padded(hdul[0].header.tostring().encode("ascii"))]
        for amp, ext_header in enumerate(ext_headers):
            offset = (amp * 131 + det_index * 977) % _OFFSET_SLACK
            parts += [ext_header, _padded(block[offset : offset + pixels].tobytes())]
        final = inbox / str(header["FILENAME"])
        temporary = (staging or inbox) / f"{final.name}.part"
        _write_atomically(parts, temporary, final)
        written.append(final)
    return written


def _extension(amp: int, data: np.ndarray) -> fits.ImageHDU:
    """Amplifier ``amp``'s image extension for data of ``data``'s shape and type, checked as writing checks it."""
    ext_header = fits.Header()
    for keyword, value in amplifier_cards(amp).items():
        ext_header[keyword] = value
    hdu = fits.ImageHDU(data=data, header=ext_header)
    hdu.verify("exception")
    return hdu


def _padded(data: bytes) -> bytes:
    """``data`` padded to whole FITS blocks (zeros: header text already ends in blanks)."""
    return data + b"\0" * (-len(data) % _FITS_BLOCK)


def _layout(data_budget: int) -> tuple[int, tuple[int, int]]:
    """Choose the number of amplifier extensions and their (rows, columns) for a byte budget."""
    ext_header_bytes = _FITS_BLOCK
    n_ext = len(AMPLIFIERS)
    while n_ext > 1 and data_budget // n_ext < ext_header_bytes + 4 * _FITS_BLOCK:
        n_ext //= 2
    per_ext = max(_BYTES_PER_PIXEL, data_budget // n_ext - ext_header_bytes)
    pixels = max(1, per_ext // _BYTES_PER_PIXEL)
    columns = _AMP_WIDTH if pixels >= 2 * _AMP_WIDTH else pixels
    return n_ext, (max(1, pixels // columns), columns)


def _write_atomically(parts: Sequence[bytes], temporary: Path, final: Path) -> None:
    try:
        with temporary.open("wb") as stream:
            stream.writelines(parts)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise CameraError(f"cannot write {final}: {exc}") from exc
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


async def run_camera(
    inbox: Path,
    *,
    instrument: str = "ComCam",
    exposures: int | None = None,
    cadence_s: float = 10.0,
    size_bytes: int = 2_000_000,
    dayobs: str | None = None,
    start_seqnum: int = 1,
    stop: asyncio.Event | None = None,
    on_exposure: Callable[[list[Path]], object] | None = None,
) -> int:
    """Write an exposure every ``cadence_s`` seconds until ``exposures`` are written or ``stop`` is set.

    Exposures start on a fixed cadence (a slow write delays only the next one). FITS writing runs in a
    worker thread. When ``dayobs`` is not given the current Rubin observing day is used, and the sequence
    number restarts at 1 when the day rolls over, as on the summit.

    Args:
        inbox: Directory the files appear in.
        instrument: ``"ComCam"``, ``"LATISS"`` or ``"LSSTCam"`` (aliases accepted).
        exposures: Number of exposures to write; None for no limit.
        cadence_s: Seconds between the starts of consecutive exposures.
        size_bytes: Approximate size of each detector file.
        dayobs: Observing day, ``YYYYMMDD``; today's by default.
        start_seqnum: Sequence number of the first exposure.
        stop: Set it to stop after the exposure being written.
        on_exposure: Called on the event loop with the paths of each exposure once it is written.

    Returns:
        The number of exposures written.
    """
    name = canonical_instrument(instrument)
    log = structlog.get_logger().bind(instrument=name, inbox=str(inbox))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    day = dayobs or rubin_dayobs()
    seqnum = start_seqnum
    written = 0
    log.info("camera started", dayobs=day, cadence_s=cadence_s, size_bytes=size_bytes)
    while (exposures is None or written < exposures) and not stop.is_set():
        if dayobs is None and (today := rubin_dayobs()) != day:
            day, seqnum = today, 1
        obsid = f"{CAMERA_CODES[name]}_O_{day}_{seqnum:06d}"
        paths = await asyncio.to_thread(write_exposure, inbox, name, dayobs=day, seqnum=seqnum, size_bytes=size_bytes)
        written += 1
        seqnum += 1
        log.info("exposure written", obsid=obsid, files=len(paths))
        if on_exposure is not None:
            on_exposure(paths)
        if exposures is not None and written >= exposures:
            break
        delay = max(0.0, started + written * cadence_s - loop.time())
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop a cancellation (see daemon/aio.py).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await stop.wait()
    log.info("camera stopped", exposures=written)
    return written


def _instrument_argument(value: str) -> str:
    try:
        return canonical_instrument(value)
    except UnknownInstrument as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not ComCam, LATISS or LSSTCam") from exc


def _dayobs_argument(value: str) -> str:
    if not _DAYOBS_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"dayobs must be YYYYMMDD, not {value!r}")
    return value


def add_camera_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``skyrelay simulate camera`` to ``parser``.

    Args:
        parser: The sub-command's parser.
    """
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--inbox", type=Path, help="directory the camera writes into")
    where.add_argument("--workdir", type=Path, help="cluster directory; the summit inbox from cluster.json")
    parser.add_argument(
        "--instrument",
        type=_instrument_argument,
        default="ComCam",
        help="ComCam, LATISS or LSSTCam (default ComCam)",
    )
    parser.add_argument("--exposures", type=int, default=None, help="exposures to write (default: forever)")
    parser.add_argument("--cadence", type=float, default=10.0, help="seconds between exposures (default 10)")
    parser.add_argument("--size-mb", type=float, default=2.0, help="size of each detector file in MB (default 2)")
    parser.add_argument("--dayobs", type=_dayobs_argument, default=None, help="observing day YYYYMMDD (default today)")
    parser.add_argument("--start-seqnum", type=int, default=1, help="first sequence number (default 1)")


def _inbox_from_workdir(workdir: Path) -> Path:
    path = workdir / "cluster.json"
    try:
        cluster = json.loads(path.read_text(encoding="utf-8"))
        inbox = Path(cluster["sites"]["summit"]["inbox"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CameraError(f"cannot read the summit inbox from {path}: {exc!r}") from exc
    return inbox if inbox.is_absolute() else workdir / inbox


def camera_main(args: argparse.Namespace) -> int:
    """Run ``skyrelay simulate camera`` until done or interrupted (SIGINT/SIGTERM stop it cleanly).

    Args:
        args: Parsed options from :func:`add_camera_arguments`.

    Returns:
        Exit status: 0 on success, 2 when the inbox cannot be determined or a file cannot be written.
    """
    try:
        inbox = args.inbox if args.inbox is not None else _inbox_from_workdir(args.workdir)
    except CameraError as exc:
        print(f"skyrelay simulate camera: {exc}", file=sys.stderr)
        return 2

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        return await run_camera(
            inbox,
            instrument=args.instrument,
            exposures=args.exposures,
            cadence_s=args.cadence,
            size_bytes=int(args.size_mb * 1_000_000),
            dayobs=args.dayobs,
            start_seqnum=args.start_seqnum,
            stop=stop,
        )

    try:
        written = asyncio.run(main())
    except CameraError as exc:
        print(f"skyrelay simulate camera: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps({"inbox": str(inbox), "exposures": written, "instrument": args.instrument}))
    return 0
