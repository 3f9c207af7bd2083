"""Camera simulator (ops.camera): real FITS exposures appearing in an inbox by atomic rename."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from astropy.io import fits

from ops.camera import (
    REMOVE,
    UnknownDetector,
    add_camera_arguments,
    build_primary_header,
    camera_main,
    rubin_dayobs,
    run_camera,
    write_exposure,
)
from processors.headers import repair_header, verify_header

COMCAM_NAMES = {f"CC_O_20241108_000266_R22_S{x}{y}.fits" for x in range(3) for y in range(3)}


def file_names(directory: Path) -> list[str]:
    """Sorted names of the files in a directory."""
    return sorted(path.name for path in directory.iterdir())


def test_comcam_exposure_is_nine_verified_fits_files_of_the_requested_size(tmp_path: Path) -> None:
    """A ComCam exposure is 9 files named <OBSID>_<DETECTOR>.fits, each valid FITS with a clean header."""
    size = 2_000_000

    paths = write_exposure(tmp_path, "ComCam", dayobs="20241108", seqnum=266, size_bytes=size)

    assert {path.name for path in paths} == COMCAM_NAMES
    assert {path.name for path in tmp_path.iterdir()} == COMCAM_NAMES, "no .part file is left behind"
    for path in paths:
        assert abs(path.stat().st_size - size) <= 0.1 * size
        with fits.open(path) as hdul:
            hdul.verify("exception")
            assert hdul[0].data is None
            assert [hdu.name.upper() for hdu in hdul[1:3]] == ["SEGMENT10", "SEGMENT11"]
            assert hdul[1].data.dtype.kind == "i" and hdul[1].data.dtype.itemsize == 4
            header = hdul[0].header
            assert verify_header(header) == []
            assert f"{header['OBSID']}_{header['RAFTBAY']}_{header['CCDSLOT']}.fits" == path.name


def test_latiss_exposure_is_one_file(tmp_path: Path) -> None:
    """A LATISS exposure is the single file AT_O_<dayobs>_<seqnum>_R00_S00.fits."""
    paths = write_exposure(tmp_path, "LATISS", dayobs="20240624", seqnum=106, size_bytes=500_000)

    assert [path.name for path in paths] == ["AT_O_20240624_000106_R00_S00.fits"]
    assert verify_header(fits.getheader(paths[0])) == []


def test_large_files_are_sized_like_camera_files(tmp_path: Path) -> None:
    """A 20 MB request gives 16 amplifier extensions and a file within 10% of 20 MB."""
    (path,) = write_exposure(
        tmp_path, "LSSTCam", dayobs="20250415", seqnum=60, size_bytes=20_000_000, detectors=["R01_S01"]
    )

    assert abs(path.stat().st_size - 20_000_000) <= 2_000_000
    with fits.open(path) as hdul:
        assert len(hdul) == 17


def test_staging_directory_is_left_empty(tmp_path: Path) -> None:
    """Files written through a staging directory end in the inbox and leave nothing in staging."""
    inbox, staging = tmp_path / "inbox", tmp_path / "staging"

    paths = write_exposure(inbox, "ComCam", dayobs="20241108", seqnum=266, size_bytes=100_000, staging=staging)

    assert {path.name for path in inbox.iterdir()} == COMCAM_NAMES
    assert all(path.parent == inbox for path in paths)
    assert list(staging.iterdir()) == []


def test_detectors_of_one_exposure_agree_and_differ_in_pixels(tmp_path: Path) -> None:
    """All detectors of an exposure share DATE-OBS and OBSID but carry different pixel data."""
    paths = write_exposure(
        tmp_path, "ComCam", dayobs="20241108", seqnum=266, size_bytes=100_000, detectors=["R22_S00", "R22_S01"]
    )

    headers = [fits.getheader(path) for path in paths]
    assert headers[0]["DATE-OBS"] == headers[1]["DATE-OBS"]
    assert headers[0]["OBSID"] == headers[1]["OBSID"]
    assert paths[0].read_bytes() != paths[1].read_bytes()


def test_each_file_is_what_astropy_writes_and_each_header_what_build_primary_header_builds(tmp_path: Path) -> None:
    """The files are assembled from header text and pixel bytes: byte for byte what astropy writes for the
    same HDUs, each primary header (overrides included) the one build_primary_header gives its detector."""
    start = datetime(2024, 11, 8, 23, 59, 30)
    overrides = {"R22_S01": {"EXPTIME": None, "SHUTTIME": REMOVE, "STUTTER DELAY": 2.5}}
    paths = write_exposure(
        tmp_path / "inbox",
        "ComCam",
        dayobs="20241108",
        seqnum=266,
        size_bytes=300_000,
        detectors=["R22_S00", "R22_S01"],
        date_obs=start,
        overrides_by_detector=overrides,
    )
    for path, detector in zip(paths, ["R22_S00", "R22_S01"], strict=True):
        with fits.open(path) as hdul:
            rewritten = io.BytesIO()
            hdul.writeto(rewritten, output_verify="exception")
            assert rewritten.getvalue() == path.read_bytes()
            built = build_primary_header(
                "ComCam", dayobs="20241108", seqnum=266, detector=detector, date_obs=start,
                overrides=overrides.get(detector),
            )  # fmt: skip
            expected = fits.HDUList([fits.PrimaryHDU(header=built), fits.ImageHDU()])
            expected.update_extend()
            assert hdul[0].header.tostring() == expected[0].header.tostring()
            assert len(hdul) > 2


def test_broken_detector_file_is_repaired_from_its_siblings(tmp_path: Path) -> None:
    """A detector written with null IMGTYPE verifies dirty and is repaired by the values its siblings agree on."""
    paths = write_exposure(
        tmp_path,
        "ComCam",
        dayobs="20241108",
        seqnum=266,
        size_bytes=100_000,
        imgtype="FLAT",
        overrides_by_detector={"R22_S11": {"IMGTYPE": None}},
    )
    headers = {path.name: fits.getheader(path) for path in paths}
    broken = headers.pop("CC_O_20241108_000266_R22_S11.fits")
    assert [finding.rule for finding in verify_header(broken)] == ["required.IMGTYPE"]
    assert {header["IMGTYPE"] for header in headers.values()} == {"FLAT"}

    report = repair_header(broken, exposure_context={"IMGTYPE": "FLAT"})

    assert report.ok
    assert report.header["IMGTYPE"] == "FLAT"


def test_unknown_detector_is_refused() -> None:
    """Asking for a detector the instrument does not have raises UnknownDetector."""
    with pytest.raises(UnknownDetector):
        build_primary_header("ComCam", dayobs="20241108", seqnum=1, detector="R01_S01")


def test_rubin_dayobs_changes_at_noon_utc() -> None:
    """The Rubin observing day is the UTC date 12 hours earlier."""
    assert rubin_dayobs(datetime(2024, 11, 9, 6, 34, tzinfo=UTC)) == "20241108"
    assert rubin_dayobs(datetime(2024, 11, 9, 12, 0, 1, tzinfo=UTC)) == "20241109"


async def test_run_camera_writes_the_requested_exposures(tmp_path: Path) -> None:
    """run_camera writes N exposures with consecutive sequence numbers and reports N."""
    written = await run_camera(
        tmp_path, instrument="LATISS", exposures=3, cadence_s=0.0, size_bytes=50_000, dayobs="20240624"
    )

    assert written == 3
    assert await asyncio.to_thread(file_names, tmp_path) == [
        f"AT_O_20240624_{seq:06d}_R00_S00.fits" for seq in (1, 2, 3)
    ]


async def test_run_camera_stops_when_the_stop_event_is_set(tmp_path: Path) -> None:
    """An endless camera on a one-hour cadence stops promptly once its stop event is set."""
    stop = asyncio.Event()

    async with asyncio.timeout(30):
        written = await run_camera(
            tmp_path,
            instrument="LATISS",
            cadence_s=3600.0,
            size_bytes=50_000,
            dayobs="20240624",
            start_seqnum=7,
            stop=stop,
            on_exposure=lambda paths: asyncio.get_running_loop().call_soon(stop.set),
        )

    assert written == 1
    assert await asyncio.to_thread(file_names, tmp_path) == ["AT_O_20240624_000007_R00_S00.fits"]


def test_camera_command_reads_the_summit_inbox_from_cluster_json(tmp_path: Path) -> None:
    """`simulate camera --workdir DIR` writes into the summit inbox named in DIR/cluster.json."""
    inbox = tmp_path / "summit" / "inbox"
    (tmp_path / "cluster.json").write_text(json.dumps({"sites": {"summit": {"inbox": str(inbox)}}}))
    parser = argparse.ArgumentParser()
    add_camera_arguments(parser)
    args = parser.parse_args(
        [
            *("--workdir", str(tmp_path), "--instrument", "latiss", "--exposures", "2", "--cadence", "0"),
            *("--size-mb", "0.05", "--dayobs", "20240624", "--start-seqnum", "5"),
        ]
    )

    assert camera_main(args) == 0
    assert file_names(inbox) == [
        "AT_O_20240624_000005_R00_S00.fits",
        "AT_O_20240624_000006_R00_S00.fits",
    ]


def test_camera_command_without_cluster_json_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`simulate camera --workdir DIR` without DIR/cluster.json exits 2 with a message."""
    parser = argparse.ArgumentParser()
    add_camera_arguments(parser)

    status = camera_main(parser.parse_args(["--workdir", str(tmp_path), "--exposures", "1"]))

    assert status == 2
    assert "cluster.json" in capsys.readouterr().err
