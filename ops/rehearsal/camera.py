"""The rehearsal's camera: stage a day's exposures with their truth, then release them into the inbox in time.

Frames are simulated ahead into ``W/camera/<dayobs>/…`` (calibration sequences with
:func:`ops.simulate.calibs.write_calib_sequence`, quads with :func:`ops.simulate.night.write_night`, one
call per detector), checksummed there, and recorded in the truth. Releasing an exposure is what a camera's
close is: each file's mtime is set to now and it is renamed into the summit inbox (same file system), so
close → archive latency starts at the release.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3
from astropy.io import fits

from ops.rehearsal.plan import FIELDS, DayPlan, Plan
from ops.simulate.calibs import DetectorSpec, write_calib_sequence
from ops.simulate.night import SCIENCE_SMALL, field_specs, write_night
from processors.pairing import VisitState, pairs_to_make


def blake3_file(path: Path) -> str:
    """``blake3:<hex>`` of a file, as the wire and the catalog write it."""
    hasher = blake3.blake3()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    return f"blake3:{hasher.hexdigest()}"


@dataclass(slots=True)
class StagedExposure:
    """One exposure's files, ready to be released together."""

    obsid: str
    label: str
    paths: list[Path] = field(default_factory=list)


def _spec(plan: Plan) -> DetectorSpec:
    return SCIENCE_SMALL if plan.scale == "small" else DetectorSpec()


def _file_record(path: Path, **extra: Any) -> dict[str, Any]:
    return {"name": path.name, "size": path.stat().st_size, "checksum": blake3_file(path), **extra}


def stage_afternoon(plan: Plan, day: DayPlan, staging: Path, truth: dict[str, Any]) -> list[StagedExposure]:
    """Simulate the day's calibration sequences of every detector; record files and sequences in ``truth``."""
    exposures: dict[str, StagedExposure] = {}
    seqnum = 1
    for step_index, step in enumerate(day.calibs):
        for detector in plan.detectors:
            out = staging / day.dayobs / "calibs" / detector
            sequence = write_calib_sequence(
                out,
                instrument=plan.instrument,
                detector=detector,
                kind=step.kind,
                n=step.n,
                dayobs=day.dayobs,
                seq_start=seqnum,
                seed=plan.seed * 1000 + seqnum,
                lamp_change_at=step.lamp_change_at,
                lamp_factor=step.lamp_factor,
                interrupt_at=step.interrupt_at,
                spec=_spec(plan),
            )
            written = [f for f in sequence.frames if f.written]
            changed = [f.filename for f in written if f.lamp_factor != 1.0]
            kept = [f.filename for f in written if f.lamp_factor == 1.0]
            if len(changed) > len(kept):  # the larger consistent group is built; the other is left out
                changed, kept = kept, changed
            truth["sequences"].append(
                {
                    "dayobs": day.dayobs,
                    "day": day.number,
                    "step": step_index,
                    "kind": step.kind,
                    "detector": detector,
                    "groupid": sequence.groupid,
                    "planned": step.n,
                    "names": [f.filename for f in written],
                    "left_out": sorted(changed),
                    "frames_used": len(kept),
                    "interrupted": step.interrupt_at is not None,
                    "lamp_change_at": step.lamp_change_at,
                    "note": step.note,
                }
            )
            for frame in written:
                path = out / frame.filename
                truth["files"][path.name] = _file_record(
                    path,
                    obsid=frame.obsid,
                    detector=detector,
                    dayobs=day.dayobs,
                    seqnum=frame.seqnum,
                    kind=step.kind,
                    expect="archived",
                )
                exposure = exposures.setdefault(
                    frame.obsid, StagedExposure(obsid=frame.obsid, label=f"{step.kind} {frame.index}/{step.n}")
                )
                exposure.paths.append(path)
        seqnum += step.written
    for obsid in exposures:
        truth["exposures"][obsid] = {
            "dayobs": day.dayobs,
            "kind": "calib",
            "label": exposures[obsid].label,
            "expected": sorted(plan.detectors),
            "written": sorted(truth["files"][p.name]["detector"] for p in exposures[obsid].paths),
        }
    return sorted(exposures.values(), key=lambda e: e.obsid)


def _tamper_imgtype(path: Path) -> None:
    """Give a raw a header beyond repair (IMGTYPE outside the vocabulary), as a camera fault would."""
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["IMGTYPE"] = "BOGUS"
    os.utime(path)


