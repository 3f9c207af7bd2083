"""``/v1/products`` and ``/v1/templates``: products for operators (list, show, reprocess, build a template).

Operators only, as all of /v1.
"""

from __future__ import annotations

import json
import re

from aiohttp import web

from daemon.journal import products as journal_products
from daemon.journal import retention as journal_retention
from daemon.journal.connection import Journal
from daemon.processing.executor import WorkerLost
from daemon.processing.scheduler import Scheduler
from daemon.processing.science import TemplateRefused
from processors.calib import CalibError

KINDS = ("bias", "dark", "flat", "calexp", "diff", "alerts", "template")
_NAME = re.compile(r"^[A-Za-z0-9_.:+-]{1,64}$")
MIN_TEMPLATE_VISITS = 3
MAX_TEMPLATE_VISITS = 50


def product_routes(journal: Journal, scheduler: Scheduler) -> list[web.RouteDef]:
    """``GET /v1/products[?kind=K]``, ``GET /v1/products/{id}``, ``POST /v1/products/{id}/reprocess``,
    ``POST /v1/templates`` ({field, band, min_visits, max_visits}: 422 when no detector has enough visits)."""

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
        # Imported here: processors.diffim brings scipy (about 50 MiB) into a daemon that runs processors in workers.
        from processors.diffim.template import TemplateError

        try:
            rebuilt = await scheduler.reprocess(request.match_info["pid"])
        except LookupError as exc:
            raise web.HTTPNotFound(text=str(exc)) from exc
        except (CalibError, TemplateError, WorkerLost) as exc:
            raise web.HTTPConflict(text=f"rebuild failed: {exc}") from exc
        return web.json_response(rebuilt.to_dict())

    async def build_template(request: web.Request) -> web.Response:
        try:
            body = await request.json(loads=json.loads)
        except (ValueError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(text=f"the body must be a JSON object: {exc}") from exc
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="the body must be a JSON object {field, band, min_visits, max_visits}")
        field, band = body.get("field"), body.get("band")
        for name, value in (("field", field), ("band", band)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise web.HTTPBadRequest(text=f"{name} must be a name of 1-64 letters, digits or _.:+-, not {value!r}")
        min_visits = body.get("min_visits", MIN_TEMPLATE_VISITS)
        max_visits = body.get("max_visits", 8)
        if not isinstance(min_visits, int) or isinstance(min_visits, bool) or min_visits < MIN_TEMPLATE_VISITS:
            raise web.HTTPBadRequest(text=f"min_visits must be an integer >= {MIN_TEMPLATE_VISITS}, not {min_visits!r}")
        if (
            not isinstance(max_visits, int)
            or isinstance(max_visits, bool)
            or not (min_visits <= max_visits <= MAX_TEMPLATE_VISITS)
        ):
            raise web.HTTPBadRequest(
                text=f"max_visits must be an integer from min_visits to {MAX_TEMPLATE_VISITS}, not {max_visits!r}"
            )
        assert isinstance(field, str) and isinstance(band, str)
        try:
            outcomes = await scheduler.science.request_template(
                field, band, min_visits=min_visits, max_visits=max_visits
            )
        except TemplateRefused as exc:
            raise web.HTTPUnprocessableEntity(text=f"no template built: {exc}") from exc
        return web.json_response({"field": field, "band": band, "templates": outcomes})

    return [
        web.post("/v1/templates", build_template),
        web.get("/v1/products", listing),
        web.get("/v1/products/{pid}", show),
        web.post("/v1/products/{pid}/reprocess", reprocess),
    ]
