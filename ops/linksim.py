"""Link simulator: TCP proxies between sites with injectable network faults.

A *link* joins two sites and carries every TCP connection that crosses it: the MQTT connections to the far
site's mailbox and the HTTP pulls from its data server, in both directions. A drill rewrites the topology so
those connections go through the proxies of a `LinkSimulator`; an operator (or a test) then changes a link's
mode and every connection on it feels the fault at once:

- ``up``: transparent byte pump.
- ``cut``: existing connections are reset (RST, not FIN); new ones are accepted and reset at once.
- ``blackhole``: nothing is forwarded or answered, in either direction; bytes are read and discarded, so only
  the endpoints' timeouts reveal the fault. Leaving ``blackhole`` resets the silenced connections so the
  endpoints reconnect instead of resuming a stream with a hole in it.
- ``slow``: a bandwidth cap (Mbit/s, one token bucket per physical direction shared by the link's
  connections) plus an added one-way latency per chunk (a delay line, so latency does not throttle by itself).
- ``flaky``: each connection is reset after an exponentially distributed time (mean ``reset_interval_s``).
- ``corrupt``: one bit is flipped in a forwarded chunk with probability ``corrupt_probability``, only in
  HTTP response bodies (never in headers or chunked-encoding framing, never on MQTT), so framing survives and
  the damage shows up as a checksum mismatch.

The simulator also serves a small JSON control API (``GET /links``, ``GET/POST /links/{name}``) used by
``skyrelay drill``. Run it stand-alone with ``python -m ops.linksim SPEC.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import json
import math
import os
import random
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, Literal

import structlog
from aiohttp import web

log = structlog.get_logger()

ProxyKind = Literal["mqtt", "http"]

CHUNK_BYTES: Final = 256 * 1024
"""Largest read from a socket; also the stream buffer limit."""
DEFAULT_RESET_INTERVAL_S: Final = 2.0
DEFAULT_CORRUPT_PROBABILITY: Final = 0.01
CONNECT_TIMEOUT_S: Final = 10.0

_QUEUE_CHUNKS: Final = 16  # chunks held in one direction's delay line before the reader waits
_PACING_SLICE_S: Final = 0.01  # a throttled chunk is written in slices of this many seconds of bandwidth
_MIN_SLICE_BYTES: Final = 1024
_MAX_HEADER_BYTES: Final = 64 * 1024
_LINGER_RST: Final = struct.pack("ii", 1, 0)
_PARAM_NAMES: Final = ("mbps", "latency_ms", "reset_interval_s", "corrupt_probability")


class LinkSimError(Exception):
    """Base class for link simulator errors."""


class UnknownLinkError(LinkSimError, LookupError):
    """No link has the requested name (in either site order)."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        super().__init__(f"unknown link {name!r}; known links: {', '.join(self.known) or '(none)'}")


class LinkParamsError(LinkSimError, ValueError):
    """A mode or a mode parameter is invalid."""


