"""The sender on its own: the summit's Sender delivers offers into the archive's mailbox over a real broker.

Two real mosquittos (the summit's and the archive's), the summit's real Mailbox, Sender and journal, and
the archive's real Mailbox standing in for the archive daemon: the test reads the offers that reach the
archive's mailbox and decides whether, and how, to acknowledge them. What a user would see is asserted:
the offers arriving (attempt numbers, timing), the journal's transfer states, the counters, and the
problems and events published on the summit's broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from parts import (
    DIRECT,
    Subscriber,
    brokers,
    checksum_of,
    has_kind,
    hold_file,
    open_journal,
    opened,
    report_publisher,
    running,
    topology,
    transfers_of,
)
from parts import (
    mailbox as make_mailbox,
)

from daemon.config import Topology
from daemon.counters import SiteCounters
from daemon.journal import Journal, new_id
from daemon.journal import files as journal_files
from daemon.mailbox import Mailbox
from daemon.report import Reporter
from daemon.sending.items import ItemFactory
from daemon.sending.routes import RouteTable
from daemon.sending.sender import Outgoing, Sender
from ops.broker import Mosquitto
from protocol import topics
from protocol.batch import decode_batch
from protocol.transfer import Ack, AckStatus, Offer

pytestmark = pytest.mark.timeout(60)


@dataclasses.dataclass(frozen=True, slots=True)
class Arrival:
    """An offer as it reached the archive's mailbox."""

    at: float  # monotonic
    offer: Offer
    acks_before: int  # acks the archive had sent when this offer arrived


@dataclasses.dataclass
class Link:
    """The summit's sender and the archive's mailbox, both running, with the summit's reports published."""

    topology: Topology
    journal: Journal
    counters: SiteCounters
    sender: Sender
    items: ItemFactory
    routes: RouteTable | None
    archive: Mailbox
    brokers: dict[str, Mosquitto]
    events: Subscriber
    problems: Subscriber
    files: Path
    arrivals: asyncio.Queue[Arrival] = dataclasses.field(default_factory=asyncio.Queue)
    acks_sent: int = 0

    async def next_offer(self, timeout_s: float = 10.0) -> Arrival:
        """The next offer to reach the archive's mailbox."""
        async with asyncio.timeout(timeout_s):
            return await self.arrivals.get()

    async def ack(self, offer: Offer | Outgoing, *, status: AckStatus = "stored", checksum: str | None = None) -> None:
        """Answer an offer (or the item it came from) as the archive would: with the offered checksum unless
        another is given."""
        self.acks_sent += 1
        ack = Ack(
            kind="offer",
            transfer_id=offer.transfer_id if isinstance(offer, Offer) else offer.msg_id,
            sender="archive",
            status=status,
            checksum=checksum or offer.checksum,
            size=offer.size,
            attempt=max(1, offer.attempt),
            at=time.time(),
        )
        await self.archive.send("summit", "ack", ack.to_json())

    async def offer(self, name: str, data: bytes | None = None) -> Outgoing:
        """Journal a file with a transfer on ``direct`` and return its offer item (not yet added)."""
        transfer, row = await hold_file(
            self.journal, self.files, name=name, data=data or name.encode() * 100, route=DIRECT
        )
        return self.items.offer(transfer, row)

    async def state_of(self, item: Outgoing) -> str:
        """The journal's state of the item's transfer."""
        rows = await self.journal.read(journal_files.transfers_of, item.file_key)
        return next(t.state for t in rows if t.transfer_id == item.msg_id)


def breaker_shown(routes: RouteTable) -> object:
    """The breaker state ``skyrelay routes`` shows for the direct route's hop (reading never changes it)."""
    (view,) = routes.view({})
    return view.evidence["breaker"]


def accepted_event(item: Outgoing) -> asyncio.Event:
    """An event set once the item's accepted ack has been journaled."""
    done = asyncio.Event()
    journal_it = item.on_accepted

    async def accepted(ack: Ack) -> None:
        await journal_it(ack)
        done.set()

    item.on_accepted = accepted
    return done


