"""The operator's console: one live view of the whole system, pushed to the page by server-sent events.

Every site serves ``GET /v1/stream`` (``text/event-stream``):

- ``?scope=site`` pushes this site's own ``/v1/status`` each time something in it changes (a problem or
  event journaled, a file archived, a link or a route's health changed, a queue grew or shrank), with a
  comment line every :data:`KEEPALIVE_S` seconds so a reader notices a frozen site.
- ``?scope=system`` (the page's) pushes the *system view*: this site's status and every other site's,
  combined into a verdict (OK / DEGRADED / FAILING with its reasons), the sites' links and presence, every
  route hop by hop as each site on it judges it, queues, latency, completeness, products and alerts, the
  current problems and a timeline merged from every site's journaled report log.

How a site learns the others' state: while a page is connected, its stream follows each other site's
``?scope=site`` stream over the topology's link to that site (so a cut link also cuts the view, and the page
says so), with the *page's own* operator credential — a site gains no power to read its peers; it reads
them on behalf of the operator who is looking, and a peer that does not accept that login says so. A peer
that sends nothing for :data:`SILENCE_S` seconds (frozen, blackholed) is shown unreachable. Nothing is
polled: every push follows a change (the keepalive tick also re-checks the view, a safety net for the
few changes no part announces, such as an age crossing a threshold).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from daemon.config import Topology
from daemon.http.status import SiteView

log = structlog.get_logger()

KEEPALIVE_S = 2.0
"""A site stream writes at least this often (a comment when nothing changed)."""
SILENCE_S = 5.0
"""A peer stream silent this long is taken as unreachable (a frozen daemon keeps its socket open)."""
RETRY_S = 1.0
"""Pause before following a peer's stream again after it ended or failed."""
MIN_INTERVAL_S = 0.25
"""At most one push per this long: a burst of changes (a whole exposure arriving) is pushed as a few views."""
TIMELINE_ENTRIES = 60
VOLATILE = ("uptime_s",)
LEVELS = ("OK", "DEGRADED", "FAILING")


