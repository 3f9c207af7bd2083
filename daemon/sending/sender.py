"""Reliable delivery of offers and custody messages: timers, retries and backoff, one channel per peer.

An item stays here (and in the journal) until the peer acknowledges it with an Ack whose
checksum equals ours. Each peer's channel sends up to ``window_per_peer`` items at a time, waits
for each ack up to a size-aware timeout, and retries failures forever with capped, jittered
backoff. Timers drive every wait; nothing polls.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import heapq
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import structlog

from daemon.aio import raise_if_cancelling
from daemon.backoff import backoff_delay
from daemon.config import Topology
from daemon.counters import SiteCounters
from daemon.errors import PeerUnreachable
from daemon.logcontext import bound_file
from daemon.mailbox import Mailbox
from daemon.report import Reporter
from daemon.sending.routes import RouteTable
from protocol.transfer import ACCEPTED_STATUSES, Ack

log = structlog.get_logger()

Accepted = Callable[[Ack], Awaitable[None]]


@dataclasses.dataclass(slots=True, eq=False)
class Outgoing:
    """A message awaiting its application-level ack."""

    msg_id: str
    kind: Literal["offer", "custody"]
    peer: str
    file_key: str
    name: str
    checksum: str
    size: int
    payload: Callable[[int], bytes]
    on_accepted: Accepted
    route: str | None = None
    attempt: int = 0
    failures: int = 0
    generation: int = 0
    last_error: str = ""
    created: float = dataclasses.field(default_factory=time.monotonic)


class Channel:
    """Sends one peer's items in order, within a window, and times out their acks.

    ``inflight`` is the one record of which items await an ack; ``waiting`` those backing off.
    """

    def __init__(self, sender: Sender, peer: str) -> None:
        self.sender = sender
        self.peer = peer
        self.ready: collections.deque[str] = collections.deque()
        self.inflight: set[str] = set()
        self.waiting: set[str] = set()
        self._timers: list[tuple[float, int, str, int, str]] = []
        self._seq = itertools.count()
        self.wake = asyncio.Event()

    def push_timer(self, when: float, item: Outgoing, what: str) -> None:
        heapq.heappush(self._timers, (when, next(self._seq), item.msg_id, item.generation, what))
        self.wake.set()

    def retry_now(self) -> None:
        """The peer came back: retry every waiting item at once instead of at its backoff time."""
        for msg_id in list(self.waiting):
            item = self.sender.items.get(msg_id)
            if item is not None and msg_id not in self.inflight:
                item.generation += 1
                self.ready.append(msg_id)
        self.waiting.clear()
        self.wake.set()

    async def run(self) -> None:
        tuning = self.sender.topology.tuning
        while True:
            raise_if_cancelling()
            self.wake.clear()
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, msg_id, generation, what = heapq.heappop(self._timers)
                item = self.sender.items.get(msg_id)
                if item is None or item.generation != generation:
                    continue
                if what == "deadline" and msg_id in self.inflight:
                    await self.sender.failed(item, "ack timeout")
                elif what == "retry" and msg_id not in self.inflight:
                    self.waiting.discard(msg_id)
                    self.ready.append(msg_id)
            await self._send_ready(tuning.window_per_peer)
            timeout = max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.wake.wait()

    async def _send_ready(self, window: int) -> None:
        """Send ready items up to the window: together (the mailbox batches them), each then awaits its ack."""
        sender = self.sender
        while self.ready and len(self.inflight) < window:
            going: list[Outgoing] = []
            while self.ready and len(self.inflight) + len(going) < window:
                if not sender.mailbox.connected(self.peer):
                    break
                breaker = sender.routes.breaker(self.peer) if sender.routes else None
                if breaker is not None and not breaker.allows():
                    break  # the breaker's hold-down timer wakes this channel
                if breaker is not None and breaker.state == "half_open" and (self.inflight or going):
                    break  # one probe at a time while half-open
                msg_id = self.ready.popleft()
                item = sender.items.get(msg_id)
                if item is None or msg_id in self.inflight or any(g is item for g in going):
                    continue
                item.attempt += 1
                item.generation += 1
                going.append(item)
            if not going:
                return
            results = await asyncio.gather(*(self._send(item) for item in going), return_exceptions=True)
            raise_if_cancelling()
            for item, result in zip(going, results, strict=True):
                if isinstance(result, PeerUnreachable | asyncio.CancelledError):
                    # (a send cancelled on its own, not with this channel, failed like any other)
                    if sender.items.get(item.msg_id) is item:
                        await sender.failed(item, str(result) or "send cancelled")
                    continue
                if isinstance(result, BaseException):
                    raise result
                if sender.items.get(item.msg_id) is not item:
                    continue  # acked or removed while its publish awaited the broker: it holds no place in the window
                self.inflight.add(item.msg_id)
                ahead = sum(sender.items[i].size for i in self.inflight if i in sender.items)
                self.push_timer(time.monotonic() + sender.ack_timeout(item, bytes_ahead=ahead), item, "deadline")

    async def _send(self, item: Outgoing) -> None:
        # A retry goes alone: a peer that cannot read batches still gets it.
        await self.sender.mailbox.send(self.peer, item.kind, item.payload(item.attempt), alone=item.attempt > 1)


class Sender:
    """Owns every outgoing item of a site and the per-peer channels that deliver them."""

    def __init__(
        self,
        site: str,
        topology: Topology,
        mailbox: Mailbox,
        reporter: Reporter,
        routes: RouteTable | None,
        counters: SiteCounters,
    ) -> None:
        self.site = site
        self.topology = topology
        self.mailbox = mailbox
        self.reporter = reporter
        self.routes = routes
        self.counters = counters
        self.items: dict[str, Outgoing] = {}
        self._by_file: dict[str, list[str]] = {}
        """msg ids of each file's items: a file's items are found without a scan of every item."""
        self._offers_by_route: dict[str, dict[str, None]] = {}
        """msg ids of the offers queued on each route (the router's failover looks only at unusable routes)."""
        self.channels: dict[str, Channel] = {p: Channel(self, p) for p in mailbox.peers}
        self.health_listeners: list[Callable[[], None]] = []
        self.queue_listeners: list[Callable[[], None]] = []
        """Called when an item is queued or removed (the console pushes the queue; the status line re-reads)."""
        mailbox.add_peer_listener(self._on_peer_change)

    async def run(self, tg: asyncio.TaskGroup) -> None:
        """Start one channel task per peer."""
        for peer, channel in self.channels.items():
            tg.create_task(channel.run(), name=f"{self.site}.send.{peer}")

    def ack_timeout(self, item: Outgoing, *, bytes_ahead: int = 0) -> float:
        """How long to wait for an ack: a base plus an allowance for the bytes to cross.

        ``bytes_ahead`` counts everything in flight to the same peer (this item included): the
        receiver pulls a few at a time, so an offer may wait behind the others before its own bytes
        move. The allowance assumes the link moves at least 1 / ``ack_timeout_per_mb_s`` MB/s.
        """
        tuning = self.topology.tuning
        return tuning.ack_timeout_s + (max(item.size, bytes_ahead) / 1e6) * tuning.ack_timeout_per_mb_s

    def add(self, item: Outgoing) -> None:
        """Queue an item for delivery (it must already be journaled)."""
        if item.msg_id in self.items:
            return
        channel = self.channels.get(item.peer)
        if channel is None:
            raise KeyError(f"{self.site} has no link to {item.peer}")
        self.items[item.msg_id] = item
        self._by_file.setdefault(item.file_key, []).append(item.msg_id)  # (a list: one or two per file)
        if item.kind == "offer" and item.route is not None:
            self._offers_by_route.setdefault(item.route, {})[item.msg_id] = None
        channel.ready.append(item.msg_id)
        channel.wake.set()
        for listener in self.queue_listeners:
            listener()

    def remove(self, msg_id: str) -> Outgoing | None:
        """Stop delivering an item (its file reached custody, or it was re-routed)."""
        item = self.items.pop(msg_id, None)
        if item is not None:
            mine = self._by_file.get(item.file_key)
            if mine is not None and msg_id in mine:
                mine.remove(msg_id)
                if not mine:
                    del self._by_file[item.file_key]
            if item.kind == "offer" and item.route is not None:
                on_route = self._offers_by_route.get(item.route)
                if on_route is not None:
                    on_route.pop(msg_id, None)
                    if not on_route:
                        del self._offers_by_route[item.route]
            channel = self.channels[item.peer]
            channel.inflight.discard(msg_id)
            channel.waiting.discard(msg_id)
            channel.wake.set()
            for listener in self.queue_listeners:
                listener()
        return item

    def drop_offers(self, file_key: str) -> None:
        """Stop offering a file (it reached custody, or the camera replaced it)."""
        for item in self.of_file(file_key):
            if item.kind == "offer":
                self.remove(item.msg_id)

    def inflight(self, item: Outgoing) -> bool:
        """Whether ``item`` was sent and awaits its ack."""
        return item.msg_id in self.channels[item.peer].inflight

    def of_file(self, file_key: str) -> list[Outgoing]:
        """Items in flight or waiting for one file."""
        return [self.items[m] for m in self._by_file.get(file_key, ())]

    def offers_count(self, route: str) -> int:
        """How many offers are in flight or waiting on ``route``."""
        return len(self._offers_by_route.get(route, ()))

    def offers_on(self, route: str) -> list[Outgoing]:
        """Offers in flight or waiting on ``route``."""
        return [self.items[m] for m in self._offers_by_route.get(route, ())]

    async def on_ack(self, ack: Ack) -> None:
        """Handle an ack from a peer: accept it if its checksum is ours, otherwise retry."""
        item = self.items.get(ack.transfer_id)
        if item is None or item.kind != ack.kind:
            log.debug("ack_ignored", transfer_id=ack.transfer_id, status=ack.status, reason="not pending")
            return
        if ack.sender != item.peer:
            await self.reporter.problem(
                "bad_ack", f"ack for {item.msg_id} came from {ack.sender}, not {item.peer}", transfer_id=item.msg_id
            )
            return
        if ack.status in ACCEPTED_STATUSES and ack.checksum == item.checksum:
            self.remove(item.msg_id)
            self.counters.deliveries_acked += 1
            if self.routes is not None and self.routes.breaker(item.peer).record_success():
                self._health_changed()
                await self.reporter.event(
                    "breaker_closed", f"hop {self.site}->{item.peer} healthy again", peer=item.peer
                )
            await item.on_accepted(ack)
            return
        if ack.attempt is not None and ack.attempt < item.attempt and ack.status not in ACCEPTED_STATUSES:
            log.debug("ack_ignored", transfer_id=ack.transfer_id, status=ack.status, reason="an earlier attempt's")
            return
        if ack.status in ACCEPTED_STATUSES:
            reason = f"{ack.status} with checksum {ack.checksum}, expected {item.checksum}"
        else:
            reason = f"{ack.status}: {ack.reason or ''}".strip()
        await self.failed(item, reason)

    async def failed(self, item: Outgoing, reason: str) -> None:
        """One delivery attempt failed: back off and retry, feeding the hop's breaker."""
        with bound_file(item.name):
            await self._failed(item, reason)

    async def _failed(self, item: Outgoing, reason: str) -> None:
        channel = self.channels[item.peer]
        channel.inflight.discard(item.msg_id)
        item.failures += 1
        item.generation += 1
        item.last_error = reason
        self.counters.delivery_failures += 1
        tuning = self.topology.tuning
        delay = backoff_delay(item.failures, initial_s=tuning.backoff_initial_s, cap_s=tuning.backoff_max_s)
        channel.waiting.add(item.msg_id)
        channel.push_timer(time.monotonic() + delay, item, "retry")
        log.info(
            "delivery_retry",
            kind=item.kind,
            transfer_id=item.msg_id,
            peer=item.peer,
            file=item.name,
            failures=item.failures,
            reason=reason,
            retry_in_s=round(delay, 2),
        )
        breaker = self.routes.breaker(item.peer) if self.routes is not None else None
        if breaker is not None and breaker.record_failure(reason, time.monotonic()):
            self._schedule_half_open(item.peer, breaker.half_open_at)
            self._health_changed()
            await self.reporter.event(
                "breaker_open", f"hop {self.site}->{item.peer} failing: {reason}", peer=item.peer, reason=reason
            )
        if item.failures % tuning.report_retry_every == 0:
            await self.reporter.problem(
                "delivery_retrying",
                f"{item.kind} to {item.peer} failed {item.failures} times: {reason}",
                name=item.name,
                transfer_id=item.msg_id,
                peer=item.peer,
                failures=item.failures,
            )

    def _schedule_half_open(self, peer: str, when: float) -> None:
        """At the end of the hold-down, move the breaker to half-open and wake whoever cares (a timer, not a poll).

        A timer may fire a little before ``time.monotonic()`` reaches ``when`` (a loop on a coarser clock does:
        uvloop fired it up to a millisecond early): it is then set again for the rest of that same hold-down.
        """
        loop = asyncio.get_running_loop()

        def fire() -> None:
            if self.routes is None:
                return
            breaker = self.routes.breaker(peer)
            now = time.monotonic()
            if breaker.half_open(now):
                log.info("breaker_half_open", peer=peer)
                self.channels[peer].wake.set()
                self._health_changed()
            elif breaker.state == "open" and breaker.half_open_at == when:
                loop.call_later(max(when - now, 0.001), fire)

        loop.call_later(max(0.0, when - time.monotonic()), fire)

    def _health_changed(self) -> None:
        for listener in self.health_listeners:
            listener()

    def _on_peer_change(self, peer: str, up: bool) -> None:
        channel = self.channels.get(peer)
        if channel is None:
            return
        if up:
            channel.retry_now()
        else:
            channel.wake.set()

    def queue_by_route(self) -> dict[str, int]:
        """Offers waiting or in flight, counted by route."""
        return dict(collections.Counter(i.route for i in self.items.values() if i.route is not None))

    def snapshot(self) -> list[dict[str, object]]:
        """Every pending item, for ``skyrelay queue``."""
        now = time.monotonic()
        return [
            {
                "id": i.msg_id,
                "kind": i.kind,
                "peer": i.peer,
                "file": i.name,
                "route": i.route,
                "attempt": i.attempt,
                "failures": i.failures,
                "inflight": self.inflight(i),
                "age_s": round(now - i.created, 1),
                "last_error": i.last_error,
            }
            for i in self.items.values()
        ]