@contextlib.asynccontextmanager
async def link(tmp_path: Path, *, with_routes: bool = False, **tuning: Any) -> AsyncIterator[Link]:
    """Start both brokers and mailboxes, the summit's sender and report publisher; yield once both
    mailboxes and both links (summit -> archive for offers, archive -> summit for acks) are up."""
    async with brokers(tmp_path, "summit", "archive") as started:
        topo = topology(
            tmp_path,
            broker_ports={site: b.port for site, b in started.items()},
            routes=(DIRECT,),
            **tuning,
        )
        journal = await open_journal(topo.sites["summit"].state_dir / "journal.sqlite")
        counters = SiteCounters()
        reporter = Reporter("summit", journal, counters)
        holder: list[Sender] = []

        async def summit_message(topic: str, payload: bytes) -> None:
            kind = topics.parse_site(topic)[1]
            if kind == "ack":
                await holder[0].on_ack(Ack.from_json(opened(topo, "summit", "ack", payload)))
            elif kind == "batch":  # acks the archive's mailbox sent together
                for entry in decode_batch(opened(topo, "summit", "batch", payload)):
                    await holder[0].on_ack(Ack.from_dict(entry.body))

        summit = make_mailbox(topo, "summit", summit_message)
        routes = RouteTable(topo, "summit", summit.connected) if with_routes else None
        sender = Sender("summit", topo, summit, reporter, routes, counters)
        holder.append(sender)
        reporter.publisher = publisher = report_publisher(journal, summit)
        link_up = asyncio.Event()
        summit.add_peer_listener(lambda peer, up: link_up.set() if up else link_up.clear())

        async def archive_message(topic: str, payload: bytes) -> None:
            kind = topics.parse_site(topic)[1]
            if kind == "offer":
                offers = [Offer.from_json(opened(topo, "archive", "offer", payload))]
            elif kind == "batch":  # offers the summit's mailbox sent together, one arrival each
                offers = [Offer.from_dict(e.body) for e in decode_batch(opened(topo, "archive", "batch", payload))]
            else:
                return
            now = time.monotonic()
            for offer in offers:
                parts.arrivals.put_nowait(Arrival(now, offer, parts.acks_sent))

        archive = make_mailbox(topo, "archive", archive_message)
        back_link_up = asyncio.Event()
        archive.add_peer_listener(lambda peer, up: back_link_up.set() if up else back_link_up.clear())
        try:
            async with running() as tg:
                port = started["summit"].port
                parts = Link(
                    topology=topo,
                    journal=journal,
                    counters=counters,
                    sender=sender,
                    items=ItemFactory("summit", journal),
                    routes=routes,
                    archive=archive,
                    brokers=started,
                    events=await Subscriber(port, topics.events("summit")).start(tg),
                    problems=await Subscriber(port, topics.problems("summit")).start(tg),
                    files=tmp_path / "summit" / "inbox",
                )
                await summit.run(tg)
                await archive.run(tg)
                await sender.run(tg)
                tg.create_task(publisher.run(), name="summit.reports")
                async with asyncio.timeout(10):
                    await archive.wait_local()
                    await summit.wait_local()
                    await link_up.wait()
                    await back_link_up.wait()
                yield parts
        finally:
            await journal.close()


async def test_an_offer_is_delivered_and_its_matching_ack_journaled(tmp_path: Path) -> None:
    """An added offer reaches the peer's mailbox; an ack with the file's checksum marks the transfer acked."""
    async with link(tmp_path) as parts:
        item = await parts.offer("AT_O_20261201_000001_R00_S00.fits")
        accepted = accepted_event(item)
        parts.sender.add(item)
        arrival = await parts.next_offer()
        assert (arrival.offer.transfer_id, arrival.offer.attempt) == (item.msg_id, 1)
        assert arrival.offer.checksum == item.checksum and arrival.offer.receiver == "archive"
        await parts.ack(arrival.offer)
        async with asyncio.timeout(10):
            await accepted.wait()
        assert await parts.state_of(item) == "acked"
        assert parts.sender.items == {}
        assert (parts.counters.deliveries_acked, parts.counters.delivery_failures) == (1, 0)


