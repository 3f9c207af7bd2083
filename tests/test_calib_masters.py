"""Masters from simulated calibration sequences recover the simulator's truth."""

from __future__ import annotations

import pickle
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from ops.simulate.calibs import DetectorSpec, SequenceTruth, bias_structure, write_calib_sequence
from processors.calib import (
    MASK_HOT,
    CalibError,
    CalibParams,
    MasterInput,
    MasterOutcome,
    MasterSpec,
    make_master,
)

# 2 x 4 amplifiers of 48 x 256 imaging pixels with 48 overscan columns: 98304 pixels, 11 520 overscan
# pixels per amplifier and frame, so the overscan level of 10 frames is known to ~0.03 ADU (1 sigma).
SPEC = DetectorSpec(amps_x=4, amps_y=2, amp_width_px=48, amp_height_px=256, overscan_px=48, parallel_overscan_px=4)
COMMON = {"instrument": "ComCam", "detector": "R22_S11", "dayobs": "20241108", "spec": SPEC}


def _inputs(truth: SequenceTruth) -> tuple[MasterInput, ...]:
    return tuple(MasterInput(name=Path(p).name, path=p, checksum=f"blake3:{i:04d}") for i, p in enumerate(truth.paths))


def _image(path: str | Path, hdu: str = "IMAGE") -> np.ndarray:
    with fits.open(path) as hdul:
        return np.array(hdul[hdu].data)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("calib")


@pytest.fixture(scope="module")
def bias(work: Path) -> tuple[SequenceTruth, MasterOutcome, Path]:
    truth = write_calib_sequence(work / "bias", kind="bias", n=10, seq_start=1, seed=11, **COMMON)
    out = work / "master_bias.fits"
    outcome = make_master(MasterSpec(kind="bias", inputs=_inputs(truth), output_path=str(out)))
    return truth, outcome, out


@pytest.fixture(scope="module")
def dark(work: Path, bias: tuple[SequenceTruth, MasterOutcome, Path]) -> tuple[SequenceTruth, MasterOutcome, Path]:
    truth = write_calib_sequence(
        work / "dark", kind="dark", n=5, seq_start=20, seed=12, exptime_s=60.0, dark_current_e_per_s=1.0, **COMMON
    )
    out = work / "master_dark.fits"
    spec = MasterSpec(kind="dark", inputs=_inputs(truth), output_path=str(out), bias_path=str(bias[2]))
    return truth, make_master(spec), out


@pytest.fixture(scope="module")
def flat_sequence(work: Path) -> SequenceTruth:
    # 30 000 e per pixel: shot noise 0.58 % per frame, 0.26 % in a master of the first 5 frames.
    return write_calib_sequence(
        work / "flat", kind="flat", n=10, seq_start=40, seed=13, lamp_change_at=6, lamp_factor=0.7, **COMMON
    )


@pytest.fixture(scope="module")
def flat(
    work: Path,
    flat_sequence: SequenceTruth,
    bias: tuple[SequenceTruth, MasterOutcome, Path],
    dark: tuple[SequenceTruth, MasterOutcome, Path],
) -> tuple[MasterSpec, MasterOutcome]:
    spec = MasterSpec(
        kind="flat",
        inputs=_inputs(flat_sequence),
        output_path=str(work / "master_flat.fits"),
        bias_path=str(bias[2]),
        dark_path=str(dark[2]),
        provenance={"step": "master_flat", "code_version": "test", "groupid": flat_sequence.groupid},
    )
    return spec, make_master(spec)


def test_overscan_level_matches_the_true_bias_level(bias: tuple[SequenceTruth, MasterOutcome, Path]) -> None:
    """The level the overscan subtraction removes is each amplifier's true bias (level + frame offsets) to 0.1 ADU."""
    truth, outcome, _ = bias
    for index, amp in enumerate(truth.detector.amps):
        expected = amp.bias_level_adu + np.mean([f.bias_offset_adu[index] for f in truth.frames])
        measured = outcome.stats.amp(amp.name).overscan_level_adu
        assert measured is not None
        assert abs(measured - expected) < 0.1, amp.name


