"""What a site shows of itself: the ``/v1/status`` view, the queue, and the live values metrics read."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import statistics
import time
from collections.abc import Iterator
from typing import Any

from daemon.counters import SiteCounters
from daemon.journal import Journal
from daemon.journal import catalog as journal_catalog
from daemon.journal import console as journal_console
from daemon.journal import files as journal_files
from daemon.mailbox import Mailbox
from daemon.report import Reporter
from daemon.retention import SiteRetention
from daemon.sending.router import Router
from daemon.sending.routes import RouteTable
from daemon.sending.sender import Sender

VERSION = "0.1.0"
TIMELINE_ENTRIES = 40
LATENCY_SAMPLES = 200
RECENT_EXPOSURES = 8
RECENT_ARRIVALS = 12
RECENT_SCIENCE = 8


class Changes:
    """Wakes every connected console page when something the status shows may have changed.

    Parts call :meth:`notify` (a report journaled, a file archived, a link or a route's health
    changed, a queue grew or shrank); each server-sent event stream waits on its own event.
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def notify(self) -> None:
        """Something changed: wake every watcher."""
        for waiter in self._waiters:
            waiter.set()

    @contextlib.contextmanager
    def watch(self) -> Iterator[asyncio.Event]:
        """An event set on every change while the ``with`` block runs."""
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)


