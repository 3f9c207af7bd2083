"""The summit's router: where a route is chosen, failover of waiting files, custody deadlines, failback.

It wakes on health changes (a link drops or returns, a breaker opens, closes or half-opens, a
peer's presence changes, an operator changes the policy) and on timers (the next custody
deadline, the end of a degraded period, the moment a recovered route may take files again); it
never polls.

- A file whose offer waits on an unhealthy hop moves to the first healthy other route.
- A file that has no custody ``end_to_end_timeout_s`` after the first hop acknowledged it is sent
  again by another healthy route (the old transfer keeps going; the archive keeps one copy),
  and the late route is marked degraded for a hold-down. This catches a hop the summit cannot
  see, such as base → archive.
- New files take ``RouteTable.choose()``: the preferred route again once it has been healthy
  for the hold-down period.
- A file that no route can take (every route disabled, or none healthy) is *held* here, not handed
  to the sender: counted in pending, queue, custody ``stuck`` and metrics, reported once per spell,
  and offered the moment a route is usable again, whatever made it usable (an operator command, a
  breaker closing or half-opening, a peer's presence returning, a degraded period ending). An offer
  already queued on a route the operator's policy now forbids, with no other usable route, is
  taken back from the sender and held too. A backlog of held files drains through the sender a few
  hundred at a time (:data:`SEND_QUEUE_ROOM`), the rest waiting here, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import heapq
import itertools
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

import structlog

from daemon.aio import raise_if_cancelling
from daemon.config import Route, Topology
from daemon.journal import FileRow, Journal, TransferRow, new_id
from daemon.journal import files as journal_files
from daemon.report import Reporter
from daemon.sending.routes import Policy, RouteTable, StaleControl
from daemon.sending.sender import Outgoing, Sender
from protocol.control import RouteControl

log = structlog.get_logger()

MakeItem = Callable[[TransferRow, FileRow], Outgoing]


@dataclasses.dataclass(slots=True)
class Awaiting:
    """A summit file without custody yet: its latest route, and when its first hop acknowledged it.

    The custody clock starts at that ack, not when the file was queued: a backlog after an outage
    must not look overdue, and the first hop's own health is judged by its breaker and presence.
    Only the file's name is kept (for reports): a night's backlog is a record per file, and its rows stay
    in the journal, read back the rare time a file is sent again.
    """

    name: str
    route: str
    started: float | None  # monotonic time of the first hop's ack; None while the offer waits
    stuck: bool = False  # overdue with no other usable route: reported, still retried


@dataclasses.dataclass(frozen=True, slots=True)
class Held:
    """A summit file that no route could take: its journaled (pending) transfer, not in the sender.

    What is shown of it (``skyrelay queue``, reports) and no more: its transfer and file rows are read back
    from the journal, a window at a time, when it goes (:meth:`Router._feed`). Both rows were kept in memory:
    2,029 bytes a held file by tracemalloc, now 623 with the :class:`Awaiting` record.
    """

    transfer_id: str
    route: str
    receiver: str
    name: str
    since: float  # monotonic time it was held

    @classmethod
    def of(cls, offer: journal_files.PendingOffer | TransferRow, name: str, since: float) -> Held:
        return cls(offer.transfer_id, offer.route, offer.receiver, name, since)


HELD_ERROR = "no usable route"
WAITING_ERROR = "waiting for room in the send queue (a backlog drains)"

SEND_QUEUE_ROOM = 512
"""Offers the router keeps queued in the sender per route while held files drain: the rest wait here, as
journaled rows (about a kilobyte each) rather than as sender items, and go as the queue empties, so a
night's backlog does not sit in memory twice."""

HELD_REPORT_GRACE_S = 5.0
"""Files held before any route was healthy since start-up are reported only after this (links connect first)."""

STARTUP_SETTLE_S = 30.0
"""After start-up, a route connecting for the first time and taking over new files is settling, not a change."""


