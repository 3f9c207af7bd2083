"""Alert packets: Rubin field names, JSON Schema validity, Avro round trip and ids stable across reruns."""

from __future__ import annotations

import base64
import io

import jsonschema  # type: ignore[import-untyped]
import pytest
from astropy.io import fits

from ops.simulate.sky import FieldSpec, Injection, VisitSpec, flux_for_difference_snr, simulate_visit, to_calibrated
from processors.alerts import (
    ALERT_JSON_SCHEMA,
    Alert,
    AlertError,
    alerts_for,
    read_alerts_avro,
    visit_id,
    write_alerts_avro,
)
from processors.diffim import DetectionParams, DiffParams, DiffResult, difference_pair

SHAPE = (512, 512)
FIELD = FieldSpec(name="alerts", ra_deg=120.0, dec_deg=-30.0, stars_per_arcmin2=40.0)
REF = VisitSpec(index=1, seeing_fwhm_arcsec=0.8, mjd_tai=61054.10)
SCI = VisitSpec(index=2, seeing_fwhm_arcsec=1.0, dither_arcsec=(2.0, -3.0), mjd_tai=61054.11)
SCI_OBSID, REF_OBSID = "MC_O_20260114_000123", "MC_O_20260114_000122"


def _run(params: DiffParams | None = None) -> DiffResult:
    offsets = [(-20.0, -15.0), (18.0, 12.0), (-10.0, 25.0)]
    injections = [
        Injection(
            id=f"t{i}",
            ra_deg=FIELD.ra_deg + dx / 3600 / 0.866,
            dec_deg=FIELD.dec_deg + dy / 3600,
            flux_e_by_visit={2: flux_for_difference_snr(20.0, SCI, REF)},
        )
        for i, (dx, dy) in enumerate(offsets)
    ]
    sci = to_calibrated(simulate_visit(FIELD, SCI, shape=SHAPE, injections=injections), obsid=SCI_OBSID)
    ref = to_calibrated(simulate_visit(FIELD, REF, shape=SHAPE, injections=injections), obsid=REF_OBSID)
    return difference_pair(sci, ref, params or DiffParams())


@pytest.fixture(scope="module")
def alerts() -> list[Alert]:
    """Alerts of a 512² difference with three injected transients."""
    return alerts_for(_run(), time_processed_mjd_tai=61054.1101)


def test_one_alert_per_source(alerts: list[Alert]) -> None:
    """The three injected transients give three alerts with distinct ids (alertId = diaSourceId)."""
    assert len(alerts) == 3
    assert len({a.alert_id for a in alerts}) == 3
    assert all(a.alert_id == a.dia_source["diaSourceId"] == a.to_json()["diaSourceId"] for a in alerts)


def test_alert_fields(alerts: list[Alert]) -> None:
    """diaSource carries Rubin's names; visit is DAYOBS x 100000 + SEQNUM; the ids of both exposures are named."""
    dia = alerts[0].dia_source
    assert dia["visit"] == 20260114 * 100000 + 123 == visit_id(SCI_OBSID)
    assert dia["detector"] == "R22_S11" and dia["band"] == "r"
    assert dia["midpointMjdTai"] == SCI.mjd_tai
    assert dia["isNegative"] is False and dia["snr"] > 10
    assert alerts[0].science_obsid == SCI_OBSID and alerts[0].reference_obsid == REF_OBSID


def test_json_alerts_validate(alerts: list[Alert]) -> None:
    """Every alert as JSON validates against the published draft 2020-12 schema; its cutouts decode to FITS;
    a packet missing a diaSource field does not validate."""
    validator = jsonschema.Draft202012Validator(ALERT_JSON_SCHEMA)
    jsonschema.Draft202012Validator.check_schema(ALERT_JSON_SCHEMA)
    for alert in alerts:
        packet = alert.to_json()
        validator.validate(packet)
        with fits.open(io.BytesIO(base64.b64decode(packet["cutoutDifference"]))) as hdul:
            assert hdul[0].data.shape == (31, 31)
        assert Alert.from_record(packet) == alert
    broken = alerts[0].to_json()
    del broken["diaSource"]["ra"]
    assert not validator.is_valid(broken)


def test_avro_round_trip(alerts: list[Alert]) -> None:
    """A visit's alerts written as an Avro container file read back identical, cutout bytes included."""
    data = write_alerts_avro(alerts)
    assert data[:4] == b"Obj\x01"
    assert read_alerts_avro(data) == alerts


def test_ids_stable_across_reruns(alerts: list[Alert]) -> None:
    """Reprocessing the same pair (as after a crash) gives the same alert ids; only the processing time differs."""
    again = alerts_for(_run(), time_processed_mjd_tai=61054.2)
    assert [a.alert_id for a in again] == [a.alert_id for a in alerts]
    assert [a.dia_source["timeProcessedMjdTai"] for a in again] == [61054.2] * 3


def test_flagged_detector_is_not_alerted() -> None:
    """A detector with more detections than the limit raises instead of alerting wholesale (unless allowed)."""
    result = _run(DiffParams(detection=DetectionParams(max_sources=2)))
    with pytest.raises(AlertError, match="flagged"):
        alerts_for(result, time_processed_mjd_tai=61054.2)
    assert len(alerts_for(result, time_processed_mjd_tai=61054.2, allow_flagged=True)) == 3


def test_bad_obsid_is_refused() -> None:
    """A science id that is not an OBSID cannot give a visit number."""
    with pytest.raises(AlertError):
        visit_id("not-an-obsid")
