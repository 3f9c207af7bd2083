"""Receiving, shared by relay and archive: offer intake, pull, verify, durable store, then the ack.

An offer is answered from the journal when it repeats one already answered; otherwise the file is
pulled over HTTP (hashed while it streams, fsynced), checked against the offered size and
checksum, handed to the site's :class:`Store` (the relay keeps it and journals its next hop; the
archive ingests it), and only then acknowledged with the checksum this site computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import aiohttp
import blake3
import structlog

from daemon.aio import raise_if_cancelling
from daemon.config import Topology
from daemon.counters import SiteCounters
from daemon.errors import ChecksumMismatch, PeerUnreachable, PullError
from daemon.fsutil import durable_rename
from daemon.journal import Journal, new_id
from daemon.journal import files as journal_files
from daemon.journal import outbox as journal_outbox
from daemon.logcontext import bound_file
from daemon.mailbox import Mailbox
from daemon.report import Reporter
from daemon.sending.items import ItemFactory
from daemon.sending.sender import Outgoing, Sender
from daemon.trust import PULL_HEADER, Trust
from protocol.checksum import format_checksum
from protocol.custody import Custody
from protocol.errors import ProtocolError
from protocol.transfer import ACCEPTED_STATUSES, Ack, AckStatus, Offer

log = structlog.get_logger()

WRITE_BATCH_BYTES = 2 << 20
"""Received chunks are gathered and hashed and written together, in a thread, never on the event loop (each
thread hop costs about as much as hashing and writing a few hundred KiB)."""
WHOLE_FILE_BYTES = 256 * 1024
"""A file up to this size is created, written, fsynced and closed in one thread hop when its last byte came."""
READ_BUFFER_BYTES = 1 << 20
"""What the HTTP client buffers per connection before it stops reading the socket (aiohttp's default, 64 KiB,
makes a fast pull pause and resume the socket every 128 KiB)."""
CONNECT_TIMEOUT_S = 10.0
"""How long a plain-HTTP pull waits for its connection (:func:`_pull_plain`)."""
MAX_HEAD_BYTES = 64 * 1024
"""The most a data server's response line and headers may take."""


class Store(Protocol):
    """Where a verified file goes: the relay's cache or the archive."""

    keeps_cached: bool
    """Whether a large file's received bytes stay in the page cache after their fsync. A relay keeps them:
    it serves them onward within seconds. The archive drops them, so that the next file's writes reuse those
    pages instead of taking fresh ones: on the bench's 2-core VM (197 x 20 MB, direct route) that took the
    archive from 19.9 to 13.3 CPU-s and 184 to 229 MB/s, most of its CPU having been the kernel copying into
    page-cache pages never used before. Processing then reads a raw file from disk, not from the cache."""

    def held(self, db: sqlite3.Connection, offer: Offer) -> sqlite3.Row | journal_files.FileRow | None:
        """On the journal thread: this site's record of the offered file (name + checksum), if it holds it."""
        ...

    def custody_for_held(self, offer: Offer, held: sqlite3.Row | journal_files.FileRow) -> Custody | None:
        """The custody to send back to the offerer of a file :meth:`held` found here (None: none to send)."""
        ...

    async def store(self, offer: Offer, tmp: Path, computed: str) -> list[Outgoing]:
        """Keep the verified file durably and journal it; return what to send once it is acked."""
        ...