class Router:
    """Chooses and changes routes for the summit's files."""

    def __init__(
        self,
        topology: Topology,
        journal: Journal,
        sender: Sender,
        routes: RouteTable,
        reporter: Reporter,
        make_item: MakeItem,
    ) -> None:
        self.topology = topology
        self.journal = journal
        self.sender = sender
        self.routes = routes
        self.reporter = reporter
        self.make_item = make_item
        sender.queue_listeners.append(self._on_queue_change)
        self.awaiting: dict[str, Awaiting] = {}
        self._deadlines: list[tuple[float, int, str]] = []
        """(custody clock start, seq, file key) of awaiting files, a heap: the next deadline without a scan.
        An entry is stale when its file's clock no longer starts then (custody came, or it was re-sent)."""
        self._seq = itertools.count()
        self._stuck: set[str] = set()
        """Keys of awaiting files that are overdue with no other usable route."""
        self.held: dict[str, Held] = {}
        """Files no route can take now."""
        self.waiting: dict[str, Held] = {}
        """Held files whose route is usable again, oldest first, given to the sender as its queue has room."""
        self._feeding: str | None = None
        """The route ``waiting`` files go to, while the router waits for room on it."""
        self._held_reported = False
        self._stuck_reported_at: float | None = None
        self.wake = asyncio.Event()
        self._pending_events: list[tuple[str, str, dict[str, Any]]] = []
        self._down: dict[str, str] = {}
        """Routes seen down since they were last healthy, and why (for route_down / route_up events)."""
        self._seen_healthy: set[str] = set()
        self._taken: set[str] = set()
        """Routes that have been the route in use since start-up."""
        self._started = time.monotonic()
        self._report_held_at: float | None = None
        """When held files are reported if still held: the end of the start-up grace."""

    # ---- bookkeeping -----------------------------------------------------------------------

    async def restore(self) -> None:
        """Load files without custody, the offers not yet acknowledged, and the persisted operator policy,
        from the journal.

        The unacknowledged offers wait here, oldest first, and go to the sender as its queue has room, as a
        backlog's held files do once a route is usable: a summit restarted in the middle of a night's
        backlog does not queue the whole backlog in the sender at once.
        """
        now_wall, now = time.time(), time.monotonic()
        for row in await self.journal.read(journal_files.awaiting_custody):
            started = None if row.acked_at is None else now - max(0.0, now_wall - row.acked_at)
            self.awaiting[row.file_key] = waiting = Awaiting(name=row.name, route=row.route, started=None)
            if started is not None:
                self._start_clock(row.file_key, waiting, started)
        for offer in await self.journal.read(journal_files.pending_offers):
            tracked = self.awaiting.get(offer.file_key)
            name = tracked.name if tracked is not None else offer.name  # (one copy of the name)
            self.waiting[offer.file_key] = Held.of(offer, name, now)
        await self.routes.policy.load(self.journal)
        await self._hold_forbidden(now)
        if self.waiting:
            self.wake.set()

    def track(self, file_row: FileRow, route: str) -> None:
        """A new file was offered along ``route``."""
        self.awaiting[file_row.file_key] = Awaiting(name=file_row.name, route=route, started=None)
        self._stuck.discard(file_row.file_key)

    def delivered(self, file_key: str, route: str) -> None:
        """The first hop acknowledged the file on ``route``: start its custody clock."""
        waiting = self.awaiting.get(file_key)
        if waiting is not None and waiting.route == route:
            self._start_clock(file_key, waiting, time.monotonic())
            self.wake.set()  # schedule this file's custody deadline

    def _start_clock(self, file_key: str, waiting: Awaiting, started: float) -> None:
        waiting.started = started
        heapq.heappush(self._deadlines, (started, next(self._seq), file_key))

    def forget(self, file_key: str) -> None:
        """Stop tracking a file: the archive holds it, or the camera replaced it before it left."""
        self.awaiting.pop(file_key, None)
        self._stuck.discard(file_key)
        self.held.pop(file_key, None)
        self.waiting.pop(file_key, None)

    # ---- files held for want of a usable route ---------------------------------------------------

    def usable_route(self, now: float | None = None) -> Route | None:
        """The route a new file may be offered on now: the choice of :meth:`choose` when it is usable,
        else the first usable route; None when no route is usable."""
        now = time.monotonic() if now is None else now
        route = self.choose()
        if route is not None and self.routes.usable(route, now):
            return route
        return next((r for r in self.routes.routes if self.routes.usable(r, now)), None)

    def route_for_new(self) -> Route:
        """The route a new file's transfer is journaled on: a usable one, else the one it would take
        (the preferred allowed route, or the first route when every route is disabled)."""
        return self.usable_route() or self.choose() or self.routes.routes[0]

    def admit(self, transfer: TransferRow, file_row: FileRow) -> bool:
        """A newly journaled file: hand it to the sender when its route is usable now (True), else hold it."""
        route = self.topology.route(transfer.route)
        self.track(file_row, transfer.route)
        if route is not None and self.routes.usable(route, time.monotonic()):
            self.sender.add(self.make_item(transfer, file_row))
            return True
        self._hold(transfer, file_row)
        return False

    def _hold(self, transfer: TransferRow, file_row: FileRow) -> None:
        self.held[file_row.file_key] = Held.of(transfer, file_row.name, time.monotonic())
        self.wake.set()  # report it, and offer it at once if a route became usable meanwhile

    def held_count(self) -> int:
        """Files held for want of a usable route (they count as pending)."""
        return len(self.held)

    def unsent_count(self) -> int:
        """Files pending here and not in the sender: held, and waiting for room in the send queue."""
        return len(self.held) + len(self.waiting)

    def held_pending(self, *, waiting: bool = True) -> Iterator[tuple[str, str, float]]:
        """(peer, kind, age in seconds) of every held file (and, unless ``waiting`` is False, every file
        waiting for room in the send queue), like the sender's pending items: the peer is the next hop of
        the route it is journaled on, the kind ``offer``."""
        now = time.monotonic()
        for held in itertools.chain(self.held.values(), self.waiting.values() if waiting else ()):
            yield held.receiver, "offer", now - held.since

    def held_snapshot(self) -> list[dict[str, object]]:
        """Every held or waiting file, in the shape of :meth:`Sender.snapshot` rows (for ``skyrelay queue``)."""
        now = time.monotonic()
        return [
            {
                "id": h.transfer_id,
                "kind": "offer",
                "peer": h.receiver,
                "file": h.name,
                "route": h.route,
                "attempt": 0,
                "failures": 0,
                "inflight": False,
                "age_s": round(now - h.since, 1),
                "last_error": error,
            }
            for files, error in ((self.held, HELD_ERROR), (self.waiting, WAITING_ERROR))
            for h in files.values()
        ]

    async def in_flight(self) -> dict[str, object]:
        """Inbox files registered and not yet in custody (held, queued, or awaiting custody), and those
        registered more than ``end_to_end_timeout_s`` ago (``overdue``), for ``skyrelay verify``."""
        timeout = self.topology.tuning.end_to_end_timeout_s
        now = time.time()
        found = await self.journal.read(journal_files.in_flight, overdue_before=now - timeout)
        oldest = found.oldest_registered_at
        return {
            "files": found.files,
            "held": len(self.held),
            "oldest_age_s": round(now - oldest, 1) if oldest is not None else None,
            "overdue_after_s": timeout,
            "overdue": found.overdue,
            "overdue_examples": list(found.overdue_examples),
        }

    def _forbidden(self, route: Route) -> bool:
        """Whether the operator's policy forbids ``route`` (disabled, or another route is forced)."""
        policy = self.routes.policy[route.name]
        forced = self.routes.policy.forced()
        return policy == "disable" or (forced is not None and policy != "force")

    async def _hold_forbidden(self, now: float) -> None:
        """Take back from the sender the offers (not in flight) queued on a route the policy forbids when
        no usable route can take them: the sender would otherwise send them there anyway."""
        forbidden = [r for r in self.routes.routes if r.sites[0] == self.sender.site and self._forbidden(r)]
        for route in forbidden:
            if self.routes.alternative(route.name, now) is not None:
                continue
            for item in self.sender.offers_on(route.name):
                await self._take_back(item)

    async def _take_back(self, item: Outgoing) -> None:
        """Hold an offer (not in flight) that the sender would otherwise send on a forbidden route (what it
        still is in the journal is read when it goes)."""
        if self.sender.inflight(item) or self.sender.items.get(item.msg_id) is not item or item.route is None:
            return
        self.sender.remove(item.msg_id)
        tracked = self.awaiting.get(item.file_key)
        name = tracked.name if tracked is not None else item.name
        self.held[item.file_key] = Held(item.msg_id, item.route, item.peer, name, time.monotonic())
        self.wake.set()

    async def _release_held(self, now: float) -> None:
        """Offer the held files on the usable route, if there is one now; report a new spell of holding.

        Held files whose route is usable wait in :attr:`waiting`, oldest first, and go to the sender as
        its queue on that route has room (:data:`SEND_QUEUE_ROOM`); when no route is usable, the waiting
        ones are held again.
        """
        self._report_held_at = None
        if not self.held and not self.waiting:
            self._held_reported = False
            self._feeding = None
            return
        route = self.usable_route(now)
        if route is None:
            self._feeding = None
            if self.waiting:  # (older than those held since: they keep their place)
                self.waiting.update(self.held)
                self.held, self.waiting = self.waiting, {}
            if not self._seen_healthy and now < self._started + HELD_REPORT_GRACE_S:
                # Just started, links still connecting: not yet a problem (a timer looks again).
                self._report_held_at = self._started + HELD_REPORT_GRACE_S
                return
            if not self._held_reported:
                self._held_reported = True
                why = {r.name: self._why(r, now) for r in self.routes.routes}
                await self.reporter.problem(
                    "no_route",
                    f"{len(self.held)} file(s) held at the summit: no usable route "
                    f"({'; '.join(f'{k}: {v}' for k, v in why.items())}); each is offered as soon as one is usable",
                    files=len(self.held),
                    routes=why,
                    examples=sorted(h.name for h in self.held.values())[:10],
                )
            return
        released = len(self.held)
        self.waiting.update(self.held)
        self.held.clear()
        self._held_reported = False
        if released:
            await self.reporter.event(
                "held_offered",
                f"{released} held file(s) offered on {route.name}, now usable",
                route=route.name,
                files=released,
            )
        await self._feed(route)

    async def _feed(self, route: Route) -> None:
        """Give waiting files to the sender on ``route`` up to :data:`SEND_QUEUE_ROOM` queued offers, their
        transfers and files read from the journal in one read per window."""
        room = SEND_QUEUE_ROOM - self.sender.offers_count(route.name)
        window = list(itertools.islice(self.waiting.items(), max(0, room)))
        rows = (
            await self.journal.read(journal_files.held_offers, [(k, w.transfer_id) for k, w in window])
            if window
            else {}
        )
        for key, waiting in window:
            if self.waiting.get(key) is not waiting:
                continue  # forgotten (custody, replaced) while we awaited the journal
            transfer, file_row = rows.get(key, (None, None))
            if file_row is None:
                del self.waiting[key]  # no longer held here: custody came, or the camera replaced it
                continue
            if transfer is None or transfer.route != route.name:
                transfer = await self.journal.transaction(
                    functools.partial(
                        _supersede_and_insert,
                        old=[waiting.transfer_id],
                        file_key=key,
                        route=route,
                        reason=f"held for want of a usable route; {route.name} is usable",
                    )
                )
                if self.waiting.get(key) is not waiting:
                    continue
            del self.waiting[key]
            self.sender.add(self.make_item(transfer, file_row))
            self.track(file_row, route.name)
        self._feeding = route.name if self.waiting else None

    def _on_queue_change(self) -> None:
        """The sender queued or removed an item: wake to feed waiting files once half the room is free."""
        if self._feeding is not None and self.sender.offers_count(self._feeding) <= SEND_QUEUE_ROOM // 2:
            self._feeding = None  # (one wake per refill)
            self.wake.set()

    def choose(self) -> Route | None:
        """The route for a new file (and one ``route_changed`` event per real change of the route in use).

        The route in use changes only to a route files can be sent on now: while nothing is usable the
        table's fallback (the preferred route, where held files are journaled) is not a change, so files
        that wait do not make the choice flap. The start-up's settling is not a change either: the first
        route taken, and a preferred route that connects for the first time shortly after start-up
        (within ``STARTUP_SETTLE_S``) taking over from the one that happened to connect first.
        """
        now = time.monotonic()
        route = self.routes.choose(now)
        if route is None or route.name == self.routes.current or not self.routes.usable(route, now):
            return route
        previous, self.routes.current = self.routes.current, route.name
        first_spell = route.name not in self._taken
        self._taken.add(route.name)
        settling = (
            first_spell
            and now - self._started < STARTUP_SETTLE_S
            and not self.routes.has_failed(route)
            and not any(r.name == previous and self.routes.has_failed(r) for r in self.routes.routes)
        )
        if previous is None or settling:
            log.info("route_chosen", route=route.name, previous=previous, startup=True)
            return route
        self._event_soon(
            "route_changed",
            f"new files now take {route.name} (was {previous})",
            route=route.name,
            previous=previous,
        )
        return route

    def _event_soon(self, kind: str, message: str, **details: Any) -> None:
        self._pending_events.append((kind, message, details))
        self.wake.set()

    # ---- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Re-route on every health change and at every deadline."""
        while True:
            raise_if_cancelling()
            self.wake.clear()
            for kind, message, details in self._pending_events:
                await self.reporter.event(kind, message, **details)
            self._pending_events.clear()
            await self._note_health(time.monotonic())
            self.choose()
            await self._failover()
            await self._release_held(time.monotonic())
            await self._rescue_stranded(time.monotonic())
            next_deadline = await self._overdue()
            now = time.monotonic()
            timers = (next_deadline, self.routes.next_change_at(now), self._report_held_at)
            wake_at = [t for t in timers if t is not None]
            timeout = max(0.05, min(wake_at) - now) if wake_at else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    async def _failover(self) -> None:
        """Move offers that wait on an unusable route to the first usable other route."""
        now = time.monotonic()
        for route in self.routes.routes:
            if route.sites[0] != self.sender.site or self.routes.usable(route, now):
                continue
            alternative = self.routes.alternative(route.name, now)
            if alternative is None:
                continue
            for item in self.sender.offers_on(route.name):
                if self.sender.items.get(item.msg_id) is item:  # (not acked or moved while we awaited)
                    await self._reroute(item, alternative, reason=f"{route.name} unusable: {self._why(route, now)}")
        await self._hold_forbidden(now)

    async def _note_health(self, now: float) -> None:
        """Journal each change of a route's health as an event (``route_down`` with why, ``route_up``), so the
        console's timeline shows when and why routes went down and came back; the start-up's first
        connections are not changes."""
        for route in self.routes.routes:
            healthy = self.routes.route_healthy(route, now)
            if healthy:
                self._seen_healthy.add(route.name)
                was = self._down.pop(route.name, None)
                if was is not None:
                    await self.reporter.event("route_up", f"route {route.name} healthy again", route=route.name)
            elif route.name in self._seen_healthy and route.name not in self._down:
                why = self._health_reason(route, now)
                self._down[route.name] = why
                await self.reporter.event("route_down", f"route {route.name} down: {why}", route=route.name, reason=why)

    def _health_reason(self, route: Route, now: float) -> str:
        peer = self.routes.next_hop(route)
        mailbox = self.sender.mailbox
        if not mailbox.connected(peer):
            return f"no connection to {peer}'s mailbox"
        if not mailbox.peer_online.get(peer, False):
            return f"{peer} is offline"
        breaker = self.routes.breaker(peer)
        if not breaker.allows():
            return f"breaker to {peer} open ({breaker.last_reason or 'failures'})"
        onward = self.routes.onward_down(route)
        if onward:
            return f"{peer} reports {', '.join(onward)} unreachable"
        return "files missed the custody deadline on it"

    def _why(self, route: Route, now: float) -> str:
        peer = self.routes.next_hop(route)
        breaker = self.routes.breaker(peer)
        if self.routes.policy[route.name] == "disable":
            return "disabled by operator"
        if self.routes.policy.forced() not in (None, route.name):
            return "another route is forced by operator"
        if not self.routes.hop_healthy(peer, now):
            return f"hop to {peer}: connected={self.sender.mailbox.connected(peer)}, breaker={breaker.state}"
        if self.routes.onward_down(route):
            return f"{peer} reports {', '.join(self.routes.onward_down(route))} unreachable"
        return "degraded (custody overdue)"

    async def _reroute(self, item: Outgoing, route: Route, *, reason: str) -> None:
        old_id = item.msg_id

        transfer = await self.journal.transaction(
            functools.partial(_supersede_and_insert, old=[old_id], file_key=item.file_key, route=route, reason=reason)
        )
        self.sender.remove(old_id)
        file_row = await self.journal.read(journal_files.file, item.file_key)
        if file_row is None:
            return
        self.sender.add(self.make_item(transfer, file_row))
        self.track(file_row, route.name)
        await self.reporter.event(
            "failover",
            f"{file_row.name}: {item.route} -> {route.name} ({reason})",
            file=file_row.name,
            old_route=item.route,
            new_route=route.name,
            reason=reason,
        )

    async def _overdue(self) -> float | None:
        """Re-send files whose custody is overdue by another route; return the next deadline."""
        timeout = self.topology.tuning.end_to_end_timeout_s
        now = time.monotonic()
        deadlines = self._deadlines
        while deadlines:
            started, _, key = deadlines[0]
            waiting = self.awaiting.get(key)
            if waiting is None or waiting.started != started:
                heapq.heappop(deadlines)  # stale: custody came, or the file was re-sent since
                continue
            if started + timeout > now or started >= now:
                break  # (the second: a clock restarted in this pass waits for the next)
            heapq.heappop(deadlines)
            self.routes.mark_degraded(waiting.route, now)
            alternative = self.routes.alternative(waiting.route, now)
            self._start_clock(key, waiting, now)  # with no alternative, look again after another period
            if alternative is None:
                waiting.stuck = True
                self._stuck.add(key)
                continue
            old_route = waiting.route
            await self._resend(key, waiting, alternative)
            await self.reporter.event(
                "custody_overdue",
                f"{waiting.name}: no custody {timeout:.0f}s after {old_route}'s first hop took it; re-sent by "
                f"{alternative.name}",
                file=waiting.name,
                old_route=old_route,
                new_route=alternative.name,
            )
        await self._report_stuck(now, timeout)
        return deadlines[0][0] + timeout if deadlines else None

    def custody_summary(self) -> dict[str, int]:
        """Files awaiting custody; those ``stuck`` (overdue with no other usable route, or held for want
        of any usable route); and of those the ``held`` ones."""
        held = self.held  # (counted in place: status and metrics ask often, and a backlog is a night of files)
        return {
            "awaiting": len(self.awaiting) + sum(1 for key in held if key not in self.awaiting),
            "stuck": sum(1 for key in self._stuck if key not in held) + len(held),
            "held": len(held),
        }

    async def _report_stuck(self, now: float, period: float) -> None:
        """Nothing silently stuck: one problem per period listing every overdue file with no other
        usable route (not one problem per file)."""
        due = self._stuck_reported_at is None or now - self._stuck_reported_at >= period
        if not self._stuck or not due:
            return
        stuck = [self.awaiting[k] for k in self._stuck if k in self.awaiting]
        if stuck:
            self._stuck_reported_at = now
            names = sorted(w.name for w in stuck)
            await self.reporter.problem(
                "custody_overdue",
                f"{len(stuck)} file(s) without custody {period:.0f}s after their first hop took them, and no "
                "other usable route; still retrying",
                files=len(stuck),
                routes=sorted({w.route for w in stuck}),
                examples=names[:10],
            )

    async def _resend(self, key: str, waiting: Awaiting, route: Route) -> None:
        """Send a file again by ``route``; any offer still waiting is superseded. The earlier copy may
        still arrive: the archive keeps one."""
        stale = [i.msg_id for i in self.sender.of_file(key) if i.kind == "offer"]
        for msg_id in stale:
            self.sender.remove(msg_id)
        transfer = await self.journal.transaction(
            functools.partial(_supersede_and_insert, old=stale, file_key=key, route=route)
        )
        file_row = await self.journal.read(journal_files.file, key)
        waiting.route, waiting.started, waiting.stuck = route.name, None, False
        self._stuck.discard(key)
        if file_row is not None:
            self.sender.add(self.make_item(transfer, file_row))

    async def _rescue_stranded(self, now: float) -> None:
        """Files the next hop already holds but reports it cannot forward go again by another route."""
        stranded = {r.name for r in self.routes.routes if self.routes.onward_down(r)}
        if not stranded:
            return
        for key, waiting in list(self.awaiting.items()):
            route = self.topology.route(waiting.route)
            if waiting.started is None or route is None or route.name not in stranded:
                continue
            beyond = self.routes.onward_down(route)
            if not beyond:
                continue
            alternative = self.routes.alternative(route.name, now)
            if alternative is None:
                continue
            await self._resend(key, waiting, alternative)
            hop = self.routes.next_hop(route)
            await self.reporter.event(
                "failover",
                f"{waiting.name}: {hop} holds it but cannot reach {', '.join(beyond)}; re-sent by {alternative.name}",
                file=waiting.name,
                old_route=route.name,
                new_route=alternative.name,
                reason=f"{hop} reports {', '.join(beyond)} unreachable",
            )

    # ---- operator control --------------------------------------------------------------------

    async def control(self, command: RouteControl) -> ControlOutcome:
        """Apply an operator's route command, persist it, report it as an event, and say what came of it."""
        try:
            policy = await self.routes.policy.apply(self.journal, command.command, command.route, issued_at=command.at)
        except KeyError:
            names = ", ".join(r.name for r in self.routes.routes)
            reason = f"unknown route {command.route!r}; routes: {names}"
            await self.reporter.problem("bad_control", reason, control_id=command.control_id)
            return ControlOutcome(applied=False, reason=reason, policy=self.routes.policy.as_dict())
        except StaleControl as exc:
            reason = f"operator command refused: {exc}"
            await self.reporter.problem("stale_control", reason, control_id=command.control_id)
            return ControlOutcome(applied=False, reason=reason, policy=self.routes.policy.as_dict())
        who = command.issued_by if command.issued_by.startswith("operator") else f"operator {command.issued_by}"
        message = f"{who}: routes {command.command} {command.route or ''}".strip()
        await self.reporter.event(
            "route_policy",
            message,
            command=command.command,
            route=command.route,
            policy=policy,
        )
        self.wake.set()
        return ControlOutcome(applied=True, reason=message, policy=dict(policy))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ControlOutcome:
    """What became of an operator's route command: applied or refused (and why), and the policy now."""

    applied: bool
    reason: str
    policy: dict[str, Policy]


def _supersede_and_insert(
    db: sqlite3.Connection, *, old: list[str], file_key: str, route: Route, reason: str = "custody overdue"
) -> TransferRow:
    """Supersede a file's waiting transfers and start one on ``route`` (inside a transaction)."""
    journal_files.supersede(db, old, reason)
    return journal_files.insert_transfer(
        db, transfer_id=new_id("t"), file_key=file_key, route=route.name, route_sites=route.sites, hop=0
    )
