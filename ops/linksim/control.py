"""The simulator's JSON control API: read every link, read one, set one's mode."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ops.linksim.errors import LinkParamsError, UnknownLinkError
from ops.linksim.modes import PARAM_NAMES, LinkMode

if TYPE_CHECKING:
    from ops.linksim.link import Link
    from ops.linksim.simulator import LinkSimulator

__all__ = ["control_app"]


class _ControlApi:
    """The handlers of the control API, over one simulator's links."""

    def __init__(self, simulator: LinkSimulator) -> None:
        self._simulator = simulator

    def app(self) -> web.Application:
        """The aiohttp application serving the API."""
        app = web.Application()
        app.router.add_get("/links", self._get_links)
        app.router.add_get("/links/{name}", self._get_link)
        app.router.add_post("/links/{name}", self._post_link)
        return app

    async def _get_links(self, request: web.Request) -> web.Response:
        return web.json_response({"links": {name: link.to_json() for name, link in self._simulator.links.items()}})

    def _find(self, request: web.Request) -> Link | web.Response:
        try:
            return self._simulator.link(request.match_info["name"])
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
        unknown = sorted(set(body) - {"mode", *PARAM_NAMES})
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


def control_app(simulator: LinkSimulator) -> web.Application:
    """The control API of ``simulator``: ``GET /links``, ``GET/POST /links/{name}`` (JSON)."""
    return _ControlApi(simulator).app()


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)