class LinkMode(StrEnum):
    """What a link does to the connections crossing it."""

    UP = "up"
    CUT = "cut"
    BLACKHOLE = "blackhole"
    SLOW = "slow"
    FLAKY = "flaky"
    CORRUPT = "corrupt"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxySpec:
    """One TCP proxy of a link: connections to ``listen`` are forwarded to ``target``.

    Attributes:
        listen_host: address to listen on, usually 127.0.0.1.
        listen_port: port to listen on; 0 picks a free port (read it from `Proxy.listen_port` after start).
        target_host: host of the real endpoint (a mosquitto broker or an aiohttp data server).
        target_port: port of the real endpoint.
        kind: "mqtt" or "http"; only "http" proxies are subject to ``corrupt``.
        direction: which way connections cross the link, written ``"summit->base"`` (client site first;
            ``→`` also accepted). It names the byte counters and the bandwidth buckets.
    """

    listen_host: str
    listen_port: int
    target_host: str
    target_port: int
    kind: ProxyKind
    direction: str

    def __post_init__(self) -> None:
        if self.kind not in ("mqtt", "http"):
            raise LinkParamsError(f"proxy kind must be 'mqtt' or 'http', not {self.kind!r}")
        for name, port in (("listen_port", self.listen_port), ("target_port", self.target_port)):
            if not 0 <= port <= 65535:
                raise LinkParamsError(f"{name} out of range: {port}")
        if self.target_port == 0:
            raise LinkParamsError("target_port must not be 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkState:
    """The mode of a link and its parameters.

    Parameters that do not apply to the mode keep their neutral values (no cap, no latency) or defaults.

    Attributes:
        mode: the current mode.
        mbps: bandwidth cap per direction in Mbit/s (``slow``), None for no cap.
        latency_ms: added one-way latency (``slow``).
        reset_interval_s: mean seconds between random resets of a connection (``flaky``).
        corrupt_probability: chance that a forwarded HTTP body chunk gets one bit flipped (``corrupt``).
        since: when the mode was set (``time.time()``).
    """

    mode: LinkMode
    mbps: float | None = None
    latency_ms: float = 0.0
    reset_interval_s: float = DEFAULT_RESET_INTERVAL_S
    corrupt_probability: float = DEFAULT_CORRUPT_PROBABILITY
    since: float

    @classmethod
    def build(
        cls,
        mode: LinkMode | str,
        *,
        mbps: float | None = None,
        latency_ms: float | None = None,
        reset_interval_s: float | None = None,
        corrupt_probability: float | None = None,
        since: float | None = None,
    ) -> LinkState:
        """Validate a mode and its parameters; parameters that do not apply to the mode are ignored.

        Raises:
            LinkParamsError: unknown mode, or a parameter out of range.
        """
        try:
            link_mode = LinkMode(mode)
        except ValueError:
            valid = ", ".join(m.value for m in LinkMode)
            raise LinkParamsError(f"unknown mode {mode!r}; valid modes: {valid}") from None
        _check_number("mbps", mbps, minimum=0.0, exclusive=True)
        _check_number("latency_ms", latency_ms, minimum=0.0)
        _check_number("reset_interval_s", reset_interval_s, minimum=0.0, exclusive=True)
        _check_number("corrupt_probability", corrupt_probability, minimum=0.0, maximum=1.0)
        state = cls(mode=link_mode, since=time.time() if since is None else since)
        if link_mode is LinkMode.SLOW:
            if mbps is None and not latency_ms:
                raise LinkParamsError("mode slow needs mbps and/or latency_ms")
            return cls(mode=link_mode, mbps=mbps, latency_ms=latency_ms or 0.0, since=state.since)
        if link_mode is LinkMode.FLAKY and reset_interval_s is not None:
            return cls(mode=link_mode, reset_interval_s=reset_interval_s, since=state.since)
        if link_mode is LinkMode.CORRUPT and corrupt_probability is not None:
            return cls(mode=link_mode, corrupt_probability=corrupt_probability, since=state.since)
        return state

    def params(self) -> dict[str, float | None]:
        """The parameters that apply to the current mode."""
        if self.mode is LinkMode.SLOW:
            return {"mbps": self.mbps, "latency_ms": self.latency_ms}
        if self.mode is LinkMode.FLAKY:
            return {"reset_interval_s": self.reset_interval_s}
        if self.mode is LinkMode.CORRUPT:
            return {"corrupt_probability": self.corrupt_probability}
        return {}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "mode": self.mode.value,
            "mbps": self.mbps,
            "latency_ms": self.latency_ms,
            "reset_interval_s": self.reset_interval_s,
            "corrupt_probability": self.corrupt_probability,
            "since": self.since,
        }


