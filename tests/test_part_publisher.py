"""Reporting and the journaled-log publisher on their own: a slow or absent broker never stalls a report;
logs go out in order, in bounded batches, with capped backoff while the broker fails; what was marked
published stays published across restarts, what was not goes again under the same id.

One real mosquitto (the site's own broker), the site's real Mailbox and journal; a subscriber on the broker
sees what operators and subscribers would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from parts import DIRECT, Message, Subscriber, brokers, make_mailbox, open_journal, report_publisher, running, topology

from daemon import publisher as publishing
from daemon.aio import raise_if_cancelling
from daemon.counters import SiteCounters
from daemon.journal import Journal, new_id
from daemon.journal import notices as journal_notices
from daemon.journal import reports as journal_reports
from daemon.mailbox import Mailbox
from daemon.publisher import LogPublisher
from daemon.report import Reporter
from ops.broker import Mosquitto
from protocol import topics
from protocol.arrival import ArrivalNotice

pytestmark = pytest.mark.timeout(60)

ARRIVALS = "skyrelay/v1/arrivals/LATISS/R00_S00"


@dataclasses.dataclass
class Site:
    """The site's journal, reporter and mailbox, running against its broker."""

    journal: Journal
    reporter: Reporter
    mailbox: Mailbox
    broker: Mosquitto
    tg: asyncio.TaskGroup

    @property
    def port(self) -> int:
        return self.broker.port

    def notice_publisher(
        self,
        *,
        mark: Callable[[Sequence[journal_notices.NoticeRow]], Awaitable[None]] | None = None,
        publish: Callable[[str, bytes], Awaitable[bool]] | None = None,
        fetched: list[int] | None = None,
        marked: list[int] | None = None,
    ) -> LogPublisher[journal_notices.NoticeRow]:
        """The archive's notice publisher as the site wires it; ``fetched``/``marked`` record batch sizes,
        ``mark``/``publish`` replace the journal's marking or wrap the mailbox's publishing."""
        journal = self.journal

        async def fetch(limit: int) -> list[journal_notices.NoticeRow]:
            rows = await journal.read(journal_notices.unpublished, limit)
            if fetched is not None and rows:
                fetched.append(len(rows))
            return rows

        async def mark_published(rows: Sequence[journal_notices.NoticeRow]) -> None:
            await journal.write(journal_notices.mark_published, [r.notice_id for r in rows])
            if marked is not None:
                marked.append(len(rows))

        tuning = self.mailbox.tuning
        return LogPublisher(
            "notices",
            fetch=fetch,
            mark=mark or mark_published,
            publish=publish or self.mailbox.publish_local,
            connected=self.mailbox.wait_local,
            initial_backoff_s=tuning.backoff_initial_s,
            max_backoff_s=tuning.backoff_max_s,
        )


@contextlib.asynccontextmanager
async def site(tmp_path: Path, **tuning: Any) -> AsyncIterator[Site]:
    """A site's broker, mailbox, journal and reporter; the mailbox connected to its broker."""
    async with brokers(tmp_path, "summit") as started:
        broker = started["summit"]
        topo = topology(tmp_path, broker_ports={"summit": broker.port}, routes=(DIRECT,), **tuning)
        journal = await open_journal(topo.sites["summit"].state_dir / "journal.sqlite")

        async def ignore(topic: str, payload: bytes) -> None:
            return None

        mailbox = make_mailbox(topo, "summit", ignore)
        try:
            async with running() as tg:
                await mailbox.run(tg)
                async with asyncio.timeout(10):
                    await mailbox.wait_local()
                yield Site(journal, Reporter("summit", journal, SiteCounters()), mailbox, broker, tg)
        finally:
            await journal.close()


async def journal_notices_of(journal: Journal, count: int) -> list[str]:
    """Journal ``count`` arrival notices in one transaction; return their ids, oldest first."""
    ids = [new_id("n") for _ in range(count)]

    def record(db: sqlite3.Connection) -> None:
        for n, notice_id in enumerate(ids):
            payload = ArrivalNotice(
                notice_id=notice_id,
                obsid="AT_O_20261201_000001",
                instrument="LATISS",
                detector="R00_S00",
                name=f"file-{n}.fits",
                size=n,
                checksum="blake3:" + "0" * 64,
                archived_checksum="blake3:" + "0" * 64,
                archive_path=f"raw/file-{n}.fits",
                arrived_at=1.0,
                closed_at=1.0,
                latency_s=0.0,
                route="direct",
            ).to_json()
            journal_notices.insert(db, notice_id=notice_id, file_key=f"k/{n}", topic=ARRIVALS, payload=payload, at=0.0)

    await journal.transaction(record)
    return ids


