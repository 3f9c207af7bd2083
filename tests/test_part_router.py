"""The summit's router on its own: failover of waiting offers, custody deadlines, failback, operator policy.

The router runs with a real journal, a real Sender and RouteTable, and the summit's real Mailbox on a real
broker (so its problems and events are published as an operator sees them). Which hops are connected is
decided by the test through the RouteTable's ``connected`` callable; the peers' brokers are not started,
so nothing is actually delivered and every offer stays waiting in the sender. Each change of connectivity
wakes the router as the site's peer listener does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import sqlite3
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from parts import (
    PRIMARY,
    Subscriber,
    brokers,
    checksum_of,
    has_kind,
    hold_file,
    open_journal,
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
from daemon.journal import FileRow, Journal, TransferRow, new_id
from daemon.journal import files as journal_files
from daemon.report import Reporter
from daemon.sending import router as router_module
from daemon.sending.items import ItemFactory
from daemon.sending.router import HELD_REPORT_GRACE_S, Router
from daemon.sending.routes import RouteTable
from daemon.sending.sender import Outgoing, Sender
from protocol import topics
from protocol.control import RouteControl
from protocol.transfer import Ack

pytestmark = pytest.mark.timeout(60)


class CountingRoutes(RouteTable):
    """The route table, counting the router's loop iterations (it asks for the next change once in each)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.iterations = 0
        self.ticked = asyncio.Event()

    def next_change_at(self, now: float) -> float | None:
        self.iterations += 1
        self.ticked.set()
        return super().next_change_at(now)


@dataclasses.dataclass
class Summit:
    """The summit's router and what it works with, running."""

    topology: Topology
    journal: Journal
    reporter: Reporter
    sender: Sender
    routes: CountingRoutes
    router: Router
    items: ItemFactory
    up: dict[str, bool]
    events: Subscriber
    problems: Subscriber
    inbox: Path

    def link(self, peer: str, up: bool) -> None:
        """The link into ``peer``'s mailbox connects or drops; the router is told, as the site tells it."""
        self.up[peer] = up
        self.router.wake.set()

    async def waiting_file(self, name: str) -> tuple[Outgoing, FileRow]:
        """A new file takes the chosen route (primary), journaled with its transfer, its offer waiting in the
        sender, tracked: as the registrar does it."""
        route = self.router.choose()
        assert route == PRIMARY
        transfer, row = await hold_file(self.journal, self.inbox, name=name, data=name.encode() * 50, route=PRIMARY)
        item = self.items.offer(transfer, row)
        self.sender.add(item)
        self.router.track(row, PRIMARY.name)
        return item, row

    def offers(self) -> list[tuple[str | None, str]]:
        """(route, peer) of every offer in the sender."""
        return [(i.route, i.peer) for i in self.sender.items.values() if i.kind == "offer"]


@contextlib.asynccontextmanager
async def summit(
    tmp_path: Path,
    *,
    up: dict[str, bool] | None = None,
    before: Callable[[Journal, Path], Awaitable[None]] | None = None,
    **tuning: Any,
) -> AsyncIterator[Summit]:
    """The summit's router, sender, mailbox and report publisher running; every hop connected at first
    (or as ``up`` says). ``before(journal, inbox)`` runs before the router restores from the journal (what a
    summit restarted on that journal finds)."""
    async with brokers(tmp_path, "summit") as started:
        port = started["summit"].port
        topo = topology(tmp_path, broker_ports={"summit": port}, **tuning)
        journal = await open_journal(topo.sites["summit"].state_dir / "journal.sqlite")
        if before is not None:
            await before(journal, tmp_path / "summit" / "inbox")
        counters = SiteCounters()
        reporter = Reporter("summit", journal, counters)

        async def ignore(topic: str, payload: bytes) -> None:
            return None

        mailbox = make_mailbox(topo, "summit", ignore)
        reporter.publisher = publisher = report_publisher(journal, mailbox)
        up = {"base": True, "archive": True} if up is None else dict(up)
        routes = CountingRoutes(topo, "summit", lambda peer: up[peer])
        sender = Sender("summit", topo, mailbox, reporter, routes, counters)
        items = ItemFactory("summit", journal)
        router = Router(topo, journal, sender, routes, reporter, items.offer)
        items.on_first_hop = router.delivered
        sender.health_listeners.append(router.wake.set)
        try:
            async with running() as tg:
                parts = Summit(
                    topology=topo,
                    journal=journal,
                    reporter=reporter,
                    sender=sender,
                    routes=routes,
                    router=router,
                    items=items,
                    up=up,
                    events=await Subscriber(port, topics.events("summit")).start(tg),
                    problems=await Subscriber(port, topics.problems("summit")).start(tg),
                    inbox=tmp_path / "summit" / "inbox",
                )
                await mailbox.run(tg)
                await sender.run(tg)
                tg.create_task(publisher.run(), name="summit.reports")
                await router.restore()
                tg.create_task(router.run(), name="summit.router")
                async with asyncio.timeout(10):
                    await mailbox.wait_local()
                yield parts
        finally:
            await journal.close()


