"""Sections, amplifier geometry and the ISR of one exposure (overscan, assembly with flips, masters)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from ops.simulate.calibs import (
    DetectorSpec,
    bias_structure,
    detector_truth,
    raw_from_electrons,
    true_flat,
    write_calib_sequence,
)
from processors.calib import (
    MASK_HOT,
    MASK_SAT,
    CalibParams,
    LayoutError,
    MasterInput,
    MasterSpec,
    amp_geometry,
    isr_exposure,
    make_master,
    parse_section,
)

SPEC = DetectorSpec(amps_x=4, amps_y=2, amp_width_px=40, amp_height_px=96, overscan_px=32, parallel_overscan_px=4)


def test_sections_are_1_based_inclusive_and_may_run_backwards() -> None:
    """[509:1,4000:2001] is 509 columns and 2000 rows, flipped in x and y, at 0-based [2000:4000, 0:509]."""
    section = parse_section("[509:1,4000:2001]")
    assert (section.width_px, section.height_px) == (509, 2000)
    assert section.flip_x and section.flip_y
    assert (section.columns, section.rows) == (slice(0, 509), slice(2000, 4000))
    assert section.to_card() == "[509:1,4000:2001]"
    for bad in ("[0:10,1:5]", "1:10,1:5", "[a:1,1:2]", None):
        with pytest.raises(LayoutError):
            parse_section(bad)


def test_amp_geometry_reads_the_camera_cards() -> None:
    """An ITL amplifier's cards give DATASEC, BIASSEC (serial overscan) and DETSEC within DETSIZE."""
    header = fits.Header(
        {
            "EXTNAME": "Segment07",
            "DATASEC": "[4:512,1:2000]",
            "DETSEC": "[3564:4072,4000:2001]",
            "DETSIZE": "[1:4072,1:4000]",
        }
    )
    geometry = amp_geometry(header, (2048, 576))
    assert geometry.biassec.columns == slice(512, 576)
    assert geometry.detsize_px == (4000, 4072)
    assert geometry.det_rows == slice(2000, 4000) and geometry.det_columns == slice(3563, 4072)
    header["DETSEC"] = "[1:500,1:2000]"
    with pytest.raises(LayoutError, match="differ in size"):
        amp_geometry(header, (2048, 576))


def test_isr_assembles_amplifiers_in_place_and_in_orientation() -> None:
    """A ramp in electrons comes back from raw amplifiers (flipped ones too) as the same ramp / gain + structure."""
    truth = detector_truth(SPEC, "ComCam", "R22_S00", dark_current_e_per_s=0.0)
    rows, columns = SPEC.detector_shape_px
    y, x = np.mgrid[0:rows, 0:columns]
    image_e = 20_000.0 + 50.0 * x + 10.0 * y
    raw = raw_from_electrons(image_e, SPEC, truth, np.random.default_rng(1), shot_noise=False)
    result = isr_exposure(raw)
    structure = bias_structure(SPEC, truth.structure_seed)
    for amp in truth.amps:
        region_rows, region_columns, _, _ = SPEC.amp_region(amp.name)
        recovered = result.image[region_rows, region_columns] - structure[region_rows, region_columns]
        expected = image_e[region_rows, region_columns] / amp.gain_e_per_adu
        # Read noise and the per-row overscan estimate are the only differences: well under 5 sigma.
        assert np.abs(recovered - expected).max() < 6 * amp.read_noise_adu, amp.name
        stats = next(s for s in result.stats if s.name == amp.name)
        assert stats.read_noise_adu is not None and abs(stats.read_noise_adu / amp.read_noise_adu - 1) < 0.1


def test_isr_with_masters_flattens_and_propagates_variance_and_saturation(tmp_path: Path) -> None:
    """With masters a uniform exposure comes out flat, hot pixels removed, variance right, saturation masked."""
    common = {"instrument": "ComCam", "detector": "R22_S00", "dayobs": "20241108", "spec": SPEC}
    params = CalibParams()
    bias_t = write_calib_sequence(tmp_path / "b", kind="bias", n=8, seq_start=1, seed=1, **common)
    flat_t = write_calib_sequence(tmp_path / "f", kind="flat", n=8, seq_start=20, seed=2, **common)
    dark_t = write_calib_sequence(tmp_path / "d", kind="dark", n=5, seq_start=40, seed=3, exptime_s=60.0, **common)

    def build(kind: str, paths: tuple[str, ...], **extra: str) -> Path:
        out = tmp_path / f"{kind}.fits"
        inputs = tuple(MasterInput(name=Path(p).name, path=p) for p in paths)
        make_master(MasterSpec(kind=kind, inputs=inputs, output_path=str(out), params=params, **extra))  # type: ignore[arg-type]
        return out

    bias = build("bias", bias_t.paths)
    dark = build("dark", dark_t.paths, bias_path=str(bias))
    flat = build("flat", flat_t.paths, bias_path=str(bias), dark_path=str(dark))
    truth = bias_t.detector
    image_e = 5_000.0 * true_flat(SPEC, truth.flat_seed).astype(np.float64)
    image_e[10, 10] = 1e7  # saturates
    header = fits.Header({"EXPTIME": 30.0, "DARKTIME": 30.0})
    raw = raw_from_electrons(image_e, SPEC, truth, np.random.default_rng(9), darktime_s=30.0, primary_header=header)
    gains = tuple((a.name, a.gain_e_per_adu) for a in truth.amps)
    result = isr_exposure(raw, bias=bias, dark=dark, flat=flat, params=CalibParams(gains_e_per_adu=gains))
    assert result.mask[10, 10] & MASK_SAT
    # Hot pixels (600-6000 e in 30 s) are flagged and their dark current removed to within the noise.
    level = float(np.median(result.image[result.mask == 0]))
    for row, column, _ in truth.hot_pixels:
        assert result.mask[row, column] & MASK_HOT
        assert abs(float(result.image[row, column]) - level) < 5 * float(np.sqrt(result.variance[row, column]))
    good = result.mask == 0
    values = result.image[good]
    # Flat within the shot noise (1.4 % at 5000 e) where the raw varied by ~20 % (gains, vignetting).
    assert float(np.std(values) / np.mean(values)) < 0.02
    assert abs(float(np.mean(result.variance[good])) / float(np.var(values)) - 1) < 0.1