class Receiver:
    """Answers offers addressed to this site and pulls what they offer, ``pull_concurrency`` at a time
    (``large_pull_concurrency`` of them files bigger than :data:`WHOLE_FILE_BYTES`)."""

    def __init__(
        self,
        site: str,
        topology: Topology,
        journal: Journal,
        mailbox: Mailbox,
        sender: Sender,
        items: ItemFactory,
        reporter: Reporter,
        counters: SiteCounters,
        store: Store,
        incoming: Path,
        trust: Trust,
    ) -> None:
        self.site = site
        self.topology = topology
        self.tuning = topology.tuning
        self.journal = journal
        self.mailbox = mailbox
        self.sender = sender
        self.items = items
        self.reporter = reporter
        self.counters = counters
        self.store = store
        self.incoming = incoming
        self.trust = trust
        self.session: aiohttp.ClientSession | None = None
        self.pulls: asyncio.Queue[Offer] = asyncio.Queue()
        self.large_pulls = asyncio.Semaphore(self.tuning.large_pull_concurrency)
        self.pulling: set[str] = set()
        self.pulling_keys: set[str] = set()
        self.held_back: dict[str, dict[str, Offer]] = {}

    def clean_incoming(self) -> None:
        """Remove partial downloads a crash left behind (blocking)."""
        for leftover in self.incoming.glob("*.part*"):
            leftover.unlink()

    async def run(self, tg: asyncio.TaskGroup, session: aiohttp.ClientSession) -> None:
        """Start the pull workers."""
        self.session = session
        for i in range(self.tuning.pull_concurrency):
            tg.create_task(self._pull_worker(), name=f"{self.site}.puller-{i}")

    # ---- acks ------------------------------------------------------------------------------

    async def send_ack(self, peer: str, ack: Ack) -> None:
        """Publish an ack into ``peer``'s mailbox; a lost ack is answered again when the offer repeats.

        The ack of a repeated offer goes alone, never in a batch: whatever lost the first does not lose it.
        """
        try:
            await self.mailbox.send(peer, "ack", ack.to_json(), alone=ack.attempt > 1)
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
            sender=self.site,
            status=status,
            checksum=checksum,
            size=size,
            reason=reason[:1024] if reason else None,
            attempt=offer.attempt,
            at=time.time(),
        )

    # ---- intake ----------------------------------------------------------------------------

    async def on_offer(self, offer: Offer) -> None:
        """Validate an offer, answer repeats from the journal, queue new files for pulling.

        Raises:
            ProtocolError: the offer is not addressed to this site or comes from a non-peer.
        """
        if offer.receiver != self.site:
            raise ProtocolError(f"offer for {offer.receiver} arrived at {self.site}", field="receiver")
        if offer.sender not in self.mailbox.peers:
            raise ProtocolError(f"{offer.sender!r} is not a peer of {self.site}", field="sender")
        route = self.topology.route(offer.route)
        reject: str | None = None
        if route is None or route.sites != offer.route_sites:
            reject = f"route {offer.route!r} {list(offer.route_sites)} is not in the topology"
        elif offer.size > self.tuning.max_file_bytes:
            reject = f"size {offer.size} exceeds max_file_bytes {self.tuning.max_file_bytes}"
        if reject is not None:
            self.counters.files["rejected"] += 1
            await self.reporter.problem("offer_rejected", reject, name=offer.name, transfer_id=offer.transfer_id)
            await self.send_ack(offer.sender, self._ack(offer, "rejected", reason=reject))
            return
        if offer.transfer_id in self.pulling:
            return  # a pull is under way; its ack will answer this repeat
        # One read for both questions: each trip to the journal's thread wakes it (a thread hop per file).
        prior, held = await self.journal.read(self._known, offer)
        if prior is not None and prior.status in ACCEPTED_STATUSES:
            await self.send_ack(offer.sender, self._ack(offer, prior.status, checksum=prior.checksum, size=offer.size))  # type: ignore[arg-type]
            return
        key = offer.identity.key
        if held is not None:
            await self._answer_duplicate(offer, self.store.custody_for_held(offer, held))
            return
        if key in self.pulling_keys:
            # The same file is arriving by another transfer: answer this one when that pull ends.
            self.held_back.setdefault(key, {})[offer.transfer_id] = offer
            return
        self.pulling.add(offer.transfer_id)
        self.pulling_keys.add(key)
        self.pulls.put_nowait(offer)

    def _known(
        self, db: sqlite3.Connection, offer: Offer
    ) -> tuple[journal_files.Inbound | None, sqlite3.Row | journal_files.FileRow | None]:
        """On the journal thread: how this site answered this transfer before, and whether it holds the file."""
        return journal_files.inbound(db, offer.transfer_id), self.store.held(db, offer)

    async def _answer_duplicate(self, offer: Offer, custody: Custody | None) -> None:
        """Answer ``duplicate``: this file (name + checksum) is already held or archived."""
        key = offer.identity.key

        def record(db: sqlite3.Connection) -> bool:
            journal_files.insert_inbound(
                db,
                transfer_id=offer.transfer_id,
                sender=offer.sender,
                file_key=key,
                status="duplicate",
                checksum=offer.checksum,
            )
            return custody is not None and journal_outbox.queue_custody(db, custody, key)

        queued = await self.journal.transaction(record)
        self.counters.files["duplicate"] += 1
        log.info("offer_duplicate", transfer_id=offer.transfer_id, file=offer.name, sender=offer.sender)
        await self.send_ack(offer.sender, self._ack(offer, "duplicate", checksum=offer.checksum, size=offer.size))
        if custody is not None and queued:
            self.sender.add(self.items.custody(custody, self.trust.open_receipt(custody.receipt)))

    # ---- pulling ---------------------------------------------------------------------------

    async def _pull_worker(self) -> None:
        while True:
            raise_if_cancelling()
            offer = await self.pulls.get()
            try:
                with bound_file(offer.name, transfer_id=offer.transfer_id):
                    if offer.size > WHOLE_FILE_BYTES:
                        async with self.large_pulls:  # (memory: each buffers up to two write batches)
                            await self._receive(offer)
                    else:
                        await self._receive(offer)
            finally:
                self.pulling.discard(offer.transfer_id)
                self.pulling_keys.discard(offer.identity.key)
            for held_back in self.held_back.pop(offer.identity.key, {}).values():
                await self.on_offer(held_back)  # now a duplicate, or pulled afresh if that pull failed

    async def _receive(self, offer: Offer) -> None:
        assert self.session is not None
        url = self.topology.link(self.site, offer.sender).http + offer.source_path
        tmp = self.incoming / f"{offer.transfer_id}.part"
        try:
            computed = await pull_file(
                self.session,
                url,
                self.topology.token,
                tmp,
                size=offer.size,
                checksum=offer.checksum,
                signature=self.trust.pull_header(offer.source_path),
                keep_cached=self.store.keeps_cached,
            )
        except ChecksumMismatch as exc:
            self.counters.files["checksum_mismatch"] += 1
            await self.reporter.problem(
                "checksum_mismatch", str(exc), name=offer.name, transfer_id=offer.transfer_id, sender=offer.sender
            )
            await self.send_ack(
                offer.sender,
                self._ack(offer, "checksum_mismatch", checksum=exc.checksum, size=exc.size, reason=str(exc)),
            )
            return
        except PullError as exc:
            self.counters.files["failed"] += 1
            log.warning("pull_failed", error=str(exc), sender=offer.sender)
            await self.send_ack(offer.sender, self._ack(offer, "failed", reason=str(exc)))
            return
        except OSError as exc:
            await self._storage_failed(offer, tmp, exc)
            return
        try:
            onward = await self.store.store(offer, tmp, computed)
        except OSError as exc:
            await self._storage_failed(offer, tmp, exc)
            return
        self.counters.files["stored"] += 1
        self.counters.moved("in", offer.sender, offer.size)
        self.pulling.discard(offer.transfer_id)  # journaled: a repeat from now on is answered from the journal
        await self.send_ack(offer.sender, self._ack(offer, "stored", checksum=computed, size=offer.size))
        for item in onward:
            self.sender.add(item)

    async def _storage_failed(self, offer: Offer, tmp: Path, exc: OSError) -> None:
        """Disk full or unwritable: tell operators and the sender (who retries); keep running."""
        self.counters.files["failed"] += 1
        await asyncio.to_thread(tmp.unlink, missing_ok=True)
        reason = f"cannot store {offer.name}: {exc.strerror or exc}"
        await self.reporter.problem(
            "storage_error", reason, name=offer.name, transfer_id=offer.transfer_id, errno=exc.errno
        )
        await self.send_ack(offer.sender, self._ack(offer, "failed", reason=reason))