async def test_offers_waiting_on_an_unusable_route_fail_over_to_the_other_route(tmp_path: Path) -> None:
    """The base's link drops: a file waiting on primary is re-offered on direct; the journal shows the old
    transfer superseded and a new one pending to the archive; events say so."""
    async with summit(tmp_path) as s:
        _, row = await s.waiting_file("AT_O_20261201_000001_R00_S00.fits")
        s.link("base", False)
        await s.events.wait_for(has_kind("failover"), timeout_s=10)
        (failover,) = s.events.of_kind("failover")
        assert failover["details"]["old_route"] == "primary" and failover["details"]["new_route"] == "direct"
        assert "hop to base" in failover["details"]["reason"]
        assert await transfers_of(s.journal, row.file_key) == [
            ("primary", "superseded", "base"),
            ("direct", "pending", "archive"),
        ]
        assert s.offers() == [("direct", "archive")]
        await s.events.wait_for(has_kind("route_changed"), timeout_s=10)
        assert s.router.choose() is not None and s.router.choose().name == "direct"  # type: ignore[union-attr]


async def test_a_file_without_custody_after_the_end_to_end_timeout_is_sent_again_by_another_route(
    tmp_path: Path,
) -> None:
    """The base acknowledged the file but no custody came within end_to_end_timeout_s: it is offered again
    on direct (the base's copy may still arrive), primary is degraded for a hold-down, an event says why."""
    timeout_s = 0.6
    async with summit(tmp_path, end_to_end_timeout_s=timeout_s, breaker_hold_down_s=5.0) as s:
        item, row = await s.waiting_file("AT_O_20261201_000002_R00_S00.fits")
        acked_at = time.monotonic()
        await s.sender.on_ack(
            Ack(
                kind="offer",
                transfer_id=item.msg_id,
                sender="base",
                status="stored",
                checksum=item.checksum,
                size=item.size,
                at=time.time(),
            )
        )
        await s.events.wait_for(has_kind("custody_overdue"), timeout_s=10)
        assert time.monotonic() - acked_at >= timeout_s
        (overdue,) = s.events.of_kind("custody_overdue")
        assert (overdue["details"]["old_route"], overdue["details"]["new_route"]) == ("primary", "direct")
        assert await transfers_of(s.journal, row.file_key) == [
            ("primary", "acked", "base"),
            ("direct", "pending", "archive"),
        ]
        assert s.offers() == [("direct", "archive")]
        views = {v.name: v for v in s.routes.view(s.sender.queue_by_route())}
        assert not views["primary"].healthy and float(views["primary"].evidence["degraded_for_s"]) > 0  # type: ignore[arg-type]


async def test_the_router_sleeps_while_nothing_changes_on_an_unhealthy_route(tmp_path: Path) -> None:
    """With the base's link down, its breaker open and a file failed over, the router does not wake again
    by itself: over two seconds with nothing changing it runs no loop iteration (it does not poll)."""
    async with summit(tmp_path) as s:
        await s.waiting_file("AT_O_20261201_000003_R00_S00.fits")
        breaker = s.routes.breaker("base")
        for _ in range(s.topology.tuning.breaker_failures):
            breaker.record_failure("ack timeout", time.monotonic())
        s.link("base", False)
        await s.events.wait_for(has_kind("failover"), timeout_s=10)
        await s.events.wait_for(has_kind("route_changed"), timeout_s=10)
        before = s.routes.iterations
        await asyncio.sleep(2.0)  # the span over which nothing changes
        assert s.routes.iterations - before == 0, f"{s.routes.iterations - before} wake-ups with nothing changing"


