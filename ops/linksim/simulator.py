"""The link simulator: every link of a drill, their proxies and the control server, started and stopped as one."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from aiohttp import web

from ops.linksim.control import control_app
from ops.linksim.errors import LinkSimError, UnknownLinkError
from ops.linksim.link import Link
from ops.linksim.spec import ProxySpec, resolve_link_name

__all__ = ["LinkSimulator"]

log = structlog.get_logger()


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
            runner = web.AppRunner(control_app(self), access_log=None, shutdown_timeout=2.0)
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


def _log_serve_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("linksim_failed", error=repr(error))
