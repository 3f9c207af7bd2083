"""Route health and choice: per-peer circuit breakers, operator policy, failover and failback.

A site judges a hop by what it sees: the connection into the peer's mailbox (a cut link drops
it at once), the peer's presence, and how offers fare (ack timeouts and failures feed a circuit
breaker with a hold-down, after which one probe is let through). The summit additionally marks a
route *degraded* when files sent along it miss the end-to-end custody deadline, which is how it
learns about a hop it cannot see (base → archive).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Literal

from daemon.config import Route, Topology

BreakerState = Literal["closed", "open", "half_open"]
Policy = Literal["auto", "force", "disable"]


@dataclasses.dataclass(slots=True)
class Breaker:
    """Consecutive failures open the breaker; after ``hold_down_s`` one probe may pass (half-open)."""

    threshold: int
    hold_down_s: float
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float = 0.0
    last_reason: str = ""

    def record_success(self) -> bool:
        """A delivery was acknowledged; return True when this closed the breaker."""
        changed = self.state != "closed"
        self.state = "closed"
        self.failures = 0
        return changed

    def record_failure(self, reason: str, now: float) -> bool:
        """A delivery failed; return True when this opened the breaker."""
        self.failures += 1
        self.last_reason = reason
        if self.state == "half_open" or (self.state == "closed" and self.failures >= self.threshold):
            self.state = "open"
            self.opened_at = now
            return True
        return False

    def allows(self, now: float) -> bool:
        """Whether traffic may be sent (moving open → half-open once the hold-down has passed)."""
        if self.state == "open" and now - self.opened_at >= self.hold_down_s:
            self.state = "half_open"
        return self.state != "open"


@dataclasses.dataclass(slots=True)
class RouteView:
    """What an operator sees of one route."""

    name: str
    sites: tuple[str, ...]
    healthy: bool
    policy: str
    healthy_since: float | None
    evidence: dict[str, object]


class RouteTable:
    """The sending site's view of every route it can start, and the choice of route for a new file."""

    def __init__(
        self,
        topology: Topology,
        site: str,
        connected: Callable[[str], bool],
        unreachable: Callable[[str], frozenset[str]] | None = None,
    ) -> None:
        self.site = site
        self._unreachable = unreachable or (lambda peer: frozenset())
        self.tuning = topology.tuning
        self.routes: tuple[Route, ...] = tuple(r for r in topology.routes if site in r.sites[:-1])
        self._connected = connected
        self.breakers: dict[str, Breaker] = {}
        self.policy: dict[str, Policy] = {r.name: "auto" for r in self.routes}
        self.degraded_until: dict[str, float] = {}
        self._healthy_since: dict[str, float | None] = {r.name: None for r in self.routes}
        self._has_failed: set[str] = set()
        self.current: str | None = None

    def breaker(self, peer: str) -> Breaker:
        """The breaker of the hop into ``peer``."""
        found = self.breakers.get(peer)
        if found is None:
            found = self.breakers[peer] = Breaker(
                threshold=self.tuning.breaker_failures, hold_down_s=self.tuning.breaker_hold_down_s
            )
        return found

    def next_hop(self, route: Route) -> str:
        """The site after this one on ``route``."""
        return route.sites[route.sites.index(self.site) + 1]

    def hop_healthy(self, peer: str, now: float | None = None) -> bool:
        """Connected to the peer's mailbox and its breaker lets traffic through."""
        now = time.monotonic() if now is None else now
        return self._connected(peer) and self.breaker(peer).allows(now)

    def onward_down(self, route: Route) -> tuple[str, ...]:
        """Sites further along ``route`` that the next hop reports it cannot reach."""
        peer = self.next_hop(route)
        later = route.sites[route.sites.index(peer) + 1 :]
        reported = self._unreachable(peer)
        return tuple(s for s in later if s in reported)

    def route_healthy(self, route: Route, now: float | None = None) -> bool:
        """The first hop is healthy, the next hop can reach the rest, and the route is not degraded."""
        now = time.monotonic() if now is None else now
        if self.degraded_until.get(route.name, 0.0) > now or self.onward_down(route):
            return False
        return self.hop_healthy(self.next_hop(route), now)

    def refresh(self, now: float | None = None) -> None:
        """Update each route's healthy-since stamp (for failback hold-down)."""
        now = time.monotonic() if now is None else now
        for route in self.routes:
            healthy = self.route_healthy(route, now)
            if healthy and self._healthy_since[route.name] is None:
                self._healthy_since[route.name] = now
            elif not healthy:
                if self._healthy_since[route.name] is not None:
                    self._has_failed.add(route.name)
                self._healthy_since[route.name] = None

    def choose(self, now: float | None = None, *, exclude: tuple[str, ...] = ()) -> Route | None:
        """The route for a new file: a forced route, else the first healthy allowed one.

        A route that failed must have been healthy again for the hold-down period before it is
        preferred again over the route in use (failback), so a flapping link does not flap traffic.
        A route that has not failed since start-up (its peer was merely not yet connected) needs no
        hold-down.
        Returns None when the policy disables every route.
        """
        now = time.monotonic() if now is None else now
        self.refresh(now)
        allowed = [r for r in self.routes if self.policy[r.name] != "disable" and r.name not in exclude]
        forced = [r for r in allowed if self.policy[r.name] == "force"]
        if forced:
            return forced[0]
        if not allowed:
            return None
        for route in allowed:
            if not self.route_healthy(route, now):
                continue
            since = self._healthy_since[route.name]
            stable = route.name not in self._has_failed or (
                since is not None and now - since >= self.tuning.breaker_hold_down_s
            )
            if route.name == self.current or stable or self.current is None or not self._current_ok(now):
                return route
        # Nothing healthy: keep the files on the preferred allowed route; they wait there.
        return allowed[0]

    def _current_ok(self, now: float) -> bool:
        current = next((r for r in self.routes if r.name == self.current), None)
        return current is not None and self.policy[current.name] != "disable" and self.route_healthy(current, now)

    def mark_degraded(self, route_name: str, now: float | None = None) -> None:
        """A file on this route missed its end-to-end deadline: avoid the route for a hold-down."""
        now = time.monotonic() if now is None else now
        self.degraded_until[route_name] = now + self.tuning.breaker_hold_down_s

    def view(self, queue: dict[str, int], now: float | None = None) -> list[RouteView]:
        """Each route's state, policy and health evidence, for ``skyrelay routes``."""
        now = time.monotonic() if now is None else now
        self.refresh(now)
        out = []
        for route in self.routes:
            peer = self.next_hop(route)
            breaker = self.breaker(peer)
            since = self._healthy_since[route.name]
            out.append(
                RouteView(
                    name=route.name,
                    sites=route.sites,
                    healthy=self.route_healthy(route, now),
                    policy=self.policy[route.name],
                    healthy_since=(time.time() - (now - since)) if since is not None else None,
                    evidence={
                        "next_hop": peer,
                        "connected": self._connected(peer),
                        "breaker": breaker.state,
                        "consecutive_failures": breaker.failures,
                        "last_failure": breaker.last_reason,
                        "onward_unreachable": list(self.onward_down(route)),
                        "degraded_for_s": round(max(0.0, self.degraded_until.get(route.name, 0.0) - now), 1),
                        "queued": queue.get(route.name, 0),
                        "in_use": route.name == self.current,
                    },
                )
            )
        return out