def first_appearances(messages: Sequence[Message], field: str) -> list[Any]:
    """Values of ``field`` in order of first arrival (a repeat after a timeout is allowed, a loss is not)."""
    seen: list[Any] = []
    for message in messages:
        value = message.data.get(field)
        if value not in seen:
            seen.append(value)
    return seen


@pytest.mark.parametrize("fault", ["stopped", "frozen"])
async def test_reporting_never_waits_for_the_broker_and_reports_go_out_in_order_once_it_is_back(
    tmp_path: Path, fault: str
) -> None:
    """With the local broker stopped, or frozen (SIGSTOP) mid-publish, each problem() returns at once, well under
    the publish timeout; every report is journaled, and published in order once the broker is back."""
    publish_timeout_s = 1.0
    async with site(tmp_path, publish_timeout_s=publish_timeout_s, backoff_initial_s=0.05, backoff_max_s=0.3) as s:
        problems = await Subscriber(s.port, topics.problems("summit")).start(s.tg)
        published: set[int] = set()
        changed = asyncio.Event()

        def marked(seqs: list[int]) -> None:
            published.update(seqs)
            changed.set()

        async def until_published(count: int) -> None:
            async with asyncio.timeout(10):
                while len(published) < count:
                    changed.clear()
                    await changed.wait()

        s.reporter.publisher = publisher = report_publisher(s.journal, s.mailbox, marked=marked)
        s.tg.create_task(publisher.run(), name="summit.reports")
        await s.reporter.problem("disk_slow", "report before")
        await problems.wait_count(1, timeout_s=10)
        await until_published(1)

        proc = s.broker.proc
        assert proc is not None
        if fault == "stopped":
            await s.broker.stop()
        else:
            proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            for i in range(5):
                await s.reporter.problem("disk_slow", f"report {i}", disk="/data")
            took_s = time.monotonic() - started
            unpublished = await s.journal.read(journal_reports.unpublished, 100)
            await asyncio.sleep(publish_timeout_s)  # how long the fault lasts: at least one publish times out
        finally:
            if fault == "stopped":
                await s.broker.start()
            else:
                proc.send_signal(signal.SIGCONT)
        assert took_s < publish_timeout_s / 4, f"five reports took {took_s:.2f}s: they waited for the broker"
        assert [json.loads(r.payload)["reason"] for r in unpublished] == [f"report {i}" for i in range(5)]

        await s.reporter.problem("disk_slow", "report after")
        received = await problems.wait_for(lambda m: any(x.data["reason"] == "report after" for x in m), 15)
        reasons = first_appearances(received, "reason")
        assert reasons == ["report before", *(f"report {i}" for i in range(5)), "report after"]
        await until_published(7)
        assert await s.journal.read(journal_reports.unpublished, 100) == []


async def test_a_long_log_is_published_in_bounded_batches_in_order(tmp_path: Path) -> None:
    """2 x BATCH + 1 notices go out oldest first in several rounds, none loading or marking more than BATCH."""
    count = 2 * publishing.BATCH + 1
    async with site(tmp_path) as s:
        arrivals = await Subscriber(s.port, ARRIVALS).start(s.tg)
        ids = await journal_notices_of(s.journal, count)
        fetched: list[int] = []
        marked: list[int] = []
        publisher = s.notice_publisher(fetched=fetched, marked=marked)
        s.tg.create_task(publisher.run(), name="archive.notices")
        received = await arrivals.wait_count(count, timeout_s=40)
        assert [m.data["notice_id"] for m in received] == ids
        assert len(fetched) >= 3 and max(fetched) <= publishing.BATCH and sum(fetched) == count
        # The last batch is marked right after its last notice is published: journal one more as a barrier.
        (extra,) = await journal_notices_of(s.journal, 1)
        publisher.wake.set()  # as the archivist's commit does
        await arrivals.wait_count(count + 1, timeout_s=10)
        assert max(marked) <= publishing.BATCH and sum(marked) >= count
        assert [r.notice_id for r in await s.journal.read(journal_notices.unpublished, 10)] in ([], [extra])


