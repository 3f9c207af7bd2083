"""A link: the proxies joining two sites, the connections on them, and the mode applied to all of them."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Sequence
from typing import Any

import structlog

from ops.linksim.connection import Connection
from ops.linksim.modes import LinkMode, LinkState
from ops.linksim.pacing import Pacer
from ops.linksim.sockets import reset_socket
from ops.linksim.spec import ProxySpec, flow_names

__all__ = ["Link", "Proxy"]

log = structlog.get_logger()


class Proxy:
    """A listening socket of a link and the connections accepted on it."""

    def __init__(self, link: Link, spec: ProxySpec) -> None:
        self.link = link
        self.spec = spec
        self.flows = flow_names(spec.direction)
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
        """Close the listening socket (connections already accepted are not touched)."""
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
                    reset_socket(sock)
                    self.link.resets += 1
                    log.info("link_connection_refused", link=self.link.name, direction=self.spec.direction)
                    continue
                connection = Connection(self, sock, self._accepted)
                group.create_task(connection.run(), name=connection.name)


class Link:
    """The connections between two sites and the fault currently applied to them."""

    def __init__(self, name: str, proxies: Sequence[ProxySpec]) -> None:
        self.name = name
        self.proxies: tuple[Proxy, ...] = tuple(Proxy(self, spec) for spec in proxies)
        self._state = LinkState(mode=LinkMode.UP, since=time.time())
        self._changed = asyncio.Event()
        self._pacers: dict[str, Pacer] = {}
        self.connections: set[Connection] = set()
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

    def pacer(self, flow: str) -> Pacer | None:
        """The bandwidth budget of one direction while the link is slow with a cap, else None."""
        state = self._state
        if state.mode is not LinkMode.SLOW or state.mbps is None:
            return None
        pacer = self._pacers.get(flow)
        if pacer is None:
            pacer = self._pacers[flow] = Pacer(state.mbps * 1e6 / 8)
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
