"""The batch body (protocol.batch): what it carries comes back unchanged, and hostile bodies are refused."""

from __future__ import annotations

import json

import pytest

from protocol.batch import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, batch_room, decode_batch, encode_batch, entry_bytes
from protocol.errors import ProtocolError
from protocol.transfer import Ack, Offer


def _offer(n: int) -> Offer:
    return Offer(
        transfer_id=f"t-{n}",
        sender="summit",
        receiver="archive",
        name=f"AT_O_20261201_{n:06d}_R00_S00.fits",
        size=100_000,
        checksum="blake3:" + f"{n:064x}",
        closed_at=1.7e9,
        route="direct",
        route_sites=("summit", "archive"),
        hop=0,
        source_path=f"/v1/transfers/t-{n}",
        attempt=1,
        sent_at=1.7e9,
    )


def test_a_batch_gives_back_each_message_in_order_and_unchanged() -> None:
    offers = [_offer(n) for n in range(3)]
    ack = Ack(kind="offer", transfer_id="t-9", sender="archive", status="stored", checksum="blake3:" + "a" * 64)
    body = encode_batch([("offer", o.to_json()) for o in offers] + [("ack", ack.to_json())])
    entries = decode_batch(body)
    assert [e.kind for e in entries] == ["offer", "offer", "offer", "ack"]
    assert [e.error for e in entries] == [None] * 4
    assert [Offer.from_dict(e.body) for e in entries[:3]] == offers
    assert Ack.from_dict(entries[3].body) == ack


def test_a_batch_is_bounded_in_count_and_bytes_and_carries_no_control() -> None:
    one = _offer(1).to_json()
    with pytest.raises(ProtocolError, match="1 to"):
        encode_batch([])
    with pytest.raises(ProtocolError, match="1 to"):
        encode_batch([("offer", one)] * (MAX_BATCH_MESSAGES + 1))
    with pytest.raises(ProtocolError, match="do not travel in a batch"):
        encode_batch([("control", b"{}")])
    with pytest.raises(ProtocolError, match="JSON object"):
        encode_batch([("offer", b"[1]")])
    fits = batch_room() // entry_bytes(one)
    assert len(encode_batch([("offer", one)] * min(fits, MAX_BATCH_MESSAGES))) <= MAX_BATCH_BYTES
    big = b'{"pad":"' + b"x" * (MAX_BATCH_BYTES // 2) + b'"}'
    with pytest.raises(ProtocolError, match="larger than"):
        encode_batch([("offer", big), ("offer", big)])


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b'{"type":"offer","v":1,"messages":[]}', "expected 'batch'"),
        (b'{"type":"batch","v":2,"messages":[{"kind":"ack","body":{}}]}', "unsupported batch version"),
        (b'{"type":"batch","v":1,"messages":[],"extra":1}', "unexpected batch fields"),
        (b'{"type":"batch","v":1,"messages":[]}', "1 to"),
        (b'{"type":"batch","v":1,"messages":{"kind":"ack"}}', "1 to"),
        (b"[" * 40 + b"]" * 40, "deeper than"),
        (b'{"type":"batch","type":"batch","v":1,"messages":[]}', "duplicate key"),
    ],
)
def test_a_body_that_is_no_batch_is_refused_whole(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_batch(body)


def test_a_bad_entry_is_refused_alone_and_its_neighbours_still_read() -> None:
    good = json.loads(_offer(1).to_json())
    body = json.dumps(
        {
            "type": "batch",
            "v": 1,
            "messages": [
                {"kind": "control", "body": {}},
                {"kind": "offer", "body": good},
                {"kind": "ack", "body": "text"},
                {"kind": "ack"},
                7,
                {"kind": "offer", "body": good},
            ],
        }
    ).encode()
    entries = decode_batch(body)
    errors = [None if e.error is None else e.error.reason for e in entries]
    assert errors[1] is None and errors[5] is None
    assert "do not travel in a batch" in str(errors[0])
    assert "must be an object" in str(errors[2])
    assert "kind and body" in str(errors[3]) and "kind and body" in str(errors[4])
    assert entries[1].body == good and [e.index for e in entries] == list(range(6))
