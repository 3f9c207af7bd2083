"""The ``corrupt`` mode's aim: follow HTTP/1.x framing so that only body bytes are ever damaged."""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Sequence
from typing import Final

import structlog

__all__ = ["HttpFramer", "flip_one_bit"]

log = structlog.get_logger()


_MAX_HEADER_BYTES: Final = 64 * 1024


class _Phase(enum.Enum):
    HEADER = enum.auto()
    BODY = enum.auto()
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_END = enum.auto()
    TRAILERS = enum.auto()
    UNTIL_CLOSE = enum.auto()
    OPAQUE = enum.auto()


class HttpFramer:
    """Follows HTTP/1.x message framing on one direction of a connection.

    `feed` is given every chunk in order and returns the spans of the chunk that are body payload: never a
    start line, header, chunk-size line or trailer. The request side records each request's method so the
    response side knows when a response has no body (HEAD, 1xx, 204, 304). Anything it cannot follow
    (a protocol upgrade, malformed framing) makes it stop reporting spans for the rest of the connection.
    """

    def __init__(self, *, responses: bool, methods: deque[str]) -> None:
        self._responses = responses
        self._methods = methods
        self._phase = _Phase.HEADER
        self._pending = bytearray()
        self._remaining = 0

    def feed(self, data: bytes) -> list[tuple[int, int]]:
        """Advance over ``data``; return its body-payload spans as (start, end) offsets."""
        spans: list[tuple[int, int]] = []
        pos, end = 0, len(data)
        while pos < end:
            phase = self._phase
            if phase is _Phase.OPAQUE:
                break
            if phase is _Phase.UNTIL_CLOSE:
                spans.append((pos, end))
                break
            if phase is _Phase.BODY or phase is _Phase.CHUNK_DATA:
                size = min(self._remaining, end - pos)
                spans.append((pos, pos + size))
                pos += size
                self._remaining -= size
                if self._remaining == 0:
                    if phase is _Phase.BODY:
                        self._phase = _Phase.HEADER
                    else:
                        self._phase, self._remaining = _Phase.CHUNK_END, 2
            elif phase is _Phase.CHUNK_END:
                size = min(self._remaining, end - pos)
                pos += size
                self._remaining -= size
                if self._remaining == 0:
                    self._phase = _Phase.CHUNK_SIZE
            else:
                terminator = b"\r\n\r\n" if phase is _Phase.HEADER else b"\r\n"
                pos, block = self._collect(data, pos, terminator)
                if block is not None:
                    self._on_block(phase, block)
        return spans

    def _collect(self, data: bytes, pos: int, terminator: bytes) -> tuple[int, bytes | None]:
        """Gather bytes up to and including ``terminator``, across chunks."""
        held = len(self._pending)
        self._pending += data[pos:]
        index = self._pending.find(terminator, max(0, held - len(terminator) + 1))
        if index < 0:
            if len(self._pending) > _MAX_HEADER_BYTES:
                self._give_up("header too long")
            return len(data), None
        stop = index + len(terminator)
        block = bytes(self._pending[:stop])
        self._pending.clear()
        return pos + stop - held, block

    def _on_block(self, phase: _Phase, block: bytes) -> None:
        if phase is _Phase.HEADER:
            if block.strip(b"\r\n"):
                self._on_header(block.strip(b"\r\n"))
            # a bare CRLF between messages is tolerated by HTTP/1.1 parsers; stay in HEADER
        elif phase is _Phase.CHUNK_SIZE:
            try:
                size = int(block.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._give_up("bad chunk size")
                return
            if size == 0:
                self._phase = _Phase.TRAILERS
            else:
                self._phase, self._remaining = _Phase.CHUNK_DATA, size
        elif phase is _Phase.TRAILERS and block == b"\r\n":
            self._phase = _Phase.HEADER

    def _on_header(self, block: bytes) -> None:
        lines = block.split(b"\r\n")
        start = lines[0].split(b" ", 2)
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                self._give_up("bad header line")
                return
            headers[name.strip().lower()] = value.strip().lower()
        chunked = headers.get(b"transfer-encoding", b"").rsplit(b",", 1)[-1].strip() == b"chunked"
        length: int | None = None
        if b"content-length" in headers:
            try:
                length = int(headers[b"content-length"])
            except ValueError:
                self._give_up("bad content-length")
                return
        body = _Phase.CHUNK_SIZE if chunked else (_Phase.BODY if length else _Phase.HEADER)
        if not self._responses:
            self._methods.append(start[0].decode("latin-1").upper())
            self._phase, self._remaining = body, length or 0
            return
        try:
            status = int(start[1]) if len(start) > 1 and start[0].startswith(b"HTTP/") else -1
        except ValueError:
            status = -1
        if status < 100:
            self._give_up("bad status line")
            return
        if status < 200:
            # interim responses have no body and do not answer the request; 101 switches protocols
            if status == 101:
                self._give_up("protocol switched")
            return
        method = self._methods.popleft() if self._methods else "GET"
        if method == "HEAD" or status in (204, 304):
            self._phase = _Phase.HEADER
        elif method == "CONNECT" and status < 300:
            self._give_up("tunnel")
        elif chunked or length is not None:
            self._phase, self._remaining = body, length or 0
        else:
            self._phase = _Phase.UNTIL_CLOSE

    def _give_up(self, reason: str) -> None:
        log.debug("link_http_framing_lost", reason=reason)
        self._phase = _Phase.OPAQUE
        self._pending.clear()


def flip_one_bit(data: bytes, spans: Sequence[tuple[int, int]]) -> bytes:
    """Flip one random bit of one random byte chosen uniformly within ``spans``."""
    offset = random.randrange(sum(stop - start for start, stop in spans))
    for start, stop in spans:
        if offset < stop - start:
            damaged = bytearray(data)
            damaged[start + offset] ^= 1 << random.randrange(8)
            return bytes(damaged)
        offset -= stop - start
    raise AssertionError("offset outside spans")  # pragma: no cover