async def test_an_unanswered_offer_is_retried_after_the_ack_timeout_with_growing_backoff(tmp_path: Path) -> None:
    """No ack: the same transfer is offered again after ack_timeout_s plus a capped, jittered, doubling backoff;
    every failure is counted and, every report_retry_every failures, reported as a problem."""
    ack_timeout_s, initial_s, cap_s = 0.3, 0.2, 0.8
    async with link(
        tmp_path, ack_timeout_s=ack_timeout_s, backoff_initial_s=initial_s, backoff_max_s=cap_s, report_retry_every=2
    ) as parts:
        item = await parts.offer("AT_O_20261201_000002_R00_S00.fits")
        parts.sender.add(item)
        arrivals = [await parts.next_offer() for _ in range(5)]
        assert [a.offer.transfer_id for a in arrivals] == [item.msg_id] * 5
        assert [a.offer.attempt for a in arrivals] == [1, 2, 3, 4, 5]
        for failures, (earlier, later) in enumerate(itertools.pairwise(arrivals), start=1):
            backoff_s = min(cap_s, initial_s * 2 ** (failures - 1))
            gap_s = later.at - earlier.at
            # Jitter keeps each backoff in [50 %, 100 %] of its base; allow 50 ms of broker latency either way.
            assert ack_timeout_s + 0.5 * backoff_s - 0.05 <= gap_s <= ack_timeout_s + backoff_s + 0.5, (failures, gap_s)
        assert parts.counters.delivery_failures == 4 and parts.counters.deliveries_acked == 0
        assert await parts.state_of(item) == "pending"
        await parts.problems.wait_for(has_kind("delivery_retrying", 2), timeout_s=5)
        reported = parts.problems.of_kind("delivery_retrying")
        assert [p["details"]["failures"] for p in reported] == [2, 4]
        assert all("ack timeout" in p["reason"] for p in reported)


async def test_an_ack_with_another_checksum_is_refused_and_the_offer_retried(tmp_path: Path) -> None:
    """A 'stored' ack whose checksum is not the file's is a failure (counted, reported) and the offer is
    repeated; only the ack carrying the file's own checksum completes the transfer."""
    ack_timeout_s = 30.0  # (far beyond the backoff: a loaded CI machine once took 5 s to carry the ack)
    async with link(
        tmp_path, ack_timeout_s=ack_timeout_s, backoff_initial_s=0.1, backoff_max_s=0.2, report_retry_every=1
    ) as parts:
        item = await parts.offer("AT_O_20261201_000003_R00_S00.fits")
        accepted = accepted_event(item)
        parts.sender.add(item)
        first = await parts.next_offer()
        wrong = checksum_of(b"some other bytes")
        await parts.ack(first.offer, checksum=wrong)
        second = await parts.next_offer()
        assert (second.offer.transfer_id, second.offer.attempt) == (item.msg_id, 2)
        assert second.at - first.at < ack_timeout_s, "retried after the backoff, not after the ack timeout"
        assert (parts.counters.delivery_failures, parts.counters.deliveries_acked) == (1, 0)
        assert await parts.state_of(item) == "pending"
        await parts.problems.wait_for(has_kind("delivery_retrying"), timeout_s=5)
        (problem,) = parts.problems.of_kind("delivery_retrying")
        assert wrong in problem["reason"] and item.checksum in problem["reason"]
        await parts.ack(second.offer)
        async with asyncio.timeout(10):
            await accepted.wait()
        assert await parts.state_of(item) == "acked"
        assert (parts.counters.delivery_failures, parts.counters.deliveries_acked) == (1, 1)


async def test_no_more_than_the_window_of_offers_await_acks_from_one_peer(tmp_path: Path) -> None:
    """With window_per_peer = 2 and five files, an offer goes out only when an earlier one is acknowledged:
    at any arrival, at most two offers are unanswered; all five are delivered in order."""
    window = 2
    async with link(tmp_path, window_per_peer=window, ack_timeout_s=30.0) as parts:
        items = [await parts.offer(f"AT_O_20261201_00001{i}_R00_S00.fits") for i in range(5)]
        done = [accepted_event(i) for i in items]
        for item in items:
            parts.sender.add(item)
        arrivals = [await parts.next_offer(), await parts.next_offer()]
        assert [a.acks_before for a in arrivals] == [0, 0]
        for k in range(len(items)):
            await parts.ack(arrivals[k].offer)
            if len(arrivals) < len(items):
                arrivals.append(await parts.next_offer())
        async with asyncio.timeout(10):
            for event in done:
                await event.wait()
        assert [a.offer.transfer_id for a in arrivals] == [i.msg_id for i in items]
        assert [a.offer.attempt for a in arrivals] == [1] * 5
        outstanding = [n - a.acks_before for n, a in enumerate(arrivals, start=1)]
        assert max(outstanding) == window, outstanding
        assert parts.counters.deliveries_acked == 5 and parts.counters.delivery_failures == 0


