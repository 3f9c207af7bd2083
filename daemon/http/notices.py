"""``GET /v1/notices?after=N&limit=M``: the archive's notice log, for subscribers that replay what they missed."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from aiohttp import web

from daemon.archive.notices import DEFAULT_PAGE, MAX_PAGE, read_page
from daemon.journal import Journal

Authorize = Callable[[web.Request], None]
"""Admits a request (returns) or refuses it (raises ``web.HTTPUnauthorized`` / ``web.HTTPForbidden``)."""


def notice_routes(journal: Journal, authorize: Authorize) -> list[web.RouteDef]:
    """The notice log's route: notices after ``after`` (default 0), at most ``limit`` (default 1000, max 10000).

    Args:
        journal: the archive's journal.
        authorize: called first with every request; raises to refuse it.

    Returns:
        The routes to add to the archive's HTTP app. The answer is
        ``{"after", "newest", "next_after", "caught_up", "notices": [{"position", "topic", "notice_id",
        "message"}]}`` in order of position; ask again with ``after=next_after`` until ``caught_up``.
    """

    async def notices(request: web.Request) -> web.Response:
        authorize(request)
        after = _integer(request, "after", default=0, minimum=0)
        limit = min(_integer(request, "limit", default=DEFAULT_PAGE, minimum=1), MAX_PAGE)
        page = await read_page(journal, after, limit)
        return web.Response(body=page.to_json(), content_type="application/json")

    return [web.get("/v1/notices", notices)]


def bearer_authorizer(token: str) -> Authorize:
    """An :data:`Authorize` that admits ``Authorization: Bearer <token>`` (compared in constant time)."""
    expected = token.encode()

    def authorize(request: web.Request) -> None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
            raise web.HTTPUnauthorized(text="missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return authorize


def _integer(request: web.Request, name: str, *, default: int, minimum: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 18) or int(raw) < minimum:
        raise web.HTTPBadRequest(text=f"{name} must be an integer of at least {minimum}")
    return int(raw)
