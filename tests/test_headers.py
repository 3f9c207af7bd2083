"""Header verification and fix-up (processors.headers), correction files (daemon.corrections), detector tables."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from daemon.corrections import correction_for, load_corrections
from ops.camera import REMOVE, build_primary_header
from ops.camera_templates import PRIMARY_TEMPLATES, broken_latiss_header, imsim_header, template_header
from processors.detectors import (
    UnknownInstrument,
    canonical_instrument,
    detector_name,
    expected_detectors,
)
from processors.headers import (
    Correction,
    CorrectionFileError,
    Fix,
    correction_key,
    header_summary,
    repair_header,
    verify_header,
)
from processors.headers.cards import _TIME_SCALES, _mjd_astropy

START = datetime(2024, 11, 9, 6, 34, 41, 323000)


def comcam_header(**overrides: object) -> fits.Header:
    """ComCam CC_O_20241108_000266 R22_S00 as the simulator writes it, with card overrides."""
    return build_primary_header(
        "ComCam",
        dayobs="20241108",
        seqnum=266,
        detector="R22_S00",
        filter_="g",
        date_obs=START,
        overrides=overrides,
    )


def rules(findings: object) -> set[str]:
    """The rule ids of a list of findings."""
    assert isinstance(findings, list | tuple)
    return {finding.rule for finding in findings}


@pytest.mark.parametrize("instrument", sorted(PRIMARY_TEMPLATES))
def test_real_template_headers_verify_clean(instrument: str) -> None:
    """The real camera headers the templates were copied from have no findings."""
    assert verify_header(template_header(instrument)) == []


@pytest.mark.parametrize(
    ("instrument", "detector"), [("ComCam", "R22_S11"), ("LATISS", "R00_S00"), ("LSSTCam", "R44_SW1")]
)
def test_simulated_headers_verify_clean(instrument: str, detector: str) -> None:
    """A header built by the camera simulator for any instrument has no findings."""
    header = build_primary_header(instrument, dayobs="20250415", seqnum=60, detector=detector)
    assert verify_header(header) == []


def test_null_imgtype_and_filter_are_filled_from_sibling_detectors() -> None:
    """IMGTYPE and FILTER null in one detector are filled with the values its siblings agree on."""
    broken = comcam_header(IMGTYPE=None, FILTER=None)

    report = repair_header(broken, exposure_context={"IMGTYPE": "OBJECT", "FILTER": "g_01"})

    assert report.ok
    assert report.header["IMGTYPE"] == "OBJECT"
    assert report.header["FILTER"] == "g_01"
    assert {(fix.keyword, fix.old, fix.new, fix.source) for fix in report.fixes} == {
        ("IMGTYPE", None, "OBJECT", "rule:context.sibling_detectors"),
        ("FILTER", None, "g_01", "rule:context.sibling_detectors"),
    }


def test_null_imgtype_and_filter_without_siblings_remain_findings() -> None:
    """Without sibling detectors to agree, null IMGTYPE and FILTER stay as findings and the header is not ok."""
    report = repair_header(comcam_header(IMGTYPE=None, FILTER=None))

    assert not report.ok
    assert {"required.IMGTYPE", "filter.missing"} <= rules(report.findings)
    assert report.fixes == ()


def test_null_card_read_back_from_a_fits_file_counts_as_missing(tmp_path: Path) -> None:
    """A null IMGTYPE card read from a real FITS file is reported as missing."""
    path = tmp_path / "null.fits"
    fits.PrimaryHDU(header=comcam_header(IMGTYPE=None)).writeto(path)

    assert rules(verify_header(fits.getheader(path))) == {"required.IMGTYPE"}


def test_real_broken_latiss_header_is_repaired_with_sibling_values() -> None:
    """The 2019 LATISS header is made whole from IMGNAME, its OBSID, Rubin's TAI, its one detector and siblings."""
    report = repair_header(
        broken_latiss_header(),
        exposure_context={"IMGTYPE": "BIAS", "FILTER": "empty_1", "DARKTIME": 1.3},
    )

    assert report.ok, report.findings
    header = report.header
    assert (header["OBSID"], header["DAYOBS"], header["SEQNUM"]) == ("AT_O_20190306_000014", "20190306", 14)
    assert (header["TIMESYS"], header["RAFTBAY"], header["CCDSLOT"]) == ("TAI", "R00", "S00")
    assert {fix.source for fix in report.fixes} >= {
        "rule:obsid.from_imgname",
        "rule:dayobs.from_obsid",
        "rule:seqnum.from_obsid",
        "rule:time.timesys_rubin_tai",
        "rule:detector.single_detector",
        "rule:context.sibling_detectors",
    }