async def test_while_the_broker_does_not_answer_the_publisher_backs_off_up_to_its_cap(tmp_path: Path) -> None:
    """Each publish into a frozen broker times out; the publisher waits a doubling, jittered delay between
    tries, never more than backoff_max_s; once the broker answers, the notices are published."""
    timeout_s, initial_s, cap_s = 0.1, 0.05, 0.2
    async with site(tmp_path, publish_timeout_s=timeout_s, backoff_initial_s=initial_s, backoff_max_s=cap_s) as s:
        arrivals = await Subscriber(s.port, ARRIVALS).start(s.tg)
        tries: list[tuple[float, bool]] = []  # of the first notice (the second goes beside it, in its window)
        enough = asyncio.Event()
        first: list[bytes] = []

        async def publish(topic: str, payload: bytes) -> bool:
            started = time.monotonic()
            first[:] = first or [payload]
            ok = await s.mailbox.publish_local(topic, payload)
            if payload == first[0]:
                tries.append((started, ok))
            if len(tries) >= 7:
                enough.set()
            return ok

        publisher = s.notice_publisher(publish=publish)  # a spy around the site's own publish, which it calls
        proc = s.broker.proc
        assert proc is not None
        proc.send_signal(signal.SIGSTOP)
        try:
            ids = await journal_notices_of(s.journal, 2)
            s.tg.create_task(publisher.run(), name="archive.notices")
            async with asyncio.timeout(15):
                await enough.wait()
        finally:
            proc.send_signal(signal.SIGCONT)
        failed = tries[:7]
        assert not any(ok for _, ok in failed)
        for k, ((earlier, _), (later, _)) in enumerate(itertools.pairwise(failed), start=1):
            delay_s = min(cap_s, initial_s * 2 ** (k - 1))
            gap_s = later - earlier  # one timed-out publish, then the backoff
            assert timeout_s + 0.5 * delay_s - 0.02 <= gap_s <= timeout_s + delay_s + 0.3, (k, gap_s)
        received = await arrivals.wait_for(lambda m: len(first_appearances(m, "notice_id")) == 2, timeout_s=15)
        assert first_appearances(received, "notice_id") == ids


async def test_a_notice_marked_published_is_not_published_again_and_an_unmarked_one_is(tmp_path: Path) -> None:
    """After a restart, a notice the broker acknowledged and the journal marked stays quiet; one published but
    not yet marked when the daemon died is published again with the same id and payload, then only once."""
    async with site(tmp_path) as s:
        arrivals = await Subscriber(s.port, ARRIVALS).start(s.tg)
        marked_before, unmarked = await journal_notices_of(s.journal, 2)
        await s.journal.write(journal_notices.mark_published, [marked_before])

        async def die_before_marking(rows: Sequence[journal_notices.NoticeRow]) -> None:
            # The process dies while this batch is being marked. (The cancel below can land as aiomqtt's
            # publish completes, which Python 3.11's wait_for swallows: honour it here too.)
            raise_if_cancelling()
            await asyncio.Event().wait()

        first_run = s.tg.create_task(s.notice_publisher(mark=die_before_marking).run(), name="archive.notices")
        await arrivals.wait_count(1, timeout_s=10)
        first_run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first_run

        restarted = s.notice_publisher()
        s.tg.create_task(restarted.run(), name="archive.notices.2")
        await arrivals.wait_count(2, timeout_s=10)
        (later,) = await journal_notices_of(s.journal, 1)  # a barrier: published after anything repeated
        restarted.wake.set()  # as the archivist's commit does
        received = await arrivals.wait_count(3, timeout_s=10)
        assert [m.data["notice_id"] for m in received] == [unmarked, unmarked, later]
        assert received[0].payload == received[1].payload
        assert {r.notice_id for r in await s.journal.read(journal_notices.unpublished, 10)} <= {later}