def sse(event: str, data: object) -> bytes:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _digest(data: dict[str, Any]) -> str:
    stable = {k: v for k, v in data.items() if k not in VOLATILE and k != "generated_at"}
    in_flight = stable.get("in_flight")
    if isinstance(in_flight, dict):
        stable["in_flight"] = {k: v for k, v in in_flight.items() if k != "oldest_age_s"}
    sites = stable.get("sites")
    if isinstance(sites, dict):
        stable["sites"] = {name: _digest(s["status"]) if s.get("status") else s for name, s in sites.items()}
    return hashlib.blake2b(json.dumps(stable, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


class PeerFeed:
    """Follows one other site's ``/v1/stream?scope=site``: its latest status, or why it cannot be read."""

    def __init__(self, site: str, url: str, authorization: str | None, on_change: Callable[[], None]) -> None:
        self.site = site
        self.url = url
        self.authorization = authorization
        self.on_change = on_change
        self.status: dict[str, Any] | None = None
        self.error: str | None = "connecting"
        self.since: float = time.time()

    def _fail(self, error: str) -> None:
        if self.error is None:
            self.since = time.time()
            log.info("console_peer_unreachable", peer=self.site, error=error)
        changed = self.error != error or self.status is not None
        self.error = error
        self.status = None
        if changed:
            self.on_change()

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Follow the peer's stream until cancelled, reconnecting after each failure."""
        headers = {"Accept": "text/event-stream"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        timeout = aiohttp.ClientTimeout(total=None, connect=SILENCE_S, sock_connect=SILENCE_S, sock_read=SILENCE_S)
        while True:
            try:
                async with session.get(self.url, headers=headers, timeout=timeout) as resp:
                    if resp.status != 200:
                        text = (await resp.text())[:200].strip()
                        self._fail(f"HTTP {resp.status}: {text}")
                    else:
                        await self._read(resp)
                        self._fail("its stream ended")
            except TimeoutError:
                self._fail(f"no answer for {SILENCE_S:.0f} s")
            except aiohttp.ClientConnectorError as exc:
                self._fail(f"cannot connect ({exc.os_error.strerror or exc.os_error})")
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                self._fail("connection lost")
            except (aiohttp.ClientError, ValueError, OSError) as exc:
                self._fail(str(exc)[:200] or type(exc).__name__)
            await asyncio.sleep(RETRY_S)

    async def _read(self, resp: aiohttp.ClientResponse) -> None:
        buffer = b""
        data: list[bytes] = []
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                line = line.rstrip(b"\r")
                if line.startswith(b"data:"):
                    data.append(line[5:].lstrip(b" "))
                elif not line and data:
                    status = json.loads(b"\n".join(data))
                    data = []
                    if isinstance(status, dict):
                        if self.error is not None:
                            self.since = time.time()
                        self.status, self.error = status, None
                        self.on_change()


class Console:
    """The ``/v1/stream`` and ``/v1/system`` endpoints of one site."""

    def __init__(self, topology: Topology, site: str, view: SiteView) -> None:
        self.topology = topology
        self.site = site
        self.view = view
        self.session: aiohttp.ClientSession | None = None
        """The site's HTTP client (set when the site runs), through which peers' streams are followed."""
        self.closing = asyncio.Event()

    async def shutdown(self, app: web.Application) -> None:
        """aiohttp ``on_shutdown``: end every open stream so the server stops at once."""
        self.closing.set()

    def routes(self) -> list[web.RouteDef]:
        """``GET /v1/stream`` (server-sent events) and ``GET /v1/system`` (the system view, once)."""
        return [web.get("/v1/stream", self.stream), web.get("/v1/system", self.system_once)]

    def _feeds(self, request: web.Request, on_change: Callable[[], None]) -> dict[str, PeerFeed]:
        auth = request.headers.get("Authorization")
        return {
            other: PeerFeed(other, self.topology.link(self.site, other).http + "/v1/stream?scope=site", auth, on_change)
            for other in self.topology.sites
            if other != self.site
        }

    @contextlib.asynccontextmanager
    async def _following(self, feeds: dict[str, PeerFeed]) -> AsyncIterator[None]:
        """Follow every feed for the duration of the block."""
        session = self.session
        if session is None or not feeds:
            yield
            return
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(f.run(session), name=f"{self.site}.console.{f.site}") for f in feeds.values()]
            try:
                yield
            finally:
                for task in tasks:
                    task.cancel()

    async def system_once(self, request: web.Request) -> web.Response:
        """The system view as JSON: each other site's first status, waited for at most :data:`SILENCE_S`."""
        ready = asyncio.Event()
        feeds = self._feeds(request, ready.set)
        async with self._following(feeds):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SILENCE_S):
                    while any(f.error == "connecting" for f in feeds.values()):
                        ready.clear()
                        await ready.wait()
        return web.json_response(system_view(self.site, self.topology, await self.view.status(), feeds))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """Push the site's status (``scope=site``) or the system view (default) on every change."""
        scope = request.query.get("scope", "system")
        if scope not in ("site", "system"):
            raise web.HTTPBadRequest(text="scope must be site or system")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        with self.view.changes.watch() as changed:
            feeds = self._feeds(request, self.view.changes.notify) if scope == "system" else {}
            try:
                async with self._following(feeds):
                    await self._push(response, scope, changed, feeds)
            except* ConnectionError:
                pass  # the page went away
        return response

    async def _push(
        self, response: web.StreamResponse, scope: str, changed: asyncio.Event, feeds: dict[str, PeerFeed]
    ) -> None:
        last: str | None = None
        build: Callable[[], Awaitable[dict[str, Any]]]
        if scope == "site":
            build = self.view.status
            event = "site"
        else:

            async def build() -> dict[str, Any]:
                return system_view(self.site, self.topology, await self.view.status(), feeds)

            event = "system"
        loop = asyncio.get_running_loop()
        pushed_at = 0.0
        while not self.closing.is_set():
            changed.clear()
            data = await build()
            key = _digest(data)
            if key != last:
                await response.write(sse(event, data))
                last = key
                pushed_at = loop.time()
            else:
                await response.write(b": keepalive\n\n")
            waiter = asyncio.ensure_future(changed.wait())
            closer = asyncio.ensure_future(self.closing.wait())
            try:
                await asyncio.wait((waiter, closer), timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
                closer.cancel()
            pause = pushed_at + MIN_INTERVAL_S - loop.time()
            if changed.is_set() and pause > 0:
                await asyncio.sleep(pause)


# ---- the system view ---------------------------------------------------------------------------


def hop_judgement(status: dict[str, Any] | None, route: str, peer: str) -> dict[str, Any]:
    """How the site at the start of a hop judges it (None: that site cannot be read from here)."""
    if status is None:
        return {"healthy": None, "reason": "not readable from here"}
    link = status.get("links", {}).get(peer)
    entry = next((r for r in status.get("routes") or [] if r.get("name") == route), None)
    reasons = []
    if link is not None and not link.get("connected"):
        reasons.append(f"no connection to {peer}'s mailbox")
    elif link is not None and not link.get("peer_online"):
        reasons.append(f"{peer} is offline")
    if entry is not None:
        evidence = entry.get("evidence", {})
        if evidence.get("breaker") == "open":
            reasons.append(f"breaker open ({evidence.get('last_failure') or 'failures'})")
        if evidence.get("degraded_for_s"):
            reasons.append("files missed the custody deadline on it")
    return {
        "healthy": not reasons,
        "reason": "; ".join(reasons),
        "queued": (entry or {}).get("evidence", {}).get("queued", 0),
    }


def system_view(here: str, topology: Topology, own: dict[str, Any], feeds: dict[str, PeerFeed]) -> dict[str, Any]:
    """Combine this site's status and the other sites' (as far as they can be read) into one view."""
    statuses: dict[str, dict[str, Any] | None] = {here: own}
    sites: dict[str, Any] = {}
    for name in topology.sites:
        if name == here:
            sites[name] = {"reachable": True, "error": None, "status": own}
            continue
        feed = feeds.get(name)
        status = feed.status if feed is not None else None
        statuses[name] = status
        sites[name] = {
            "reachable": status is not None,
            "error": None if status is not None else (feed.error if feed is not None else "not followed"),
            "since": round(feed.since, 1) if feed is not None else None,
            "status": status,
        }
    conditions: list[dict[str, Any]] = []
    for name, entry in sites.items():
        if entry["status"] is not None:
            conditions += entry["status"].get("conditions") or []
        else:
            conditions.append(
                {
                    "level": "degraded",
                    "site": here,
                    "what": f"{name}'s page cannot be read from {here}: {entry['error']}",
                    "since": entry.get("since"),
                }
            )
    for name, entry in sites.items():
        if entry["status"] is not None:
            continue
        views = [s["links"][name] for s in statuses.values() if s is not None and name in s.get("links", {})]
        if views and not any(v.get("connected") and v.get("peer_online") for v in views):
            role = topology.sites[name].role
            conditions.append(
                {
                    "level": "failing" if role in ("summit", "archive") else "degraded",
                    "site": here,
                    "what": f"{name} is unreachable: no site that can be read has it online"
                    + (
                        " (no file can leave it)"
                        if role == "summit"
                        else " (no file can arrive)"
                        if role == "archive"
                        else ""
                    ),
                    "since": entry.get("since"),
                }
            )
    routes = []
    for route in topology.routes:
        origin = statuses.get(route.sites[0])
        owned = next((r for r in (origin or {}).get("routes") or [] if r.get("name") == route.name), None)
        hops = []
        for a, b in zip(route.sites, route.sites[1:], strict=False):
            hops.append({"from": a, "to": b, **hop_judgement(statuses.get(a), route.name, b)})
        known = [h["healthy"] for h in hops if h["healthy"] is not None]
        healthy = bool(owned and owned.get("healthy")) and all(known)
        down = [h for h in hops if h["healthy"] is False]
        if owned is not None and owned.get("healthy") and down:
            for hop in down:
                conditions.append(
                    {
                        "level": "degraded",
                        "site": hop["from"],
                        "what": f"route {route.name}: {hop['from']} → {hop['to']} down ({hop['reason']}), "
                        f"while {route.sites[0]} still counts the route healthy",
                    }
                )
        routes.append(
            {
                "name": route.name,
                "sites": list(route.sites),
                "healthy": healthy if owned is not None else None,
                "in_use": bool(owned and owned.get("evidence", {}).get("in_use")),
                "policy": owned.get("policy") if owned else None,
                "queued": owned.get("evidence", {}).get("queued", 0) if owned else None,
                "hops": hops,
            }
        )
    timeline: list[dict[str, Any]] = []
    for name, status in statuses.items():
        for entry in (status or {}).get("timeline") or []:
            timeline.append({**entry, "site": entry.get("site", name)})
    timeline.sort(key=lambda e: float(e.get("at") or 0.0))
    archive = next((s for s in statuses.values() if s is not None and s.get("role") == "archive"), None)
    return {
        "here": here,
        "generated_at": round(time.time(), 3),
        "verdict": verdict(conditions, routes),
        "sites": sites,
        "routes": routes,
        "conditions": _ordered(conditions),
        "timeline": timeline[-TIMELINE_ENTRIES:],
        "archive": (
            {k: archive.get(k) for k in ("latency", "arrivals", "exposures", "notices", "science", "catalog")}
            if archive is not None
            else None
        ),
    }


def _rank(condition: dict[str, Any]) -> tuple[int, int]:
    what = str(condition.get("what", ""))
    kind = 0 if "held" in what else 1 if "no route" in what else 2 if "route" in what else 3
    return (0 if condition.get("level") == "failing" else 1, kind)


def _ordered(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for condition in sorted(conditions, key=_rank):
        if condition["what"] not in seen:
            seen.add(condition["what"])
            out.append(condition)
    return out


def verdict(conditions: list[dict[str, Any]], routes: list[dict[str, Any]]) -> dict[str, Any]:
    """OK, DEGRADED (something is down but files still have a way) or FAILING (files cannot move), with reasons."""
    if routes and all(r["healthy"] is False for r in routes):
        conditions = [*conditions, {"level": "failing", "what": "no route from the summit to the archive is healthy"}]
    ordered = _ordered(conditions)
    failing = [c["what"] for c in ordered if c.get("level") == "failing"]
    degraded = [c["what"] for c in ordered if c.get("level") != "failing"]
    if failing:
        return {"level": "FAILING", "reason": failing[0], "reasons": failing + degraded}
    if degraded:
        return {"level": "DEGRADED", "reason": degraded[0], "reasons": degraded}
    return {"level": "OK", "reason": "every site reachable, every route healthy, nothing held", "reasons": []}