async def test_the_breaker_opens_after_n_failures_and_its_timer_lets_one_probe_through(tmp_path: Path) -> None:
    """Two ack timeouts open the hop's breaker (an event says so); nothing is sent during the hold-down; then
    the hold-down timer alone (nobody reads the breaker) lets exactly one probe through; a probe that fails
    reopens it for another hold-down; an acknowledged probe closes it and the other file follows at once."""
    hold_down_s, ack_timeout_s = 0.8, 0.25
    async with link(
        tmp_path,
        with_routes=True,
        breaker_failures=2,
        breaker_hold_down_s=hold_down_s,
        ack_timeout_s=ack_timeout_s,
        # Longer than the two first deadlines can lie apart on a busy machine: the first file's retry must not
        # go out (legitimately, with the breaker still closed) before the second file's timeout opens it.
        backoff_initial_s=0.3,
        backoff_max_s=0.3,
    ) as parts:
        assert parts.routes is not None
        breaker = parts.routes.breaker("archive")
        items = [await parts.offer(f"AT_O_20261201_00002{i}_R00_S00.fits") for i in range(2)]
        done = [accepted_event(i) for i in items]
        for item in items:
            parts.sender.add(item)
        first_round = [await parts.next_offer(), await parts.next_offer()]
        assert {a.offer.attempt for a in first_round} == {1}
        await parts.events.wait_for(has_kind("breaker_open"), timeout_s=5)
        opened_at = breaker.opened_at

        probe = await parts.next_offer()
        assert probe.at >= opened_at + hold_down_s - 0.01, "nothing crosses an open breaker"
        assert breaker_shown(parts.routes) == "half_open"
        # Unanswered, the probe times out: the breaker reopens and the next probe waits a whole hold-down,
        # which shows no second offer went out beside the first probe.
        await parts.events.wait_for(has_kind("breaker_open", 2), timeout_s=5)
        second_probe = await parts.next_offer()
        assert second_probe.at - probe.at >= ack_timeout_s + hold_down_s - 0.05
        await parts.ack(second_probe.offer)
        await parts.events.wait_for(has_kind("breaker_closed"), timeout_s=5)
        assert breaker_shown(parts.routes) == "closed"
        other = await parts.next_offer()
        assert other.offer.transfer_id != second_probe.offer.transfer_id
        assert other.at - second_probe.at < hold_down_s, "after the breaker closes, the rest goes at once"
        await parts.ack(other.offer)
        async with asyncio.timeout(10):
            for event in done:
                await event.wait()
        assert [await parts.state_of(i) for i in items] == ["acked", "acked"]


async def test_a_peer_coming_back_gets_the_waiting_offers_at_once(tmp_path: Path) -> None:
    """An offer backing off (here for at least 6.4 s after nine failures) is sent again as soon as the link
    into the peer's mailbox reconnects after the peer's broker restarts, not when its backoff ends."""
    async with link(
        tmp_path, ack_timeout_s=0.3, backoff_initial_s=0.05, backoff_max_s=20.0, report_retry_every=1
    ) as parts:
        item = await parts.offer("AT_O_20261201_000031_R00_S00.fits")
        item.failures = 8  # it has failed eight times already: its next backoff is 6.4-12.8 s
        accepted = accepted_event(item)
        parts.sender.add(item)
        first = await parts.next_offer()
        await parts.brokers["archive"].stop()
        await parts.problems.wait_for(has_kind("delivery_retrying"), timeout_s=5)
        failed_at = time.monotonic()
        await parts.brokers["archive"].start()
        again = await parts.next_offer(timeout_s=6.0)
        if again.offer.attempt == 1:  # the restarted broker redelivered the first attempt (QoS 1, persisted)
            again = await parts.next_offer(timeout_s=6.0)
        assert again.offer.transfer_id == first.offer.transfer_id and again.offer.attempt == 2
        assert again.at - failed_at < 6.4, "sent on reconnect, before the earliest end of its backoff"
        await parts.ack(again.offer)
        async with asyncio.timeout(10):
            await accepted.wait()
        assert await parts.state_of(item) == "acked"


