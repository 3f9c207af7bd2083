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
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import sqlite3
import time
from collections.abc import Callable
from typing import Any

import structlog

from daemon.aio import raise_if_cancelling
from daemon.config import Route, Topology
from daemon.journal import FileRow, Journal, TransferRow, new_id
from daemon.journal import files as journal_files
from daemon.report import Reporter
from daemon.sending.routes import RouteTable, StaleControl
from daemon.sending.sender import Outgoing, Sender
from protocol.control import RouteControl

log = structlog.get_logger()

MakeItem = Callable[[TransferRow, FileRow], Outgoing]


@dataclasses.dataclass(slots=True)
class Awaiting:
    """A summit file without custody yet: its latest route, and when its first hop acknowledged it.

    The custody clock starts at that ack, not when the file was queued: a backlog after an outage
    must not look overdue, and the first hop's own health is judged by its breaker and presence.
    """

    file: FileRow
    route: str
    started: float | None  # monotonic time of the first hop's ack; None while the offer waits
    stuck: bool = False  # overdue with no other usable route: reported, still retried


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
        self.awaiting: dict[str, Awaiting] = {}
        self._stuck_reported_at: float | None = None
        self.wake = asyncio.Event()
        self._pending_events: list[tuple[str, str, dict[str, Any]]] = []

    # ---- bookkeeping -----------------------------------------------------------------------

    async def restore(self) -> None:
        """Load files without custody, and the persisted operator policy, from the journal."""
        now_wall, now = time.time(), time.monotonic()
        for row in await self.journal.read(journal_files.awaiting_custody):
            started = None if row.acked_at is None else now - max(0.0, now_wall - row.acked_at)
            self.awaiting[row.file.file_key] = Awaiting(file=row.file, route=row.route, started=started)
        await self.routes.policy.load(self.journal)

    def track(self, file_row: FileRow, route: str) -> None:
        """A new file was offered along ``route``."""
        self.awaiting[file_row.file_key] = Awaiting(file=file_row, route=route, started=None)

    def delivered(self, file_key: str, route: str) -> None:
        """The first hop acknowledged the file on ``route``: start its custody clock."""
        waiting = self.awaiting.get(file_key)
        if waiting is not None and waiting.route == route:
            waiting.started = time.monotonic()
            self.wake.set()  # schedule this file's custody deadline

    def forget(self, file_key: str) -> None:
        """Stop tracking a file: the archive holds it, or the camera replaced it before it left."""
        self.awaiting.pop(file_key, None)

    def choose(self) -> Route | None:
        """The route for a new file (and an event when the choice changes)."""
        route = self.routes.choose()
        if route is not None and route.name != self.routes.current:
            previous, self.routes.current = self.routes.current, route.name
            if previous is not None:
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
            self.choose()
            await self._failover()
            await self._rescue_stranded(time.monotonic())
            next_deadline = await self._overdue()
            now = time.monotonic()
            wake_at = [t for t in (next_deadline, self.routes.next_change_at(now)) if t is not None]
            timeout = max(0.05, min(wake_at) - now) if wake_at else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    async def _failover(self) -> None:
        """Move offers that wait on an unusable route to the first usable other route."""
        now = time.monotonic()
        for item in [i for i in self.sender.items.values() if i.kind == "offer" and i.route is not None]:
            route = self.topology.route(item.route or "")
            if route is None or route.sites[0] != self.sender.site or self.routes.usable(route, now):
                continue
            alternative = self.routes.alternative(route.name, now)
            if alternative is None:
                continue
            await self._reroute(item, alternative, reason=f"{route.name} unusable: {self._why(route, now)}")

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
        next_deadline: float | None = None
        for key, waiting in list(self.awaiting.items()):
            if waiting.started is None:
                continue
            deadline = waiting.started + timeout
            if deadline > now:
                next_deadline = deadline if next_deadline is None else min(next_deadline, deadline)
                continue
            self.routes.mark_degraded(waiting.route, now)
            alternative = self.routes.alternative(waiting.route, now)
            waiting.started = now  # with no alternative, look again after another period
            if alternative is None:
                waiting.stuck = True
                next_deadline = now + timeout if next_deadline is None else min(next_deadline, now + timeout)
                continue
            old_route = waiting.route
            await self._resend(key, waiting, alternative)
            await self.reporter.event(
                "custody_overdue",
                f"{waiting.file.name}: no custody {timeout:.0f}s after {old_route}'s first hop took it; re-sent by "
                f"{alternative.name}",
                file=waiting.file.name,
                old_route=old_route,
                new_route=alternative.name,
            )
        await self._report_stuck(now, timeout)
        return next_deadline

    def custody_summary(self) -> dict[str, int]:
        """Files awaiting custody, and those overdue with no other usable route (``stuck``)."""
        return {
            "awaiting": len(self.awaiting),
            "stuck": sum(1 for w in self.awaiting.values() if w.stuck),
        }

    async def _report_stuck(self, now: float, period: float) -> None:
        """Nothing silently stuck: one problem per period listing every overdue file with no other
        usable route (not one problem per file)."""
        stuck = [w for w in self.awaiting.values() if w.stuck]
        due = self._stuck_reported_at is None or now - self._stuck_reported_at >= period
        if stuck and due:
            self._stuck_reported_at = now
            names = sorted(w.file.name for w in stuck)
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
        self.sender.add(self.make_item(transfer, waiting.file))
        waiting.route, waiting.started, waiting.stuck = route.name, None, False

    async def _rescue_stranded(self, now: float) -> None:
        """Files the next hop already holds but reports it cannot forward go again by another route."""
        for key, waiting in list(self.awaiting.items()):
            route = self.topology.route(waiting.route)
            if waiting.started is None or route is None:
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
                f"{waiting.file.name}: {hop} holds it but cannot reach {', '.join(beyond)}; re-sent by "
                f"{alternative.name}",
                file=waiting.file.name,
                old_route=route.name,
                new_route=alternative.name,
                reason=f"{hop} reports {', '.join(beyond)} unreachable",
            )

    # ---- operator control --------------------------------------------------------------------

    async def control(self, command: RouteControl) -> None:
        """Apply an operator's route command, persist it, and report it as an event."""
        try:
            policy = await self.routes.policy.apply(self.journal, command.command, command.route, issued_at=command.at)
        except KeyError:
            names = ", ".join(r.name for r in self.routes.routes)
            await self.reporter.problem("bad_control", f"unknown route {command.route!r}; routes: {names}")
            return
        except StaleControl as exc:
            await self.reporter.problem(
                "stale_control", f"operator command refused: {exc}", control_id=command.control_id
            )
            return
        await self.reporter.event(
            "route_policy",
            f"operator {command.issued_by}: routes {command.command} {command.route or ''}".strip(),
            command=command.command,
            route=command.route,
            policy=policy,
        )
        self.wake.set()


def _supersede_and_insert(
    db: sqlite3.Connection, *, old: list[str], file_key: str, route: Route, reason: str = "custody overdue"
) -> TransferRow:
    """Supersede a file's waiting transfers and start one on ``route`` (inside a transaction)."""
    journal_files.supersede(db, old, reason)
    return journal_files.insert_transfer(
        db, transfer_id=new_id("t"), file_key=file_key, route=route.name, route_sites=route.sites, hop=0
    )
