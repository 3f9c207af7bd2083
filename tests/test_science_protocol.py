"""The science messages on the wire: AlertNotice and ScienceProductNotice round-trip, validate and take a position."""

from __future__ import annotations

import json

import pytest

from protocol import AlertNotice, ProtocolError, ScienceProductNotice, all_schemas, decode
from protocol.arrival import positioned

CHECKSUM = "blake3:" + "ab" * 32
SAMPLES = [
    AlertNotice(
        notice_id="alert-1234567",
        alert_id=1234567,
        instrument="ComCam",
        detector="R22_S11",
        diff_product_id="diff-R22_S11-0123456789abcdef",
        visits=("CC_O_20250601_000101", "CC_O_20250601_000100"),
        alert={"alertId": 1234567, "diaSource": {"x": 12.5, "y": 40.25}, "cutoutScience": "U0lNUExF"},
        created_at=1.0,
    ),
    ScienceProductNotice(
        notice_id="pn-diff-R22_S11-0123456789abcdef",
        product_id="diff-R22_S11-0123456789abcdef",
        kind="diff",
        instrument="ComCam",
        detector="R22_S11",
        archive_path="products/diff/ComCam/R22_S11/diff-R22_S11-0123456789abcdef.fits",
        checksum=CHECKSUM,
        visits=("CC_O_20250601_000101", "CC_O_20250601_000100"),
        inputs=({"product_id": "calexp-R22_S11-00", "name": "CC_O_20250601_000101", "checksum": CHECKSUM},),
        stats={"alerts": 1},
        created_at=2.0,
    ),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: str(m.TYPE))
def test_each_science_message_round_trips_and_its_schema_accepts_it(message: AlertNotice) -> None:
    """Encode then decode gives an equal message; the published JSON Schema accepts the encoding."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not a declared dependency")
    assert decode(message.to_json()) == message
    schema = all_schemas()[message.TYPE]
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(json.loads(message.to_json())))


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: str(m.TYPE))
def test_the_notice_log_can_position_each_science_message(message: AlertNotice) -> None:
    """``positioned`` sets the notice log position on both types (they are notices)."""
    assert json.loads(positioned(message.to_json(), 7))["position"] == 7


def test_a_science_product_of_an_unknown_kind_is_refused() -> None:
    """``kind`` is calexp, diff or alerts: anything else is a protocol error naming the field."""
    data = json.loads(SAMPLES[1].to_json())
    data["kind"] = "bias"
    with pytest.raises(ProtocolError, match="kind"):
        decode(json.dumps(data))