def test_mjd_obs_off_by_a_day_is_fixed_from_date_obs() -> None:
    """An MJD-OBS one day off DATE-OBS is replaced by DATE-OBS's MJD in TAI, recording old and new values."""
    good = comcam_header()
    true_mjd = good["MJD-OBS"]
    broken = comcam_header(**{"MJD-OBS": true_mjd - 1.0})
    assert "time.mjd_mismatch" in rules(verify_header(broken))

    report = repair_header(broken)

    assert report.ok
    assert report.header["MJD-OBS"] == pytest.approx(true_mjd, abs=1e-8)
    (fix,) = report.fixes
    assert fix.keyword == "MJD-OBS"
    assert fix.old == pytest.approx(true_mjd - 1.0)
    assert fix.new == pytest.approx(true_mjd, abs=1e-8)
    assert fix.source == "rule:time.mjd_from_date_obs"
    assert broken["MJD-OBS"] == pytest.approx(true_mjd - 1.0), "the input header must not change"


def test_missing_obsid_is_derived_from_dayobs_and_seqnum() -> None:
    """A header without OBSID gets <camcode>_<controller>_<dayobs>_<seqnum:06d>."""
    report = repair_header(comcam_header(OBSID=REMOVE))

    assert report.ok
    assert report.header["OBSID"] == "CC_O_20241108_000266"
    assert [(fix.keyword, fix.source) for fix in report.fixes] == [("OBSID", "rule:obsid.from_dayobs_seqnum")]


def test_missing_obsid_without_camcode_uses_the_instrument_code() -> None:
    """Without CAMCODE/CONTRLLR the OBSID is built from the instrument's camera code and controller O."""
    report = repair_header(
        build_primary_header(
            "LSSTCam",
            dayobs="20250415",
            seqnum=60,
            detector="R01_S01",
            overrides={"OBSID": REMOVE, "CAMCODE": REMOVE, "CONTRLLR": REMOVE},
        )
    )

    assert report.ok
    assert report.header["OBSID"] == "MC_O_20250415_000060"


def test_dayobs_and_seqnum_are_derived_from_obsid() -> None:
    """DAYOBS and SEQNUM missing or null are taken from the OBSID."""
    report = repair_header(comcam_header(DAYOBS=REMOVE, SEQNUM=None))

    assert report.ok
    assert (report.header["DAYOBS"], report.header["SEQNUM"]) == ("20241108", 266)
    assert {(fix.keyword, fix.source) for fix in report.fixes} == {
        ("DAYOBS", "rule:dayobs.from_obsid"),
        ("SEQNUM", "rule:seqnum.from_obsid"),
    }


def test_correction_file_overrides_a_value(tmp_path: Path) -> None:
    """A <instrument>-<obsid>.yaml correction file overwrites its cards and is recorded as the fix source."""
    path = tmp_path / "LATISS-AT_O_20200217_000238.yaml"
    path.write_text("ROTPA: 46.783893\n")
    header = build_primary_header("LATISS", dayobs="20200217", seqnum=238, detector="R00_S00")

    report = repair_header(header, correction=correction_for([tmp_path], header))

    assert report.ok
    assert report.header["ROTPA"] == 46.783893
    assert report.correction_file == path
    (fix,) = report.fixes
    assert (fix.keyword, fix.old, fix.new) == ("ROTPA", header["ROTPA"], 46.783893)
    assert fix.source == f"file:{path}"


def test_comcam_correction_file_is_found_under_its_butler_name(tmp_path: Path) -> None:
    """A ComCam header (INSTRUME ComCam) picks up a LSSTComCam-<obsid>.yaml correction file."""
    (tmp_path / "LSSTComCam-CC_O_20241113_000067.yaml").write_text("GROUPID: 2024-11-14T02:53:00.497#2\n")
    header = build_primary_header("ComCam", dayobs="20241113", seqnum=67, detector="R22_S12")

    report = repair_header(header, correction=correction_for([tmp_path], header))

    assert report.header["GROUPID"] == "2024-11-14T02:53:00.497#2"
    assert report.ok