class RelayStore:
    """The relay's cache: ``relay/<checksum>/<name>``, journaled with the file's next hop before the ack."""

    keeps_cached = True  # (served onward within seconds)

    def __init__(self, journal: Journal, items: ItemFactory, relay_dir: Path) -> None:
        self.journal = journal
        self.items = items
        self.relay_dir = relay_dir

    def held(self, db: sqlite3.Connection, offer: Offer) -> journal_files.FileRow | None:
        """The relay's row of this file, if it holds it (on the journal thread)."""
        return journal_files.file(db, offer.identity.key)

    def custody_for_held(self, offer: Offer, held: sqlite3.Row | journal_files.FileRow) -> Custody | None:
        """None: custody comes from the archive, never from a relay."""
        return None

    async def store(self, offer: Offer, tmp: Path, computed: str) -> list[Outgoing]:
        """Keep the file, journal it with its onward transfer (journal first); return the onward offer."""
        dest = self.relay_dir / computed.split(":", 1)[1] / offer.name
        await asyncio.to_thread(durable_rename, tmp, dest)
        key = offer.identity.key
        next_hop = offer.hop + 1

        def record(db: sqlite3.Connection) -> tuple[journal_files.TransferRow, journal_files.FileRow | None]:
            journal_files.insert_file(
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
            journal_files.insert_inbound(
                db, transfer_id=offer.transfer_id, sender=offer.sender, file_key=key, status="stored", checksum=computed
            )
            transfer = journal_files.insert_transfer(
                db,
                transfer_id=new_id("t"),
                file_key=key,
                route=offer.route,
                route_sites=offer.route_sites,
                hop=next_hop,
            )
            return transfer, journal_files.file(db, key)

        transfer, file_row = await self.journal.transaction(record)
        assert file_row is not None
        log.info("file_stored", role="relay", sender=offer.sender, next=transfer.receiver)
        return [self.items.offer(transfer, file_row)]


# ---- the pull itself ------------------------------------------------------------------------


def _write_all(fd: int, hasher: blake3.blake3, chunks: Sequence[bytes | memoryview]) -> None:
    for chunk in chunks:
        hasher.update(chunk)
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]


