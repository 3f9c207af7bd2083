"""The calibration simulator writes camera-like sequences that pass the archive's header rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from ops.simulate.calibs import (
    DetectorSpec,
    calib_frames,
    plan_calib_sequence,
    write_calib_day,
    write_calib_sequence,
)
from processors.calib import RawExposure
from processors.headers import verify_header

SPEC = DetectorSpec.small()


@pytest.mark.parametrize("kind", ["bias", "dark", "flat"])
def test_frames_pass_the_header_rules(tmp_path: Path, kind: str) -> None:
    """Every simulated bias, dark and flat primary header verifies with no findings."""
    truth = write_calib_sequence(
        tmp_path,
        instrument="LSSTCam",
        detector="R01_S01",
        kind=kind,
        n=3,
        dayobs="20250415",
        seq_start=7,
        seed=1,
        spec=SPEC,  # type: ignore[arg-type]
    )
    for path in truth.paths:
        header = fits.getheader(path)
        assert verify_header(header) == []
        assert header["IMGTYPE"] == kind.upper()


def test_a_sequence_is_one_group_with_indices_and_an_interruption(tmp_path: Path) -> None:
    """Frames share GROUPID and count CURINDEX from 1; interrupted at 4, 3 of 6 are written and MAXINDEX says 6."""
    truth = write_calib_sequence(
        tmp_path,
        instrument="ComCam",
        detector="R22_S11",
        kind="flat",
        n=6,
        dayobs="20241108",
        seq_start=100,
        seed=2,
        spec=SPEC,
        interrupt_at=4,
        lamp_change_at=2,
        lamp_factor=0.7,
    )
    headers = [fits.getheader(p) for p in truth.paths]
    assert len(headers) == 3 and sorted(p.name for p in tmp_path.glob("*.fits")) == [Path(p).name for p in truth.paths]
    assert {h["GROUPID"] for h in headers} == {truth.groupid}
    assert [h["CURINDEX"] for h in headers] == [1, 2, 3] and {h["MAXINDEX"] for h in headers} == {6}
    assert [h["SEQNUM"] for h in headers] == [100, 101, 102]
    assert [h["OBSID"] for h in headers] == [f"CC_O_20241108_{s:06d}" for s in (100, 101, 102)]
    assert not list(tmp_path.glob("*.part"))
    document = json.loads((tmp_path / "CC_O_20241108_000100_R22_S11.truth.json").read_text())
    assert document["cut_frames"] == [4, 5, 6] and document["changed_frames"] == [2, 3, 4, 5, 6]
    assert set(document["amps"]) == set(SPEC.amp_names())
    assert document["detector"]["flat_seed"] == truth.detector.flat_seed


def test_amplifiers_have_the_camera_layout(tmp_path: Path) -> None:
    """Extensions are int32 amplifiers with DATASEC, BIASSEC, DETSEC covering DETSIZE exactly once."""
    plan = plan_calib_sequence(
        instrument="ComCam", detector="R22_S11", kind="bias", n=1, dayobs="20241108", seq_start=1, seed=3, spec=SPEC
    )
    ((_, hdul),) = list(calib_frames(plan))
    assert [hdu.header["EXTNAME"] for hdu in hdul[1:]] == list(SPEC.amp_names())
    assert all(hdu.header["BITPIX"] == 32 and hdu.data.dtype.kind == "i" for hdu in hdul[1:])
    with RawExposure(hdul) as exposure:
        cover = np.zeros(exposure.detsize_px, dtype=int)
        for amp in exposure.amps:
            cover[amp.det_rows, amp.det_columns] += 1
    assert np.all(cover == 1)


def test_same_seed_same_pixels_and_compression_is_lossless() -> None:
    """A plan generates the same pixels every time, and Rice compression keeps them exactly."""
    plan = plan_calib_sequence(
        instrument="ComCam", detector="R22_S11", kind="dark", n=1, dayobs="20241108", seq_start=1, seed=4, spec=SPEC
    )
    ((_, plain),) = list(calib_frames(plan))
    ((_, again),) = list(calib_frames(plan))
    ((_, packed),) = list(calib_frames(plan, compress=True))
    for a, b, c in zip(plain[1:], again[1:], packed[1:], strict=True):
        assert isinstance(c, fits.CompImageHDU)
        assert np.array_equal(a.data, b.data) and np.array_equal(a.data, c.data)


def test_a_calibration_day_numbers_its_sequences_on(tmp_path: Path) -> None:
    """Biases, darks then flats follow each other in SEQNUM; the flats get the lamp change and interruption."""
    truths = write_calib_day(
        tmp_path,
        instrument="ComCam",
        detector="R22_S11",
        dayobs="20241108",
        bias=2,
        dark=2,
        flat=4,
        seq_start=10,
        seed=5,
        lamp_change_at=3,
        lamp_factor=0.7,
        interrupt_at=4,
        spec=SPEC,
    )
    assert [t.kind for t in truths] == ["bias", "dark", "flat"]
    assert [[f.seqnum for f in t.written_frames] for t in truths] == [[10, 11], [12, 13], [14, 15, 16]]
    assert truths[2].changed_frames == (3, 4) and truths[2].cut_frames == (4,)
    assert len({t.groupid for t in truths}) == 3