def test_first_correction_directory_wins(tmp_path: Path) -> None:
    """When two directories hold a correction file for the observation, the first listed is used."""
    first, second = tmp_path / "site", tmp_path / "package"
    for directory, value in ((first, "1.0"), (second, "2.0")):
        directory.mkdir()
        (directory / "LATISS-AT_O_20200217_000238.yaml").write_text(f"ROTPA: {value}\n")

    found = load_corrections([first, second], "LATISS", "AT_O_20200217_000238")

    assert found == Correction(cards={"ROTPA": 1.0}, path=first / "LATISS-AT_O_20200217_000238.yaml")
    assert load_corrections([first], "LATISS", "AT_O_20200217_000239") is None


def test_correction_file_is_found_under_a_derived_obsid(tmp_path: Path) -> None:
    """A header without OBSID picks up the correction file of the OBSID repair derives from DAYOBS and SEQNUM."""
    path = tmp_path / "LATISS-AT_O_20200217_000238.yaml"
    path.write_text("ROTPA: 46.783893\n")
    header = build_primary_header(
        "LATISS", dayobs="20200217", seqnum=238, detector="R00_S00", overrides={"OBSID": REMOVE}
    )

    report = repair_header(header, correction=correction_for([tmp_path], header))

    assert report.ok
    assert report.correction_file == path
    assert [(fix.keyword, fix.source) for fix in report.fixes] == [
        ("OBSID", "rule:obsid.from_dayobs_seqnum"),
        ("ROTPA", f"file:{path}"),
    ]


def test_correction_key_takes_the_instrument_from_the_obsid_camera_code() -> None:
    """Without INSTRUME the correction file is named by the instrument of the OBSID's camera code."""
    header = build_primary_header(
        "LATISS", dayobs="20200217", seqnum=238, detector="R00_S00", overrides={"INSTRUME": REMOVE}
    )

    assert correction_key(header) == ("LATISS", "AT_O_20200217_000238")
    assert correction_key(comcam_header(OBSID=REMOVE, DAYOBS=REMOVE)) is None


def test_correction_is_applied_from_memory_without_reading_files() -> None:
    """repair_header applies a Correction it is given and names its path as the fix source."""
    header = build_primary_header("LATISS", dayobs="20200217", seqnum=238, detector="R00_S00")
    correction = Correction(cards={"ROTPA": 12.5}, path=Path("/nowhere/LATISS-AT_O_20200217_000238.yaml"))

    report = repair_header(header, correction=correction)

    assert report.header["ROTPA"] == 12.5
    assert [fix.source for fix in report.fixes] == ["file:/nowhere/LATISS-AT_O_20200217_000238.yaml"]


@pytest.mark.parametrize("text", ["ROTPA: [unclosed\n", "- just\n- a list\n", "ROTPA: {nested: 1}\n"])
def test_malformed_correction_file_raises_with_its_path(tmp_path: Path, text: str) -> None:
    """A correction file that is not a flat YAML mapping of cards raises CorrectionFileError naming it."""
    path = tmp_path / "LATISS-AT_O_20200217_000238.yaml"
    path.write_text(text)
    header = build_primary_header("LATISS", dayobs="20200217", seqnum=238, detector="R00_S00")

    with pytest.raises(CorrectionFileError) as raised:
        correction_for([tmp_path], header)

    assert raised.value.path == path
    assert str(path) in str(raised.value)


def test_header_beyond_repair_is_not_ok() -> None:
    """With no INSTRUME, OBSID or DAYOBS nothing identifies the observation and the header is not ok."""
    report = repair_header(comcam_header(INSTRUME=REMOVE, OBSID=REMOVE, DAYOBS=REMOVE, CAMCODE=REMOVE))

    assert not report.ok
    assert {"required.INSTRUME", "required.OBSID", "required.DAYOBS"} <= rules(report.findings)


def test_imsim_header_is_beyond_repair() -> None:
    """An imsim frame (no INSTRUME, integer OBSID) is not ok, though its detector is read from CHIPID."""
    report = repair_header(imsim_header())

    assert not report.ok
    assert {"required.INSTRUME", "type.OBSID", "required.SEQNUM"} <= rules(report.findings)
    assert detector_name(report.header) == "R11_S20"