async def test_new_files_fail_back_to_the_preferred_route_by_a_timer_after_the_hold_down(tmp_path: Path) -> None:
    """The base's link returns: new files keep taking direct for the hold-down, then the router's own timer
    (nothing else wakes it) moves them back to primary, announced by a route_changed event."""
    hold_down_s = 0.8
    async with summit(tmp_path, breaker_hold_down_s=hold_down_s) as s:
        assert s.router.choose() == PRIMARY  # new files take primary
        s.link("base", False)
        await s.events.wait_for(has_kind("route_changed"), timeout_s=10)
        assert s.events.of_kind("route_changed")[-1]["details"] == {"route": "direct", "previous": "primary"}
        back_at, before = time.monotonic(), s.routes.iterations
        s.link("base", True)
        await s.events.wait_for(has_kind("route_changed", 2), timeout_s=10)
        took_s = time.monotonic() - back_at
        # The wake-up for the link, the timer at the end of the hold-down, the one that publishes the event.
        assert s.routes.iterations - before <= 3, f"{s.routes.iterations - before} iterations: the router polled"
        assert s.events.of_kind("route_changed")[-1]["details"] == {"route": "primary", "previous": "direct"}
        assert took_s >= hold_down_s - 0.01
        assert s.routes.current == "primary"


async def test_the_operators_route_policy_takes_effect_and_survives_a_restart(tmp_path: Path) -> None:
    """Disabling primary moves its waiting offer to direct, is announced, and is read back by a new router
    on the same journal; a command naming an unknown route is refused with a problem."""
    async with summit(tmp_path) as s:
        _, row = await s.waiting_file("AT_O_20261201_000004_R00_S00.fits")
        await s.router.control(
            RouteControl(control_id="op-1", command="disable", route="primary", issued_by="night", at=time.time())
        )
        await s.events.wait_for(has_kind("route_policy"), timeout_s=10)
        await s.events.wait_for(has_kind("failover"), timeout_s=10)
        assert "disabled by operator" in s.events.of_kind("failover")[0]["details"]["reason"]
        assert await transfers_of(s.journal, row.file_key) == [
            ("primary", "superseded", "base"),
            ("direct", "pending", "archive"),
        ]
        await s.router.control(
            RouteControl(control_id="op-2", command="force", route="nowhere", issued_by="night", at=time.time())
        )
        await s.problems.wait_for(has_kind("bad_control"), timeout_s=10)

        restarted_routes = RouteTable(s.topology, "summit", lambda peer: True)
        restarted = Router(s.topology, s.journal, s.sender, restarted_routes, s.reporter, s.items.offer)
        await restarted.restore()
        assert restarted_routes.policy.as_dict() == {"primary": "disable", "direct": "auto"}
        chosen = restarted.choose()
        assert chosen is not None and chosen.name == "direct"
        assert row.file_key in restarted.awaiting


async def settle(s: Summit) -> None:
    """After a change, wait until the router has finished a loop iteration with nothing left to wake it."""
    async with asyncio.timeout(10):
        while True:
            s.routes.ticked.clear()
            await s.routes.ticked.wait()
            if not s.router.wake.is_set():
                return


async def test_start_up_settling_and_a_spell_with_nothing_healthy_announce_no_route_change(tmp_path: Path) -> None:
    """Started with no link up, then direct connecting before primary: the start-up's choices are no route
    change; with both down again and direct flapping, new files stay announced on direct once, not back
    and forth with primary (the route they would wait on)."""
    async with summit(tmp_path, up={"base": False, "archive": False}) as s:
        s.link("archive", True)
        await settle(s)
        assert s.routes.current == "direct"
        s.link("base", True)
        await settle(s)
        assert s.routes.current == "primary"
        s.link("base", False)  # a real change: primary fails, new files take direct
        await s.events.wait_for(has_kind("route_changed"), timeout_s=10)
        for _ in range(3):  # direct flaps while primary stays down
            s.link("archive", False)
            await settle(s)
            s.link("archive", True)
            await settle(s)
        await s.reporter.event("test_end", "everything before this is published")
        await s.events.wait_for(has_kind("test_end"), timeout_s=10)
        assert len(s.events.of_kind("route_up")) == 3  # direct's flaps were seen
        changes = [e["details"] for e in s.events.of_kind("route_changed")]
        assert changes == [{"route": "direct", "previous": "primary"}], changes