class SiteView:
    """Read-only view of one site's parts, for operators (status, queue) and for Prometheus."""

    def __init__(
        self,
        *,
        name: str,
        role: str,
        journal: Journal,
        counters: SiteCounters,
        reporter: Reporter,
        mailbox: Mailbox,
        sender: Sender,
        routes: RouteTable | None,
        router: Router | None,
    ) -> None:
        self.name = name
        self.role = role
        self.journal = journal
        self.counters = counters
        self.reporter = reporter
        self.mailbox = mailbox
        self.sender = sender
        self.routes = routes
        self.router = router
        self.started = time.time()
        self.changes = Changes()
        self._notices_seen = 0
        self._notices_lock = asyncio.Lock()
        self._notice_totals: dict[str, int] = dict.fromkeys(journal_console.NOTICE_KINDS, 0)
        self.version = VERSION
        self.retention: SiteRetention | None = None
        self._catalog_counts: dict[str, int] | None = None

    # ---- what metrics read (daemon.http.metrics.MetricsSource) --------------------------------

    def file_outcomes(self) -> dict[str, int]:
        """Files by outcome (and notices published at the archive)."""
        return self.counters.file_outcomes(archive=self.role == "archive")

    def pending(self) -> Iterator[tuple[str, str, float]]:
        """(peer, kind, age in seconds) of every undelivered message."""
        now = time.monotonic()
        for item in self.sender.items.values():
            yield item.peer, item.kind, now - item.created
        if self.router is not None:
            yield from self.router.held_pending()

    def links(self) -> Iterator[tuple[str, bool, bool]]:
        """(peer, mailbox connected, presence online) for each link."""
        for peer in self.mailbox.peers:
            yield peer, self.mailbox.connected(peer), bool(self.mailbox.peer_online.get(peer))

    def route_health(self) -> Iterator[tuple[str, bool]]:
        """(route, healthy) for each route this site starts."""
        if self.routes is not None:
            for route in self.routes.routes:
                yield route.name, self.routes.route_healthy(route)

    def custody(self) -> dict[str, int] | None:
        """Summit files awaiting custody, and those stuck with no usable route (None elsewhere)."""
        return self.router.custody_summary() if self.router is not None else None

    def routes_in_use(self) -> Iterator[tuple[str, bool, bool]]:
        """(route, new files take it now, first route of the topology) for each route the summit starts."""
        if self.routes is not None and self.router is not None:
            for i, route in enumerate(self.routes.routes):
                yield route.name, route.name == self.routes.current, i == 0

    def breakers(self) -> Iterator[tuple[str, str]]:
        """(peer, breaker state) of the hop into each next hop of this site's routes."""
        if self.routes is not None:
            for peer in dict.fromkeys(self.routes.next_hop(r) for r in self.routes.routes):
                breaker = self.routes.breakers.get(peer)
                yield peer, breaker.state if breaker is not None else "closed"

    def mailbox_traffic(self) -> Iterator[tuple[str, int, int]]:
        """(peer, MQTT publishes, messages) sent into each peer's mailbox."""
        for peer in self.mailbox.peers:
            yield peer, self.mailbox.publishes[peer], self.mailbox.messages_sent[peer]

    def held_files(self) -> tuple[int, float] | None:
        """(files held for want of a usable route, age of the oldest in seconds) at the summit."""
        if self.router is None:
            return None
        ages = [age for _, _, age in self.router.held_pending(waiting=False)]
        return len(ages), max(ages, default=0.0)

    def catalog_counts(self) -> dict[str, int] | None:
        """The archive's catalog by status, as of the last :meth:`refresh` (None elsewhere)."""
        return self._catalog_counts

    async def refresh(self) -> None:
        """Read the journal-backed values metrics show (the archive's catalog counts)."""
        if self.role == "archive":
            self._catalog_counts = await self.journal.read(journal_catalog.status_counts)

    def status_line(self) -> str:
        """One line for systemd's ``STATUS=``: queue depth, held files, route in use, links that are down."""
        held = self.router.held_count() if self.router is not None else 0
        unsent = self.router.unsent_count() if self.router is not None else 0
        parts = [f"{self.role} {self.name}: {len(self.sender.items) + unsent} pending"]
        if self.router is not None:
            parts[0] += f" ({held} held)"
        if self.routes is not None and self.router is not None:
            parts.append(f"route {self.routes.current or 'none yet'}")
        down = [p for p in self.mailbox.peers if not self.mailbox.connected(p)]
        offline = [p for p in self.mailbox.peers if p not in down and not self.mailbox.peer_online.get(p)]
        parts.append(f"links down: {', '.join(down)}" if down else "links up")
        if offline:
            parts.append(f"offline: {', '.join(offline)}")
        return "; ".join(parts)

    # ---- operators ---------------------------------------------------------------------------

    def queue(self) -> list[dict[str, object]]:
        """Every pending item, for ``skyrelay queue``."""
        return self.sender.snapshot() + (self.router.held_snapshot() if self.router is not None else [])

    async def status(self) -> dict[str, Any]:
        """What ``skyrelay status`` shows for this site."""
        out: dict[str, Any] = {
            "site": self.name,
            "role": self.role,
            "version": VERSION,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "links": {
                p: {"connected": self.mailbox.connected(p), "peer_online": self.mailbox.peer_online.get(p)}
                for p in self.mailbox.peers
            },
            "files": await self.journal.read(journal_files.state_counts),
            "pending": len(self.sender.items) + (self.router.unsent_count() if self.router is not None else 0),
            "counters": self.file_outcomes(),
            "problems": dict(self.counters.problems),
            "recent_problems": await self.reporter.recent("problem"),
            "events": await self.reporter.recent("event"),
        }
        if self.routes is not None:
            out["routes"] = [dataclasses.asdict(v) for v in self.routes.view(self.sender.queue_by_route())]
        if self.router is not None:
            out["custody"] = self.router.custody_summary()
            out["in_flight"] = await self.router.in_flight()
        if self.role == "archive":
            out["catalog"] = await self.journal.read(journal_catalog.status_counts)
        # The console's fields (added; the ones above keep their names and shapes for the CLI).
        out["started_at"] = round(self.started, 3)
        out["queues"] = self.queues()
        out["held"] = self.held()
        out["timeline"] = await self.journal.read(journal_console.timeline, TIMELINE_ENTRIES)
        if self.role == "archive":
            out["latency"] = latency_summary(await self.journal.read(journal_console.latencies, LATENCY_SAMPLES))
            out["arrivals"] = await self.journal.read(journal_console.recent_arrivals, RECENT_ARRIVALS)
            out["exposures"] = await self.journal.read(journal_console.recent_exposures, RECENT_EXPOSURES)
            out["notices"] = await self._notice_counts()
            out["science"] = await self.journal.read(
                journal_console.recent_notices, ("products", "alerts"), RECENT_SCIENCE
            )
        out["conditions"] = conditions(out)
        if self.retention is not None:
            out["retention"] = await self.retention.status()
        return out

    async def _notice_counts(self) -> dict[str, int]:
        """Notices in the journal by kind: running totals, each call reading only the notices added since."""
        async with self._notices_lock:  # two status calls at once must not add the same notices twice
            counts, newest = await self.journal.read(journal_console.notice_counts_after, self._notices_seen)
            if newest > self._notices_seen:
                self._notices_seen = newest
                for kind, n in counts.items():
                    self._notice_totals[kind] += n
            return dict(self._notice_totals)

    def queues(self) -> dict[str, dict[str, Any]]:
        """Undelivered items by peer: offers and custody receipts, in flight, and since when the oldest waits."""
        wall = time.time() - time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for item in self.sender.items.values():
            entry = out.setdefault(item.peer, {"offer": 0, "custody": 0, "inflight": 0, "oldest_at": None})
            entry[item.kind] = entry.get(item.kind, 0) + 1
            entry["inflight"] += int(self.sender.inflight(item))
            at = round(wall + item.created, 1)
            entry["oldest_at"] = at if entry["oldest_at"] is None else min(entry["oldest_at"], at)
        return out

    def held(self) -> dict[str, Any]:
        """Files held for want of a usable route (summit only): how many, and since when the oldest."""
        if self.router is None or not self.router.held:
            return {"count": 0, "oldest_at": None}
        wall = time.time() - time.monotonic()
        oldest = min(h.since for h in self.router.held.values())
        return {"count": len(self.router.held), "oldest_at": round(wall + oldest, 1)}


