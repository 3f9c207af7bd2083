"""``skyrelay simulate night``: a night of science quads written into the summit inbox as camera raws.

Each field is observed four times (GROUPID per field quad, CURINDEX 1-4, MAXINDEX 4, IMGTYPE OBJECT);
each visit of one detector is simulated on the sky (:func:`ops.simulate.sky.simulate_night`), seen
through the same detector truth as a calibration day (its pixel response, bias structure, gains, read
noise and dark current: :func:`ops.simulate.calibs.raw_from_electrons`) and written as a raw with a
real primary header and a TAN WCS on the assembled grid. One transient per field is injected at a
chosen difference SNR in visits 2 and 4; its truth goes to ``<OBSID>.truth.json`` beside the frames
(the inbox ignores ``*.truth.json``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.time import Time
from astropy.wcs import WCS

from ops.camera import build_primary_header
from ops.simulate.calibs import DetectorSpec, detector_truth, raw_from_electrons, true_flat
from ops.simulate.sky import (
    FieldSpec,
    Injection,
    VisitSpec,
    flux_for_difference_snr,
    make_wcs,
    simulate_night,
)

SCIENCE_SMALL = DetectorSpec(
    amps_x=4, amps_y=2, amp_width_px=64, amp_height_px=128, overscan_px=16, parallel_overscan_px=4
)
"""The small science detector (256 x 256 px: 2 x 4 amplifiers of 64 x 128): the smallest on which a star
field gives enough isolated stars for a PSF and a kernel. A calibration day for it must use this spec."""

EXPTIME_S = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WrittenVisit:
    """One science raw written into the inbox."""

    obsid: str
    field: str
    group_id: str
    curindex: int
    path: Path
    transient_x_px: float
    transient_y_px: float


def field_specs(n: int, *, small: bool) -> list[FieldSpec]:
    """``n`` fields; small detectors get a denser, brighter star field (enough PSF stars in 256 px)."""
    extra = {"stars_per_arcmin2": 150.0, "mag_bright": 18.0, "mag_faint": 21.5} if small else {}
    return [
        FieldSpec(name=f"F{i + 1:02d}", ra_deg=150.0 + 0.5 * i, dec_deg=2.0 - 0.3 * i, seed=i, **extra)  # type: ignore[arg-type]
        for i in range(n)
    ]


def _transient(fs: FieldSpec, shape: tuple[int, int], snr: float, seed: int) -> Injection:
    """A new source off the detector centre, present in visits 2 and 4 at difference SNR ``snr``."""
    rng = np.random.default_rng([seed, fs.seed, 7])
    ny, nx = shape
    x = nx * float(rng.uniform(0.35, 0.65))
    y = ny * float(rng.uniform(0.35, 0.65))
    ra, dec = make_wcs(fs, VisitSpec(index=1), shape).all_pix2world([x], [y], 0)
    typical = VisitSpec(index=2, seeing_fwhm_arcsec=0.88)
    flux = flux_for_difference_snr(snr, typical, VisitSpec(index=1, seeing_fwhm_arcsec=0.88))
    return Injection(
        id=f"{fs.name}-transient", ra_deg=float(ra[0]), dec_deg=float(dec[0]), flux_e_by_visit={2: flux, 4: flux}
    )


def write_night(
    inbox: Path,
    *,
    instrument: str,
    detector: str,
    dayobs: str,
    fields: int,
    lose: Sequence[str] = (),
    bad_seeing: Sequence[str] = (),
    small: bool = False,
    seq_start: int = 100,
    transient_snr: float = 20.0,
    seed: int = 0,
    field_list: Sequence[FieldSpec] | None = None,
) -> list[WrittenVisit]:
    """Write one quad per field into ``inbox`` (temporary name, fsync, rename), with truth files.

    Args:
        inbox: the summit inbox (created when missing).
        instrument: instrument name.
        detector: ``RAFTBAY_CCDSLOT``.
        dayobs: DAYOBS of the night.
        fields: number of fields.
        lose: visits never written (``v3`` or ``F01:v3``); their truth says ``lost``.
        bad_seeing: visits simulated in bad seeing (2.4").
        small: the small science detector (:data:`SCIENCE_SMALL`).
        seq_start: sequence number of the first visit (after the day's calibrations).
        transient_snr: difference SNR of each field's transient.
        seed: noise seed.
        field_list: the fields to observe instead of :func:`field_specs` (``fields`` is then ignored).

    Returns:
        The visits written, in observing order.
    """
    spec = SCIENCE_SMALL if small else DetectorSpec()
    shape = spec.detector_shape_px
    truth = detector_truth(spec, instrument, detector)
    response = true_flat(spec, truth.flat_seed).astype(np.float64)
    specs = list(field_list) if field_list is not None else field_specs(fields, small=small)
    probe = build_primary_header(instrument, dayobs=dayobs, seqnum=seq_start, detector=detector)
    camera_code = str(probe["OBSID"]).split("_")[0]
    injections = {fs.name: [_transient(fs, shape, transient_snr, seed)] for fs in specs}
    inbox.mkdir(parents=True, exist_ok=True)
    mjd_start = float(Time(f"{dayobs[:4]}-{dayobs[4:6]}-{dayobs[6:]}T23:00:00", scale="tai").mjd)
    written: list[WrittenVisit] = []
    for visit in simulate_night(
        specs,
        shape=shape,
        dayobs=dayobs,
        camera_code=camera_code,
        first_seqnum=seq_start,
        mjd_start_tai=mjd_start,
        visit_gap_min=2.0,
        lose=lose,
        bad_seeing=bad_seeing,
        injections=injections,
        truth_dir=inbox,
        seed=seed,
    ):
        obsid = visit.visit.obsid
        seqnum = int(obsid.split("_")[-1])
        start = Time(visit.visit.mjd_tai - EXPTIME_S / 2 / 86400, format="mjd", scale="tai").to_datetime()
        header = build_primary_header(
            instrument,
            dayobs=dayobs,
            seqnum=seqnum,
            detector=detector,
            imgtype="OBJECT",
            filter_=visit.field_spec.band,
            exptime=EXPTIME_S,
            date_obs=start,
            groupid=visit.group_id,
            curindex=visit.visit.index,
            maxindex=4,
            overrides={"OBJECT": visit.field_spec.name},
        )
        header.update(WCS(visit.image.wcs_header).to_header())
        header["MJD-MID"] = (visit.visit.mjd_tai, "exposure midpoint, MJD TAI")
        rng = np.random.default_rng([seed, seqnum, 3])
        hdul = raw_from_electrons(
            visit.image.image_e.astype(np.float64) * response,
            spec,
            truth,
            rng,
            darktime_s=EXPTIME_S,
            primary_header=header,
            shot_noise=False,  # the sky simulator's image already has its Poisson noise
        )
        final = inbox / f"{obsid}_{detector}.fits"
        temporary = final.with_name(final.name + ".part")
        with temporary.open("wb") as stream:
            hdul.writeto(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, final)
        objects = visit.image.truth["objects"]
        assert isinstance(objects, list)
        written.append(
            WrittenVisit(
                obsid=obsid,
                field=visit.field_spec.name,
                group_id=visit.group_id,
                curindex=visit.visit.index,
                path=final,
                transient_x_px=float(objects[0]["x_px"]),
                transient_y_px=float(objects[0]["y_px"]),
            )
        )
    return written
