"""One site's daemon: ``run(topology, site)`` wires journal, mailbox, data server, sender and roles.

Roles:
- **summit**: watches the inbox, journals each closed file, offers it along the first healthy
  route, re-routes files whose hop fails or whose custody is overdue.
- **relay** (base): pulls offered files, journals them, acks, and offers them to the next hop.
- **archive**: pulls, verifies and fixes headers, stores under ``raw/`` (or ``quarantine/``),
  catalogues, publishes arrival notices, and sends custody back along the route.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from daemon import archive as archive_ops
from daemon import journal as jr
from daemon.aio import raise_if_cancelling
from daemon.config import Topology
from daemon.dataserver import build_app, serve
from daemon.errors import ChecksumMismatch, PeerUnreachable, PullError
from daemon.fsutil import durable_rename
from daemon.ingest import Archivist
from daemon.journal import FileRow, Journal, TransferRow
from daemon.mailbox import Mailbox
from daemon.metrics import SiteMetrics
from daemon.puller import pull_file
from daemon.report import Reporter
from daemon.router import Router
from daemon.routes import RouteTable
from daemon.sdnotify import notify, watchdog_interval_s
from daemon.sender import Outgoing, Sender
from daemon.statuspage import PAGE
from daemon.watcher import InboxWatcher, is_candidate
from protocol import topics
from protocol.control import RouteControl
from protocol.custody import Custody
from protocol.errors import ProtocolError
from protocol.names import validate_name
from protocol.transfer import ACCEPTED_STATUSES, Ack, AckStatus, FileIdentity, Offer

log = structlog.get_logger()

VERSION = "0.1.0"
REGISTRARS = 2  # hash and check two new files at once: the summit keeps up with small-file bursts


class Site:
    """The runtime of one site."""

    def __init__(self, topology: Topology, name: str) -> None:
        self.topology = topology
        self.name = name
        self.cfg = topology.sites[name]
        self.role = self.cfg.role
        self.tuning = topology.tuning
        self.journal = Journal(self.cfg.state_dir / "journal.sqlite")
        self.reporter = Reporter(name)
        self.mailbox = Mailbox(topology, name, self.on_message)
        self.routes = (
            RouteTable(topology, name, self._peer_usable, self._peer_unreachable) if self.role != "archive" else None
        )
        self.sender = Sender(name, topology, self.mailbox, self.reporter, self.routes)
        self.reporter.attach(self.mailbox.publish_local)
        self.pulls: asyncio.Queue[Offer] = asyncio.Queue()
        self.pulling: set[str] = set()
        self.pulling_keys: set[str] = set()
        self.held_back: dict[str, dict[str, Offer]] = {}
        self.expiry_wake = asyncio.Event()
        self.incoming = (
            (self.cfg.archive_root / ".incoming") if self.cfg.archive_root else self.cfg.state_dir / "incoming"
        )
        self.relay_dir = self.cfg.state_dir / "relay"
        self.known_inbox: dict[str, tuple[int, int | None]] = {}
        self.watcher = (
            InboxWatcher(self.cfg.inbox, self.tuning.rescan_interval_s, self.known_inbox) if self.cfg.inbox else None
        )
        self.session: aiohttp.ClientSession | None = None
        self.started = time.time()
        self.counters: dict[str, int] = {
            "stored": 0,
            "duplicate": 0,
            "checksum_mismatch": 0,
            "failed": 0,
            "rejected": 0,
            "registered": 0,
            "replaced": 0,
            "custody": 0,
        }
        self.metrics = SiteMetrics(self)
        self.archivist: Archivist | None = None
        if self.role == "archive":
            self.archivist = Archivist(
                name,
                self.cfg,
                self.tuning,
                self.journal,
                self.mailbox,
                self.reporter,
                self.sender,
                self._custody_item,
                topology.token,
                self.metrics.latency.labels,
            )
        self.router: Router | None = None
        if self.role == "summit" and self.routes is not None:
            self.router = Router(topology, self.journal, self.sender, self.routes, self.reporter, self._offer_item)
            router = self.router
            self.mailbox.add_peer_listener(lambda peer, up: router.wake.set())
            self.sender.health_listeners.append(router.wake.set)

    def counter_values(self) -> dict[str, int]:
        """Files by outcome, and at the archive the notices published."""
        values = dict(self.counters)
        if self.archivist is not None:
            values["notices"] = self.archivist.notices_published
        return values

    def _peer_unreachable(self, peer: str) -> frozenset[str]:
        return self.mailbox.peer_unreachable.get(peer, frozenset())

    def _peer_usable(self, peer: str) -> bool:
        return self.mailbox.connected(peer) and self.mailbox.peer_online.get(peer, False)

    # ---- lifecycle -----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until ``stop`` is set (or forever); any crashed task ends the daemon with its error."""
        for directory in (self.cfg.state_dir, self.incoming, self.cfg.inbox, self.cfg.archive_root):
            if directory is not None:
                await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        await self.journal.open()
        await asyncio.to_thread(self._clean_incoming)
        log.info("site_starting", role=self.role, state_dir=str(self.cfg.state_dir))
        http_ready = asyncio.Event()
        watcher_ready = asyncio.Event()
        if self.watcher is None:
            watcher_ready.set()
        try:
            client_tls = self.topology.http_tls_context()
            connector = aiohttp.TCPConnector(ssl=client_tls) if client_tls is not None else None
            async with aiohttp.ClientSession(connector=connector) as session, asyncio.TaskGroup() as tg:
                self.session = session
                app = build_app(self.journal, self.topology.token, self.status, self.http_routes())
                server = serve(app, self.cfg.http_listen, http_ready, self.cfg.http_server_tls_context())
                tg.create_task(server, name=f"{self.name}.http")
                await self.mailbox.run(tg)
                await self.sender.run(tg)
                for i in range(self.tuning.pull_concurrency):
                    tg.create_task(self._pull_worker(), name=f"{self.name}.puller-{i}")
                await self._restore()
                if self.watcher is not None:
                    tg.create_task(self.watcher.run(watcher_ready), name=f"{self.name}.watcher")
                    for i in range(REGISTRARS):
                        tg.create_task(self._register_loop(), name=f"{self.name}.registrar-{i}")
                if self.router is not None:
                    tg.create_task(self.router.run(), name=f"{self.name}.router")
                if self.cfg.retention_s is not None:
                    tg.create_task(self._expiry_loop(self.cfg.retention_s), name=f"{self.name}.expiry")
                if self.archivist is not None:
                    tg.create_task(self.archivist.notice_loop(), name=f"{self.name}.notices")
                    tg.create_task(self.archivist.completeness_loop(), name=f"{self.name}.completeness")
                tg.create_task(self._readiness(http_ready, watcher_ready), name=f"{self.name}.ready")
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

    async def _readiness(self, http_ready: asyncio.Event, watcher_ready: asyncio.Event) -> None:
        await http_ready.wait()
        await self.mailbox.wait_local()
        await watcher_ready.wait()
        log.info("site_ready", http=self.cfg.http_url)
        notify(f"READY=1\nSTATUS=skyrelay {self.name} ({self.role}) ready")
        interval = watchdog_interval_s()
        if interval is None:
            return
        while True:
            await asyncio.sleep(interval)
            notify("WATCHDOG=1")

    def _clean_incoming(self) -> None:
        for leftover in self.incoming.glob("*.part*"):
            leftover.unlink()

    async def _restore(self) -> None:
        """Re-queue everything the journal says is unfinished (after a crash or restart)."""
        pending = await self.journal.pending_transfers()
        for transfer, file_row in pending:
            self.sender.add(self._offer_item(transfer, file_row))
        outbox = await self.journal.pending_outbox()
        for row in outbox:
            self.sender.add(self._custody_item(Custody.from_json(row.payload)))
        if self.role == "summit":
            self.known_inbox.update(await self.journal.files_by_name())
        if self.router is not None:
            await self.router.restore()
        if self.archivist is not None:
            self.archivist.notices_pending.set()
        if pending or outbox:
            log.info("journal_restored", transfers=len(pending), custody=len(outbox))

    # ---- messages ------------------------------------------------------------------------

    async def on_message(self, topic: str, payload: bytes) -> None:
        """Dispatch one message from the site's own mailbox; reject anything malformed."""
        kind = "?"
        try:
            site, kind = topics.parse_site(topic)
            if site != self.name:
                raise ProtocolError(f"addressed to {site}, this is {self.name}", field="topic")
            if kind == "offer":
                await self.on_offer(Offer.from_json(payload))
            elif kind == "ack":
                await self.sender.on_ack(Ack.from_json(payload))
            elif kind == "custody":
                await self.on_custody(Custody.from_json(payload))
            elif kind == "control":
                await self.on_control(RouteControl.from_json(payload))
        except ProtocolError as exc:
            await self.reporter.problem(
                "bad_message",
                f"rejected {kind} message: {exc}",
                topic=topic,
                field=exc.field,
                payload_bytes=len(payload),
                payload_preview=payload[:160].decode("utf-8", "replace"),
            )

    async def _send_ack(self, peer: str, ack: Ack) -> None:
        try:
            await self.mailbox.send(peer, "ack", ack.to_json())
        except PeerUnreachable as exc:
            log.info("ack_not_sent", peer=peer, transfer_id=ack.transfer_id, reason=str(exc))

    def _ack(
        self,
        offer: Offer,
        status: AckStatus,
        *,
        checksum: str | None = None,
        size: int | None = None,
        reason: str | None = None,
    ) -> Ack:
        return Ack(
            kind="offer",
            transfer_id=offer.transfer_id,
            sender=self.name,
            status=status,
            checksum=checksum,
            size=size,
            reason=reason[:1024] if reason else None,
            attempt=offer.attempt,
            at=time.time(),
        )

    async def on_offer(self, offer: Offer) -> None:
        """Validate an offer, answer repeats from the journal, queue new files for pulling."""
        if offer.receiver != self.name:
            raise ProtocolError(f"offer for {offer.receiver} arrived at {self.name}", field="receiver")
        if offer.sender not in self.mailbox.peers:
            raise ProtocolError(f"{offer.sender!r} is not a peer of {self.name}", field="sender")
        route = self.topology.route(offer.route)
        reject: str | None = None
        if route is None or route.sites != offer.route_sites:
            reject = f"route {offer.route!r} {list(offer.route_sites)} is not in the topology"
        elif offer.size > self.tuning.max_file_bytes:
            reject = f"size {offer.size} exceeds max_file_bytes {self.tuning.max_file_bytes}"
        if reject is not None:
            self.counters["rejected"] += 1
            await self.reporter.problem("offer_rejected", reject, name=offer.name, transfer_id=offer.transfer_id)
            await self._send_ack(offer.sender, self._ack(offer, "rejected", reason=reject))
            return
        if offer.transfer_id in self.pulling:
            return  # a pull is under way; its ack will answer this repeat
        prior = await self.journal.inbound(offer.transfer_id)
        if prior is not None and prior["status"] in ACCEPTED_STATUSES:
            await self._send_ack(
                offer.sender, self._ack(offer, prior["status"], checksum=prior["checksum"], size=offer.size)
            )
            return
        key = offer.identity.key
        if await self._already_held(offer):
            return
        if key in self.pulling_keys:
            # The same file is arriving by another transfer: answer this one when that pull ends.
            self.held_back.setdefault(key, {})[offer.transfer_id] = offer
            return
        self.pulling.add(offer.transfer_id)
        self.pulling_keys.add(key)
        self.pulls.put_nowait(offer)

    async def _already_held(self, offer: Offer) -> bool:
        """Answer ``duplicate`` when this file (name + checksum) is already held or archived."""
        key = offer.identity.key
        custody: Custody | None = None
        if self.archivist is not None:
            custody = await self.archivist.already_archived(offer)
            if custody is None:
                return False
        elif await self.journal.file(key) is None:
            return False

        def record(db: Any) -> bool:
            jr.insert_inbound(
                db,
                transfer_id=offer.transfer_id,
                sender=offer.sender,
                file_key=key,
                status="duplicate",
                checksum=offer.checksum,
            )
            if custody is None:
                return False
            return jr.queue_custody(db, custody, key)

        queued = await self.journal.transaction(record)
        self.counters["duplicate"] += 1
        log.info("offer_duplicate", transfer_id=offer.transfer_id, file=offer.name, sender=offer.sender)
        await self._send_ack(offer.sender, self._ack(offer, "duplicate", checksum=offer.checksum, size=offer.size))
        if custody is not None and queued:
            self.sender.add(self._custody_item(custody))
        return True

    async def _pull_worker(self) -> None:
        while True:
            raise_if_cancelling()
            offer = await self.pulls.get()
            try:
                with structlog.contextvars.bound_contextvars(transfer_id=offer.transfer_id, file=offer.name):
                    await self._receive(offer)
            finally:
                self.pulling.discard(offer.transfer_id)
                self.pulling_keys.discard(offer.identity.key)
            for held_back in self.held_back.pop(offer.identity.key, {}).values():
                await self.on_offer(held_back)  # now a duplicate, or pulled afresh if that pull failed

    async def _receive(self, offer: Offer) -> None:
        assert self.session is not None
        url = self.topology.link(self.name, offer.sender).http + offer.source_path
        tmp = self.incoming / f"{offer.transfer_id}.part"
        try:
            computed = await pull_file(
                self.session, url, self.topology.token, tmp, size=offer.size, checksum=offer.checksum
            )
        except ChecksumMismatch as exc:
            self.counters["checksum_mismatch"] += 1
            await self.reporter.problem(
                "checksum_mismatch", str(exc), name=offer.name, transfer_id=offer.transfer_id, sender=offer.sender
            )
            await self._send_ack(
                offer.sender,
                self._ack(offer, "checksum_mismatch", checksum=exc.checksum, size=exc.size, reason=str(exc)),
            )
            return
        except PullError as exc:
            self.counters["failed"] += 1
            log.warning("pull_failed", error=str(exc), sender=offer.sender)
            await self._send_ack(offer.sender, self._ack(offer, "failed", reason=str(exc)))
            return
        except OSError as exc:
            await self._storage_failed(offer, tmp, exc)
            return
        try:
            if self.archivist is not None:
                await self.archivist.ingest(offer, tmp, computed)
                self.counters["stored"] += 1
                await self._send_ack(offer.sender, self._ack(offer, "stored", checksum=computed, size=offer.size))
            else:
                await self._store_relay(offer, tmp, computed)
        except OSError as exc:
            await self._storage_failed(offer, tmp, exc)

    async def _storage_failed(self, offer: Offer, tmp: Path, exc: OSError) -> None:
        """Disk full or unwritable: tell operators and the sender (who retries); keep running."""
        self.counters["failed"] += 1
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
        reason = f"cannot store {offer.name}: {exc.strerror or exc}"
        await self.reporter.problem(
            "storage_error", reason, name=offer.name, transfer_id=offer.transfer_id, errno=exc.errno
        )
        await self._send_ack(offer.sender, self._ack(offer, "failed", reason=reason))

    async def _store_relay(self, offer: Offer, tmp: Path, computed: str) -> None:
        """Keep the file, journal it with its onward transfer, then ack (journal first)."""
        dest = self.relay_dir / computed.split(":", 1)[1] / offer.name
        await asyncio.to_thread(durable_rename, tmp, dest)
        key = offer.identity.key
        next_hop = offer.hop + 1

        def record(db: Any) -> TransferRow:
            jr.insert_file(
                db,
                file_key=key,
                name=offer.name,
                size=offer.size,
                checksum=computed,
                closed_at=offer.closed_at,
                local_path=str(dest),
                source=offer.sender,
                upstream_transfer=offer.transfer_id,
                route=offer.route,
                route_sites=offer.route_sites,
                hop=next_hop,
            )
            jr.insert_inbound(
                db, transfer_id=offer.transfer_id, sender=offer.sender, file_key=key, status="stored", checksum=computed
            )
            return jr.insert_transfer(
                db,
                transfer_id=jr.new_id("t"),
                file_key=key,
                route=offer.route,
                route_sites=offer.route_sites,
                hop=next_hop,
            )

        transfer = await self.journal.transaction(record)
        self.counters["stored"] += 1
        log.info("file_stored", role="relay", sender=offer.sender, next=transfer.receiver)
        await self._send_ack(offer.sender, self._ack(offer, "stored", checksum=computed, size=offer.size))
        file_row = await self.journal.file(key)
        assert file_row is not None
        self.sender.add(self._offer_item(transfer, file_row))

    # ---- custody -------------------------------------------------------------------------

    async def on_custody(self, custody: Custody) -> None:
        """The archive holds a file: record it, stop its transfers, relay custody upstream, ack."""
        if custody.receiver != self.name:
            raise ProtocolError(f"custody for {custody.receiver} arrived at {self.name}", field="receiver")
        if custody.sender not in self.mailbox.peers:
            raise ProtocolError(f"{custody.sender!r} is not a peer of {self.name}", field="sender")
        key = FileIdentity(name=custody.name, size=custody.size, checksum=custody.checksum).key
        held = await self.journal.file(key)
        onward: Custody | None = None
        if held is not None and held.source != "inbox" and held.source in self.mailbox.peers:
            onward = Custody(
                custody_id=jr.new_id("c"),
                sender=self.name,
                receiver=held.source,
                name=custody.name,
                size=custody.size,
                checksum=custody.checksum,
                status=custody.status,
                archive_path=custody.archive_path,
                archived_at=custody.archived_at,
                route=custody.route,
            )

        def record(db: Any) -> bool:
            db.execute(
                "UPDATE files SET state = 'archived', custody_status = ?, archive_path = ?, custody_at = ?"
                " WHERE file_key = ? AND state = 'held'",
                (custody.status, custody.archive_path, time.time(), key),
            )
            db.execute("UPDATE transfers SET state = 'done' WHERE file_key = ? AND state = 'pending'", (key,))
            if onward is None:
                return False
            return jr.queue_custody(db, onward, key)

        queued = await self.journal.transaction(record)
        self._stop_offering(key)
        self.counters["custody"] += 1
        log.info(
            "custody_received",
            file=custody.name,
            status=custody.status,
            archive_path=custody.archive_path,
            relayed_to=onward.receiver if onward else None,
        )
        ack = Ack(
            kind="custody",
            transfer_id=custody.custody_id,
            sender=self.name,
            status="stored",
            checksum=custody.checksum,
            size=custody.size,
            at=time.time(),
        )
        await self._send_ack(custody.sender, ack)
        if onward is not None and queued:
            self.sender.add(self._custody_item(onward))
        self.expiry_wake.set()

    async def _expiry_loop(self, retention_s: float) -> None:
        """Delete local copies ``retention_s`` after custody (only custody lets a site expire a file)."""
        while True:
            raise_if_cancelling()
            self.expiry_wake.clear()
            rows = await self.journal.query(
                "SELECT file_key, local_path, custody_at FROM files WHERE state = 'archived'"
                " AND custody_at IS NOT NULL ORDER BY custody_at LIMIT 1000"
            )
            now = time.time()
            due = [r for r in rows if float(r["custody_at"]) + retention_s <= now]
            for row in due:
                await asyncio.to_thread(_remove_local_copy, Path(row["local_path"]), self.relay_dir)
            if due:
                await self.journal.transaction(
                    functools.partial(_mark_expired, file_keys=[str(r["file_key"]) for r in due])
                )
                log.info("files_expired", count=len(due), retention_s=retention_s)
            later = [float(r["custody_at"]) + retention_s for r in rows[len(due) :]]
            timeout = max(0.0, min(later) - time.time()) if later else None
            if len(due) == len(rows) == 1000:
                continue  # more are due than one batch holds
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.expiry_wake.wait()

    # ---- outgoing items ------------------------------------------------------------------

    def _offer_item(self, transfer: TransferRow, file_row: FileRow) -> Outgoing:
        def payload(attempt: int) -> bytes:
            return Offer(
                transfer_id=transfer.transfer_id,
                sender=self.name,
                receiver=transfer.receiver,
                name=file_row.name,
                size=file_row.size,
                checksum=file_row.checksum,
                closed_at=file_row.closed_at,
                route=transfer.route,
                route_sites=transfer.route_sites,
                hop=transfer.hop,
                source_path=f"/v1/transfers/{transfer.transfer_id}",
                attempt=attempt,
                sent_at=time.time(),
            ).to_json()

        async def accepted(ack: Ack) -> None:
            await self.journal.transaction(
                lambda db: db.execute(
                    "UPDATE transfers SET state = 'acked', acked_at = ?, last_status = ? WHERE transfer_id = ?"
                    " AND state = 'pending'",
                    (time.time(), ack.status, transfer.transfer_id),
                )
            )
            log.info(
                "offer_acked",
                transfer_id=transfer.transfer_id,
                file=file_row.name,
                peer=transfer.receiver,
                status=ack.status,
                route=transfer.route,
            )
            if self.router is not None and transfer.hop == 0:
                self.router.delivered(file_row.file_key, transfer.route)

        return Outgoing(
            msg_id=transfer.transfer_id,
            kind="offer",
            peer=transfer.receiver,
            file_key=file_row.file_key,
            name=file_row.name,
            checksum=file_row.checksum,
            size=file_row.size,
            payload=payload,
            on_accepted=accepted,
            route=transfer.route,
        )

    def _custody_item(self, custody: Custody) -> Outgoing:
        encoded = custody.to_json()

        async def accepted(ack: Ack) -> None:
            await self.journal.transaction(
                lambda db: db.execute(
                    "UPDATE outbox SET state = 'acked', acked_at = ? WHERE msg_id = ?",
                    (time.time(), custody.custody_id),
                )
            )

        return Outgoing(
            msg_id=custody.custody_id,
            kind="custody",
            peer=custody.receiver,
            file_key=FileIdentity(name=custody.name, size=custody.size, checksum=custody.checksum).key,
            name=custody.name,
            checksum=custody.checksum,
            size=0,
            payload=lambda attempt: encoded,
            on_accepted=accepted,
        )

    # ---- summit --------------------------------------------------------------------------

    async def _register_loop(self) -> None:
        """Journal each finished inbox file (hash, size, close time) and offer it."""
        assert self.watcher is not None and self.cfg.inbox is not None
        inbox = self.cfg.inbox
        while True:
            raise_if_cancelling()
            path = await self.watcher.queue.get()
            try:
                relative = path.relative_to(inbox).as_posix()
            except ValueError:
                continue
            if not is_candidate(relative):
                continue
            try:
                st = await asyncio.to_thread(os.stat, path)
            except FileNotFoundError:
                continue
            if self.known_inbox.get(relative) == (st.st_size, st.st_mtime_ns):
                continue
            self.known_inbox[relative] = (st.st_size, st.st_mtime_ns)
            try:
                validate_name(relative)
            except ProtocolError as exc:
                await self.reporter.problem(
                    "bad_name", f"inbox file cannot travel under this name: {exc.reason}", name=relative
                )
                continue
            await self._register(path, relative, st.st_mtime_ns)

    async def _register(self, path: Path, relative: str, mtime_ns: int) -> None:
        try:
            checksum, size = await asyncio.to_thread(archive_ops.hash_file, path)
        except FileNotFoundError:
            return
        identity = FileIdentity(name=relative, size=size, checksum=checksum)
        findings = await asyncio.to_thread(archive_ops.early_findings, path)
        if findings:
            await self.reporter.problem(
                "header_warning",
                "; ".join(f"{f['rule']}: {f['message']}" for f in findings)[:1500]
                + " (found at the summit before transfer; the archive fixes what is derivable)",
                name=relative,
                findings=findings,
            )
        assert self.router is not None
        route = self.router.choose()
        if route is None:
            await self.reporter.problem(
                "no_route", "every route is disabled; the file waits in the journal", name=relative
            )
        chosen = route or self.topology.routes[0]

        def record(db: Any) -> tuple[TransferRow | None, list[sqlite3.Row]]:
            inserted = jr.insert_file(
                db,
                file_key=identity.key,
                name=relative,
                size=size,
                checksum=checksum,
                closed_at=mtime_ns / 1e9,
                local_path=str(path),
                source="inbox",
                mtime_ns=mtime_ns,
            )
            # Content rewritten back to an earlier version that was itself replaced: send it again.
            revived = not inserted and jr.revive_replaced(db, identity.key, mtime_ns=mtime_ns)
            if not inserted and not revived:
                return None, []
            replaced = jr.retire_replaced(db, name=relative, keep=identity.key)
            transfer = jr.insert_transfer(
                db,
                transfer_id=jr.new_id("t"),
                file_key=identity.key,
                route=chosen.name,
                route_sites=chosen.sites,
                hop=0,
            )
            return transfer, replaced

        transfer, replaced = await self.journal.transaction(record)
        for old in replaced:
            self._stop_offering(old["file_key"])
            self.counters["replaced"] += 1
            await self.reporter.problem(
                "source_replaced",
                f"{relative} was rewritten before any site took the earlier content ({old['checksum']}, "
                f"{old['size']} bytes); that content no longer exists and is not sent, the new content is",
                name=relative,
                old_checksum=old["checksum"],
                new_checksum=checksum,
            )
        if transfer is None:
            return
        self.counters["registered"] += 1
        log.info("file_registered", file=relative, size=size, checksum=checksum, route=chosen.name)
        file_row = await self.journal.file(identity.key)
        assert file_row is not None
        if route is not None:
            self.sender.add(self._offer_item(transfer, file_row))
        self.router.track(file_row, chosen.name)

    def _stop_offering(self, file_key: str) -> None:
        """Drop a file's offers and stop tracking its custody (it reached custody, or it was replaced)."""
        for item in self.sender.of_file(file_key):
            if item.kind == "offer":
                self.sender.remove(item.msg_id)
        if self.router is not None:
            self.router.forget(file_key)

    async def on_control(self, control: RouteControl) -> None:
        """Operator route policy; only the summit chooses routes."""
        if self.router is None:
            raise ProtocolError(f"route control goes to the summit, not {self.name}", field="command")
        await self.router.control(control)

    def http_routes(self) -> list[web.RouteDef]:
        """Operator endpoints beyond the data server's own."""

        async def queue(request: web.Request) -> web.Response:
            return web.json_response(self.sender.snapshot())

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(
                body=self.metrics.render(),
                content_type="text/plain",
                charset="utf-8",
                headers={"X-Content-Type-Options": "nosniff"},
            )

        async def page(request: web.Request) -> web.Response:
            return web.Response(text=PAGE, content_type="text/html")

        routes = [web.get("/", page), web.get("/v1/queue", queue), web.get("/metrics", metrics)]
        if self.archivist is not None:
            routes += self.archivist.http_routes()
        return routes

    # ---- status --------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """What ``skyrelay status`` shows for this site."""
        rows = await self.journal.query("SELECT state, COUNT(*) AS n FROM files GROUP BY state")
        files = {r["state"]: r["n"] for r in rows}
        out: dict[str, Any] = {
            "site": self.name,
            "role": self.role,
            "version": VERSION,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "links": {
                p: {"connected": self.mailbox.connected(p), "peer_online": self.mailbox.peer_online.get(p)}
                for p in self.mailbox.peers
            },
            "files": files,
            "pending": len(self.sender.items),
            "counters": self.counter_values(),
            "problems": dict(self.reporter.problem_counts),
            "recent_problems": list(self.reporter.recent_problems)[-10:],
            "events": list(self.reporter.recent_events)[-10:],
        }
        if self.routes is not None:
            out["routes"] = [dataclasses.asdict(v) for v in self.routes.view(self.sender.queue_by_route())]
        if self.router is not None:
            out["custody"] = self.router.custody_summary()
        if self.role == "archive":
            rows = await self.journal.query("SELECT status, COUNT(*) AS n FROM catalog GROUP BY status")
            out["catalog"] = {r["status"]: r["n"] for r in rows}
        return out


def _mark_expired(db: Any, *, file_keys: list[str]) -> None:
    db.executemany("UPDATE files SET state = 'expired' WHERE file_key = ?", [(k,) for k in file_keys])


def _remove_local_copy(path: Path, relay_dir: Path) -> None:
    """Delete an expired copy, and the directories it leaves empty under ``relay_dir`` (blocking)."""
    path.unlink(missing_ok=True)
    parent = path.parent
    while parent != relay_dir and relay_dir in parent.parents:
        try:
            parent.rmdir()
        except OSError:
            break
        parent = parent.parent


class _Stop(Exception):
    """Raised inside the task group to end it on a requested stop."""


async def run(topology: Topology, site: str) -> None:
    """Run one site until SIGTERM/SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with structlog.contextvars.bound_contextvars(site=site):
        await Site(topology, site).run(stop)


__all__ = ["Site", "run"]
