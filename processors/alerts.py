"""Alert packets: one per difference-image source, with Rubin's field names, as JSON and as Avro.

Field names follow Rubin's alert packet (facts taken from its published schema, not its files):
``alertId``, ``diaSource`` {``diaSourceId``, ``visit``, ``detector``, ``band``, ``midpointMjdTai``,
``ra``, ``dec``, ``x``, ``y``, ``psfFlux``, ``psfFluxErr``, ``snr``, ``isNegative``, ``isDipole``,
``timeProcessedMjdTai``}, ``scienceObsid``, ``referenceObsid`` and the 31x31 FITS cutouts
``cutoutScience``, ``cutoutTemplate``, ``cutoutDifference`` (bytes in Avro, base64 in JSON).
``psfFlux`` is in electrons of the science exposure (there is no photometric calibration here) and
``x``, ``y`` are 0-based pixels of the science detector.

``diaSourceId`` is also at the top level, as in Rubin's schema 11 (equal to ``alertId``).

Ids are stable: ``alertId`` (= ``diaSourceId``) is a 63-bit hash of the science OBSID, the reference
id, the detector, the source's sign and its position rounded to 0.01 px, so reprocessing the same
inputs after a crash gives the same ids; ``timeProcessedMjdTai`` is the only field that changes.
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import fastavro

from processors.diffim.detection import DiaSource
from processors.diffim.pair import DiffResult, SourceCutouts
from processors.headers import parse_obsid

__all__ = [
    "ALERT_AVRO_SCHEMA",
    "ALERT_JSON_SCHEMA",
    "ALERT_SCHEMA_VERSION",
    "Alert",
    "AlertError",
    "alert_id",
    "alerts_for",
    "build_alerts",
    "read_alerts_avro",
    "visit_id",
    "write_alerts_avro",
]

ALERT_SCHEMA_VERSION: Final = "skyrelay.alert/1"


class AlertError(ValueError):
    """Alerts cannot be built (an OBSID that does not parse, a detector flagged for too many sources)."""


_DIA_FIELDS: Final[tuple[tuple[str, str, str], ...]] = (
    ("diaSourceId", "long", "unique id of the detection (equal to alertId)"),
    ("visit", "long", "DAYOBS x 100000 + SEQNUM of the science exposure"),
    ("detector", "string", "detector name, e.g. R22_S11"),
    ("band", "string", "filter band"),
    ("midpointMjdTai", "double", "science exposure midpoint, MJD TAI"),
    ("ra", "double", "right ascension, degrees (ICRS)"),
    ("dec", "double", "declination, degrees (ICRS)"),
    ("x", "double", "column, 0-based pixel of the science detector"),
    ("y", "double", "row, 0-based pixel of the science detector"),
    ("psfFlux", "double", "PSF flux in the difference, electrons of the science exposure"),
    ("psfFluxErr", "double", "its 1-sigma error"),
    ("snr", "double", "abs(psfFlux) / psfFluxErr"),
    ("isNegative", "boolean", "the source is fainter in the science than in the reference"),
    ("isDipole", "boolean", "a positive and a negative lobe adjacent (misregistration or motion)"),
    ("timeProcessedMjdTai", "double", "when the difference was processed, MJD TAI"),
)

_JSON_TYPES: Final = {"long": "integer", "string": "string", "double": "number", "boolean": "boolean"}

ALERT_JSON_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://skyrelay.invalid/schemas/alert-1.json",
    "title": "skyrelay difference-image alert",
    "type": "object",
    "required": [
        "schemaVersion",
        "alertId",
        "diaSourceId",
        "diaSource",
        "scienceObsid",
        "referenceObsid",
        "cutoutScience",
        "cutoutTemplate",
        "cutoutDifference",
    ],
    "additionalProperties": False,
    "properties": {
        "schemaVersion": {"const": ALERT_SCHEMA_VERSION},
        "alertId": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
        "diaSourceId": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
        "scienceObsid": {"type": "string", "minLength": 1},
        "referenceObsid": {"type": "string", "minLength": 1},
        "diaSource": {
            "type": "object",
            "required": [name for name, _, _ in _DIA_FIELDS],
            "additionalProperties": False,
            "properties": {name: {"type": _JSON_TYPES[kind], "description": doc} for name, kind, doc in _DIA_FIELDS},
        },
        **{
            name: {"type": "string", "contentEncoding": "base64", "contentMediaType": "application/fits"}
            for name in ("cutoutScience", "cutoutTemplate", "cutoutDifference")
        },
    },
}
"""JSON Schema (draft 2020-12) of an alert as published on ``alerts/<instrument>``."""

ALERT_AVRO_SCHEMA: Final[dict[str, Any]] = {
    "type": "record",
    "name": "alert",
    "namespace": "skyrelay.v1",
    "fields": [
        {"name": "schemaVersion", "type": "string"},
        {"name": "alertId", "type": "long"},
        {"name": "diaSourceId", "type": "long"},
        {
            "name": "diaSource",
            "type": {
                "type": "record",
                "name": "diaSource",
                "fields": [{"name": name, "type": kind, "doc": doc} for name, kind, doc in _DIA_FIELDS],
            },
        },
        {"name": "scienceObsid", "type": "string"},
        {"name": "referenceObsid", "type": "string"},
        {"name": "cutoutScience", "type": "bytes"},
        {"name": "cutoutTemplate", "type": "bytes"},
        {"name": "cutoutDifference", "type": "bytes"},
    ],
}
"""Avro schema of an alert (cutouts as bytes)."""

_PARSED_AVRO: Final = fastavro.parse_schema(ALERT_AVRO_SCHEMA)


@dataclass(frozen=True, slots=True, kw_only=True)
class Alert:
    """One alert. ``dia_source`` holds the diaSource fields by their Rubin names."""

    alert_id: int
    dia_source: Mapping[str, Any]
    science_obsid: str
    reference_obsid: str
    cutout_science: bytes
    cutout_template: bytes
    cutout_difference: bytes

    def to_avro_record(self) -> dict[str, Any]:
        """The alert as an Avro record (cutouts as bytes)."""
        return {
            "schemaVersion": ALERT_SCHEMA_VERSION,
            "alertId": self.alert_id,
            "diaSourceId": self.alert_id,
            "diaSource": dict(self.dia_source),
            "scienceObsid": self.science_obsid,
            "referenceObsid": self.reference_obsid,
            "cutoutScience": self.cutout_science,
            "cutoutTemplate": self.cutout_template,
            "cutoutDifference": self.cutout_difference,
        }

    def to_json(self) -> dict[str, Any]:
        """The alert as a JSON-ready dict (cutouts base64), valid against :data:`ALERT_JSON_SCHEMA`."""
        record = self.to_avro_record()
        for name in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
            record[name] = base64.b64encode(record[name]).decode("ascii")
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Alert:
        """An alert from an Avro record or a JSON dict (base64 cutouts are decoded)."""

        def raw(value: bytes | str) -> bytes:
            return base64.b64decode(value) if isinstance(value, str) else bytes(value)

        return cls(
            alert_id=int(record["alertId"]),
            dia_source=dict(record["diaSource"]),
            science_obsid=str(record["scienceObsid"]),
            reference_obsid=str(record["referenceObsid"]),
            cutout_science=raw(record["cutoutScience"]),
            cutout_template=raw(record["cutoutTemplate"]),
            cutout_difference=raw(record["cutoutDifference"]),
        )


def visit_id(obsid: str) -> int:
    """Rubin's visit number of an exposure: DAYOBS x 100000 + SEQNUM.

    Raises:
        AlertError: the OBSID does not parse.
    """
    parts = parse_obsid(obsid)
    if parts is None:
        raise AlertError(f"OBSID {obsid!r} is not <camcode>_<controller>_<dayobs>_<seqnum>")
    _, _, dayobs, seqnum = parts
    return int(dayobs) * 100_000 + seqnum


def alert_id(science_obsid: str, reference_obsid: str, detector: str, source: DiaSource) -> int:
    """A stable 63-bit id of a detection: the same inputs always give the same id."""
    key = "|".join(
        (
            science_obsid,
            reference_obsid,
            detector,
            "-" if source.is_negative else "+",
            f"{source.x_px:.2f}",
            f"{source.y_px:.2f}",
        )
    )
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> 1


def build_alerts(
    *,
    sources: Sequence[DiaSource],
    cutouts: Sequence[SourceCutouts],
    science_obsid: str,
    reference_obsid: str,
    detector: str,
    band: str,
    midpoint_mjd_tai: float,
    time_processed_mjd_tai: float,
) -> list[Alert]:
    """One alert per source.

    Args:
        sources: the detections.
        cutouts: their cutouts, same order.
        science_obsid: OBSID of the science exposure (gives ``visit``).
        reference_obsid: OBSID of the reference exposure, or the template's id.
        detector: detector name.
        band: filter band.
        midpoint_mjd_tai: science exposure midpoint.
        time_processed_mjd_tai: processing time.

    Returns:
        The alerts, in the order of ``sources``.
    """
    if len(sources) != len(cutouts):
        raise AlertError(f"{len(sources)} sources but {len(cutouts)} cutouts")
    visit = visit_id(science_obsid)
    alerts = []
    for source, cut in zip(sources, cutouts, strict=True):
        ident = alert_id(science_obsid, reference_obsid, detector, source)
        dia = {
            "diaSourceId": ident,
            "visit": visit,
            "detector": detector,
            "band": band,
            "midpointMjdTai": float(midpoint_mjd_tai),
            "ra": source.ra_deg,
            "dec": source.dec_deg,
            "x": source.x_px,
            "y": source.y_px,
            "psfFlux": source.psf_flux_e,
            "psfFluxErr": source.psf_flux_err_e,
            "snr": source.snr,
            "isNegative": source.is_negative,
            "isDipole": source.is_dipole,
            "timeProcessedMjdTai": float(time_processed_mjd_tai),
        }
        alerts.append(
            Alert(
                alert_id=ident,
                dia_source=dia,
                science_obsid=science_obsid,
                reference_obsid=reference_obsid,
                cutout_science=cut.science,
                cutout_template=cut.template,
                cutout_difference=cut.difference,
            )
        )
    return alerts


def alerts_for(result: DiffResult, *, time_processed_mjd_tai: float, allow_flagged: bool = False) -> list[Alert]:
    """The alerts of one difference.

    Args:
        result: the difference.
        time_processed_mjd_tai: processing time.
        allow_flagged: alert even a detector flagged with too many detections.

    Raises:
        AlertError: the detector is flagged (too many detections) and ``allow_flagged`` is false.
    """
    if result.detections.too_many and not allow_flagged:
        raise AlertError(
            f"{result.science_obsid} {result.detector}: {len(result.detections.sources)} detections, "
            "flagged instead of alerted"
        )
    return build_alerts(
        sources=result.detections.sources,
        cutouts=result.cutouts,
        science_obsid=result.science_obsid,
        reference_obsid=result.reference_obsid,
        detector=result.detector,
        band=result.band,
        midpoint_mjd_tai=result.midpoint_mjd_tai,
        time_processed_mjd_tai=time_processed_mjd_tai,
    )


def write_alerts_avro(alerts: Sequence[Alert]) -> bytes:
    """A visit's alerts as an Avro object container file (deflate), returned as bytes."""
    buffer = io.BytesIO()
    fastavro.writer(buffer, _PARSED_AVRO, [a.to_avro_record() for a in alerts], codec="deflate")
    return buffer.getvalue()


def read_alerts_avro(data: bytes) -> list[Alert]:
    """Alerts from an Avro container file written by :func:`write_alerts_avro`."""
    reader = fastavro.reader(io.BytesIO(data), reader_schema=_PARSED_AVRO)
    return [Alert.from_record(record) for record in reader if isinstance(record, dict)]