def test_history_cards_fit_in_fits_history_cards(tmp_path: Path) -> None:
    """Every HISTORY text recording a fix is at most 72 characters, even for long paths and values."""
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 4)
    deep.mkdir(parents=True)
    (deep / "LATISS-AT_O_20200217_000238.yaml").write_text(f"OBJECT: {'x' * 150}\nROTPA: 46.783893\n")
    header = build_primary_header(
        "LATISS", dayobs="20200217", seqnum=238, detector="R00_S00", overrides={"MJD-OBS": 1.5}
    )

    report = repair_header(header, correction=correction_for([deep], header))

    cards = report.history_cards()
    assert len(cards) > len(report.fixes)
    assert all(len(card) <= 72 for card in cards)
    assert all(len(fix.history_card()) <= 72 for fix in report.fixes)
    assert [str(text) for text in report.header["HISTORY"]] == cards
    assert report.header.tostring()  # the repaired header serialises as valid FITS


def test_history_card_names_keyword_values_and_rule() -> None:
    """A fix's one-card summary and its complete record both name the keyword, old and new values and rule."""
    fix = Fix(keyword="MJD-OBS", old=60622.27408938669, new=60623.27408938669, source="rule:time.mjd_from_date_obs")

    assert fix.history_card() == "skyrelay MJD-OBS: 60622.2741 -> 60623.2741 (rule:time.mjd_from_date_obs)"
    assert fix.history_cards() == (
        "skyrelay fix MJD-OBS: 60622.27408938669 -> 60623.27408938669",
        "  (rule:time.mjd_from_date_obs)",
    )


def test_date_end_before_date_beg_is_reported() -> None:
    """DATE-END earlier than DATE-BEG is a time.beg_end_order finding."""
    header = comcam_header(**{"DATE-END": "2024-11-09T06:30:00.000"})

    assert "time.beg_end_order" in rules(verify_header(header))


def test_exposure_span_far_from_exptime_is_reported() -> None:
    """DATE-END - DATE-BEG much longer than EXPTIME and DARKTIME is a time.exptime_mismatch finding."""
    header = comcam_header(**{"DATE-END": "2024-11-09T06:36:41.323"})

    assert rules(verify_header(header)) == {"time.exptime_mismatch"}


def test_unknown_imgtype_unknown_timesys_and_negative_exptime_are_reported() -> None:
    """IMGTYPE outside the vocabulary, an unknown TIMESYS and a negative EXPTIME are each reported."""
    header = comcam_header(IMGTYPE="SELFIE", TIMESYS="MARS", EXPTIME=-1.0)

    assert {"imgtype.vocabulary", "time.timesys", "range.EXPTIME"} <= rules(verify_header(header))


def test_bias_needs_no_filter_but_a_flat_does() -> None:
    """FILTER may be absent on a BIAS frame but not on a FLAT."""
    assert verify_header(comcam_header(IMGTYPE="BIAS", FILTER=REMOVE)) == []
    assert rules(verify_header(comcam_header(IMGTYPE="FLAT", FILTER=REMOVE))) == {"filter.missing"}


def test_obsid_disagreeing_with_seqnum_is_reported() -> None:
    """An OBSID whose sequence number differs from SEQNUM is an obsid.mismatch on SEQNUM."""
    findings = verify_header(comcam_header(SEQNUM=267))

    assert [(f.rule, f.keyword) for f in findings] == [("obsid.mismatch", "SEQNUM")]


def test_wrong_types_are_reported() -> None:
    """A numeric OBSID, a non-integer SEQNUM and a string EXPTIME are type findings."""
    header = comcam_header(OBSID=5000007, SEQNUM="266", EXPTIME="30")

    assert {"type.OBSID", "type.SEQNUM", "type.EXPTIME"} <= rules(verify_header(header))


def test_detector_the_instrument_does_not_have_is_reported() -> None:
    """A ComCam header claiming an LSSTCam raft is a detector.unknown finding."""
    assert rules(verify_header(comcam_header(RAFTBAY="R01"))) == {"detector.unknown"}