async def test_a_file_held_while_the_links_first_connect_is_no_problem(tmp_path: Path) -> None:
    """Started with no link up yet (a restart), a file held at once is offered when a link connects within the
    start-up grace, and no no_route problem is reported for it."""
    async with summit(tmp_path, up={"base": False, "archive": False}) as s:
        transfer, row = await hold_file(s.journal, s.inbox, name="AT_O_20261201_000009_R00_S00.fits", data=b"x" * 64,
                                        route=PRIMARY)  # fmt: skip
        assert not s.router.admit(transfer, row)
        s.link("base", True)
        await s.events.wait_for(has_kind("held_offered"), timeout_s=10)
        await s.reporter.problem("test_end", "everything before this is published")
        await s.problems.wait_for(has_kind("test_end"), timeout_s=10)
        assert s.problems.of_kind("no_route") == []
        assert s.offers() == [("primary", "base")]


async def test_a_file_still_held_after_the_start_up_grace_is_reported_by_the_routers_timer(tmp_path: Path) -> None:
    """Started with no link up and none coming: the held file is reported as no_route once the start-up grace
    has passed, by the router's own timer (nothing else wakes it)."""
    async with summit(tmp_path, up={"base": False, "archive": False}) as s:
        transfer, row = await hold_file(s.journal, s.inbox, name="AT_O_20261201_000010_R00_S00.fits", data=b"y" * 64,
                                        route=PRIMARY)  # fmt: skip
        assert not s.router.admit(transfer, row)
        await s.problems.wait_for(has_kind("no_route"), timeout_s=HELD_REPORT_GRACE_S + 10)
        (reported,) = s.problems.of_kind("no_route")
        assert reported["details"]["files"] == 1 and row.name in reported["details"]["examples"]


async def test_a_backlog_of_held_files_drains_through_the_sender_a_bounded_queue_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held files go to the sender at most SEND_QUEUE_ROOM at a time once a route is usable, oldest first, the
    rest waiting in the router (pending, not held, not reported); as the sender's queue empties the router
    refills it, and when no route is usable again the waiting files are held again."""
    monkeypatch.setattr(router_module, "SEND_QUEUE_ROOM", 8)
    async with summit(tmp_path, up={"base": False, "archive": False}) as s:
        names = [f"AT_O_20261201_{n:06d}_R00_S00.fits" for n in range(1, 31)]
        for name in names:
            transfer, row = await hold_file(s.journal, s.inbox, name=name, data=name.encode(), route=PRIMARY)
            assert not s.router.admit(transfer, row)
        assert s.router.held_count() == s.router.unsent_count() == 30

        s.link("base", True)
        await s.events.wait_for(has_kind("held_offered"), timeout_s=10)
        assert len(s.offers()) == 8, "the queue holds SEND_QUEUE_ROOM offers, no more"
        assert s.router.held_count() == 0 and s.router.unsent_count() == 22
        assert {row["last_error"] for row in s.router.held_snapshot()} == {router_module.WAITING_ERROR}
        offered: list[str] = []

        async def take_all_offers() -> None:
            for item in [i for i in s.sender.items.values() if i.kind == "offer"]:
                offered.append(item.name)
                s.sender.remove(item.msg_id)  # as custody removes it

        for _ in range(2):  # each emptied queue is refilled (the router wakes at half room)
            await take_all_offers()
            async with asyncio.timeout(10):
                while len(s.offers()) < 8:
                    await s.routes.ticked.wait()
                    s.routes.ticked.clear()
        queued = sorted(i.name for i in s.sender.items.values() if i.kind == "offer")
        assert offered + queued == names[:24], "oldest first, nothing skipped"
        assert s.router.unsent_count() == 6

        s.link("base", False)
        async with asyncio.timeout(10):
            while s.router.held_count() == 0:
                await s.routes.ticked.wait()
                s.routes.ticked.clear()
        assert s.router.held_count() == s.router.unsent_count() == 6
        assert {row["last_error"] for row in s.router.held_snapshot()} == {router_module.HELD_ERROR}
        (event,) = s.events.of_kind("held_offered")
        assert event["details"]["files"] == 30


BACKLOG_NAMES = [f"AT_O_20261201_{n:06d}_R00_S00.fits" for n in range(1, 31)]


async def journal_backlog(journal: Journal, inbox: Path) -> None:
    """What a summit killed in the middle of a backlog leaves: 30 files journaled, each with its offer on
    primary not yet acknowledged."""
    for name in BACKLOG_NAMES:
        await hold_file(journal, inbox, name=name, data=name.encode(), route=PRIMARY)


async def test_a_restarted_summit_queues_its_unacknowledged_offers_a_bounded_queue_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offers journaled before a restart are restored by the router, not queued in the sender all at once:
    SEND_QUEUE_ROOM of them go to the sender, oldest first, each with its own transfer (none superseded), and
    the rest follow as the queue empties."""
    monkeypatch.setattr(router_module, "SEND_QUEUE_ROOM", 8)
    async with summit(tmp_path, before=journal_backlog) as s:
        async with asyncio.timeout(10):
            while len(s.offers()) < 8:
                await s.routes.ticked.wait()
                s.routes.ticked.clear()
        assert len(s.offers()) == 8 and s.router.unsent_count() == 22 and s.router.held_count() == 0
        offered: list[str] = []
        ids: set[str] = set()
        while len(offered) < len(BACKLOG_NAMES):
            for item in [i for i in s.sender.items.values() if i.kind == "offer"]:
                offered.append(item.name)
                ids.add(item.msg_id)
                s.sender.remove(item.msg_id)  # as custody removes it
            async with asyncio.timeout(10):
                while s.router.unsent_count() and not s.offers():
                    await s.routes.ticked.wait()
                    s.routes.ticked.clear()
        assert offered == BACKLOG_NAMES, "oldest first, nothing skipped or repeated"
        rows = [t for name in BACKLOG_NAMES for t in await s.journal.read(journal_files.transfers_of, name_key(name))]
        assert {t.transfer_id for t in rows} == ids and {t.state for t in rows} == {"pending"}, "none superseded"
        assert s.events.of_kind("held_offered") == [], "restored offers were not held"