async def test_removed_items_and_dropped_offers_are_not_delivered(tmp_path: Path) -> None:
    """remove() of an item backing off cancels its retry; drop_offers() removes every queued offer of a file:
    the next offers to go out are the untouched file's (first attempt, then its own retry)."""
    async with link(
        tmp_path, window_per_peer=1, ack_timeout_s=0.3, backoff_initial_s=0.4, backoff_max_s=0.4, report_retry_every=1
    ) as p:
        removed = await p.offer("AT_O_20261201_000041_R00_S00.fits")
        p.sender.add(removed)
        assert (await p.next_offer()).offer.transfer_id == removed.msg_id
        await p.problems.wait_for(has_kind("delivery_retrying"), timeout_s=5)  # it timed out; now backing off
        assert p.sender.remove(removed.msg_id) is removed

        dropped = await p.offer("AT_O_20261201_000042_R00_S00.fits")
        dropped_row = await p.journal.read(journal_files.file, dropped.file_key)
        assert dropped_row is not None
        again = await p.journal.write(
            journal_files.insert_transfer,
            transfer_id=new_id("t"),
            file_key=dropped.file_key,
            route=DIRECT.name,
            route_sites=DIRECT.sites,
            hop=0,
        )
        dropped_too = p.items.offer(again, dropped_row)
        kept = await p.offer("AT_O_20261201_000043_R00_S00.fits")
        for item in (dropped, dropped_too, kept):
            p.sender.add(item)
        p.sender.drop_offers(dropped.file_key)
        # The removed item's retry was due at most 0.4 s after its failure; kept's retry at least 0.3 + 0.2 s
        # after kept was sent, which is later: had the removed one been retried, it would come first.
        sent = [(await p.next_offer()).offer for _ in range(2)]
        assert [(o.transfer_id, o.attempt) for o in sent] == [(kept.msg_id, 1), (kept.msg_id, 2)]
        assert list(p.sender.items) == [kept.msg_id]
        assert p.arrivals.empty()
        assert await transfers_of(p.journal, dropped.file_key) == [("direct", "pending", "archive")] * 2


async def test_an_ack_that_overtakes_the_brokers_puback_frees_its_place_in_the_window(tmp_path: Path) -> None:
    """An ack handled while the offer's publish still awaits the peer broker's PUBACK (a slow link's return
    path, or the ack of an earlier attempt) completes the item and frees its place in the window: with a
    window of one, the next file is offered once the broker answers."""
    async with link(tmp_path, window_per_peer=1, ack_timeout_s=30.0) as p:
        first = await p.offer("AT_O_20261201_000051_R00_S00.fits")
        first_done = accepted_event(first)
        broker = p.brokers["archive"].proc
        assert broker is not None
        broker.send_signal(signal.SIGSTOP)  # the publish into the archive's mailbox now waits for its PUBACK
        try:
            p.sender.add(first)
            await p.ack(first)  # through the summit's broker, which answers
            async with asyncio.timeout(5):
                await first_done.wait()
        finally:
            broker.send_signal(signal.SIGCONT)
        assert await p.state_of(first) == "acked"
        assert (await p.next_offer()).offer.transfer_id == first.msg_id  # the frozen publish, delivered late
        second = await p.offer("AT_O_20261201_000052_R00_S00.fits")
        p.sender.add(second)
        try:
            arrival = await p.next_offer(timeout_s=5.0)
        except TimeoutError:
            raise AssertionError(
                "the next file was never offered; the channel's window still holds "
                f"{p.sender.channels['archive'].inflight}, though the sender holds only {list(p.sender.items)}"
            ) from None
        assert arrival.offer.transfer_id == second.msg_id
