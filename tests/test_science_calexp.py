"""A calexp from a simulated raw of known truth: ISR with the day's masters, in electrons by the raw's gains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from daemon.processing.science_tasks import CalexpTask, make_calexp
from ops.simulate.calibs import detector_truth, write_calib_sequence
from ops.simulate.night import SCIENCE_SMALL, write_night
from processors.calib import MasterInput, MasterSpec, make_master
from processors.diffim import CalibratedImage

INSTRUMENT, DETECTOR, DAYOBS = "ComCam", "R22_S11", "20250601"


def _master(directory: Path, kind: str, seq: int, bias: str | None = None) -> str:
    truth = write_calib_sequence(
        directory / kind, instrument=INSTRUMENT, detector=DETECTOR, kind=kind, n=3, dayobs=DAYOBS,  # type: ignore[arg-type]
        seq_start=seq, seed=seq, spec=SCIENCE_SMALL,
    )  # fmt: skip
    output = directory / f"{kind}.fits"
    inputs = tuple(MasterInput(name=Path(p).name, path=str(p)) for p in truth.paths)
    make_master(MasterSpec(kind=kind, inputs=inputs, output_path=str(output), bias_path=bias))  # type: ignore[arg-type]
    return str(output)


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str, dict[str, object]]:
    """A small detector's master bias and flat (the calibration simulator) and one night visit of it with its truth."""
    directory = tmp_path_factory.mktemp("calexp")
    bias = _master(directory, "bias", 1)
    flat = _master(directory, "flat", 10, bias)
    visit = write_night(directory / "night", instrument=INSTRUMENT, detector=DETECTOR, dayobs=DAYOBS, fields=1,
                        small=True, lose=["v2", "v3", "v4"])[0]  # fmt: skip
    truth = json.loads((visit.path.parent / f"{visit.obsid}.truth.json").read_text())
    return visit.path, bias, flat, truth


@pytest.mark.parametrize("with_flat", [True, False])
def test_the_calexp_is_in_electrons_by_the_raws_gains(
    day: tuple[Path, str, str, dict[str, object]], tmp_path: Path, with_flat: bool
) -> None:
    """Every amplifier's raw carries its GAIN: the calexp's sky is the truth's sky in electrons within 3 % (with
    or without the flat; amplifiers of gains 1.2-1.8 agree within 3 % of each other), its variance is the sky's
    Poisson variance plus the read noise (in electrons) within 10 % on every amplifier, and the outcome names
    the gains it used."""
    raw, bias, flat, truth = day
    output = tmp_path / "calexp.fits"
    outcome = make_calexp(
        CalexpTask(raw_path=str(raw), output_path=str(output), bias_path=bias, dark_path=None,
                   flat_path=flat if with_flat else None, detector=DETECTOR, max_fwhm_arcsec=2.0, provenance={})
    )  # fmt: skip
    visit = truth["visit"]
    assert isinstance(visit, dict)
    sky_e = float(visit["sky_e_per_px"])
    calexp = CalibratedImage.from_fits(str(output))
    with fits.open(raw) as hdul:
        assert set(outcome.gains_e_per_adu) == {h.header["EXTNAME"] for h in hdul[1:]}
    assert all(1.2 <= g <= 1.8 for g in outcome.gains_e_per_adu.values())
    # The sky per amplifier block (2 x 4 blocks of 128 x 64): stars are few, a median is the sky.
    blocks = [np.median(calexp.image_e[r : r + 128, c : c + 64]) for r in (0, 128) for c in range(0, 256, 64)]
    assert float(np.median(blocks)) == pytest.approx(sky_e, rel=0.03)
    assert (max(blocks) - min(blocks)) / sky_e < 0.03 + (0.0 if with_flat else 0.05)
    # The variance: the sky's Poisson noise plus the read noise (and a third of it again from a 3-frame master bias).
    amps = {a.name: a for a in detector_truth(SCIENCE_SMALL, INSTRUMENT, DETECTOR).amps}
    for name, gain in outcome.gains_e_per_adu.items():
        rows, columns, _, _ = SCIENCE_SMALL.amp_region(name)
        expected = sky_e + 4 / 3 * (amps[name].read_noise_adu * gain) ** 2
        assert float(np.median(calexp.variance_e2[rows, columns])) == pytest.approx(expected, rel=0.10), name
    assert fits.getheader(output)["BUNIT"] == "electron"