def test_header_summary_is_small_and_json_able() -> None:
    """The summary names the observation, detector, type, filter and group, with plain values."""
    summary = header_summary(comcam_header())

    assert summary == {
        "obsid": "CC_O_20241108_000266",
        "instrument": "ComCam",
        "detector": "R22_S00",
        "imgtype": "OBJECT",
        "dayobs": "20241108",
        "seqnum": 266,
        "filter": "g_01",
        "exptime": 30.0,
        "date_obs": "2024-11-09T06:34:41.323",
        "groupid": "2024-11-09T06:34:41.323",
        "curindex": 1,
        "maxindex": 1,
    }


def test_expected_detectors_per_instrument() -> None:
    """LATISS has 1 detector, ComCam 9 and LSSTCam 189 science plus 16 corner half-sensors."""
    lsstcam = expected_detectors("LSSTCam")

    assert expected_detectors("LATISS") == {"R00_S00"}
    assert expected_detectors("LSSTComCam") == {f"R22_S{x}{y}" for x in range(3) for y in range(3)}
    assert len(lsstcam) == 205
    assert len({d for d in lsstcam if d[-3:-1] in ("SG", "SW")}) == 16
    assert "R00_S00" not in lsstcam and "R44_SG1" in lsstcam and "R43_S22" in lsstcam


def test_instrument_aliases_and_unknown_instrument() -> None:
    """Spellings from headers and the Butler map to one canonical name; others raise UnknownInstrument."""
    assert {canonical_instrument(n) for n in ("ComCam", "COMCAM", "LSSTComCam")} == {"ComCam"}
    assert canonical_instrument("lsstCam") == "LSSTCam"
    with pytest.raises(UnknownInstrument):
        expected_detectors("HSC")


def test_detector_name_needs_both_keys() -> None:
    """The detector is RAFTBAY_CCDSLOT, or None when either is missing."""
    assert detector_name({"RAFTBAY": "R22", "CCDSLOT": "S11"}) == "R22_S11"
    assert detector_name({"RAFTBAY": "R22", "CCDSLOT": None}) is None


def test_repair_leaves_the_input_header_alone() -> None:
    """A header with fixes is repaired in a copy; one with nothing to fix is the report's header, unchanged."""
    broken = comcam_header(IMGTYPE=None)
    before = broken.tostring()
    report = repair_header(broken, exposure_context={"IMGTYPE": "OBJECT"})
    assert report.fixes and report.header is not broken
    assert broken.tostring() == before
    assert report.header["IMGTYPE"] == "OBJECT" and broken["IMGTYPE"] is None

    clean = comcam_header()
    before = clean.tostring()
    report = repair_header(clean, exposure_context={"IMGTYPE": "OBJECT"})
    assert not report.fixes and report.ok
    assert report.header is clean and clean.tostring() == before


LEAP_SECOND_DAYS = ["2015-06-30", "2016-12-31", "1998-12-31"]


@pytest.mark.filterwarnings("ignore::erfa.ErfaWarning")  # UTC dates past the leap-second table are "dubious"
@pytest.mark.parametrize("scale", sorted(set(_TIME_SCALES.values())))
def test_mjd_of_a_date_is_astropys(scale: str) -> None:
    """The remembered MJD of a date equals astropy's Time for every scale, leap-second days included."""
    rng = np.random.default_rng(7)
    dates = [f"{day}T{clock}" for day in LEAP_SECOND_DAYS for clock in ("00:00:00", "12:00:00.5", "23:59:59.999")]
    if scale == "utc":
        dates += [f"{day}T23:59:60.250" for day in LEAP_SECOND_DAYS]
    start = datetime(1995, 1, 1)
    for seconds, digits in zip(rng.uniform(0, 1.2e9, 400), rng.choice([0, 3, 6], 400), strict=True):
        text = (start + timedelta(seconds=float(seconds))).strftime("%Y-%m-%dT%H:%M:%S.%f")
        dates.append(text[: len(text) - 6 + digits] if digits else text[:19])
    for date in dates:
        expected = float(Time(date, scale=scale).mjd)
        assert _mjd_astropy(date, scale) == expected, date
        assert _mjd_astropy(f" {date} ", scale) == expected, date  # remembered, and padding does not matter


def test_mjd_of_an_unparsable_date_raises_every_time() -> None:
    """A date astropy refuses raises ValueError again when asked again (errors are not remembered)."""
    for _ in range(2):
        with pytest.raises(ValueError):
            _mjd_astropy("2024-13-45T99:00:00", "tai")
