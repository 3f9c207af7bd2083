"""A batch: several mailbox messages for one site in one signed envelope (kind ``batch``).

When messages for a peer queue up while the previous publish awaits the broker, the mailbox sends
them together: one MQTT publish and one signature instead of one each. The batch changes nothing
about what each message means: every message in it is handled exactly as if it had come alone (its
own idempotent handling, its own ack), so a batch lost, repeated or cut short by a crash is what the
same messages lost, repeated or half-handled one by one would be.

The batch body is ``{"type": "batch", "v": 1, "messages": [{"kind": ..., "body": {...}}, ...]}``: each
body is the message's JSON object itself (not its text), so nothing is escaped twice. The envelope's
signature covers the whole body; the receiver checks that the signer may send each inner kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Final

from protocol.codec import MAX_MESSAGE_BYTES, load_object
from protocol.errors import ProtocolError

BATCH_KINDS: Final = frozenset({"offer", "ack", "custody"})
"""What may travel in a batch (control never does: it comes from an operator, one command at a time)."""
MAX_BATCH_MESSAGES: Final = 64
MAX_BATCH_BYTES: Final = MAX_MESSAGE_BYTES
"""A batch body is one message body: it fits the envelope's body bound."""
BATCH_VERSION: Final = 1

_HEAD = b'{"type":"batch","v":1,"messages":['
_ENTRY_OVERHEAD = len(b'{"kind":"custody","body":},')


def entry_bytes(body: bytes) -> int:
    """What one message adds to a batch body, at most."""
    return len(body) + _ENTRY_OVERHEAD


def batch_room() -> int:
    """Bytes of message bodies (as counted by :func:`entry_bytes`) one batch can take."""
    return MAX_BATCH_BYTES - len(_HEAD) - 2


def encode_batch(messages: Sequence[tuple[str, bytes]]) -> bytes:
    """The batch body of ``(kind, JSON object bytes)`` messages, each body embedded as is.

    Raises:
        ProtocolError: no messages, too many, a kind that may not travel in a batch, a body that is
            not a JSON object's text, or a batch larger than :data:`MAX_BATCH_BYTES`.
    """
    if not messages or len(messages) > MAX_BATCH_MESSAGES:
        raise ProtocolError(f"a batch holds 1 to {MAX_BATCH_MESSAGES} messages, not {len(messages)}")
    parts = []
    for kind, body in messages:
        if kind not in BATCH_KINDS:
            raise ProtocolError(f"{kind!r} messages do not travel in a batch", field="kind")
        if not (body.startswith(b"{") and body.endswith(b"}")):
            raise ProtocolError("a batched message body must be a JSON object", field="body")
        parts.append(b'{"kind":"%s","body":%s}' % (kind.encode(), body))
    encoded = _HEAD + b",".join(parts) + b"]}"
    if len(encoded) > MAX_BATCH_BYTES:
        raise ProtocolError(f"batch of {len(encoded)} bytes is larger than {MAX_BATCH_BYTES}")
    return encoded


@dataclasses.dataclass(frozen=True, slots=True)
class BatchEntry:
    """One message of a batch: its kind and object, or why it cannot be read (the others still can)."""

    index: int
    kind: str
    body: dict[str, Any]
    error: ProtocolError | None = None


def decode_batch(body: bytes) -> list[BatchEntry]:
    """The messages of a batch body, in order (hostile input: bounded, strict).

    An entry that is not ``{"kind", "body"}`` with a batchable kind and an object body comes back with
    its ``error``; the entries around it are unaffected.

    Raises:
        ProtocolError: not a batch of this version, or no list of 1 to :data:`MAX_BATCH_MESSAGES` entries.
    """
    data = load_object(body, max_bytes=MAX_BATCH_BYTES)
    if data.get("type") != "batch":
        raise ProtocolError(f"expected 'batch', got {data.get('type')!r}", field="type")
    version = data.get("v")
    if type(version) is not int or version != BATCH_VERSION:
        raise ProtocolError(f"unsupported batch version {version!r} (want {BATCH_VERSION})", field="v")
    if set(data) != {"type", "v", "messages"}:
        raise ProtocolError(
            f"unexpected batch fields {sorted(set(data) - {'type', 'v', 'messages'})}", field="messages"
        )
    messages = data["messages"]
    if not isinstance(messages, list) or not 1 <= len(messages) <= MAX_BATCH_MESSAGES:
        raise ProtocolError(f"must be a list of 1 to {MAX_BATCH_MESSAGES} messages", field="messages")
    out: list[BatchEntry] = []
    for index, entry in enumerate(messages):
        kind = entry.get("kind") if isinstance(entry, dict) else None
        inner = entry.get("body") if isinstance(entry, dict) else None
        error: ProtocolError | None = None
        if not isinstance(entry, dict) or set(entry) != {"kind", "body"}:
            error = ProtocolError(f"batch entry {index} must be an object with kind and body", field="messages")
        elif kind not in BATCH_KINDS:
            error = ProtocolError(f"batch entry {index}: {kind!r} messages do not travel in a batch", field="kind")
        elif not isinstance(inner, dict):
            error = ProtocolError(f"batch entry {index}: body must be an object", field="body")
        ok = error is None and isinstance(kind, str) and isinstance(inner, dict)
        out.append(BatchEntry(index, kind if ok else "?", inner if ok else {}, error))  # type: ignore[arg-type]
    return out
