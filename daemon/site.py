"""One site's daemon, wiring only: build the parts, run them in one TaskGroup, readiness, shutdown.

Roles (the rooms are listed in :mod:`daemon`):
- **summit**: the inbox watcher and registrar, the router; sends offers, receives custody.
- **relay** (base): receives offers into its cache, sends them on, relays custody upstream.
- **archive**: receives offers into the archive, publishes notices, sends custody back.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import structlog

from daemon.archive.exposures import Completeness
from daemon.archive.ingest import Archivist
from daemon.archive.quarantine import Quarantine
from daemon.config import Topology
from daemon.counters import SiteCounters
from daemon.credentials import Logins, read_password_file
from daemon.custody import CustodyRelay, upgrade_legacy
from daemon.dispatch import Dispatcher
from daemon.http.auth import Access
from daemon.http.console import Console
from daemon.http.dataserver import build_app, serve
from daemon.http.metrics import SiteMetrics
from daemon.http.notices import notice_routes
from daemon.http.operator import archive_routes, control_routes, operator_routes
from daemon.http.status import SiteView
from daemon.journal import Journal
from daemon.journal import notices as journal_notices
from daemon.journal import reports as journal_reports
from daemon.mailbox import Account, Mailbox, daemon_account
from daemon.publisher import E, LogPublisher
from daemon.receiving import READ_BUFFER_BYTES, Receiver, RelayStore, Store
from daemon.report import Reporter
from daemon.retention import SiteRetention
from daemon.sdnotify import StatusLine, notify, watchdog_interval_s
from daemon.sending.items import ItemFactory
from daemon.sending.router import Router
from daemon.sending.routes import RouteTable
from daemon.sending.sender import Sender
from daemon.summit.registrar import REGISTRARS, Registrar, forget_copies
from daemon.summit.watcher import InboxWatcher
from daemon.trust import Trust

if TYPE_CHECKING:
    from daemon.processing import Scheduler

log = structlog.get_logger()


class Site:
    """The parts of one site, wired together."""

    def __init__(self, topology: Topology, name: str, trust: Trust, account: Account) -> None:
        self.topology = topology
        self.name = name
        self.cfg = cfg = topology.sites[name]
        self.role = cfg.role
        tuning = topology.tuning
        self.counters = SiteCounters()
        self.journal = Journal(cfg.state_dir / "journal.sqlite")
        self.reporter = Reporter(name, self.journal, self.counters)
        self.dispatcher: Dispatcher | None = None
        self.trust = trust
        self.mailbox = Mailbox(
            topology, name, self._on_message, trust=trust, account=account, on_rejected=self._on_rejected
        )
        self.routes = (
            RouteTable(topology, name, self._peer_usable, self._peer_unreachable) if self.role != "archive" else None
        )
        self.sender = Sender(name, topology, self.mailbox, self.reporter, self.routes, self.counters)
        self.items = ItemFactory(name, self.journal)
        self.relay_dir = cfg.state_dir / "relay"
        self.router: Router | None = None
        if self.role == "summit" and self.routes is not None:
            self.router = router = Router(
                topology, self.journal, self.sender, self.routes, self.reporter, self.items.offer
            )
            self.items.on_first_hop = router.delivered
            self.mailbox.add_peer_listener(lambda peer, up: router.wake.set())
            self.sender.health_listeners.append(router.wake.set)
        self.custody = CustodyRelay(
            name,
            self.journal,
            self.mailbox,
            self.sender,
            self.items,
            self.counters,
            self._stop_offering,
            self.relay_dir,
        )
        self.retention = SiteRetention(
            site=name,
            role=self.role,
            retention_s=cfg.retention_s,
            retention=topology.retention,
            journal=self.journal,
            reporter=self.reporter,
            counters=self.counters,
            custody_wake=self.custody.expiry_wake,
            relay_dir=self.relay_dir,
            archive_root=cfg.archive_root,
        )
        self.view = SiteView(
            name=name,
            role=self.role,
            journal=self.journal,
            counters=self.counters,
            reporter=self.reporter,
            mailbox=self.mailbox,
            sender=self.sender,
            routes=self.routes,
            router=self.router,
        )
        self.view.retention = self.retention
        self.metrics = SiteMetrics(self.view)
        self.console = Console(topology, name, self.view)
        changed = self.view.changes.notify
        self.reporter.listeners.append(changed)
        self.sender.queue_listeners.append(changed)
        self.sender.health_listeners.append(changed)
        self.mailbox.add_peer_listener(lambda peer, up: changed())
        self.status_line = StatusLine(self.view.status_line)
        self.sender.queue_listeners.append(self.status_line.wake)
        self.sender.health_listeners.append(self.status_line.wake)
        self.reporter.listeners.append(self.status_line.wake)
        self.mailbox.add_peer_listener(lambda peer, up: self.status_line.wake())
        self.archivist: Archivist | None = None
        self.completeness: Completeness | None = None
        self.quarantine: Quarantine | None = None
        store: Store | None = None
        if self.role == "archive":
            self.archivist = store = Archivist(
                name,
                cfg,
                self.journal,
                self.mailbox.peers,
                self.reporter,
                self.sender,
                self.items,
                self.counters,
                trust,
            )
            self.archivist.latency = self.metrics.observe_latency
            self.completeness = Completeness(self.journal, tuning, self.reporter, self.archivist.notices_wake)
            self.archivist.committed.append(self.completeness.wake.set)
            self.archivist.committed.append(changed)
            self.quarantine = Quarantine(self.archivist, self.reporter)
        elif self.role == "relay":
            store = RelayStore(self.journal, self.items, self.relay_dir)
        incoming = (cfg.archive_root / ".incoming") if cfg.archive_root else cfg.state_dir / "incoming"
        self.receiver = (
            Receiver(
                name,
                topology,
                self.journal,
                self.mailbox,
                self.sender,
                self.items,
                self.reporter,
                self.counters,
                store,
                incoming,
                trust,
            )
            if store is not None
            else None
        )
        self.known_inbox: dict[str, tuple[int, int | None]] = {}
        self.registrar: Registrar | None = None
        self.watcher: InboxWatcher | None = None
        if cfg.inbox is not None and self.router is not None:
            self.watcher = InboxWatcher(cfg.inbox, tuning.rescan_interval_s, self.known_inbox)
            self.registrar = Registrar(
                topology,
                cfg.inbox,
                self.watcher,
                self.journal,
                self.sender,
                self.router,
                self.items,
                self.reporter,
                self.counters,
                self.known_inbox,
                self._stop_offering,
            )
            if self.retention.copies is not None:
                self.retention.copies.expired_listeners.append(functools.partial(forget_copies, self.known_inbox))
        self.dispatcher = Dispatcher(name, trust, self.reporter, self.sender, self.custody, self.receiver, self.router)
        self.reports = self._publisher("reports", journal_reports.unpublished, self._reports_published)
        self.reporter.publisher = self.reports
        self.notices: LogPublisher[journal_notices.NoticeRow] | None = None
        if self.archivist is not None:
            self.notices = self._publisher("notices", journal_notices.unpublished, self._notices_published)
            self.archivist.notices_wake = self.notices.wake
            assert self.completeness is not None
            self.completeness.notices_wake = self.notices.wake
        self.scheduler: Scheduler | None = None
        if self.archivist is not None and self.notices is not None:
            # Only the archive processes; the summit and the base never load the science libraries.
            from daemon.processing import Scheduler, make_executor

            processing = topology.processing
            self.scheduler = Scheduler(
                root=self.archivist.root,
                journal=self.journal,
                executor=make_executor(processing.dask_scheduler, processing.workers),
                reporter=self.reporter,
                processing=processing,
                notices_wake=self.notices.wake,
            )
            self.archivist.committed.append(self.scheduler.wake.set)

    def _publisher(
        self,
        name: str,
        fetch: Callable[[sqlite3.Connection, int], list[E]],
        mark: Callable[[list[E]], Awaitable[None]],
    ) -> LogPublisher[E]:
        tuning = self.topology.tuning
        journal = self.journal
        return LogPublisher(
            name,
            fetch=lambda limit: journal.read(fetch, limit),
            mark=mark,  # type: ignore[arg-type]
            publish=self.mailbox.publish_local,
            connected=self.mailbox.wait_local,
            initial_backoff_s=tuning.backoff_initial_s,
            max_backoff_s=tuning.backoff_max_s,
        )

    async def _reports_published(self, rows: list[journal_reports.ReportRow]) -> None:
        await self.journal.write(journal_reports.mark_published, [r.seq for r in rows])

    async def _notices_published(self, rows: list[journal_notices.NoticeRow]) -> None:
        # One transaction for the batch: a crash before it repeats these notices (same ids).
        await self.journal.write(journal_notices.mark_published, [r.notice_id for r in rows])
        self.counters.notices_published += len(rows)

    async def _on_message(self, topic: str, payload: bytes) -> None:
        assert self.dispatcher is not None
        await self.dispatcher.deliver(topic, payload)

    async def _on_rejected(self, topic: str, reason: str, payload: bytes, kind: str) -> None:
        assert self.dispatcher is not None
        await self.dispatcher.rejected(topic, reason, payload, kind=kind)

    def _peer_unreachable(self, peer: str) -> frozenset[str]:
        return self.mailbox.peer_unreachable.get(peer, frozenset())

    def _peer_usable(self, peer: str) -> bool:
        return self.mailbox.connected(peer) and self.mailbox.peer_online.get(peer, False)

    def _served(self, peer: str, size: int) -> None:
        self.counters.moved("out", peer, size)

    def _stop_offering(self, file_key: str) -> None:
        """A file reached custody or was replaced: drop its offers and stop tracking its custody."""
        self.sender.drop_offers(file_key)
        if self.router is not None:
            self.router.forget(file_key)

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or forever); any crashed task ends the daemon with its error."""
        cfg = self.cfg
        directories: list[Path | None] = [cfg.state_dir, cfg.inbox, cfg.archive_root]
        if self.receiver is not None:
            directories.append(self.receiver.incoming)
        for directory in directories:
            if directory is not None:
                await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        http_ready = asyncio.Event()
        watcher_ready = asyncio.Event()
        if self.watcher is None:
            watcher_ready.set()
        try:
            await self.journal.open()
            if self.receiver is not None:
                await asyncio.to_thread(self.receiver.clean_incoming)
            log.info("site_starting", role=self.role, state_dir=str(cfg.state_dir))
            client_tls = self.topology.http_tls_context()
            connector = aiohttp.TCPConnector(ssl=client_tls) if client_tls is not None else None
            session = aiohttp.ClientSession(connector=connector, read_bufsize=READ_BUFFER_BYTES)
            async with session, asyncio.TaskGroup() as tg:
                routes = operator_routes(self.view, self.metrics) + self.console.routes()
                self.console.session = session
                access = Access(self.topology, await asyncio.to_thread(_logins, cfg.accounts_file))
                if self.router is not None and self.dispatcher is not None:
                    routes += control_routes(self.dispatcher.control)
                if self.completeness is not None and self.quarantine is not None:
                    routes += archive_routes(self.completeness, self.quarantine)
                    routes += notice_routes(self.journal, access.check)
                if self.scheduler is not None:
                    from daemon.processing.http import product_routes

                    routes += product_routes(self.journal, self.scheduler)
                app = build_app(self.journal, access, self.trust, self.view.status, routes, served=self._served)
                app.on_shutdown.append(self.console.shutdown)
                server = serve(app, cfg.http_listen, http_ready, cfg.http_server_tls_context())
                tg.create_task(server, name=f"{self.name}.http")
                tg.create_task(self.reports.run(), name=f"{self.name}.reports")
                if self.dispatcher is not None:
                    self.dispatcher.tg = tg  # messages about different files are handled concurrently
                await self.mailbox.run(tg)
                await self.sender.run(tg)
                if self.receiver is not None:
                    await self.receiver.run(tg, session)
                await self._restore()
                if self.watcher is not None and self.registrar is not None:
                    tg.create_task(self.watcher.run(watcher_ready), name=f"{self.name}.watcher")
                    for i in range(REGISTRARS):
                        tg.create_task(self.registrar.run(), name=f"{self.name}.registrar-{i}")
                if self.router is not None:
                    tg.create_task(self.router.run(), name=f"{self.name}.router")
                self.retention.start(tg)
                if self.notices is not None:
                    tg.create_task(self.notices.run(), name=f"{self.name}.notices")
                if self.completeness is not None:
                    tg.create_task(self.completeness.run(), name=f"{self.name}.completeness")
                if self.scheduler is not None:
                    tg.create_task(self.scheduler.run(), name=f"{self.name}.processing")
                ready = asyncio.Event()
                tg.create_task(self._readiness(http_ready, watcher_ready, ready), name=f"{self.name}.ready")
                tg.create_task(self.status_line.run(ready), name=f"{self.name}.status-line")
                if stop is not None:
                    await stop.wait()
                    log.info("site_stopping")
                    notify("STOPPING=1")
                    await self.mailbox.goodbye()
                    raise _Stop
        except* _Stop:
            pass
        finally:
            await self.journal.close()
            log.info("site_stopped")

    async def _restore(self) -> None:
        """Re-queue everything the journal says is unfinished (after a crash or restart)."""
        sign = self.archivist.custody_for if self.archivist is not None else None
        items = await self.items.restore(
            self.trust.open_receipt,
            functools.partial(upgrade_legacy, journal=self.journal, sign=sign),
            offers=self.router is None,
        )
        for item in items:
            self.sender.add(item)
        if self.registrar is not None:
            await self.registrar.restore()
        waiting = 0
        if self.router is not None:
            await self.router.restore()
            waiting = self.router.unsent_count()
        if items or waiting:
            log.info("journal_restored", items=len(items), waiting_offers=waiting)

    async def _readiness(self, http_ready: asyncio.Event, watcher_ready: asyncio.Event, ready: asyncio.Event) -> None:
        await http_ready.wait()
        await self.mailbox.wait_local()
        await watcher_ready.wait()
        log.info("site_ready", http=self.cfg.http_url)
        notify(f"READY=1\nSTATUS=skyrelay {self.name} ({self.role}) ready")
        ready.set()
        interval = watchdog_interval_s()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            notify("WATCHDOG=1")


def _logins(accounts_file: Path | None) -> Logins | None:
    """The HTTP logins of operators and subscribers: the site broker's password file (blocking)."""
    if accounts_file is None:
        log.warning("no_http_accounts", reason="no accounts_file: operator and subscriber logins are refused")
        return None
    return Logins(read_password_file(accounts_file))


class _Stop(Exception):
    """Raised inside the task group to end it on a requested stop."""


async def run(topology: Topology, site: str) -> None:
    """Run one site until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with structlog.contextvars.bound_contextvars(site=site):
        trust = await asyncio.to_thread(Trust.load, topology, site)
        account = await asyncio.to_thread(daemon_account, topology, site)
        await Site(topology, site, trust, account).run(stop)


__all__ = ["Site", "run"]
