"""Route health and choice: per-peer circuit breakers, the operator's route policy, failover and failback.

A site judges a hop by what it sees: the connection into the peer's mailbox (a cut link drops
it at once), the peer's presence, and how offers fare (ack timeouts and failures feed a circuit
breaker with a hold-down, after which one probe is let through). The summit additionally marks a
route *degraded* when files sent along it miss the end-to-end custody deadline, which is how it
learns about a hop it cannot see (base → archive).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable
from typing import Literal

from daemon.config import Route, Topology
from daemon.journal import Journal
from daemon.journal import settings as journal_settings

BreakerState = Literal["closed", "open", "half_open"]
Policy = Literal["auto", "force", "disable"]


@dataclasses.dataclass(slots=True)
class Breaker:
    """Consecutive failures open the breaker; after ``hold_down_s`` one probe may pass (half-open).

    Reading the state never changes it: the move to half-open is a timer event that the sender
    schedules when the breaker opens (:meth:`half_open`).
    """

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

    @property
    def half_open_at(self) -> float:
        """Monotonic time at which an open breaker lets a probe through."""
        return self.opened_at + self.hold_down_s

    def half_open(self, now: float) -> bool:
        """The hold-down timer fired: let one probe through; True when this changed the state."""
        if self.state == "open" and now >= self.half_open_at:
            self.state = "half_open"
            return True
        return False

    def allows(self) -> bool:
        """Whether traffic may be sent now (closed, or half-open for a probe)."""
        return self.state != "open"


ROUTE_POLICY_KEY = "route_policy"
CONTROL_AT_KEY = "control_last_at"
CONTROL_MAX_AGE_S = 300.0
"""An operator command older (or further in the future) than this is refused as stale."""


class StaleControl(ValueError):
    """An operator command that is too old, from the future, or not newer than the last one applied (a replay)."""


class RoutePolicy:
    """The operator's route policy (auto / force / disable per route): the one owner, journaled on change."""

    def __init__(self, route_names: tuple[str, ...]) -> None:
        self._policy: dict[str, Policy] = dict.fromkeys(route_names, "auto")

    def __getitem__(self, route: str) -> Policy:
        return self._policy[route]

    def __contains__(self, route: object) -> bool:
        return route in self._policy

    def as_dict(self) -> dict[str, Policy]:
        """A copy of the policy, route → setting."""
        return dict(self._policy)

    def forced(self) -> str | None:
        """The forced route, if any."""
        return next((name for name, value in self._policy.items() if value == "force"), None)

    async def load(self, journal: Journal) -> None:
        """Take the policy persisted by an earlier run."""
        stored = await journal.read(journal_settings.get, ROUTE_POLICY_KEY)
        if stored:
            for name, value in json.loads(stored).items():
                if name in self._policy and value in ("auto", "force", "disable"):
                    self._policy[name] = value

    async def apply(
        self, journal: Journal, command: str, route: str | None, *, issued_at: float | None = None
    ) -> dict[str, Policy]:
        """Apply an operator command (``auto``, ``force R``, ``disable R``, ``enable R``), journal it, return it.

        ``issued_at`` (the signed command's time) must be recent and newer than the last command applied:
        a replayed command changes nothing.

        Raises:
            KeyError: ``route`` is not one of this site's routes.
            StaleControl: the command is stale or a replay.
        """
        if command != "auto" and route not in self._policy:
            raise KeyError(route)
        if issued_at is not None:
            now = time.time()
            if abs(now - issued_at) > CONTROL_MAX_AGE_S:
                raise StaleControl(f"issued {now - issued_at:.0f}s ago (accepted within {CONTROL_MAX_AGE_S:.0f}s)")
            last = await journal.read(journal_settings.get, CONTROL_AT_KEY)
            if last is not None and issued_at <= float(last):
                raise StaleControl("not newer than the last command applied (a replay)")
        updated = dict(self._policy)
        if command == "auto":
            updated = dict.fromkeys(updated, "auto")
        elif command == "force":
            updated = {k: ("auto" if v == "force" else v) for k, v in updated.items()}
            updated[route or ""] = "force"
        elif command == "disable":
            updated[route or ""] = "disable"
        elif command == "enable":
            updated[route or ""] = "auto"

        def record(db: sqlite3.Connection) -> None:
            journal_settings.put(db, ROUTE_POLICY_KEY, json.dumps(updated))
            if issued_at is not None:
                journal_settings.put(db, CONTROL_AT_KEY, repr(issued_at))

        await journal.transaction(record)
        self._policy = updated
        return dict(updated)


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
        self.policy = RoutePolicy(tuple(r.name for r in self.routes))
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
        return self._connected(peer) and self.breaker(peer).allows()

    def onward_down(self, route: Route) -> tuple[str, ...]:
        """Sites further along ``route`` that the next hop reports it cannot reach."""
        peer = self.next_hop(route)
        later = route.sites[route.sites.index(peer) + 1 :]
        reported = self._unreachable(peer)
        return tuple(s for s in later if s in reported)

    def upstream_down(self, route: Route) -> tuple[str, ...]:
        """The site before this one on ``route``, when this site's link from it is not usable (relays only)."""
        index = route.sites.index(self.site)
        if index == 0:
            return ()
        previous = route.sites[index - 1]
        return () if self._connected(previous) else (previous,)

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

    def has_failed(self, route: Route) -> bool:
        """Whether ``route`` has been healthy and then failed since start-up."""
        return route.name in self._has_failed

    def _current_ok(self, now: float) -> bool:
        current = next((r for r in self.routes if r.name == self.current), None)
        return current is not None and self.policy[current.name] != "disable" and self.route_healthy(current, now)

    def next_change_at(self, now: float) -> float | None:
        """The next moment a route's standing changes by time alone: a degraded period ends, or a route
        that failed has been healthy for the hold-down and may take new files again (failback)."""
        times = [t for t in self.degraded_until.values() if t > now]
        for name in self._has_failed:
            since = self._healthy_since.get(name)
            if since is not None and since + self.tuning.breaker_hold_down_s > now:
                times.append(since + self.tuning.breaker_hold_down_s)
        return min(times) if times else None

    def usable(self, route: Route, now: float) -> bool:
        """Whether files may be sent on ``route`` now: the policy allows it and it is healthy (or forced)."""
        policy = self.policy[route.name]
        forced = self.policy.forced()
        if policy == "disable" or (forced is not None and policy != "force"):
            return False
        return policy == "force" or self.route_healthy(route, now)

    def alternative(self, route_name: str, now: float) -> Route | None:
        """The first usable route other than ``route_name``."""
        return next((r for r in self.routes if r.name != route_name and self.usable(r, now)), None)

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
            # A relay's route is only as good as the hop that feeds it: shown down when the link from the
            # site before it is (the relay's own decisions never use this; its onward hop is what it sends on).
            upstream = self.upstream_down(route)
            out.append(
                RouteView(
                    name=route.name,
                    sites=route.sites,
                    healthy=self.route_healthy(route, now) and not upstream,
                    policy=self.policy[route.name],
                    healthy_since=round(time.time() - (now - since), 1) if since is not None else None,
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
                        "upstream_unreachable": list(upstream),
                    },
                )
            )
        return out
