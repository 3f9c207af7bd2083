"""Signed envelopes: a round trip verifies, and every way of forging, replaying or damaging one is refused."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol import Ack, ProtocolError, Receipt, decode
from protocol.signing import (
    HOP_KIND,
    RECEIPT_KIND,
    SignatureError,
    generate_keypair,
    load_private_key,
    open_hop,
    public_key_from_text,
    public_key_to_text,
    public_keys_from_text,
    seal,
    seal_hop,
    seal_receipt,
    unseal,
    verify_receipt,
    write_private_key,
)

CHECKSUM = "blake3:" + "ab" * 32
SITES = ("summit", "base", "archive", "operator")
PRIVATE: dict[str, Ed25519PrivateKey] = {name: generate_keypair()[0] for name in SITES}
KEYS: dict[str, Ed25519PublicKey] = {name: key.public_key() for name, key in PRIVATE.items()}


def _ack() -> bytes:
    return Ack(kind="offer", transfer_id="t-1", sender="base", status="stored", checksum=CHECKSUM, size=4_000_000,
               at=1_750_000_000.0).to_json()  # fmt: skip


def _receipt() -> bytes:
    return Receipt(
        receipt_id="receipt-CC_O_20250601_000001_R22_S11-000042",
        archive="archive",
        name="CC_O_20250601_000001_R22_S11.fits",
        size=4_000_000,
        checksum=CHECKSUM,
        status="archived",
        archive_path="raw/LSSTCam/2025/06/01/CC_O_20250601_000001/CC_O_20250601_000001_R22_S11.fits",
        archived_at=1_750_000_000.0,
        route="primary-summit.base.archive-20250601T000001Z-000042",
    ).to_json()


def _reason(data: bytes, *, kind: str = "ack", allowed: tuple[str, ...] = ("base",), to: str = "") -> str:
    with pytest.raises(SignatureError) as info:
        unseal(data, kind=kind, keys=KEYS, allowed_signers=allowed, to=to)
    assert isinstance(info.value, ProtocolError)
    return info.value.reason


def _edit(data: bytes, **changes: object) -> bytes:
    envelope = json.loads(data)
    envelope.update(changes)
    return json.dumps(envelope).encode()


def test_a_sealed_message_unseals_to_the_exact_body_and_its_signer() -> None:
    """unseal returns the signer and the very bytes that were sealed, which decode to the same message."""
    body = _ack()
    sealed = unseal(seal(body, kind="ack", signer="base", key=PRIVATE["base"], to="summit"), kind="ack", keys=KEYS,
                    allowed_signers={"base"}, to="summit")  # fmt: skip
    assert (sealed.signer, sealed.kind, sealed.to, sealed.body) == ("base", "ack", "summit", body)
    assert decode(sealed.body) == decode(body)


def test_the_envelope_is_compact_json_with_the_body_as_text() -> None:
    """The wire form is a flat JSON object whose body is the message's JSON text, signature 64 bytes base64url."""
    body = _ack()
    envelope = json.loads(seal(body, kind="ack", signer="base", key=PRIVATE["base"], to="summit"))
    assert set(envelope) == {"v", "kind", "signer", "to", "body", "sig"}
    assert envelope["to"] == "summit"
    assert envelope["body"].encode() == body
    assert len(base64.urlsafe_b64decode(envelope["sig"] + "==")) == 64


@pytest.mark.parametrize("payload", [b'{"type":"ack","v":1}', b'{"type":"offer","route_sites":["a","b"]}'])
def test_a_bare_message_is_refused_as_unsigned(payload: bytes) -> None:
    """A message without an envelope (the old wire form) is refused with reason ``unsigned``."""
    assert _reason(payload) == "unsigned"


def test_an_unknown_signer_is_refused() -> None:
    """A signer the topology has no key for is refused, even if it signed correctly with its own key."""
    stranger = Ed25519PrivateKey.generate()
    assert _reason(seal(_ack(), kind="ack", signer="mallory", key=stranger), allowed=("base", "mallory")) == (
        "unknown_signer"
    )


def test_a_known_signer_not_allowed_for_this_kind_is_refused() -> None:
    """A valid signature by a known site that may not send this kind (summit signing custody) is refused."""
    data = seal(_receipt(), kind=RECEIPT_KIND, signer="summit", key=PRIVATE["summit"])
    assert _reason(data, kind=RECEIPT_KIND, allowed=("archive",)) == "signer_not_allowed"


