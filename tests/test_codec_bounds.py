"""Hostile bytes: size and depth are bounded before parsing, and every bad payload is a ProtocolError."""

from __future__ import annotations

import contextlib
import json
import random
import time

import pytest

from protocol import Ack, Message, Offer, ProtocolError, decode
from protocol.codec import MAX_DEPTH, MAX_MESSAGE_BYTES, json_depth_exceeds, load_object
from protocol.signing import unseal

CHECKSUM = "blake3:" + "ab" * 32


def _offer() -> Offer:
    return Offer(
        transfer_id="t-1",
        sender="summit",
        receiver="base",
        name="CC_O_20250601_000001_R22_S11.fits",
        size=4_000_000,
        checksum=CHECKSUM,
        route="primary",
        route_sites=("summit", "base", "archive"),
        hop=0,
        source_path="/v1/transfers/t-1",
        attempt=1,
        closed_at=1_750_000_000.0,
        sent_at=1_750_000_001.0,
    )


def _reject(payload: bytes | str) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(payload)
    return info.value


def test_a_2000_byte_message_nested_1000_deep_is_refused_before_parsing() -> None:
    """The payload that crashed the daemon with RecursionError is now a ProtocolError naming the depth."""
    payload = b"[" * 1000 + b"1" + b"]" * 999 + b"]"
    assert len(payload) == 2001
    assert "nested deeper than 32" in _reject(payload).reason


@pytest.mark.parametrize("opener,closer", [(b"[", b"]"), (b'{"a":', b"}")], ids=["arrays", "objects"])
def test_depth_is_accepted_up_to_the_limit_and_refused_one_beyond(opener: bytes, closer: bytes) -> None:
    """Nesting of exactly MAX_DEPTH parses (then fails as a non-message); MAX_DEPTH + 1 is refused as too deep."""

    def nest(depth: int) -> bytes:
        inner = b'{"x":' * 1 + opener * (depth - 2) + b"1" + closer * (depth - 2) + b"}"
        return b'{"a":' + inner + b"}"

    assert not json_depth_exceeds(nest(MAX_DEPTH), MAX_DEPTH)
    assert load_object(nest(MAX_DEPTH))["a"]
    assert json_depth_exceeds(nest(MAX_DEPTH + 1), MAX_DEPTH)
    with pytest.raises(ProtocolError, match="nested deeper"):
        load_object(nest(MAX_DEPTH + 1))


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    """A string of 10,000 brackets (and escaped quotes among them) is not nesting: the payload parses."""
    text = '[{"\\"' * 2000
    data = load_object(json.dumps({"a": text}).encode())
    assert data["a"] == text


def test_an_escaped_quote_does_not_end_a_string_for_the_depth_scan() -> None:
    """``"\\"[[[…"`` is one string; brackets after a real closing quote count."""
    deep = b"[" * 40 + b"]" * 40
    assert not json_depth_exceeds(b'{"a":"\\"' + deep + b'"}', MAX_DEPTH)
    assert not json_depth_exceeds(b'{"a":"\\\\\\"' + deep + b'"}', MAX_DEPTH)
    assert json_depth_exceeds(b'{"a":"\\\\","b":' + deep + b"}", MAX_DEPTH)


def test_an_oversized_payload_is_refused_before_parsing() -> None:
    """A payload of MAX_MESSAGE_BYTES + 1 bytes is refused as too large; bytes and str alike."""
    payload = b'{"a":"' + b"x" * (MAX_MESSAGE_BYTES - 7) + b'"}'
    assert len(payload) == MAX_MESSAGE_BYTES + 1
    assert "larger than" in _reject(payload).reason
    assert "larger than" in _reject(payload.decode()).reason


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b'{"type":"ack","v":1e999}', "out of range"),
        (b'{"type":"ack","v":NaN}', "NaN"),
        (b'{"type":"ack","v":-Infinity}', "-Infinity"),
        (b'{"type":"ack","v":' + b"9" * 5000 + b"}", "longer than 64 digits"),
        (b'{"type":"ack","v":1,"v":2}', "duplicate key 'v'"),
        (b'{"type":"ack","x":{"k":1,"k":1}}', "duplicate key 'k'"),
        (b'{"type":"\xff\xfe"}', "not UTF-8"),
        (b'{"type":"\xed\xa0\x80"}', "not UTF-8"),
        (b'\xef\xbb\xbf{"type":"ack"}', "not valid JSON"),
        ('{"type":"\ud800"}', "not encodable as UTF-8"),
        (b'{"type":"ack"', "not valid JSON"),
    ],
    ids=["huge-float", "nan", "infinity", "huge-int", "duplicate", "nested-duplicate", "invalid-utf8",
         "surrogate-utf8", "bom", "str-surrogate", "truncated"],
)
def test_hostile_values_are_refused_with_a_clear_reason(payload: bytes | str, words: str) -> None:
    """Non-finite numbers, over-long integers, duplicate keys and invalid UTF-8 are ProtocolErrors saying so."""
    assert words in _reject(payload).reason


