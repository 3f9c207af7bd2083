"""Signed envelopes: who said a message, checked with Ed25519 independently of the broker that carried it.

A signed message on the wire is a flat JSON object::

    {"v":1,"kind":"ack","signer":"base","to":"summit","body":"<the message's exact JSON text>","sig":"<b64url>"}

The signature covers ``b"skyrelay/v1/sig\\x00" + kind + b"\\x00" + signer + b"\\x00" + to + b"\\x00" + body``:
a signature made for one kind (an ack) does not verify as another (a custody receipt), one signer's
cannot be re-labelled as another's, and a message sealed *to* one site (its audience, ``to``) cannot be
replayed into another site's mailbox — an Ack names no receiver in its body, so without ``to`` a relay
could hand an ack the archive signed for it to the summit. ``to`` is ``""`` for a statement meant for
anyone (the archive's custody receipt, read by every site of the route). ``kind``, ``signer`` and
``to`` are names without NUL bytes (``NAME_PATTERN``), so the signed string splits one way only.

The body travels as a JSON *string* holding the exact text that was signed: the verifier checks those
bytes and then parses those same bytes, so no canonical form of JSON is needed and nothing the
signature did not cover is ever read.

Custody is the archive's receipt carried unchanged hop by hop (DESIGN §3): the archive seals the receipt
(kind ``custody_receipt``) once; each hop seals a *hop* message (kind ``custody``, signed by the relaying
site) whose JSON body carries that receipt envelope verbatim in its ``receipt`` field. A receiver checks
the hop signature (a peer relayed it) and the inner signature (the archive said it), and relays the
inner bytes untouched.

What a signature does not say: *when*. A receiver therefore also checks the verified body: its claimed
sender equals the signer, and its id (transfer, custody, control) is not one already acted on —
receivers are idempotent anyway, and a control message's ``at`` bounds how old a command may be.

Pure: no I/O except :func:`load_private_key` / :func:`write_private_key`, which read and write key files.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import re
import stat
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.codec import MAX_MESSAGE_BYTES, load_object
from protocol.errors import ProtocolError

ENVELOPE_VERSION = 1
DOMAIN = b"skyrelay/v1/sig\x00"
NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
RECEIPT_KIND = "custody_receipt"
HOP_KIND = "custody"
PUBLIC_KEY_PREFIX = "ed25519:"
# The body is escaped once per level of nesting (a hop carries a receipt): allow for it.
MAX_ENVELOPE_BYTES = 4 * MAX_MESSAGE_BYTES
_SIGNATURE_BYTES = 64
_NAME_RE = re.compile(NAME_PATTERN)
_FIELDS = frozenset({"v", "kind", "signer", "to", "body", "sig"})
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_ENVELOPE_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

SignatureReason = Literal[
    "unsigned", "unknown_signer", "signer_not_allowed", "bad_signature", "wrong_kind", "wrong_audience", "malformed"
]


class SignatureError(ProtocolError):
    """A signed envelope is missing, malformed, from the wrong signer, or does not verify.

    Attributes:
        reason: what was wrong, one of ``SignatureReason``: ``unsigned``, ``unknown_signer``,
            ``signer_not_allowed``, ``bad_signature``, ``wrong_kind``, ``wrong_audience``, ``malformed``.
        detail: a human-readable explanation.
        signer: the signer the envelope claimed, when it could be read.
    """

    reason: SignatureReason

    def __init__(self, reason: SignatureReason, detail: str, *, signer: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.signer = signer
        self.args = (f"{reason}: {detail}",)

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Sealed:
    """A verified envelope: who signed it, as what kind, for whom, and the exact body bytes."""

    signer: str
    kind: str
    to: str
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CustodyHop:
    """A verified custody hop: the relaying peer, its hop body, and the archive's receipt inside it.

    Attributes:
        relay: the site that signed this hop (the peer that sent it to us).
        body: the hop message's JSON text (it holds the ``receipt`` field and any per-hop fields).
        receipt: the archive's verified receipt (signer = the archive, body = the receipt's JSON text).
        receipt_envelope: the archive-signed envelope bytes, verbatim: relay these upstream unchanged.
    """

    relay: str
    body: bytes
    receipt: Sealed
    receipt_envelope: bytes


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ProtocolError(f"{value!r} is not a valid {what} (want {NAME_PATTERN})", field=what)


def signed_bytes(body: bytes, *, kind: str, signer: str, to: str = "") -> bytes:
    """The exact byte string a signature covers (domain, kind, signer, audience, body)."""
    return b"".join((DOMAIN, kind.encode(), b"\x00", signer.encode(), b"\x00", to.encode(), b"\x00", body))


def seal(body: bytes, *, kind: str, signer: str, key: Ed25519PrivateKey, to: str = "") -> bytes:
    """Sign ``body`` (a message's UTF-8 JSON text) as ``kind`` by ``signer`` for ``to``; return the envelope.

    Args:
        body: the message's JSON text, carried and signed verbatim.
        kind: what the message is (``offer``, ``ack``, ``custody``, ``control``, ``presence``...).
        signer: who signs (a site or an operator name in the topology's key table).
        key: the signer's private key.
        to: the site the message is addressed to (its mailbox); ``""`` for a statement to anyone.

    Raises:
        ProtocolError: ``kind``, ``signer`` or ``to`` is not a valid name, or ``body`` is not UTF-8 or too large.
    """
    _check_name(kind, "kind")
    _check_name(signer, "signer")
    if to:
        _check_name(to, "to")
    if len(body) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"body larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("body is not UTF-8") from exc
    sig = key.sign(signed_bytes(body, kind=kind, signer=signer, to=to))
    envelope = {"v": ENVELOPE_VERSION, "kind": kind, "signer": signer, "to": to, "body": text, "sig": _b64url(sig)}
    return _ENVELOPE_ENCODER.encode(envelope).encode()


def unseal(
    data: bytes,
    *,
    kind: str,
    keys: Mapping[str, Ed25519PublicKey],
    allowed_signers: Collection[str],
    to: str = "",
) -> Sealed:
    """Verify an envelope signed as ``kind`` by one of ``allowed_signers`` for ``to``; return signer and body.

    Args:
        data: the envelope bytes as received.
        kind: the kind this receiver expects here (e.g. the mailbox topic's kind).
        keys: every known signer's public key, by name.
        allowed_signers: the signers allowed to send this kind to this receiver.
        to: this receiver's site name for mailbox messages (the envelope must be addressed to it), or
            ``""`` for a statement to anyone (the envelope must then name no audience).

    Returns:
        The signer and the exact body bytes that were signed (parse them; nothing else was covered).

    Raises:
        SignatureError: with ``reason`` ``malformed``, ``unsigned``, ``wrong_kind``, ``unknown_signer``,
            ``signer_not_allowed``, ``wrong_audience`` or ``bad_signature``.
    """
    try:
        envelope = load_object(data, max_bytes=MAX_ENVELOPE_BYTES)
    except ProtocolError as exc:
        raise SignatureError("malformed", exc.reason) from exc
    if "sig" not in envelope and "signer" not in envelope:
        raise SignatureError("unsigned", "no signature envelope (a bare message?)")
    if set(envelope) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(envelope)), sorted(set(envelope) - _FIELDS)
        raise SignatureError("malformed", f"envelope fields: missing {missing}, unexpected {extra}")
    version, got_kind, signer, got_to = envelope["v"], envelope["kind"], envelope["signer"], envelope["to"]
    body_text, sig_text = envelope["body"], envelope["sig"]
    if type(version) is not int or version != ENVELOPE_VERSION:
        raise SignatureError("malformed", f"envelope version {version!r} (want {ENVELOPE_VERSION})")
    if not all(isinstance(v, str) for v in (got_kind, signer, got_to, body_text, sig_text)):
        raise SignatureError("malformed", "kind, signer, to, body and sig must be strings")
    if not _NAME_RE.match(got_kind) or not _NAME_RE.match(signer) or (got_to and not _NAME_RE.match(got_to)):
        raise SignatureError("malformed", "kind, signer or to is not a valid name")
    if got_kind != kind:
        raise SignatureError("wrong_kind", f"signed as {got_kind!r}, expected {kind!r}", signer=signer)
    key = keys.get(signer)
    if key is None:
        raise SignatureError("unknown_signer", f"no public key for {signer!r}", signer=signer)
    if signer not in allowed_signers:
        raise SignatureError("signer_not_allowed", f"{signer!r} may not send {kind!r} here", signer=signer)
    if got_to != to:
        raise SignatureError("wrong_audience", f"addressed to {got_to or 'anyone'!r}, not {to or 'anyone'!r}",
                             signer=signer)  # fmt: skip
    sig = _unb64url(sig_text)
    if sig is None or len(sig) != _SIGNATURE_BYTES:
        raise SignatureError("malformed", "sig is not a base64url Ed25519 signature", signer=signer)
    try:
        body = body_text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate escaped as \udXXX in the envelope
        raise SignatureError("malformed", "body is not valid Unicode", signer=signer) from exc
    try:
        key.verify(sig, signed_bytes(body, kind=kind, signer=signer, to=to))
    except InvalidSignature as exc:
        raise SignatureError("bad_signature", f"signature by {signer!r} does not verify", signer=signer) from exc
    return Sealed(signer=signer, kind=kind, to=to, body=body)


def seal_receipt(body: bytes, *, archive: str, key: Ed25519PrivateKey) -> bytes:
    """The archive's signed custody receipt (kind ``custody_receipt``), made once and relayed verbatim."""
    return seal(body, kind=RECEIPT_KIND, signer=archive, key=key)


def verify_receipt(receipt: bytes, *, keys: Mapping[str, Ed25519PublicKey], archive: str) -> Sealed:
    """Verify an archive-signed custody receipt; only ``archive`` may sign one.

    Raises:
        SignatureError: the receipt is not the archive's, or is damaged.
    """
    return unseal(receipt, kind=RECEIPT_KIND, keys=keys, allowed_signers=(archive,))


def seal_hop(
    receipt: bytes,
    *,
    signer: str,
    key: Ed25519PrivateKey,
    to: str,
    fields: Mapping[str, Any] | None = None,
) -> bytes:
    """A custody hop signed by the relaying site, carrying the archive's ``receipt`` envelope verbatim.

    Args:
        receipt: the archive-signed receipt envelope (from :func:`seal_receipt` or a hop received earlier).
        signer: the relaying site.
        key: the relaying site's private key.
        to: the next site upstream, whose mailbox receives the hop.
        fields: per-hop fields of the hop message (e.g. ``sender``, ``receiver``); ``receipt`` is added.

    Raises:
        ProtocolError: ``fields`` already has a ``receipt``, or the receipt is not UTF-8.
    """
    hop = dict(fields or {})
    if "receipt" in hop:
        raise ProtocolError("the receipt is added by seal_hop", field="receipt")
    try:
        hop["receipt"] = receipt.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("receipt is not UTF-8", field="receipt") from exc
    body = json.dumps(hop, separators=(",", ":"), sort_keys=True).encode()
    return seal(body, kind=HOP_KIND, signer=signer, key=key, to=to)


def open_hop(
    data: bytes,
    *,
    keys: Mapping[str, Ed25519PublicKey],
    relays: Collection[str],
    archive: str,
    to: str,
) -> CustodyHop:
    """Verify a custody hop from one of ``relays`` addressed ``to`` this site, and the archive's receipt in it.

    Raises:
        SignatureError: either signature is missing, from the wrong signer or bad; ``malformed`` when the
            hop body is not an object with a string ``receipt``.
    """
    hop = unseal(data, kind=HOP_KIND, keys=keys, allowed_signers=relays, to=to)
    try:
        body = load_object(hop.body)
    except ProtocolError as exc:
        raise SignatureError("malformed", f"hop body: {exc.reason}", signer=hop.signer) from exc
    inner = body.get("receipt")
    if not isinstance(inner, str):
        raise SignatureError("malformed", "hop carries no receipt", signer=hop.signer)
    try:
        receipt_envelope = inner.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SignatureError("malformed", "receipt is not valid Unicode", signer=hop.signer) from exc
    receipt = verify_receipt(receipt_envelope, keys=keys, archive=archive)
    return CustodyHop(relay=hop.signer, body=hop.body, receipt=receipt, receipt_envelope=receipt_envelope)


def generate_keypair() -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    """A fresh Ed25519 key pair (private, public)."""
    private = Ed25519PrivateKey.generate()
    return private, private.public_key()


def public_key_to_text(key: Ed25519PublicKey) -> str:
    """``"ed25519:<standard base64 of the raw 32 bytes>"``, as written in the topology file."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PUBLIC_KEY_PREFIX + base64.b64encode(raw).decode()


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Parse ``"ed25519:<base64>"`` into a public key.

    Raises:
        ProtocolError: wrong prefix, not base64, or not 32 bytes.
    """
    if not isinstance(text, str) or not text.startswith(PUBLIC_KEY_PREFIX):
        raise ProtocolError(f"a public key is written {PUBLIC_KEY_PREFIX}<base64 of 32 bytes>", field="key")
    try:
        raw = base64.b64decode(text[len(PUBLIC_KEY_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ProtocolError("public key is not valid base64", field="key") from exc
    if len(raw) != 32:
        raise ProtocolError(f"an Ed25519 public key has 32 bytes, not {len(raw)}", field="key")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_keys_from_text(texts: Mapping[str, str]) -> dict[str, Ed25519PublicKey]:
    """Parse a topology's ``signer -> "ed25519:..."`` table, naming the first bad entry.

    Raises:
        ProtocolError: a signer name or a key is invalid (``field`` is ``keys.<signer>``).
    """
    out: dict[str, Ed25519PublicKey] = {}
    for signer, text in texts.items():
        _check_name(signer, "signer")
        try:
            out[signer] = public_key_from_text(text)
        except ProtocolError as exc:
            raise ProtocolError(exc.reason, field=f"keys.{signer}") from exc
    return out


def private_key_to_pem(key: Ed25519PrivateKey) -> bytes:
    """PEM PKCS8, unencrypted (protect the file by its mode: 0600)."""
    pkcs8, none = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, none)


def write_private_key(path: Path, key: Ed25519PrivateKey) -> None:
    """Write ``key`` as PEM PKCS8 to a new file created with mode 0600 (never replacing an existing one).

    Raises:
        FileExistsError: ``path`` exists.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(private_key_to_pem(key))


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    """Read a private key: PEM PKCS8, or the raw 32-byte seed; refuse a file others can read.

    Raises:
        ProtocolError: the file is readable by group or others, or holds no Ed25519 private key.
        OSError: it cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as src:
        mode = os.fstat(src.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise ProtocolError(f"{path}: not a regular file", field="private_key")
        if mode & 0o077:
            raise ProtocolError(f"{path}: readable by others (mode {mode & 0o777:o}); chmod 600", field="private_key")
        data = src.read(16 * 1024)
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"{path}: not a readable unencrypted PEM key", field="private_key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise ProtocolError(f"{path}: not an Ed25519 key", field="private_key")
        return key
    if len(data) == 32:
        return Ed25519PrivateKey.from_private_bytes(data)
    raise ProtocolError(f"{path}: neither PEM nor a raw 32-byte Ed25519 seed", field="private_key")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes | None:
    if not _B64URL_RE.fullmatch(text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