def test_master_bias_is_the_bias_structure(bias: tuple[SequenceTruth, MasterOutcome, Path]) -> None:
    """After overscan subtraction the master bias per amplifier has the structure's mean within 0.1 ADU."""
    truth, outcome, path = bias
    structure = bias_structure(SPEC, truth.detector.structure_seed)
    master = _image(path)
    assert master.dtype == np.dtype(">f4") and master.shape == SPEC.detector_shape_px
    for amp in truth.detector.amps:
        rows, columns, _, _ = SPEC.amp_region(amp.name)
        assert abs(outcome.stats.amp(amp.name).mean - float(structure[rows, columns].mean())) < 0.1, amp.name
    # Pixel by pixel, what is left is noise: read noise / sqrt(10) plus the per-row overscan noise.
    worst = max(a.read_noise_adu for a in truth.detector.amps)
    assert float(np.std(master - structure)) < 1.5 * worst / np.sqrt(10)


def test_read_noise_is_recovered_within_5_percent(bias: tuple[SequenceTruth, MasterOutcome, Path]) -> None:
    """Each amplifier's measured read noise is within 5 % of the simulated one."""
    truth, outcome, _ = bias
    for amp in truth.detector.amps:
        measured = outcome.stats.amp(amp.name).read_noise_adu
        assert measured is not None
        assert abs(measured / amp.read_noise_adu - 1) < 0.05, (amp.name, measured, amp.read_noise_adu)


def test_dark_current_is_recovered_within_5_percent(dark: tuple[SequenceTruth, MasterOutcome, Path]) -> None:
    """Each amplifier's master dark level is its true dark current (ADU/s) within 5 %."""
    truth, outcome, path = dark
    for amp in truth.detector.amps:
        measured = outcome.stats.amp(amp.name).dark_current_adu_per_s
        assert measured is not None
        assert abs(measured / amp.dark_current_adu_per_s - 1) < 0.05, amp.name
    mask = _image(path, "MASK")
    for row, column, _ in truth.detector.hot_pixels:
        assert mask[row, column] & MASK_HOT, (row, column)


def test_cosmic_rays_do_not_survive_in_the_master_dark(dark: tuple[SequenceTruth, MasterOutcome, Path]) -> None:
    """At every pixel a cosmic ray hit, the master dark is the true dark current (CRs add >= 3.7 ADU/s if kept)."""
    truth, _, path = dark
    master = _image(path)
    hot = {(r, c) for r, c, _ in truth.detector.hot_pixels}
    hits = {hit for frame in truth.frames for hit in frame.cosmic_rays} - hot
    assert len(hits) >= 10
    for row, column in hits:
        name = next(a.name for a in truth.detector.amps if _in_amp(a.name, row, column))
        assert abs(master[row, column] - truth.detector.amp(name).dark_current_adu_per_s) < 0.5, (row, column)


def _in_amp(name: str, row: int, column: int) -> bool:
    rows, columns, _, _ = SPEC.amp_region(name)
    return rows.start <= row < rows.stop and columns.start <= column < columns.stop


def test_flat_pattern_is_recovered_below_half_a_percent(
    flat: tuple[MasterSpec, MasterOutcome], flat_sequence: SequenceTruth
) -> None:
    """The master flat (5 frames of 30 000 e) matches the true response x vignetting / gain to < 0.5 % rms."""
    spec, outcome = flat
    master = _image(spec.output_path)
    ratio = master / flat_sequence.true_flat_adu()
    error = float(np.std(ratio / ratio.mean() - 1))
    assert error < 0.005
    hits = {hit for frame in flat_sequence.frames[:5] for hit in frame.cosmic_rays}
    worst_at_hits = max(abs(float(ratio[r, c] / ratio.mean()) - 1) for r, c in hits)
    assert worst_at_hits < 5 * error  # the largest hits would add several % if they were kept
    assert outcome.stats.flat_scatter is not None and outcome.stats.flat_scatter < 0.05