def _finish(fd: int, keep_cached: bool = True) -> None:
    try:
        os.fsync(fd)
        if not keep_cached:
            # Clean after the fsync: the pages go back at once and the next file's writes reuse them.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _open(dest: Path) -> int:
    return os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)


def _write_whole(dest: Path, hasher: blake3.blake3, chunks: list[bytes]) -> None:
    """A small file in one thread hop: create, write, fsync, close."""
    fd = _open(dest)
    try:
        _write_all(fd, hasher, chunks)
    except BaseException:
        os.close(fd)
        raise
    _finish(fd)


async def pull_file(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    dest: Path,
    *,
    size: int,
    checksum: str,
    signature: str = "",
    read_timeout_s: float = 30.0,
    keep_cached: bool = True,
) -> str:
    """Download ``url`` into ``dest`` (created or truncated), fsynced; return the computed checksum.

    The bytes are hashed as they stream, so a mismatch is known the moment the last byte lands.
    ``signature`` is this site's :meth:`~daemon.trust.Trust.pull_header` for the transfer's path.
    ``keep_cached`` False drops a large file's pages from the page cache after its fsync (:attr:`Store.keeps_cached`).
    Writes happen in a thread, in batches of at least :data:`WRITE_BATCH_BYTES`. A file above
    :data:`WHOLE_FILE_BYTES` over plain HTTP is pulled whole in one thread (:func:`_pull_plain`); otherwise
    through ``session`` (TLS, and small files over its kept-alive connections), the chunks being those the
    socket delivered (no copy to re-cut them), one batch hashed and written while the next arrives.

    Raises:
        ChecksumMismatch: the size or blake3 differs from what was offered (``dest`` is removed).
        PullError: connection failure, HTTP error status, or the stream ended early.
    """
    if size > WHOLE_FILE_BYTES and url.startswith("http://"):
        return await _pull_plain(
            url,
            token,
            dest,
            size=size,
            checksum=checksum,
            signature=signature,
            read_timeout_s=read_timeout_s,
            keep_cached=keep_cached,
        )
    hasher = blake3.blake3(max_threads=1)
    received = 0
    # A file that fits in one write batch is written, fsynced and closed in one thread hop at the end.
    whole = size <= WHOLE_FILE_BYTES
    fd = -1 if whole else await asyncio.to_thread(_open, dest)
    ok = False
    pending: list[bytes] = []
    pending_bytes = 0
    writing: asyncio.Future[None] | None = None  # the batch being hashed and written, in order, one at a time
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout_s)
        headers = _pull_headers(token, signature)
        async with session.get(url, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                body = (await resp.text())[:200]
                raise PullError(f"HTTP {resp.status} from {url}: {body.strip()}")
            async for chunk in resp.content.iter_any():
                received += len(chunk)
                if received > size:
                    break
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= WRITE_BATCH_BYTES and not whole:
                    if writing is not None:
                        await asyncio.shield(writing)  # (a cancelled pull must not leave the thread writing)
                    writing = asyncio.ensure_future(asyncio.to_thread(_write_all, fd, hasher, pending))
                    pending, pending_bytes = [], 0
        if writing is not None:
            await asyncio.shield(writing)
            writing = None
        if whole:
            await asyncio.to_thread(_write_whole, dest, hasher, pending)
        else:
            await asyncio.to_thread(_write_all, fd, hasher, pending)
            await asyncio.to_thread(_finish, fd, keep_cached)
            fd = -1
        computed = _verified(hasher, received, size=size, checksum=checksum)
        ok = True
        return computed
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        raise PullError(f"pull from {url} failed: {exc!r}") from exc
    finally:
        if writing is not None:
            # A batch still being written in its thread: the descriptor stays open until that thread is done.
            await asyncio.wait([writing])
            if not writing.cancelled():
                writing.exception()  # (retrieved: the error that matters is the one already raised)
        if fd >= 0:
            os.close(fd)
        if not ok:
            await asyncio.to_thread(dest.unlink, missing_ok=True)


def _verified(hasher: blake3.blake3, received: int, *, size: int, checksum: str) -> str:
    """The checksum of what was received, when it is the offered size and checksum.

    Raises:
        ChecksumMismatch: either differs (carrying what was received).
    """
    computed = format_checksum(hasher.hexdigest())
    if received != size:
        raise ChecksumMismatch(f"received {received} bytes, offered {size}", checksum=computed, size=received)
    if computed != checksum:
        raise ChecksumMismatch(f"checksum {computed} != offered {checksum}", checksum=computed, size=received)
    return computed


def _pull_headers(token: str, signature: str) -> dict[str, str]:
    """The headers that authorise a pull: the pull token, and this site's signature of the path."""
    return {"Authorization": f"Bearer {token}", PULL_HEADER: signature}


# ---- a large file over plain HTTP ------------------------------------------------------------


async def _pull_plain(
    url: str,
    token: str,
    dest: Path,
    *,
    size: int,
    checksum: str,
    signature: str,
    read_timeout_s: float,
    keep_cached: bool,
) -> str:
    """:func:`pull_file` for a file above :data:`WHOLE_FILE_BYTES` over plain HTTP: the whole pull in one
    thread, the socket read straight into one reused buffer of :data:`WRITE_BATCH_BYTES` that is hashed
    and written from where it lies.

    Through aiohttp every byte was copied twice more in the process (the loop's read buffer into a bytes
    object, the parser's slice of it): on the bench's 2-core VM, memmove was 12 % of the archive's CPU
    receiving 20 MB files. One connection per file (``Connection: close``): a connect is nothing beside
    the bytes. Cancelling shuts the socket down, which ends the thread's read at once.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.hostname is None:
        raise PullError(f"pull from {url} failed: no host")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    fields = {"Host": parts.netloc, "Connection": "close", **_pull_headers(token, signature)}
    request = (f"GET {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode(
        "latin-1"
    )
    hasher = blake3.blake3(max_threads=1)
    pull = _PlainPull(parts.hostname, parts.port or 80, url, request, read_timeout_s)
    work = asyncio.ensure_future(asyncio.to_thread(pull.run, dest, size, hasher, keep_cached))
    ok = False
    try:
        try:
            received = await asyncio.shield(work)
        except asyncio.CancelledError:
            pull.abort()
            await asyncio.wait([work])
            if not work.cancelled():
                work.exception()  # (the cancellation is what matters)
            raise
        computed = _verified(hasher, received, size=size, checksum=checksum)
        ok = True
        return computed
    finally:
        if not ok:
            await asyncio.to_thread(dest.unlink, missing_ok=True)


class _PlainPull:
    """One GET of a file over a blocking socket, in a worker thread; :meth:`abort` ends it from the loop."""

    def __init__(self, host: str, port: int, url: str, request: bytes, read_timeout_s: float) -> None:
        self.host = host
        self.port = port
        self.url = url
        self.request = request
        self.read_timeout_s = read_timeout_s
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._aborted = False

    def abort(self) -> None:
        """Shut the socket down (thread-safe): a read under way returns, the pull fails."""
        with self._lock:
            self._aborted = True
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)

    def run(self, dest: Path, size: int, hasher: blake3.blake3, keep_cached: bool) -> int:
        """Connect, ask, and write the body into ``dest`` (created, fsynced); the bytes received (blocking).

        Reads at most one byte more than ``size``, so an overlong body shows as such.

        Raises:
            PullError: connection failure, an HTTP status other than 200, a body without a length, or the
                stream ending before its announced length.
            OSError: writing ``dest`` failed (disk full, unwritable): a storage failure, not the network's.
        """
        try:
            sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            raise PullError(f"pull from {self.url} failed: {exc!r}") from exc
        with sock:
            with self._lock:
                self._sock = sock
                if self._aborted:
                    raise PullError(f"pull from {self.url} cancelled")
            buffer = bytearray(WRITE_BATCH_BYTES)
            view = memoryview(buffer)
            try:
                sock.settimeout(self.read_timeout_s)
                sock.sendall(self.request)
                announced, filled = self._read_head(sock, view)
                limit = min(announced, size + 1)
                filled = min(filled, limit)
                received = filled
                fd = _open(dest)
                try:
                    while received < limit:
                        if filled == len(buffer):
                            _write_all(fd, hasher, [view])
                            filled = 0
                        n = sock.recv_into(view[filled:], min(len(buffer) - filled, limit - received))
                        if n == 0:
                            raise PullError(
                                f"pull from {self.url} failed: the body ended after {received} of {announced} bytes"
                            )
                        filled += n
                        received += n
                    _write_all(fd, hasher, [view[:filled]])
                except BaseException:
                    os.close(fd)
                    raise
            except (ConnectionError, TimeoutError) as exc:
                raise PullError(f"pull from {self.url} failed: {exc!r}") from exc
            finally:
                view.release()
        _finish(fd, keep_cached)
        return received

    def _read_head(self, sock: socket.socket, view: memoryview) -> tuple[int, int]:
        """Read the response head into ``view``; the announced body length, and the body bytes that followed
        the head, moved to the start of ``view`` (how many).

        Raises:
            PullError: not a 200 with a Content-Length (the server's text of an error is in the message).
        """
        filled = 0
        while (end := bytes(view[:filled]).find(b"\r\n\r\n")) < 0:
            if filled >= MAX_HEAD_BYTES:
                raise PullError(f"pull from {self.url} failed: no end to the response head in {filled} bytes")
            n = sock.recv_into(view[filled:MAX_HEAD_BYTES])
            if n == 0:
                raise PullError(f"pull from {self.url} failed: the connection closed in the response head")
            filled += n
        lines = bytes(view[:end]).decode("latin-1").split("\r\n")
        status_parts = lines[0].split(" ", 2)
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        rest = filled - (end + 4)
        view[:rest] = view[end + 4 : filled]
        if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/1.") or not status_parts[1].isdigit():
            raise PullError(f"pull from {self.url} failed: not an HTTP response: {lines[0][:100]!r}")
        if status_parts[1] != "200":
            text = bytes(view[:rest]).decode("utf-8", "replace")[:200].strip()
            raise PullError(f"HTTP {status_parts[1]} from {self.url}: {text}")
        length = fields.get("content-length", "")
        if "transfer-encoding" in fields or not length.isdigit():
            raise PullError(f"pull from {self.url} failed: a body without a Content-Length")
        return int(length), rest
