"""Prometheus metrics for one site, read from live state at scrape time (``GET /metrics``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from daemon.site import Site

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class SiteCollector(Collector):
    """Counters, queue depth, link and route health, and the age of the oldest pending delivery."""

    def __init__(self, site: Site) -> None:
        self.site = site

    def collect(self) -> Iterator[Metric]:
        site = self.site
        name = site.name
        files = CounterMetricFamily("skyrelay_files", "Files handled, by outcome", labels=["site", "outcome"])
        for outcome, count in site.counter_values().items():
            files.add_metric([name, outcome], count)
        yield files
        problems = CounterMetricFamily("skyrelay_problems", "Problems reported, by kind", labels=["site", "kind"])
        for kind, count in site.reporter.problem_counts.items():
            problems.add_metric([name, kind], count)
        yield problems
        events = CounterMetricFamily("skyrelay_events", "Decisions reported, by kind", labels=["site", "kind"])
        for kind, count in site.reporter.event_counts.items():
            events.add_metric([name, kind], count)
        yield events
        deliveries = CounterMetricFamily(
            "skyrelay_deliveries", "Deliveries acknowledged and failed attempts", labels=["site", "result"]
        )
        deliveries.add_metric([name, "acked"], site.sender.acked_total)
        deliveries.add_metric([name, "failed_attempt"], site.sender.failures_total)
        yield deliveries
        pending = GaugeMetricFamily(
            "skyrelay_pending", "Messages awaiting an ack, by peer and kind", labels=["site", "peer", "kind"]
        )
        counts: dict[tuple[str, str], int] = {}
        oldest = 0.0
        now = time.monotonic()
        for item in site.sender.items.values():
            counts[(item.peer, item.kind)] = counts.get((item.peer, item.kind), 0) + 1
            oldest = max(oldest, now - item.created)
        for (peer, kind), count in counts.items():
            pending.add_metric([name, peer, kind], count)
        yield pending
        yield _single(
            "skyrelay_oldest_pending_age_seconds",
            "Age of the oldest undelivered message (nothing silently stuck)",
            name,
            oldest,
        )
        links = GaugeMetricFamily("skyrelay_link_up", "1 when connected to the peer's mailbox", labels=["site", "peer"])
        online = GaugeMetricFamily(
            "skyrelay_peer_online", "1 when the peer's presence is online", labels=["site", "peer"]
        )
        for peer in site.mailbox.peers:
            links.add_metric([name, peer], 1.0 if site.mailbox.connected(peer) else 0.0)
            online.add_metric([name, peer], 1.0 if site.mailbox.peer_online.get(peer) else 0.0)
        yield links
        yield online
        if site.routes is not None:
            routes = GaugeMetricFamily(
                "skyrelay_route_healthy", "1 when the route can take files", labels=["site", "route"]
            )
            for route in site.routes.routes:
                routes.add_metric([name, route.name], 1.0 if site.routes.route_healthy(route) else 0.0)
            yield routes
        if site.router is not None:
            custody = site.router.custody_summary()
            yield _single("skyrelay_awaiting_custody", "Summit files not yet in custody", name, custody["awaiting"])
            yield _single(
                "skyrelay_custody_stuck",
                "Summit files overdue for custody with no other usable route (alert on > 0)",
                name,
                custody["stuck"],
            )


def _single(metric: str, documentation: str, site: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(metric, documentation, labels=["site"])
    gauge.add_metric([site], value)
    return gauge


class SiteMetrics:
    """A site's own registry (no process-global state) and its archive latency histogram."""

    def __init__(self, site: Site) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SiteCollector(site))
        self.latency = Histogram(
            "skyrelay_arrival_latency_seconds",
            "Summit close to archive stored",
            ["site", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
