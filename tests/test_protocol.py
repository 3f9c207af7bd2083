"""The wire contract: every message round-trips, and ``decode`` rejects bad input naming the field."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from test_science_protocol import SAMPLES as SCIENCE_SAMPLES

from protocol import (
    SCHEMA_VERSION,
    Ack,
    ArrivalNotice,
    Custody,
    Event,
    ExposureNotice,
    Message,
    Offer,
    Presence,
    Problem,
    ProductNotice,
    ProtocolError,
    Receipt,
    RouteControl,
    all_schemas,
    decode,
)

CHECKSUM = "blake3:" + "ab" * 32
NAME = "CC_O_20250601_000001_R22_S11.fits"


def _samples() -> list[Message]:
    return [
        Offer(
            transfer_id="t-1",
            sender="summit",
            receiver="base",
            name=NAME,
            size=4_000_000,
            checksum=CHECKSUM,
            closed_at=1_750_000_000.5,
            route="primary",
            route_sites=("summit", "base", "archive"),
            hop=0,
            source_path="/v1/transfers/t-1",
            attempt=1,
            sent_at=1_750_000_001.0,
        ),
        Ack(
            kind="offer",
            transfer_id="t-1",
            sender="base",
            status="stored",
            checksum=CHECKSUM,
            size=4_000_000,
            attempt=2,
            at=1_750_000_002.0,
        ),
        Ack(kind="offer", transfer_id="t-2", sender="archive", status="rejected", reason="no such route"),
        Receipt(
            receipt_id="r-1",
            archive="archive",
            name=NAME,
            size=4_000_000,
            checksum=CHECKSUM,
            status="archived",
            archive_path=f"raw/ComCam/20250601/CC_O_20250601_000001/{NAME}",
            archived_at=1_750_000_003.0,
            route="primary",
        ),
        ArrivalNotice(
            notice_id="n-1",
            obsid="CC_O_20250601_000001",
            instrument="ComCam",
            detector="R22_S11",
            name=NAME,
            size=4_000_000,
            checksum=CHECKSUM,
            archived_checksum="blake3:" + "cd" * 32,
            archive_path=f"raw/ComCam/20250601/CC_O_20250601_000001/{NAME}",
            arrived_at=1_750_000_003.0,
            closed_at=1_750_000_000.5,
            latency_s=2.5,
            route="primary",
            dayobs="20250601",
            seqnum=1,
            imgtype="OBJECT",
            fixes=({"keyword": "TIMESYS", "old": None, "new": "TAI", "source": "rule"},),
            complete=False,
        ),
        ExposureNotice(
            notice_id="x-1",
            obsid="CC_O_20250601_000001",
            instrument="ComCam",
            dayobs="20250601",
            seqnum=1,
            state="late",
            expected=9,
            arrived=8,
            missing=("R22_S11",),
            at=1_750_000_060.0,
        ),
        Presence(site="base", state="online", at=1_750_000_000.0, version="0.1.0"),
        Problem(
            site="archive",
            kind="quarantined",
            reason="not_fits: no SIMPLE card",
            name="notes.txt",
            details={"archive_path": "quarantine/not_fits/notes.txt"},
            at=1_750_000_000.0,
        ),
        Event(site="summit", kind="breaker_open", message="hop summit->base failing", details={"peer": "base"}),
        RouteControl(control_id="ctl-1", command="force", route="direct", issued_by="night-ops", at=1.0),
        Custody(custody_id="c-1", sender="base", receiver="summit", receipt='{"v":1,"kind":"custody_receipt"}'),
        ProductNotice(
            notice_id="pn-bias-R22_S11-0123456789abcdef",
            product_id="bias-R22_S11-0123456789abcdef",
            kind="bias",
            instrument="ComCam",
            detector="R22_S11",
            archive_path="products/bias/ComCam/R22_S11/bias-R22_S11-0123456789abcdef.fits",
            checksum=CHECKSUM,
            inputs=({"name": NAME, "checksum": CHECKSUM},),
            stats={"frames_used": 1},
        ),
    ]


SAMPLES = _samples() + SCIENCE_SAMPLES


def _offer_dict(**changes: Any) -> dict[str, Any]:
    data = SAMPLES[0].to_dict()
    data.update(changes)
    return data


def _without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: f"{m.TYPE}")
def test_every_message_round_trips_through_json(message: Message) -> None:
    """Encoding then decoding any message gives back an equal message of the same type and version."""
    wire = message.to_json()
    assert json.loads(wire)["v"] == SCHEMA_VERSION
    decoded = decode(wire)
    assert type(decoded) is type(message)
    assert decoded == message
    assert type(message).from_json(wire) == message


def test_samples_cover_every_registered_message_type() -> None:
    """The round-trip samples include every message type the codec knows."""
    assert {m.TYPE for m in SAMPLES} == set(all_schemas())


def test_decode_restricted_to_expected_types_rejects_others() -> None:
    """A message of a type not accepted at that point is rejected on its ``type`` field."""
    with pytest.raises(ProtocolError) as info:
        decode(SAMPLES[1].to_json(), Offer)
    assert info.value.field == "type"


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"{", b"\xff\xfe\x00", b"[]", b'[{"type": "offer"}]', b'"offer"', b"42", b"null"],
    ids=["empty", "text", "truncated", "not-utf8", "empty-array", "array", "string", "number", "null"],
)
def test_decode_rejects_payloads_that_are_not_a_json_object(payload: bytes) -> None:
    """Non-JSON and JSON that is not an object are rejected as a whole (no field to blame)."""
    with pytest.raises(ProtocolError) as info:
        decode(payload)
    assert info.value.field is None
    assert info.value.reason


def test_decode_rejects_oversized_payloads() -> None:
    """A payload beyond the message size limit is rejected before parsing."""
    with pytest.raises(ProtocolError, match="larger than"):
        decode(json.dumps(_offer_dict(name="a" * 300_000)).encode())


LONG_COMPONENT = "a" * 256 + ".fits"
LONG_TOTAL = "/".join(["b" * 200] * 6)  # 1205 bytes, every component short


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"type": "telegram"}, "type"),
        ({"type": None}, "type"),
        ({"type": 7}, "type"),
        ({"v": 2}, "v"),
        ({"v": 0}, "v"),
        ({"v": "1"}, "v"),
        ({"v": True}, "v"),
        ({"v": 1.0}, "v"),
        ({"extra": 1}, "extra"),
        ({"size": True}, "size"),
        ({"size": "12"}, "size"),
        ({"size": 1.5}, "size"),
        ({"size": None}, "size"),
        ({"hop": False}, "hop"),
        ({"attempt": "1"}, "attempt"),
        ({"closed_at": "yesterday"}, "closed_at"),
        ({"closed_at": True}, "closed_at"),
        ({"name": 5}, "name"),
        ({"route_sites": "summit,base"}, "route_sites"),
        ({"route_sites": ["summit", 3]}, "route_sites"),
        ({"name": "../x"}, "name"),
        ({"name": "raw/../../x"}, "name"),
        ({"name": ".."}, "name"),
        ({"name": "/abs"}, "name"),
        ({"name": "/etc/passwd"}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "a\\b"}, "name"),
        ({"name": ""}, "name"),
        ({"name": "a//b"}, "name"),
        ({"name": "./a"}, "name"),
        ({"name": ".hidden"}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"name": LONG_COMPONENT}, "name"),
        ({"name": LONG_TOTAL}, "name"),
        ({"name": "/".join(["d"] * 9)}, "name"),
        ({"size": -1}, "size"),
        ({"size": (1 << 40) + 1}, "size"),
        ({"size": 10**30}, "size"),
        ({"checksum": "md5:0123456789abcdef0123456789abcdef"}, "checksum"),
        ({"checksum": "blake3:" + "AB" * 32}, "checksum"),
        ({"checksum": "blake3:" + "ab" * 31}, "checksum"),
        ({"checksum": "ab" * 32}, "checksum"),
        ({"checksum": "blake3:" + "zz" * 32}, "checksum"),
        ({"sender": "Summit!"}, "sender"),
        ({"source_path": "/etc/passwd"}, "source_path"),
        ({"attempt": 0}, "attempt"),
        ({"hop": -1}, "hop"),
    ],
    ids=lambda v: repr(v)[:60] if isinstance(v, dict) else str(v),
)
def test_decode_rejects_a_bad_offer_naming_the_field(changes: dict[str, Any], field: str) -> None:
    """An offer with one bad field is rejected with a ProtocolError whose ``field`` names it."""
    with pytest.raises(ProtocolError) as info:
        decode(json.dumps(_offer_dict(**changes)).encode())
    assert info.value.field == field, str(info.value)
    assert info.value.reason


@pytest.mark.parametrize("missing", ["transfer_id", "name", "size", "checksum", "route_sites", "v", "type"])
def test_decode_rejects_an_offer_missing_a_field(missing: str) -> None:
    """An offer without a required field is rejected naming that field."""
    with pytest.raises(ProtocolError) as info:
        decode(json.dumps(_without(_offer_dict(), missing)).encode())
    assert info.value.field == missing


def test_decode_rejects_an_offer_whose_route_does_not_match_its_sites() -> None:
    """The sender and receiver must be the route's sites at ``hop`` and ``hop + 1``."""
    with pytest.raises(ProtocolError) as info:
        decode(json.dumps(_offer_dict(receiver="archive")).encode())
    assert info.value.field == "route_sites"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "../x"),
        ("name", "/abs"),
        ("name", "a\x00b"),
        ("name", LONG_COMPONENT),
        ("archive_path", "../../etc/passwd"),
        ("archive_path", "/etc/passwd"),
        ("size", -5),
        ("size", (1 << 40) + 1),
        ("checksum", "sha256:00"),
    ],
)
def test_decode_rejects_a_bad_custody_naming_the_field(field: str, value: object) -> None:
    """Custody receipts carry names too, and are held to the same rules."""
    data = SAMPLES[3].to_dict()
    data[field] = value
    with pytest.raises(ProtocolError) as info:
        decode(json.dumps(data).encode())
    assert info.value.field == field


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"status": "great"}, "status"),
        ({"kind": "gift"}, "kind"),
        ({"checksum": "blake3:nothex"}, "checksum"),
        ({"size": -1}, "size"),
        ({"reason": "x" * 2000}, "reason"),
    ],
)
def test_decode_rejects_a_bad_ack_naming_the_field(changes: dict[str, Any], field: str) -> None:
    """An ack with a bad status, kind, checksum, size or reason is rejected naming the field."""
    data = SAMPLES[1].to_dict()
    data.update(changes)
    with pytest.raises(ProtocolError) as info:
        decode(json.dumps(data).encode())
    assert info.value.field == field