def test_a_signature_made_for_one_kind_is_not_accepted_as_another() -> None:
    """An ack replayed into the custody mailbox is refused, whether its kind label is kept or rewritten."""
    ack = seal(_ack(), kind="ack", signer="base", key=PRIVATE["base"])
    assert _reason(ack, kind="custody") == "wrong_kind"
    assert _reason(_edit(ack, kind="custody"), kind="custody") == "bad_signature"


def test_relabelling_the_signer_breaks_the_signature() -> None:
    """base's signed ack re-labelled as summit's does not verify under summit's key."""
    ack = seal(_ack(), kind="ack", signer="base", key=PRIVATE["base"])
    assert _reason(_edit(ack, signer="summit"), allowed=("summit",)) == "bad_signature"


def test_a_message_addressed_to_one_site_is_refused_by_another() -> None:
    """An ack the archive sealed to base, replayed by base into the summit's mailbox, is refused; so is an
    envelope whose ``to`` was rewritten, and an addressed message read as a statement to anyone."""
    ack = seal(_ack(), kind="ack", signer="archive", key=PRIVATE["archive"], to="base")
    assert unseal(ack, kind="ack", keys=KEYS, allowed_signers={"archive"}, to="base").to == "base"
    assert _reason(ack, allowed=("archive",), to="summit") == "wrong_audience"
    assert _reason(ack, allowed=("archive",)) == "wrong_audience"
    assert _reason(_edit(ack, to="summit"), allowed=("archive",), to="summit") == "bad_signature"
    receipt = seal_receipt(_receipt(), archive="archive", key=PRIVATE["archive"])
    assert _reason(receipt, kind=RECEIPT_KIND, allowed=("archive",), to="summit") == "wrong_audience"


def test_a_hop_addressed_to_another_site_is_refused() -> None:
    """A custody hop base sealed to the summit is not accepted by the archive reading its own mailbox."""
    receipt = seal_receipt(_receipt(), archive="archive", key=PRIVATE["archive"])
    hop = seal_hop(receipt, signer="base", key=PRIVATE["base"], to="summit")
    with pytest.raises(SignatureError) as info:
        open_hop(hop, keys=KEYS, relays={"base"}, archive="archive", to="archive")
    assert info.value.reason == "wrong_audience"


def test_a_tampered_body_is_refused() -> None:
    """Changing one character of the signed body (the ack's status) makes the signature fail."""
    ack = seal(_ack(), kind="ack", signer="base", key=PRIVATE["base"])
    body = json.loads(ack)["body"]
    assert '"stored"' in body
    assert _reason(_edit(ack, body=body.replace('"stored"', '"failed"'))) == "bad_signature"


def test_a_tampered_signature_is_refused() -> None:
    """Flipping one bit of the signature makes it fail; a truncated signature is malformed."""
    ack = seal(_ack(), kind="ack", signer="base", key=PRIVATE["base"])
    raw = bytearray(base64.urlsafe_b64decode(json.loads(ack)["sig"] + "=="))
    raw[10] ^= 0x01
    flipped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert _reason(_edit(ack, sig=flipped)) == "bad_signature"
    assert _reason(_edit(ack, sig=flipped[:40])) == "malformed"


def test_a_signature_by_the_wrong_key_is_refused() -> None:
    """A message claiming to be base's but signed with summit's key does not verify."""
    assert _reason(seal(_ack(), kind="ack", signer="base", key=PRIVATE["summit"])) == "bad_signature"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v":1,"kind":"ack","signer":"base","to":"","body":"{}"}',
        b'{"v":1,"kind":"ack","signer":"base","to":"","body":"{}","sig":"AA","extra":1}',
        b'{"v":2,"kind":"ack","signer":"base","to":"","body":"{}","sig":"AA"}',
        b'{"v":1,"kind":"ack","signer":"base","to":"","body":{},"sig":"AA"}',
        b'{"v":1,"kind":"ack","signer":"Base\\u0000","to":"","body":"{}","sig":"AA"}',
        b'{"v":1,"kind":"ack","signer":"base","to":"","body":"{}","sig":"not base64!"}',
        b'{"v":1,"kind":"ack","signer":"base","to":"","body":"\\ud800","sig":"' + b"A" * 86 + b'"}',
        b'{"v":1,"kind":"ack","kind":"ack","signer":"base","to":"","body":"{}","sig":"AA"}',
        b'{"v":1,"kind":"ack","signer":"base","to":"","body":"' + b"x" * 300_000 + b'","sig":"AA"}',
    ],
    ids=["empty", "text", "array", "no-sig", "extra-field", "version", "body-object", "bad-signer",
         "sig-not-b64", "lone-surrogate", "duplicate-key", "oversized"],
)
def test_a_malformed_envelope_is_refused_as_malformed(data: bytes) -> None:
    """Anything that is not exactly a version-1 envelope of strings is refused with reason ``malformed``."""
    assert _reason(data) == "malformed"