def latency_summary(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """Close → archive latency of the newest archived files: count, median, 90th percentile, max, and the
    newest values (for a histogram)."""
    values = [max(0.0, s) for _, s in samples]
    if not values:
        return {"count": 0, "p50_s": None, "p90_s": None, "max_s": None, "recent_s": []}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return {
        "count": len(values),
        "p50_s": round(statistics.median(values), 2),
        "p90_s": round(p90, 2),
        "max_s": round(ordered[-1], 2),
        "recent_s": [round(v, 2) for v in values[-60:]],
    }


def route_reason(route: dict[str, Any]) -> str:
    """Why a route is down, in words, from the evidence :meth:`RouteTable.view` gives."""
    evidence = route.get("evidence", {})
    reasons = []
    upstream = evidence.get("upstream_unreachable") or []
    if upstream:
        reasons.append("no link from " + ", ".join(upstream))
    if not evidence.get("connected", True):
        reasons.append(f"no connection to {evidence.get('next_hop')}'s mailbox")
    if evidence.get("breaker") == "open":
        reasons.append(f"breaker open ({evidence.get('last_failure') or 'failures'})")
    onward = evidence.get("onward_unreachable") or []
    if onward:
        reasons.append(f"{evidence.get('next_hop')} cannot reach " + ", ".join(onward))
    if evidence.get("degraded_for_s"):
        reasons.append("files missed the custody deadline on it")
    if not reasons and evidence.get("connected") and not route.get("healthy"):
        reasons.append(f"{evidence.get('next_hop')} is offline")
    return "; ".join(reasons) or "unhealthy"


def conditions(status: dict[str, Any]) -> list[dict[str, Any]]:
    """What is wrong at this site now (not what went wrong once): each with a level, ``failing`` or ``degraded``.

    Files held with no usable route and files without custody past their deadline are *failing*; a link
    down, a peer offline or a route down (while another route still carries files) is *degraded*.
    """
    site = status["site"]
    out: list[dict[str, Any]] = []
    for peer, link in status.get("links", {}).items():
        if not link.get("connected"):
            out.append({"level": "degraded", "site": site, "what": f"{site} has no connection to {peer}'s mailbox"})
        elif not link.get("peer_online"):
            what = f"{peer} is offline (its presence, seen from {site})"
            out.append({"level": "degraded", "site": site, "what": what})
    routes = status.get("routes") or []
    for route in routes:
        if not route.get("healthy"):
            what = f"route {route['name']} down at {site}: {route_reason(route)}"
            out.append({"level": "degraded", "site": site, "what": what})
    if status.get("role") == "summit" and routes and not any(r.get("healthy") for r in routes):
        out.append({"level": "failing", "site": site, "what": "no route to the archive is healthy"})
    held = status.get("held") or {}
    if held.get("count"):
        out.append(
            {
                "level": "failing",
                "site": site,
                "what": f"{held['count']} file(s) held at {site}: no usable route",
                "since": held.get("oldest_at"),
            }
        )
    custody = status.get("custody") or {}
    stuck = int(custody.get("stuck", 0)) - int(custody.get("held", 0))
    if stuck > 0:
        out.append({"level": "failing", "site": site, "what": f"{stuck} file(s) without custody past their deadline"})
    links = status.get("links", {})
    for peer, queue in (status.get("queues") or {}).items():
        link = links.get(peer, {})
        waiting = int(queue.get("offer", 0)) + int(queue.get("custody", 0))
        if waiting and not (link.get("connected") and link.get("peer_online")):
            out.append(
                {
                    "level": "degraded",
                    "site": site,
                    "what": f"{waiting} item(s) at {site} waiting for {peer}, which it cannot reach",
                    "since": queue.get("oldest_at"),
                }
            )
    return out