def _check_number(
    name: str,
    value: float | None,
    *,
    minimum: float,
    maximum: float | None = None,
    exclusive: bool = False,
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise LinkParamsError(f"{name} must be a finite number, not {value!r}")
    if value < minimum or (exclusive and value == minimum):
        raise LinkParamsError(f"{name} must be {'>' if exclusive else '>='} {minimum:g}, not {value!r}")
    if maximum is not None and value > maximum:
        raise LinkParamsError(f"{name} must be <= {maximum:g}, not {value!r}")


def link_name(a: str, b: str) -> str:
    """Canonical name of the link between sites ``a`` and ``b``: the two names sorted, joined by ``-``.

    ``link_name("summit", "base") == link_name("base", "summit") == "base-summit"``. The simulator accepts
    any name for a link; `resolve_link_name` matches either site order against the names it knows.
    """
    first, second = sorted((a, b))
    return f"{first}-{second}"


def resolve_link_name(requested: str, known: Sequence[str]) -> str | None:
    """Find ``requested`` among ``known`` link names, accepting the sites in either order.

    ``"base-summit"`` resolves to a link named ``"summit-base"`` and vice versa. Site names may themselves
    contain ``-``: every split point is tried. Returns None when nothing matches.
    """
    if requested in known:
        return requested
    for index, char in enumerate(requested):
        if char != "-":
            continue
        a, b = requested[:index], requested[index + 1 :]
        if a and b and f"{b}-{a}" in known:
            return f"{b}-{a}"
    return None


def _flow_names(direction: str) -> tuple[str, str]:
    """Names of the physical byte flows of a proxy: (client to target, target to client)."""
    for separator in ("->", "→"):
        client_site, sep, server_site = direction.partition(separator)
        if sep and client_site.strip() and server_site.strip():
            a, b = client_site.strip(), server_site.strip()
            return f"{a}->{b}", f"{b}->{a}"
    return f"{direction}:request", f"{direction}:response"


def _first_error(group: BaseExceptionGroup[Exception]) -> str:
    """The first leaf error of a (nested) exception group, for logs."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return repr(first)


def _reset_socket(sock: socket.socket) -> None:
    """Close a raw socket so that the peer sees a reset."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    sock.close()


def _abort_writer(writer: asyncio.StreamWriter, *, reset: bool) -> None:
    """Drop a connection at once; with ``reset`` the peer sees RST instead of FIN."""
    if reset:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    writer.transport.abort()


async def _changed_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``event``; True if it fired (the link's mode changed)."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


class _Pacer:
    """A shared bandwidth budget for one direction of a link (virtual-time token bucket)."""

    def __init__(self, bytes_per_s: float) -> None:
        self._bytes_per_s = bytes_per_s
        self._next_free = 0.0
        self.slice_bytes = max(_MIN_SLICE_BYTES, int(bytes_per_s * _PACING_SLICE_S))

    def reserve(self, size: int, now: float) -> float:
        """Book ``size`` bytes of the link; returns how long to wait before sending them."""
        start = max(self._next_free, now)
        self._next_free = start + size / self._bytes_per_s
        return start - now


class _Phase(enum.Enum):
    HEADER = enum.auto()
    BODY = enum.auto()
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_END = enum.auto()
    TRAILERS = enum.auto()
    UNTIL_CLOSE = enum.auto()
    OPAQUE = enum.auto()


class _HttpFramer:
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


def _flip_one_bit(data: bytes, spans: Sequence[tuple[int, int]]) -> bytes:
    """Flip one random bit of one random byte chosen uniformly within ``spans``."""
    offset = random.randrange(sum(stop - start for start, stop in spans))
    for start, stop in spans:
        if offset < stop - start:
            damaged = bytearray(data)
            damaged[start + offset] ^= 1 << random.randrange(8)
            return bytes(damaged)
        offset -= stop - start
    raise AssertionError("offset outside spans")  # pragma: no cover


_Chunk = tuple[float, bytes]
_DelayLine = asyncio.Queue[_Chunk | None]


class _Connection:
    """One client connection through a proxy, with its upstream connection and pumps."""

    def __init__(self, proxy: Proxy, sock: socket.socket, number: int) -> None:
        self._proxy = proxy
        self._link = proxy.link
        self._sock: socket.socket | None = sock
        self._writers: list[asyncio.StreamWriter] = []
        self._task: asyncio.Task[None] | None = None
        self._reset = False
        self.name = f"{proxy.task_prefix}.conn{number}"
        self._log = log.bind(link=self._link.name, direction=proxy.spec.direction, kind=proxy.spec.kind)

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def reset(self) -> bool:
        """Reset both sides of the connection (the peers see RST); False if it was already being reset."""
        if self._reset:
            return False
        self._reset = True
        if self._task is not None:
            self._task.cancel()
        return True

    async def run(self) -> None:
        self._task = asyncio.current_task()
        self._link.connections.add(self)
        finished = False
        try:
            await self._run()
            finished = True
        except OSError as exc:
            self._log.debug("link_connection_failed", connection=self.name, error=repr(exc))
        finally:
            self._link.connections.discard(self)
            if self._sock is not None:
                _reset_socket(self._sock)
            for writer in self._writers:
                if finished and not self._reset:
                    writer.close()
                else:
                    _abort_writer(writer, reset=True)
            if self._reset:
                self._log.info("link_connection_reset", connection=self.name)

    async def _run(self) -> None:
        assert self._sock is not None
        client_reader, client_writer = await asyncio.open_connection(sock=self._sock, limit=CHUNK_BYTES)
        self._sock = None
        self._writers.append(client_writer)
        if self._link.is_cut():
            _abort_writer(client_writer, reset=True)
            return
        spec = self._proxy.spec
        if self._link.state.mode is LinkMode.BLACKHOLE:
            self._log.info("link_connection_blackholed", connection=self.name)
            while await client_reader.read(CHUNK_BYTES):
                pass  # swallowed until the client gives up or the link leaves blackhole
            await self._hold_while_blackholed()  # a dead route does not answer a FIN either
            return
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                target_reader, target_writer = await asyncio.open_connection(
                    spec.target_host, spec.target_port, limit=CHUNK_BYTES
                )
        except (OSError, TimeoutError) as exc:
            self._log.warning(
                "link_target_unreachable", target=f"{spec.target_host}:{spec.target_port}", error=repr(exc)
            )
            _abort_writer(client_writer, reset=True)
            return
        self._writers.append(target_writer)
        if self._link.is_cut():
            # The link was cut while this connection was being set up, after the cut's sweep of open
            # connections had passed it by: refuse it now, as a cut link would have.
            for writer in self._writers:
                _abort_writer(writer, reset=True)
            return
        self._log.debug("link_connection_open", connection=self.name)
        outbound, inbound = self._proxy.flows
        request_framer = response_framer = None
        if spec.kind == "http":
            methods: deque[str] = deque()
            request_framer = _HttpFramer(responses=False, methods=methods)
            response_framer = _HttpFramer(responses=True, methods=methods)
        try:
            async with asyncio.TaskGroup() as group:
                watcher = group.create_task(self._watch_flaky(), name=f"{self.name}.flaky")
                async with asyncio.TaskGroup() as pumps:
                    pumps.create_task(
                        self._pump(client_reader, target_writer, outbound, request_framer, corrupt=False),
                        name=f"{self.name}.outbound",
                    )
                    pumps.create_task(
                        self._pump(target_reader, client_writer, inbound, response_framer, corrupt=True),
                        name=f"{self.name}.inbound",
                    )
                watcher.cancel()
        except* OSError as errors:
            # one endpoint reset or failed: pass the reset on to the other one
            self._log.debug("link_connection_broken", connection=self.name, error=_first_error(errors))
            for writer in self._writers:
                _abort_writer(writer, reset=True)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flow: str,
        framer: _HttpFramer | None,
        *,
        corrupt: bool,
    ) -> None:
        """Forward one direction: a reader stage feeding a delay line drained by a shaping writer stage."""
        line: _DelayLine = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
        async with asyncio.TaskGroup() as group:
            reading = self._read_stage(reader, line, framer, corrupt=corrupt)
            group.create_task(reading, name=f"{self.name}.{flow}.read")
            group.create_task(self._write_stage(line, writer, flow), name=f"{self.name}.{flow}.write")

    async def _read_stage(
        self,
        reader: asyncio.StreamReader,
        line: _DelayLine,
        framer: _HttpFramer | None,
        *,
        corrupt: bool,
    ) -> None:
        loop = asyncio.get_running_loop()
        link = self._link
        while True:
            try:
                data = await reader.read(CHUNK_BYTES)
            except OSError:
                await self._hold_while_blackholed()
                raise
            if not data:
                break
            state = link.state
            if state.mode is LinkMode.BLACKHOLE:
                continue  # read and dropped: the far end hears nothing
            if framer is not None:
                spans = framer.feed(data)
                hit = state.mode is LinkMode.CORRUPT and random.random() < state.corrupt_probability
                if corrupt and spans and hit:
                    data = _flip_one_bit(data, spans)
                    link.corrupted_chunks += 1
            await line.put((loop.time(), data))
        await self._hold_while_blackholed()  # an end-of-stream must not cross a blackhole either
        await line.put(None)

    async def _hold_while_blackholed(self) -> None:
        """Keep news of a closed or broken endpoint from crossing the link while it is blackholed.

        Leaving blackhole resets the connection, so in practice this waits to be cancelled.
        """
        while self._link.state.mode is LinkMode.BLACKHOLE:
            await self._link.changed.wait()

    async def _write_stage(self, line: _DelayLine, writer: asyncio.StreamWriter, flow: str) -> None:
        link = self._link
        while (item := await line.get()) is not None:
            arrived, data = item
            await self._delay(arrived)
            offset = 0
            while offset < len(data):
                size = await self._pace(flow, len(data) - offset)
                if link.state.mode is LinkMode.BLACKHOLE:
                    break
                writer.write(data[offset : offset + size] if size < len(data) else data)
                await writer.drain()
                offset += size
                link.bytes_by_flow[flow] += size
        if writer.can_write_eof():
            writer.write_eof()

    async def _delay(self, arrived: float) -> None:
        """Hold a chunk until its added latency has passed (re-evaluated if the mode changes meanwhile)."""
        loop = asyncio.get_running_loop()
        while True:
            state, changed = self._link.state, self._link.changed
            if state.mode is not LinkMode.SLOW or state.latency_ms <= 0:
                return
            wait_s = arrived + state.latency_ms / 1000 - loop.time()
            if wait_s <= 0 or not await _changed_within(changed, wait_s):
                return

    async def _pace(self, flow: str, remaining: int) -> int:
        """Wait for bandwidth for the next slice of a chunk; returns the slice size."""
        loop = asyncio.get_running_loop()
        while True:
            pacer, changed = self._link.pacer(flow), self._link.changed
            if pacer is None:
                return remaining
            size = min(remaining, pacer.slice_bytes)
            wait_s = pacer.reserve(size, loop.time())
            if wait_s <= 0 or not await _changed_within(changed, wait_s):
                return size

    async def _watch_flaky(self) -> None:
        """While the link is flaky, reset this connection after an exponentially distributed time."""
        while True:
            state, changed = self._link.state, self._link.changed
            if state.mode is not LinkMode.FLAKY:
                await changed.wait()
                continue
            lifetime_s = random.expovariate(1.0 / state.reset_interval_s)
            if not await _changed_within(changed, lifetime_s) and self.reset():
                self._link.resets += 1
                self._log.info("link_flaky_reset", connection=self.name, after_s=round(lifetime_s, 3))
                return


class Proxy:
    """A listening socket of a link and the connections accepted on it."""

    def __init__(self, link: Link, spec: ProxySpec) -> None:
        self.link = link
        self.spec = spec
        self.flows = _flow_names(spec.direction)
        self.task_prefix = f"linksim.{link.name}.{spec.direction}.{spec.kind}"
        self._sock: socket.socket | None = None
        self._accepted = 0

    @property
    def listen_port(self) -> int:
        """The bound port once started, else the configured one."""
        if self._sock is not None:
            port: int = self._sock.getsockname()[1]
            return port
        return self.spec.listen_port

    def bind(self) -> None:
        """Open the listening socket (synchronously, so the port is known before any task runs)."""
        sock = socket.create_server((self.spec.listen_host, self.spec.listen_port), backlog=256)
        sock.setblocking(False)
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def address(self) -> dict[str, Any]:
        """Where this proxy listens and forwards to, JSON-ready."""
        spec = self.spec
        return {
            "listen": f"{spec.listen_host}:{self.listen_port}",
            "listen_host": spec.listen_host,
            "listen_port": self.listen_port,
            "target": f"{spec.target_host}:{spec.target_port}",
            "target_host": spec.target_host,
            "target_port": spec.target_port,
            "kind": spec.kind,
            "direction": spec.direction,
        }

    async def serve(self) -> None:
        """Accept connections until cancelled; each runs as a named task of this proxy's group."""
        assert self._sock is not None, "bind() first"
        listener = self._sock
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            while True:
                try:
                    sock, _peer = await loop.sock_accept(listener)
                except ConnectionAbortedError:
                    continue  # the client gave up before we accepted it
                self._accepted += 1
                self.link.connections_total += 1
                if self.link.state.mode is LinkMode.CUT:
                    _reset_socket(sock)
                    self.link.resets += 1
                    log.info("link_connection_refused", link=self.link.name, direction=self.spec.direction)
                    continue
                connection = _Connection(self, sock, self._accepted)
                group.create_task(connection.run(), name=connection.name)


class Link:
    """The connections between two sites and the fault currently applied to them."""

    def __init__(self, name: str, proxies: Sequence[ProxySpec]) -> None:
        self.name = name
        self.proxies: tuple[Proxy, ...] = tuple(Proxy(self, spec) for spec in proxies)
        self._state = LinkState(mode=LinkMode.UP, since=time.time())
        self._changed = asyncio.Event()
        self._pacers: dict[str, _Pacer] = {}
        self.connections: set[_Connection] = set()
        self.connections_total = 0
        self.resets = 0
        self.corrupted_chunks = 0
        self.bytes_by_flow: dict[str, int] = {}
        for proxy in self.proxies:
            for flow in proxy.flows:
                self.bytes_by_flow.setdefault(flow, 0)

    @property
    def state(self) -> LinkState:
        """The current mode and parameters."""
        return self._state

    @property
    def changed(self) -> asyncio.Event:
        """An event set at the next mode change (a fresh one after each change)."""
        return self._changed

    def pacer(self, flow: str) -> _Pacer | None:
        """The bandwidth budget of one direction while the link is slow with a cap, else None."""
        state = self._state
        if state.mode is not LinkMode.SLOW or state.mbps is None:
            return None
        pacer = self._pacers.get(flow)
        if pacer is None:
            pacer = self._pacers[flow] = _Pacer(state.mbps * 1e6 / 8)
        return pacer

    def is_cut(self) -> bool:
        """Whether the link is cut right now (read afresh: the mode changes while connections start)."""
        return self.state.mode is LinkMode.CUT

    async def set_mode(
        self,
        mode: LinkMode | str,
        *,
        mbps: float | None = None,
        latency_ms: float | None = None,
        reset_interval_s: float | None = None,
        corrupt_probability: float | None = None,
    ) -> LinkState:
        """Change the link's mode; effective at once for existing connections.

        Returns when the connections the change resets (``cut``, or leaving ``blackhole``) are closed.

        Raises:
            LinkParamsError: unknown mode or bad parameter; the link is unchanged.
        """
        new = LinkState.build(
            mode,
            mbps=mbps,
            latency_ms=latency_ms,
            reset_interval_s=reset_interval_s,
            corrupt_probability=corrupt_probability,
        )
        old = self._state
        self._state = new
        self._pacers.clear()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        log.info("link_mode", link=self.name, old=old.mode.value, new=new.mode.value, params=new.params())
        doomed: list[asyncio.Task[None]] = []
        leaving_blackhole = old.mode is LinkMode.BLACKHOLE and new.mode is not LinkMode.BLACKHOLE
        if new.mode is LinkMode.CUT or leaving_blackhole:
            for connection in list(self.connections):
                if connection.reset():
                    self.resets += 1
                    if connection.task is not None:
                        doomed.append(connection.task)
        if doomed:
            await asyncio.wait(doomed)
        return new

    def stats(self) -> dict[str, Any]:
        """Counters since start: connections accepted and open, bytes per direction, resets, corruptions."""
        return {
            "connections_total": self.connections_total,
            "connections_active": len(self.connections),
            "bytes": dict(self.bytes_by_flow),
            "resets": self.resets,
            "corrupted_chunks": self.corrupted_chunks,
        }

    def to_json(self) -> dict[str, Any]:
        """State, counters and proxy addresses, JSON-ready."""
        return {
            "name": self.name,
            "state": self._state.to_json(),
            "stats": self.stats(),
            "proxies": [proxy.address() for proxy in self.proxies],
        }


class LinkSimulator:
    """All links of a drill, their proxies and the JSON control server.

    Use as ``async with LinkSimulator({...}) as sim:``; after start, `addresses` gives the bound ports and
    `control_url` the control API.
    """

    def __init__(
        self,
        links: Mapping[str, Sequence[ProxySpec]],
        *,
        control_host: str = "127.0.0.1",
        control_port: int = 0,
    ) -> None:
        self.links: dict[str, Link] = {name: Link(name, specs) for name, specs in links.items()}
        self.control_host = control_host
        self.control_port = control_port
        self._runner: web.AppRunner | None = None
        self._serve_task: asyncio.Task[None] | None = None

    @property
    def control_url(self) -> str:
        """Base URL of the control API (valid after start)."""
        return f"http://{self.control_host}:{self.control_port}"

    def link(self, name: str) -> Link:
        """The link called ``name``, sites in either order.

        Raises:
            UnknownLinkError: no such link.
        """
        resolved = resolve_link_name(name, list(self.links))
        if resolved is None:
            raise UnknownLinkError(name, list(self.links))
        return self.links[resolved]

    def addresses(self) -> dict[str, list[dict[str, Any]]]:
        """Link name → the proxies' listen/target addresses, kinds and directions."""
        return {name: [proxy.address() for proxy in link.proxies] for name, link in self.links.items()}

    async def start(self) -> None:
        """Bind every proxy and the control server, then start accepting connections."""
        if self._serve_task is not None:
            raise LinkSimError("link simulator already started")
        try:
            for link in self.links.values():
                for proxy in link.proxies:
                    proxy.bind()
            runner = web.AppRunner(self._control_app(), access_log=None, shutdown_timeout=2.0)
            await runner.setup()
            self._runner = runner
            site = web.TCPSite(runner, self.control_host, self.control_port)
            await site.start()
        except BaseException:
            await self._close()
            raise
        self.control_port = runner.addresses[0][1]
        self._serve_task = asyncio.create_task(self._serve(), name="linksim.serve")
        self._serve_task.add_done_callback(_log_serve_failure)
        log.info("linksim_started", control=self.control_url, links=self.addresses())

    async def serve_forever(self) -> None:
        """Wait until the simulator stops or fails (re-raises an accept-loop failure)."""
        if self._serve_task is None:
            raise LinkSimError("link simulator not started")
        await asyncio.shield(self._serve_task)

    async def stop(self) -> None:
        """Reset every connection, close the proxies and the control server."""
        task, self._serve_task = self._serve_task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
                if not task.cancelled() and (error := task.exception()) is not None:
                    raise LinkSimError("link simulator failed") from error
        finally:
            await self._close()
            log.info("linksim_stopped")

    async def _close(self) -> None:
        for link in self.links.values():
            for proxy in link.proxies:
                proxy.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> LinkSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _serve(self) -> None:
        async with asyncio.TaskGroup() as group:
            for link in self.links.values():
                for proxy in link.proxies:
                    group.create_task(proxy.serve(), name=f"{proxy.task_prefix}.accept")

    # --- control API -------------------------------------------------------------------------------------

    def _control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/links", self._get_links)
        app.router.add_get("/links/{name}", self._get_link)
        app.router.add_post("/links/{name}", self._post_link)
        return app

    async def _get_links(self, request: web.Request) -> web.Response:
        return web.json_response({"links": {name: link.to_json() for name, link in self.links.items()}})

    def _find(self, request: web.Request) -> Link | web.Response:
        try:
            return self.link(request.match_info["name"])
        except UnknownLinkError as exc:
            return web.json_response({"error": str(exc), "known": list(exc.known)}, status=404)

    async def _get_link(self, request: web.Request) -> web.Response:
        found = self._find(request)
        return found if isinstance(found, web.Response) else web.json_response(found.to_json())

    async def _post_link(self, request: web.Request) -> web.Response:
        found = self._find(request)
        if isinstance(found, web.Response):
            return found
        try:
            body = await request.json()
        except ValueError:
            return _bad_request("body must be a JSON object")
        if not isinstance(body, dict):
            return _bad_request("body must be a JSON object")
        unknown = sorted(set(body) - {"mode", *_PARAM_NAMES})
        if unknown:
            return _bad_request(f"unknown fields: {', '.join(unknown)}")
        if not isinstance(body.get("mode"), str):
            return _bad_request(f"'mode' is required, one of: {', '.join(m.value for m in LinkMode)}")
        try:
            state = await found.set_mode(
                body["mode"],
                mbps=body.get("mbps"),
                latency_ms=body.get("latency_ms"),
                reset_interval_s=body.get("reset_interval_s"),
                corrupt_probability=body.get("corrupt_probability"),
            )
        except LinkParamsError as exc:
            return _bad_request(str(exc))
        return web.json_response({"link": found.name, "state": state.to_json(), "stats": found.stats()})


def _log_serve_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("linksim_failed", error=repr(error))


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


# --- stand-alone runner -----------------------------------------------------------------------------------


def load_spec(path: Path) -> tuple[dict[str, list[ProxySpec]], str, int]:
    """Read a simulator spec: ``{"control": {"host", "port"}, "links": {name: [ProxySpec fields, ...]}}``.

    Raises:
        LinkSimError: unreadable file or invalid content.
    """
    try:
        raw = json.loads(path.read_text())
        control = raw.get("control", {})
        links = {str(name): [ProxySpec(**p) for p in proxies] for name, proxies in raw["links"].items()}
        return links, str(control.get("host", "127.0.0.1")), int(control.get("port", 0))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise LinkSimError(f"{path}: invalid link simulator spec: {exc!r}") from exc


async def _run_standalone(spec_path: Path, addresses_out: Path | None) -> None:
    links, control_host, control_port = load_spec(spec_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with LinkSimulator(links, control_host=control_host, control_port=control_port) as sim:
        report = json.dumps({"control": sim.control_url, "links": sim.addresses()})
        if addresses_out is not None:
            partial = addresses_out.with_name(addresses_out.name + ".tmp")
            partial.write_text(report + "\n")
            os.replace(partial, addresses_out)
        print(report, flush=True)
        async with asyncio.TaskGroup() as group:
            serving = group.create_task(sim.serve_forever(), name="linksim.main.serve")
            await stop.wait()
            serving.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a link simulator from a JSON spec until SIGINT/SIGTERM; prints its addresses as JSON once ready."""
    parser = argparse.ArgumentParser(prog="python -m ops.linksim", description=main.__doc__)
    parser.add_argument("spec", type=Path, help="JSON spec: control host/port and the proxies of each link")
    parser.add_argument("--addresses-out", type=Path, help="also write the bound addresses to this file")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run_standalone(args.spec, args.addresses_out))
    except LinkSimError as exc:
        print(f"linksim: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