def name_key(name: str) -> str:
    """The key :func:`parts.hold_file` journals ``name`` under (its data is the name)."""
    return f"{checksum_of(name.encode())}/{name}"


HELD_FILE_BYTES = 800
"""What the router may keep per held file. Each held file used to keep its transfer and file rows (2,029 bytes
a file by this measure); its key, name and transfer id and two small records are 623."""


async def test_a_held_backlog_costs_the_router_a_few_hundred_bytes_a_file(tmp_path: Path) -> None:
    """With every link down, 2,000 files restored from the journal and 2,000 admitted by the registrar are held
    in the router at under HELD_FILE_BYTES each (measured by tracemalloc): their journal rows are not kept,
    and they are still offered when a route is usable."""
    count = 2000

    async def backlog(journal: Journal, inbox: Path) -> None:
        await journal.transaction(lambda db: held_rows(db, 0, count))
        tracemalloc.start()

    async with summit(tmp_path, up={"base": False, "archive": False}, before=backlog) as s:
        try:
            rows = await s.journal.transaction(lambda db: held_rows(db, count, 2 * count))
            for transfer, row in rows:
                assert not s.router.admit(transfer, row)
            del rows, transfer, row
            await settle(s)
            gc.collect()
            kept, _ = tracemalloc.get_traced_memory()  # (everything allocated since, and still alive)
        finally:
            tracemalloc.stop()
        assert s.router.held_count() == 2 * count
        assert kept / (2 * count) < HELD_FILE_BYTES, f"{kept / (2 * count):.0f} bytes per held file"
        s.link("base", True)
        async with asyncio.timeout(10):
            while len(s.offers()) < router_module.SEND_QUEUE_ROOM:
                await s.routes.ticked.wait()
                s.routes.ticked.clear()
        first = sorted(i.name for i in s.sender.items.values() if i.kind == "offer")
        assert first[0] == "raw/f000000.fits" and len(first) == router_module.SEND_QUEUE_ROOM


def held_rows(db: sqlite3.Connection, start: int, stop: int) -> list[tuple[TransferRow, FileRow]]:
    """Inbox files ``start`` to ``stop`` journaled as held, each with its pending transfer on primary (as the
    registrar journals them), and their rows."""
    out = []
    for n in range(start, stop):
        name, checksum = f"raw/f{n:06d}.fits", f"blake3:{n:064x}"
        key = f"{checksum}/{name}"
        journal_files.insert_file(db, file_key=key, name=name, size=100_000, checksum=checksum, closed_at=1.0e9,
                                  local_path=f"/inbox/{name}", source="inbox", mtime_ns=n)  # fmt: skip
        transfer = journal_files.insert_transfer(
            db, transfer_id=new_id("t"), file_key=key, route=PRIMARY.name, route_sites=PRIMARY.sites, hop=0
        )
        row = journal_files.file(db, key)
        assert row is not None
        out.append((transfer, row))
    return out