def stage_night(plan: Plan, day: DayPlan, staging: Path, truth: dict[str, Any]) -> list[StagedExposure]:
    """Simulate the night's quads on every detector; record files, visits, injections and expected pairs."""
    night = day.night
    exposures: dict[str, StagedExposure] = {}
    by_group: dict[tuple[str, str], dict[int, VisitState]] = {}
    known = {f.name: f for f in field_specs(len(FIELDS) + 2, small=plan.scale == "small")}
    field_list = [known[name] for name in FIELDS[: night.fields]]
    for number, detector in enumerate(plan.detectors):
        out = staging / day.dayobs / "night" / detector
        visits = write_night(
            out,
            instrument=plan.instrument,
            detector=detector,
            dayobs=day.dayobs,
            fields=night.fields,
            lose=night.lose,
            bad_seeing=night.bad_seeing,
            small=plan.scale == "small",
            seq_start=day.science_seq_start,
            transient_snr=plan.snr_of(detector),
            seed=plan.seed * 1000 + day.number * 31 + number,
            field_list=field_list,
        )
        for visit in visits:
            path = visit.path
            ref = (visit.field, visit.curindex, detector)
            missing = night.missing_detector is not None and ref == (
                night.missing_detector.field,
                night.missing_detector.visit,
                night.missing_detector.detector,
            )
            corrected = night.correction is not None and ref == (
                night.correction.field,
                night.correction.visit,
                night.correction.detector,
            )
            sky = json.loads((out / f"{visit.obsid}.truth.json").read_text())
            bad = f"{visit.field}:v{visit.curindex}" in night.bad_seeing
            truth["visits"][f"{visit.obsid}/{detector}"] = {
                "obsid": visit.obsid,
                "detector": detector,
                "dayobs": day.dayobs,
                "field": visit.field,
                "group_id": visit.group_id,
                "curindex": visit.curindex,
                "bad_seeing": bad,
                "written": not missing,
                "seeing_arcsec": sky["visit"]["seeing_fwhm_arcsec"],
                "objects": sky["objects"],
                "snr": plan.snr_of(detector),
            }
            states = by_group.setdefault((visit.group_id, detector), {})
            if missing:
                path.unlink()
                truth["events"].append({"what": "detector_never_written", "name": path.name, "dayobs": day.dayobs})
            else:
                states[visit.curindex] = VisitState.BAD if bad else VisitState.OK
                if corrected:
                    _tamper_imgtype(path)
                truth["files"][path.name] = _file_record(
                    path,
                    obsid=visit.obsid,
                    detector=detector,
                    dayobs=day.dayobs,
                    seqnum=int(visit.obsid.rsplit("_", 1)[1]),
                    kind="object",
                    field=visit.field,
                    curindex=visit.curindex,
                    expect="released" if corrected else "archived",
                )
                if corrected:
                    truth["corrections"].append(
                        {"name": path.name, "obsid": visit.obsid, "instrument": plan.instrument, "dayobs": day.dayobs}
                    )
            exposure = exposures.setdefault(
                visit.obsid, StagedExposure(obsid=visit.obsid, label=f"{visit.field} v{visit.curindex}")
            )
            if not missing:
                exposure.paths.append(path)
        lost_visits = [
            json.loads(p.read_text()) for p in sorted(out.glob("*.truth.json")) if json.loads(p.read_text())["lost"]
        ]
        for record in lost_visits:
            truth["lost"].setdefault(
                record["visit"]["obsid"],
                {"dayobs": day.dayobs, "group_id": record["group_id"], "curindex": record["visit"]["index"]},
            )
            by_group.setdefault((record["group_id"], detector), {})
    for (group_id, detector), states in by_group.items():
        pairs = pairs_to_make(states, chunk_ended=True)
        truth["pairs"].append(
            {
                "dayobs": day.dayobs,
                "group_id": group_id,
                "detector": detector,
                "pairs": sorted([p.science, p.reference, p.reason] for p in pairs),
            }
        )
    for obsid, exposure in exposures.items():
        truth["exposures"][obsid] = {
            "dayobs": day.dayobs,
            "kind": "science",
            "label": exposure.label,
            "expected": sorted(plan.detectors),
            "written": sorted(truth["files"][p.name]["detector"] for p in exposure.paths),
        }
    return sorted(exposures.values(), key=lambda e: e.obsid)


def release(exposure: StagedExposure, inbox: Path) -> list[str]:
    """Close an exposure's files now (mtime) and rename them into the summit inbox; their names."""
    names = []
    for path in exposure.paths:
        os.utime(path)
        os.replace(path, inbox / path.name)
        names.append(path.name)
    return names


def new_truth(plan: Plan) -> dict[str, Any]:
    """An empty truth document for ``plan``."""
    return {
        "plan": {
            "days": len(plan.days),
            "scale": plan.scale,
            "seed": plan.seed,
            "instrument": plan.instrument,
            "detectors": list(plan.detectors),
            "dayobs": [d.dayobs for d in plan.days],
            "titles": {d.dayobs: d.title for d in plan.days},
            "chunk_end_s": plan.chunk_end_s,
            "quiet_s": plan.quiet_s,
        },
        "files": {},
        "exposures": {},
        "sequences": [],
        "visits": {},
        "lost": {},
        "pairs": [],
        "corrections": [],
        "events": [],
    }