def test_a_lamp_drop_leaves_the_dimmed_frames_out(
    flat: tuple[MasterSpec, MasterOutcome], flat_sequence: SequenceTruth, work: Path
) -> None:
    """Lamp at 0.7x from frame 6 of 10: frames 6-10 are left out with the reason, and the master equals frames 1-5's."""
    spec, outcome = flat
    names = [Path(p).name for p in flat_sequence.paths]
    assert outcome.frames_used == tuple(names[:5])
    assert [name for name, _ in outcome.left_out] == names[5:]
    assert all("illumination level 0.70x the main group" in reason for _, reason in outcome.left_out)
    alone = replace(spec, inputs=spec.inputs[:5], output_path=str(work / "flat_first5.fits"))
    make_master(alone)
    for hdu in ("IMAGE", "VARIANCE", "MASK"):
        assert _image(spec.output_path, hdu).tobytes() == _image(alone.output_path, hdu).tobytes(), hdu
    with fits.open(spec.output_path) as hdul:
        inputs = hdul["INPUTS"].data
        assert list(inputs["used"]) == [True] * 5 + [False] * 5
        assert hdul[0].header["GROUPID"] == flat_sequence.groupid
        assert hdul[0].header["code_version"] == "test" and hdul[0].header["CALIBTYP"] == "FLAT"


def test_an_interrupted_sequence_is_built_and_the_shortfall_reported(work: Path) -> None:
    """A bias sequence cut after 6 of 10 frames gives a master of 6 and a warning naming the missing frames."""
    truth = write_calib_sequence(work / "cut", kind="bias", n=10, seq_start=60, seed=14, interrupt_at=7, **COMMON)
    assert len(truth.paths) == 6 and truth.cut_frames == (7, 8, 9, 10)
    outcome = make_master(MasterSpec(kind="bias", inputs=_inputs(truth), output_path=str(work / "cut.fits")))
    assert outcome.stats.frames_used == 6
    assert any("6 of 10 frames" in w and "7, 8, 9, 10" in w for w in outcome.warnings)


def test_too_few_frames_are_refused(work: Path) -> None:
    """A flat sequence with fewer usable frames than min_frames is refused with a clear error."""
    truth = write_calib_sequence(work / "few", kind="flat", n=10, seq_start=80, seed=15, interrupt_at=3, **COMMON)
    spec = MasterSpec(
        kind="flat", inputs=_inputs(truth), output_path=str(work / "few.fits"), params=CalibParams(min_frames=3)
    )
    with pytest.raises(CalibError, match=r"refused: 2 usable frame\(s\) of 2, at least 3 needed"):
        make_master(spec)
    assert not (work / "few.fits").exists()


def test_products_are_byte_identical_and_independent_of_strip_size(
    bias: tuple[SequenceTruth, MasterOutcome, Path], work: Path
) -> None:
    """Building the same master twice, and with 37-row strips, gives byte-identical files."""
    truth, _, first = bias
    again = work / "bias_again.fits"
    make_master(MasterSpec(kind="bias", inputs=_inputs(truth), output_path=str(again)))
    strips = work / "bias_strips.fits"
    make_master(
        MasterSpec(kind="bias", inputs=_inputs(truth), output_path=str(strips), params=CalibParams(strip_rows=37))
    )
    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() == strips.read_bytes()


def test_rice_compressed_input_gives_the_same_master(
    bias: tuple[SequenceTruth, MasterOutcome, Path], work: Path
) -> None:
    """The same sequence written Rice tile-compressed gives an identical master."""
    truth = write_calib_sequence(work / "rice", kind="bias", n=10, seq_start=1, seed=11, compress=True, **COMMON)
    with fits.open(truth.paths[0]) as hdul:
        assert isinstance(hdul[1], fits.CompImageHDU)
    out = work / "bias_rice.fits"
    make_master(MasterSpec(kind="bias", inputs=_inputs(truth), output_path=str(out)))
    assert _image(out).tobytes() == _image(bias[2]).tobytes()


def test_the_job_runs_in_a_process_pool(bias: tuple[SequenceTruth, MasterOutcome, Path], work: Path) -> None:
    """MasterSpec pickles and make_master runs in another process, writing the same bytes."""
    truth, outcome, first = bias
    spec = MasterSpec(kind="bias", inputs=_inputs(truth), output_path=str(work / "bias_pool.fits"))
    assert pickle.loads(pickle.dumps(spec)) == spec
    with ProcessPoolExecutor(max_workers=1) as pool:
        remote = pool.submit(make_master, spec).result(timeout=120)
    assert remote.stats == outcome.stats
    assert Path(spec.output_path).read_bytes() == first.read_bytes()