def test_wrong_shapes_are_protocol_errors_not_type_errors() -> None:
    """Lists, objects and nulls where scalars belong, and non-bytes payloads, raise ProtocolError only."""
    good = _offer().to_dict()
    for field in good:
        for value in ([], {}, None, [[1]], {"a": [1]}, 1.5, True, "x" * 5000, -1):
            data = dict(good, **{field: value})
            with contextlib.suppress(ProtocolError):
                decode(json.dumps(data).encode())
    for junk in (None, 42, ["a"], object()):
        with pytest.raises(ProtocolError):
            decode(junk)  # type: ignore[arg-type]


def test_valid_messages_still_round_trip_exactly() -> None:
    """The bounds change nothing for valid messages: decode(to_json) is the same message, Offer and Ack."""
    ack = Ack(kind="offer", transfer_id="t-1", sender="base", status="stored", checksum=CHECKSUM)
    for message in (_offer(), ack):
        assert decode(message.to_json()) == message
        assert type(message).from_json(message.to_json().decode()) == message


def _mutate(rng: random.Random, data: bytes) -> bytes:
    raw = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.random()
        pos = rng.randrange(len(raw) + 1)
        if op < 0.3 and raw:
            raw[min(pos, len(raw) - 1)] = rng.randrange(256)
        elif op < 0.5:
            raw[pos:pos] = rng.choice([b"[", b"{", b'"', b"\\", b"]", b"}", b",", b":", b"\xff", b"1e999", b"-"])
        elif op < 0.65 and raw:
            del raw[pos : pos + rng.randint(1, 10)]
        elif op < 0.8:
            raw[pos:pos] = rng.choice([b"[", b'{"a":']) * rng.randint(1, 200)
        else:
            raw[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    return bytes(raw)


def _random_json(rng: random.Random, depth: int) -> object:
    pick = rng.random()
    if depth <= 0 or pick < 0.3:
        return rng.choice([None, True, 1, -7, 2.5, "s", '"q\\', "ü", 10**30])
    if pick < 0.65:
        return [_random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {f"k{rng.randint(0, 5)}": _random_json(rng, depth - 1) for _ in range(rng.randint(0, 3))}


def test_seeded_fuzz_only_ever_raises_protocol_error() -> None:
    """3,000 mutated messages and 2,000 random JSON documents: decode and unseal return or raise ProtocolError."""
    rng = random.Random(20250601)
    seeds: list[Message] = [_offer(), Ack(kind="offer", transfer_id="t-1", sender="base", status="stored")]
    outcomes = {"decoded": 0, "refused": 0}
    cases = [_mutate(rng, rng.choice(seeds).to_json()) for _ in range(3000)]
    cases += [json.dumps({"type": "offer", "v": 1, "x": _random_json(rng, 40)}).encode() for _ in range(2000)]
    for payload in cases:
        try:
            decode(payload)
            outcomes["decoded"] += 1
        except ProtocolError:
            outcomes["refused"] += 1
        with contextlib.suppress(ProtocolError):
            unseal(payload, kind="offer", keys={}, allowed_signers=())
    assert outcomes["refused"] > 4000
    assert outcomes["decoded"] + outcomes["refused"] == 5000


def test_the_depth_scan_is_linear_on_adversarial_input() -> None:
    """64 KiB of alternating quotes and backslashes, or of brackets, scans in well under a second."""
    for payload in (b'"\\' * (MAX_MESSAGE_BYTES // 2), b"[" * MAX_MESSAGE_BYTES, b'["' * (MAX_MESSAGE_BYTES // 2)):
        start = time.perf_counter()
        with pytest.raises(ProtocolError):
            load_object(payload)
        assert time.perf_counter() - start < 1.0
