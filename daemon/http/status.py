"""What a site shows of itself: the ``/v1/status`` view, the queue, and the live values metrics read."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from typing import Any

from daemon.counters import SiteCounters
from daemon.journal import Journal
from daemon.journal import catalog as journal_catalog
from daemon.journal import files as journal_files
from daemon.mailbox import Mailbox
from daemon.report import Reporter
from daemon.retention import SiteRetention
from daemon.sending.router import Router
from daemon.sending.routes import RouteTable
from daemon.sending.sender import Sender

VERSION = "0.1.0"


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

    def held(self) -> tuple[int, float] | None:
        """(files held for want of a usable route, age of the oldest in seconds) at the summit."""
        if self.router is None:
            return None
        ages = [age for _, _, age in self.router.held_pending()]
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
        parts = [f"{self.role} {self.name}: {len(self.sender.items) + held} pending"]
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
            "pending": len(self.sender.items) + (self.router.held_count() if self.router is not None else 0),
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
        if self.retention is not None:
            out["retention"] = await self.retention.status()
        return out
