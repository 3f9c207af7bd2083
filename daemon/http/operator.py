"""The operator's HTTP endpoints: status page, ``/v1/queue``, ``/metrics``, the archive's verify and quarantine."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from daemon.archive.exposures import Completeness
from daemon.archive.quarantine import Quarantine
from daemon.http.metrics import SiteMetrics
from daemon.http.page import PAGE
from daemon.http.status import SiteView
from daemon.sending.router import ControlOutcome
from protocol.errors import ProtocolError
from protocol.signing import SignatureError


def operator_routes(view: SiteView, metrics: SiteMetrics) -> list[web.RouteDef]:
    """Endpoints every site serves beyond the data server's own."""

    async def queue(request: web.Request) -> web.Response:
        return web.json_response(view.queue())

    async def metrics_text(request: web.Request) -> web.Response:
        return web.Response(
            body=await metrics.scrape(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    return [web.get("/", page), web.get("/v1/queue", queue), web.get("/metrics", metrics_text)]


def archive_routes(completeness: Completeness, quarantine: Quarantine) -> list[web.RouteDef]:
    """``/v1/verify``, ``/v1/quarantine`` and ``/v1/quarantine/{id}/release`` (operators only, as all of /v1)."""

    async def verify(request: web.Request) -> web.Response:
        dayobs = request.query.get("dayobs", "")
        if not (len(dayobs) == 8 and dayobs.isdigit()):
            raise web.HTTPBadRequest(text="dayobs must be YYYYMMDD")
        return web.json_response(await completeness.verify(dayobs))

    async def quarantined(request: web.Request) -> web.Response:
        return web.json_response(await quarantine.list())

    async def release(request: web.Request) -> web.Response:
        try:
            quarantine_id = int(request.match_info["qid"])
            result = await quarantine.release(quarantine_id)
        except ValueError as exc:
            raise web.HTTPBadRequest(text="id must be an integer") from exc
        except LookupError as exc:
            raise web.HTTPNotFound(text=str(exc)) from exc
        return web.json_response(result, status=200 if result["released"] else 409)

    return [
        web.get("/v1/verify", verify),
        web.get("/v1/quarantine", quarantined),
        web.post("/v1/quarantine/{qid}/release", release),
    ]


def control_routes(apply: Callable[[bytes], Awaitable[ControlOutcome]]) -> list[web.RouteDef]:
    """``POST /v1/routes/control`` at the summit: a sealed route command (the same envelope as on MQTT), answered.

    200 ``{"applied": true, ...}`` when applied; 409 with the router's reason when refused (unknown route,
    stale or replayed command); 403 when the signature does not verify; 400 when it is no route command.
    The body carries ``policy``, the route policy now in force.
    """

    async def control(request: web.Request) -> web.Response:
        payload = await request.read()
        try:
            outcome = await apply(payload)
        except SignatureError as exc:
            return web.json_response({"applied": False, "error": f"signature refused: {exc}"}, status=403)
        except ProtocolError as exc:
            return web.json_response({"applied": False, "error": str(exc)}, status=400)
        body = {"applied": outcome.applied, "policy": outcome.policy}
        body["message" if outcome.applied else "error"] = outcome.reason
        return web.json_response(body, status=200 if outcome.applied else 409)

    return [web.post("/v1/routes/control", control)]
