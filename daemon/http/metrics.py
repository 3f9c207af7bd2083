"""Prometheus metrics for one site, read from live state at scrape time (``GET /metrics``).

The collector reads a small :class:`MetricsSource` interface, not the site: the site's view
implements it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.counters import SiteCounters

LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)


class MetricsSource(Protocol):
    """The live values a site's metrics are read from."""

    @property
    def name(self) -> str: ...

    @property
    def counters(self) -> SiteCounters: ...

    def file_outcomes(self) -> dict[str, int]: ...

    def pending(self) -> Iterable[tuple[str, str, float]]: ...

    def links(self) -> Iterable[tuple[str, bool, bool]]: ...

    def route_health(self) -> Iterable[tuple[str, bool]]: ...

    def custody(self) -> dict[str, int] | None: ...


class SiteCollector(Collector):
    """Counters, queue depth, link and route health, and the age of the oldest pending delivery."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        source = self.source
        name = source.name
        counters = source.counters
        files = CounterMetricFamily("skyrelay_files", "Files handled, by outcome", labels=["site", "outcome"])
        for outcome, count in source.file_outcomes().items():
            files.add_metric([name, outcome], count)
        yield files
        problems = CounterMetricFamily("skyrelay_problems", "Problems reported, by kind", labels=["site", "kind"])
        for kind, count in counters.problems.items():
            problems.add_metric([name, kind], count)
        yield problems
        events = CounterMetricFamily("skyrelay_events", "Decisions reported, by kind", labels=["site", "kind"])
        for kind, count in counters.events.items():
            events.add_metric([name, kind], count)
        yield events
        deliveries = CounterMetricFamily(
            "skyrelay_deliveries", "Deliveries acknowledged and failed attempts", labels=["site", "result"]
        )
        deliveries.add_metric([name, "acked"], counters.deliveries_acked)
        deliveries.add_metric([name, "failed_attempt"], counters.delivery_failures)
        yield deliveries
        pending = GaugeMetricFamily(
            "skyrelay_pending", "Messages awaiting an ack, by peer and kind", labels=["site", "peer", "kind"]
        )
        counts: dict[tuple[str, str], int] = {}
        oldest = 0.0
        for peer, kind, age in source.pending():
            counts[(peer, kind)] = counts.get((peer, kind), 0) + 1
            oldest = max(oldest, age)
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
        for peer, connected, is_online in source.links():
            links.add_metric([name, peer], 1.0 if connected else 0.0)
            online.add_metric([name, peer], 1.0 if is_online else 0.0)
        yield links
        yield online
        health = list(source.route_health())
        if health:
            routes = GaugeMetricFamily(
                "skyrelay_route_healthy", "1 when the route can take files", labels=["site", "route"]
            )
            for route, healthy in health:
                routes.add_metric([name, route], 1.0 if healthy else 0.0)
            yield routes
        custody = source.custody()
        if custody is not None:
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

    def __init__(self, source: MetricsSource) -> None:
        self.site = source.name
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SiteCollector(source))
        self.latency = Histogram(
            "skyrelay_arrival_latency_seconds",
            "Summit close to archive stored",
            ["site", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )

    def observe_latency(self, route: str, seconds: float) -> None:
        """One archived file's close-to-archive latency."""
        self.latency.labels(site=self.site, route=route).observe(seconds)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