def test_seal_refuses_names_that_could_blur_the_signed_string() -> None:
    """kind, signer and to must be plain names (no NUL, no upper case), so the signed string splits one way."""
    for kind, signer, to in (("ack\x00x", "base", ""), ("ack", "base\x00ack", ""), ("", "base", ""),
                             ("ack", "Base", ""), ("ack", "base", "summit\x00")):  # fmt: skip
        with pytest.raises(ProtocolError):
            seal(b"{}", kind=kind, signer=signer, key=PRIVATE["base"], to=to)


def test_a_custody_hop_carries_the_archives_receipt_verbatim_through_two_relays() -> None:
    """archive -> base -> summit: each hop verifies the relay and the archive; the receipt bytes never change."""
    receipt = seal_receipt(_receipt(), archive="archive", key=PRIVATE["archive"])
    to_base = seal_hop(receipt, signer="archive", key=PRIVATE["archive"], to="base", fields={"sender": "archive"})
    at_base = open_hop(to_base, keys=KEYS, relays={"archive"}, archive="archive", to="base")
    assert at_base.relay == "archive" and at_base.receipt_envelope == receipt
    to_summit = seal_hop(at_base.receipt_envelope, signer="base", key=PRIVATE["base"], to="summit",
                         fields={"sender": "base"})  # fmt: skip
    at_summit = open_hop(to_summit, keys=KEYS, relays={"base"}, archive="archive", to="summit")
    assert at_summit.relay == "base"
    assert at_summit.receipt_envelope == receipt
    assert at_summit.receipt.signer == "archive" and at_summit.receipt.body == _receipt()
    assert json.loads(at_summit.body)["sender"] == "base"
    assert verify_receipt(at_summit.receipt_envelope, keys=KEYS, archive="archive").body == _receipt()


def test_a_relay_cannot_forge_the_receipt_it_carries() -> None:
    """base wrapping a receipt it signed itself (or one with an edited body) is refused at the summit."""
    forged = seal(_receipt(), kind=RECEIPT_KIND, signer="base", key=PRIVATE["base"])
    with pytest.raises(SignatureError) as info:
        open_hop(seal_hop(forged, signer="base", key=PRIVATE["base"], to="summit"), keys=KEYS, relays={"base"},
                 archive="archive", to="summit")  # fmt: skip
    assert info.value.reason == "signer_not_allowed"
    genuine = seal_receipt(_receipt(), archive="archive", key=PRIVATE["archive"])
    body = json.loads(genuine)["body"].replace('"archived"', '"quarantined"')
    with pytest.raises(SignatureError) as info:
        open_hop(seal_hop(_edit(genuine, body=body), signer="base", key=PRIVATE["base"], to="summit"), keys=KEYS,
                 relays={"base"}, archive="archive", to="summit")  # fmt: skip
    assert info.value.reason == "bad_signature"


def test_a_hop_from_a_site_that_is_not_a_relay_here_is_refused() -> None:
    """A genuine hop signed by the summit is not accepted where only base may relay custody."""
    receipt = seal_receipt(_receipt(), archive="archive", key=PRIVATE["archive"])
    hop = seal_hop(receipt, signer="summit", key=PRIVATE["summit"], to="base")
    with pytest.raises(SignatureError) as info:
        open_hop(hop, keys=KEYS, relays={"base"}, archive="archive", to="base")
    assert info.value.reason == "signer_not_allowed"