def test_schema_command_prints_every_message_schema() -> None:
    """``skyrelay schema`` prints valid JSON with a JSON Schema for every message type."""
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "schema"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    schemas = json.loads(result.stdout)
    assert set(schemas) == {m.TYPE for m in SAMPLES}
    for tag, schema in schemas.items():
        assert schema["properties"]["type"] == {"const": tag}
        assert schema["properties"]["v"]["const"] == SCHEMA_VERSION
        assert schema["additionalProperties"] is False
        assert {"type", "v"} <= set(schema["required"])


def test_published_schemas_accept_the_samples_and_reject_bad_ones() -> None:
    """The published JSON Schemas are valid and agree with the codec on good and bad offers."""
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not a declared dependency")
    schemas = all_schemas()
    for message in SAMPLES:
        validator = jsonschema.Draft202012Validator(schemas[message.TYPE])
        validator.check_schema(schemas[message.TYPE])
        assert not list(validator.iter_errors(json.loads(message.to_json()))), message.TYPE
    offer_validator = jsonschema.Draft202012Validator(schemas["offer"])
    for bad in (_offer_dict(size=-1), _offer_dict(v=2), _offer_dict(extra=1), _offer_dict(checksum="md5:00")):
        assert list(offer_validator.iter_errors(bad))
