"""One connection through a proxy: the byte pumps in both directions, with the link's mode applied to every chunk."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import deque
from typing import TYPE_CHECKING, Final

import structlog

from ops.linksim.framing import HttpFramer, flip_one_bit
from ops.linksim.modes import LinkMode
from ops.linksim.sockets import abort_writer, reset_socket

if TYPE_CHECKING:
    from ops.linksim.link import Proxy

__all__ = ["CHUNK_BYTES", "CONNECT_TIMEOUT_S", "Connection"]

log = structlog.get_logger()


CHUNK_BYTES: Final = 256 * 1024
"""Largest read from a socket; also the stream buffer limit."""
CONNECT_TIMEOUT_S: Final = 10.0
_QUEUE_CHUNKS: Final = 16  # chunks held in one direction's delay line before the reader waits


_Chunk = tuple[float, bytes]
_DelayLine = asyncio.Queue[_Chunk | None]


def _first_error(group: BaseExceptionGroup[Exception]) -> str:
    """The first leaf error of a (nested) exception group, for logs."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return repr(first)


async def _changed_within(event: asyncio.Event, timeout_s: float) -> bool:
    """Wait up to ``timeout_s`` for ``event``; True if it fired (the link's mode changed)."""
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


class Connection:
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
        """The task running the connection, once :meth:`run` has started."""
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
        """Forward the connection until either end closes it or the link resets it; then close both ends."""
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
                reset_socket(self._sock)
            for writer in self._writers:
                if finished and not self._reset:
                    writer.close()
                else:
                    abort_writer(writer, reset=True)
            if self._reset:
                self._log.info("link_connection_reset", connection=self.name)

    async def _run(self) -> None:
        assert self._sock is not None
        client_reader, client_writer = await asyncio.open_connection(sock=self._sock, limit=CHUNK_BYTES)
        self._sock = None
        self._writers.append(client_writer)
        if self._link.is_cut():
            abort_writer(client_writer, reset=True)
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
            abort_writer(client_writer, reset=True)
            return
        self._writers.append(target_writer)
        if self._link.is_cut():
            # The link was cut while this connection was being set up, after the cut's sweep of open
            # connections had passed it by: refuse it now, as a cut link would have.
            for writer in self._writers:
                abort_writer(writer, reset=True)
            return
        self._log.debug("link_connection_open", connection=self.name)
        outbound, inbound = self._proxy.flows
        request_framer = response_framer = None
        if spec.kind == "http":
            methods: deque[str] = deque()
            request_framer = HttpFramer(responses=False, methods=methods)
            response_framer = HttpFramer(responses=True, methods=methods)
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
                abort_writer(writer, reset=True)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flow: str,
        framer: HttpFramer | None,
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
        framer: HttpFramer | None,
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
                    data = flip_one_bit(data, spans)
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