def test_the_bare_receipt_is_not_a_hop_and_a_hop_is_not_a_receipt() -> None:
    """The two custody kinds are domain-separated: neither verifies in the other's place."""
    receipt = seal_receipt(_receipt(), archive="archive", key=PRIVATE["archive"])
    hop = seal_hop(receipt, signer="archive", key=PRIVATE["archive"], to="base")
    assert _reason(receipt, kind=HOP_KIND, allowed=("archive",)) == "wrong_kind"
    with pytest.raises(SignatureError) as info:
        verify_receipt(hop, keys=KEYS, archive="archive")
    assert info.value.reason == "wrong_kind"


def test_a_hop_without_a_receipt_is_malformed() -> None:
    """A validly signed hop whose body has no receipt string is refused as malformed."""
    hop = seal(b'{"sender":"base"}', kind=HOP_KIND, signer="base", key=PRIVATE["base"], to="summit")
    with pytest.raises(SignatureError) as info:
        open_hop(hop, keys=KEYS, relays={"base"}, archive="archive", to="summit")
    assert info.value.reason == "malformed"


def test_public_keys_round_trip_through_their_text_form() -> None:
    """``ed25519:<base64>`` text parses back to a key that verifies the same signatures."""
    text = public_key_to_text(KEYS["archive"])
    assert text.startswith("ed25519:") and len(base64.b64decode(text[8:])) == 32
    receipt = seal_receipt(_receipt(), archive="archive", key=PRIVATE["archive"])
    assert verify_receipt(receipt, keys={"archive": public_key_from_text(text)}, archive="archive").signer == "archive"


SHORT_KEY = "ed25519:" + base64.b64encode(b"x" * 31).decode()


@pytest.mark.parametrize("text", ["", "rsa:AAAA", "ed25519:not*base64", SHORT_KEY])
def test_a_bad_public_key_text_is_refused_naming_the_signer(text: str) -> None:
    """A wrong prefix, bad base64 or wrong length is a ProtocolError on ``keys.<signer>``."""
    with pytest.raises(ProtocolError) as info:
        public_keys_from_text({"archive": public_key_to_text(KEYS["archive"]), "base": text})
    assert info.value.field == "keys.base"


def test_private_keys_are_written_0600_and_load_back(tmp_path: Path) -> None:
    """A PEM PKCS8 file is created with mode 0600 and loads to the same key; a raw 32-byte seed loads too."""
    private, public = generate_keypair()
    path = tmp_path / "archive.key"
    write_private_key(path, private)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    loaded = load_private_key(path)
    assert unseal(seal(b"{}", kind="ack", signer="base", key=loaded), kind="ack", keys={"base": public},
                  allowed_signers={"base"}).body == b"{}"  # fmt: skip
    raw = tmp_path / "raw.key"
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, bytes(range(32)))
    os.close(fd)
    assert load_private_key(raw).public_key() == Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key()
    with pytest.raises(FileExistsError):
        write_private_key(path, private)


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    """A key file with group or other permissions is refused with a message saying chmod 600."""
    path = tmp_path / "loose.key"
    write_private_key(path, generate_keypair()[0])
    path.chmod(0o644)
    with pytest.raises(ProtocolError, match="chmod 600"):
        load_private_key(path)


def test_seal_and_unseal_cost_is_measured() -> None:
    """Seal and unseal a ~500-byte body 300 times each; print µs per call (a figure, not a timed assertion)."""
    body = _receipt()
    assert 400 <= len(body) <= 600
    n = 300
    start = time.perf_counter()
    envelopes = [seal(body, kind=RECEIPT_KIND, signer="archive", key=PRIVATE["archive"]) for _ in range(n)]
    seal_us = (time.perf_counter() - start) / n * 1e6
    start = time.perf_counter()
    for data in envelopes:
        unseal(data, kind=RECEIPT_KIND, keys=KEYS, allowed_signers=("archive",))
    unseal_us = (time.perf_counter() - start) / n * 1e6
    hop = seal_hop(envelopes[0], signer="base", key=PRIVATE["base"], to="summit")
    start = time.perf_counter()
    for _ in range(n):
        open_hop(hop, keys=KEYS, relays=("base",), archive="archive", to="summit")
    hop_us = (time.perf_counter() - start) / n * 1e6
    print(f"\nbody {len(body)} B, envelope {len(envelopes[0])} B: seal {seal_us:.0f} µs, unseal {unseal_us:.0f} µs, "
          f"open_hop (two verifies) {hop_us:.0f} µs")  # fmt: skip
    assert len(envelopes[0]) < 1.3 * len(body) + 150  # the escaped body plus about 130 bytes of envelope
