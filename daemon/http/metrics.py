"""Prometheus metrics for one site, read from live state at scrape time (``GET /metrics``).

The collector reads a small :class:`MetricsSource` interface, not the site: the site's view
implements it. Besides the site's own families the registry carries prometheus_client's process,
platform and GC collectors (``process_*``, ``python_info``, ``python_gc_*``). The shipped dashboard
and alert rules (``systemd/skyrelay-dashboard.json``, ``systemd/skyrelay-alerts.yml``) use only names
exported here; ``tests/test_metrics.py`` checks that against real daemons.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
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

    @property
    def role(self) -> str: ...

    @property
    def version(self) -> str: ...

    def routes_in_use(self) -> Iterable[tuple[str, bool, bool]]: ...

    def breakers(self) -> Iterable[tuple[str, str]]: ...

    def held_files(self) -> tuple[int, float] | None: ...

    def mailbox_traffic(self) -> Iterable[tuple[str, int, int]]: ...

    def catalog_counts(self) -> dict[str, int] | None: ...

    async def refresh(self) -> None:
        """Read what lives in the journal (catalog counts) before a scrape."""


BREAKER_STATES = ("closed", "open", "half_open")

SEEDED_PROBLEMS: dict[str, tuple[str, ...]] = {"archive": ("job_failed",)}
"""Problem kinds exported at 0 before their first occurrence, by role: an alert rule's ``increase()`` sees a
counter's first step only when the series existed before it (``SkyrelayJobsFailing``)."""


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
        for kind, count in {**dict.fromkeys(SEEDED_PROBLEMS.get(source.role, ()), 0), **counters.problems}.items():
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
        publishes = CounterMetricFamily(
            "skyrelay_mailbox_publishes", "MQTT publishes into each peer's mailbox", labels=["site", "peer"]
        )
        messages = CounterMetricFamily(
            "skyrelay_mailbox_messages",
            "Messages delivered into each peer's mailbox (more than publishes when batches carry several)",
            labels=["site", "peer"],
        )
        for peer, published, delivered in source.mailbox_traffic():
            publishes.add_metric([name, peer], published)
            messages.add_metric([name, peer], delivered)
        yield publishes
        yield messages
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
        yield from self._operations(source)
        custody = source.custody()
        if custody is not None:
            yield _single("skyrelay_awaiting_custody", "Summit files not yet in custody", name, custody["awaiting"])
            yield _single(
                "skyrelay_custody_stuck",
                "Summit files overdue for custody with no other usable route (alert on > 0)",
                name,
                custody["stuck"],
            )

    @staticmethod
    def _operations(source: MetricsSource) -> Iterator[Metric]:
        """Build info, bytes moved, route in use, breakers, held files, catalog, retention deletions."""
        name = source.name
        build = GaugeMetricFamily(
            "skyrelay_build_info",
            "Always 1: the daemon's version and Python",
            labels=["site", "role", "version", "python"],
        )
        build.add_metric([name, source.role, source.version, platform.python_version()], 1.0)
        yield build
        moved = CounterMetricFamily(
            "skyrelay_bytes",
            "File bytes moved: in = pulled from the peer and stored, out = served to the peer",
            labels=["site", "direction", "peer"],
        )
        for (direction, peer), size in sorted(source.counters.bytes_moved.items()):
            moved.add_metric([name, direction, peer], size)
        yield moved
        in_use = list(source.routes_in_use())
        if in_use:
            gauge = GaugeMetricFamily(
                "skyrelay_route_in_use",
                "1 for the route new files take now; preferred=true marks the first route of the topology",
                labels=["site", "route", "preferred"],
            )
            for route, used, preferred in in_use:
                gauge.add_metric([name, route, "true" if preferred else "false"], 1.0 if used else 0.0)
            yield gauge
        breakers = list(source.breakers())
        if breakers:
            state = GaugeMetricFamily(
                "skyrelay_breaker_state",
                "Circuit breaker of the hop into each peer: 1 for its current state (closed, open, half_open)",
                labels=["site", "peer", "state"],
            )
            for peer, current in breakers:
                for candidate in BREAKER_STATES:
                    state.add_metric([name, peer, candidate], 1.0 if candidate == current else 0.0)
            yield state
        held = source.held_files()
        if held is not None:
            yield _single("skyrelay_held_files", "Files held for want of a usable route", name, held[0])
            yield _single(
                "skyrelay_oldest_held_age_seconds", "How long the oldest held file has waited (0: none)", name, held[1]
            )
        catalog = source.catalog_counts()
        if catalog is not None:
            files = GaugeMetricFamily(
                "skyrelay_catalog_files", "Files in the archive's catalog, by status", labels=["site", "status"]
            )
            for status in sorted({"archived", "quarantined", *catalog}):
                files.add_metric([name, status], catalog.get(status, 0))
            yield files
        counters = source.counters
        deleted = CounterMetricFamily(
            "skyrelay_retention_deleted_files",
            "Files deleted by retention (only ever after the archive's custody), by what they were",
            labels=["site", "what"],
        )
        freed = CounterMetricFamily(
            "skyrelay_retention_deleted_bytes", "Bytes freed by retention, by what they were", labels=["site", "what"]
        )
        for what in sorted(counters.deleted_files):
            deleted.add_metric([name, what], counters.deleted_files[what])
            freed.add_metric([name, what], counters.deleted_bytes[what])
        yield deleted
        yield freed


def _single(metric: str, documentation: str, site: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(metric, documentation, labels=["site"])
    gauge.add_metric([site], value)
    return gauge


class SiteMetrics:
    """A site's own registry (no process-global state) and its archive latency histogram."""

    def __init__(self, source: MetricsSource) -> None:
        self.site = source.name
        self.source = source
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SiteCollector(source))
        # The process's own CPU, memory, file descriptors and start time, the Python platform, and the
        # garbage collector, as prometheus_client's default registry would show them.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
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
        """The text exposition format (journal-backed values as of the last :meth:`scrape`)."""
        return generate_latest(self.registry)

    async def scrape(self) -> bytes:
        """Refresh the journal-backed values, then render: what ``GET /metrics`` serves."""
        await self.source.refresh()
        return self.render()
