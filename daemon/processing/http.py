"""``/v1/products``: the archive's products for operators (list, show, reprocess); operators only, as all of /v1."""

from __future__ import annotations

from aiohttp import web

from daemon.journal import products as journal_products
from daemon.journal import retention as journal_retention
from daemon.journal.connection import Journal
from daemon.processing.executor import WorkerLost
from daemon.processing.scheduler import Scheduler
from processors.calib import CalibError

KINDS = ("bias", "dark", "flat")


def product_routes(journal: Journal, scheduler: Scheduler) -> list[web.RouteDef]:
    """``GET /v1/products[?kind=K]``, ``GET /v1/products/{id}``, ``POST /v1/products/{id}/reprocess``."""

    async def listing(request: web.Request) -> web.Response:
        kind = request.query.get("kind")
        if kind is not None and kind not in KINDS:
            raise web.HTTPBadRequest(text=f"kind must be one of {', '.join(KINDS)}")
        rows = await journal.read(journal_products.listing, kind)
        expired = await journal.read(journal_retention.expired_products)
        return web.json_response([{**row.summary(), "expired": expired.get(row.product_id)} for row in rows])

    async def show(request: web.Request) -> web.Response:
        row = await journal.read(journal_products.by_id, request.match_info["pid"])
        if row is None:
            raise web.HTTPNotFound(text=f"no product {request.match_info['pid']!r}")
        expired = await journal.read(journal_retention.expired_products)
        return web.json_response({**row.to_dict(), "expired": expired.get(row.product_id)})

    async def reprocess(request: web.Request) -> web.Response:
        try:
            rebuilt = await scheduler.reprocess(request.match_info["pid"])
        except LookupError as exc:
            raise web.HTTPNotFound(text=str(exc)) from exc
        except (CalibError, WorkerLost) as exc:
            raise web.HTTPConflict(text=f"rebuild failed: {exc}") from exc
        return web.json_response(rebuilt.to_dict())

    return [
        web.get("/v1/products", listing),
        web.get("/v1/products/{pid}", show),
        web.post("/v1/products/{pid}/reprocess", reprocess),
    ]
