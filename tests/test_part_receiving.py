"""Receiving on its own: the pull (streamed, written off the loop in batches, verified) against a real aiohttp
server, and the relay's Receiver answering offers over real brokers.

``pull_file`` is run against a small aiohttp server in the test that serves good, short, long, corrupted
and cut-off bodies. The Receiver runs as the base does: its own Mailbox on the base's broker, acks going
into the summit's broker, pulling from the summit's real data server over a real summit journal. A
subscriber on the summit's broker sees the acks, as the summit's sender would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest
import structlog.testing
from aiohttp import web
from parts import (
    PRIMARY,
    TOKEN,
    Message,
    Subscriber,
    brokers,
    checksum_of,
    hold_file,
    open_journal,
    opened,
    publish_once,
    running,
    topology,
    trust,
)
from parts import (
    mailbox as make_mailbox,
)

from daemon import receiving
from daemon.config import Endpoint, Topology
from daemon.counters import SiteCounters
from daemon.errors import ChecksumMismatch, PullError
from daemon.http.auth import Access
from daemon.http.dataserver import build_app, serve
from daemon.journal import FileRow, Journal, TransferRow, new_id
from daemon.journal import files as journal_files
from daemon.receiving import Receiver, RelayStore, pull_file
from daemon.report import Reporter
from daemon.sending.items import ItemFactory
from daemon.sending.sender import Sender
from daemon.trust import PULL_HEADER
from ops.broker import free_port
from protocol import topics
from protocol.transfer import Ack, Offer

pytestmark = pytest.mark.timeout(60)

BODY = bytes(range(256)) * 4100 + b"tail"  # about 1 MiB, not a multiple of anything in particular
SERVER_WRITE_BYTES = 4096


# ---- pull_file against a small server ---------------------------------------------------------


def serving(body: bytes, *, length: int | None = None) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A handler that sends ``body`` in small writes, announcing ``length`` (and dying short of it) if given."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(body) if length is None else length
        await response.prepare(request)
        for start in range(0, len(body), SERVER_WRITE_BYTES):
            await response.write(body[start : start + SERVER_WRITE_BYTES])
        if length is None:
            await response.write_eof()
        else:
            assert request.transport is not None
            request.transport.close()  # the connection dies before the announced length
        return response

    return handler


def _flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def leftovers(directory: Path) -> list[Path]:
    """What is left in a directory."""
    return list(directory.iterdir())


BODIES = {
    "good": serving(BODY),
    "short": serving(BODY[:-1000]),
    "long": serving(BODY + b"more"),
    "corrupt": serving(_flipped(BODY, 500_000)),
    "cut": serving(BODY[: len(BODY) // 2], length=len(BODY)),
}


@contextlib.asynccontextmanager
async def file_server() -> AsyncIterator[str]:
    """A server of :data:`BODY` in its variants at ``<url>/<variant>``; yields the base URL."""
    app = web.Application()
    for name, handler in BODIES.items():
        app.router.add_get(f"/{name}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_a_pull_streams_into_the_file_in_batches_off_the_loop_and_returns_the_checksum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 1 MiB body sent in 4 KiB writes lands byte for byte; it is written in batches of at least
    WRITE_BATCH_BYTES (the last may be smaller), never on the event loop's thread."""
    batches: list[tuple[str, int, int]] = []
    write_all = receiving._write_all

    def spy(fd: int, hasher: blake3.blake3, chunks: list[bytes]) -> None:
        batches.append((threading.current_thread().name, len(chunks), sum(map(len, chunks))))
        write_all(fd, hasher, chunks)

    monkeypatch.setattr(receiving, "_write_all", spy)
    dest = tmp_path / "t-1.part"
    async with file_server() as url, aiohttp.ClientSession() as session:
        computed = await pull_file(session, f"{url}/good", TOKEN, dest, size=len(BODY), checksum=checksum_of(BODY))
    assert computed == checksum_of(BODY)
    assert dest.read_bytes() == BODY
    loop_thread = threading.current_thread().name
    assert all(thread != loop_thread for thread, _, _ in batches)
    assert all(size >= receiving.WRITE_BATCH_BYTES for _, _, size in batches[:-1])
    assert sum(size for _, _, size in batches) == len(BODY)
    assert len(batches) <= len(BODY) // receiving.WRITE_BATCH_BYTES + 1


def resident_pages(path: Path) -> int:
    """Pages of ``path`` in the page cache now: mincore(2) over a private mapping that touches none."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = path.stat().st_size
    vector = (ctypes.c_ubyte * ((size + mmap.PAGESIZE - 1) // mmap.PAGESIZE))()
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY) as mapped:
        first = ctypes.c_char.from_buffer(mapped)
        try:
            if libc.mincore(ctypes.addressof(first), size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
        finally:
            del first  # (the mapping cannot close while a ctypes object points into it)
    return sum(byte & 1 for byte in vector)


@pytest.mark.parametrize("keep_cached", [True, False])
async def test_a_large_pull_drops_its_pages_from_the_cache_only_when_asked(tmp_path: Path, keep_cached: bool) -> None:
    """With ``keep_cached`` False (the archive) a file written in batches is fsynced, then its pages leave
    the page cache; with True (a relay, which serves it onward at once) they stay. The bytes are the same."""
    dest = tmp_path / "t-4.part"
    async with file_server() as url, aiohttp.ClientSession() as session:
        computed = await pull_file(
            session, f"{url}/good", TOKEN, dest, size=len(BODY), checksum=checksum_of(BODY), keep_cached=keep_cached
        )
    assert computed == checksum_of(BODY)
    resident = resident_pages(dest)
    pages = len(BODY) // mmap.PAGESIZE
    if keep_cached:
        assert resident >= pages, (resident, pages)
    else:
        assert resident == 0, (resident, pages)
    assert dest.read_bytes() == BODY


@pytest.mark.parametrize(
    ("variant", "why"),
    [("short", "received 1048604 bytes"), ("long", "offered 1049604"), ("corrupt", "!= offered")],
)
async def test_a_body_of_the_wrong_size_or_bytes_is_a_checksum_mismatch_and_leaves_no_file(
    tmp_path: Path, variant: str, why: str
) -> None:
    """A truncated, overlong or corrupted body raises ChecksumMismatch (with what was received) and the
    partial file is removed."""
    dest = tmp_path / "t-2.part"
    async with file_server() as url, aiohttp.ClientSession() as session:
        with pytest.raises(ChecksumMismatch, match=why) as mismatch:
            await pull_file(session, f"{url}/{variant}", TOKEN, dest, size=len(BODY), checksum=checksum_of(BODY))
    assert mismatch.value.checksum != checksum_of(BODY)
    if variant == "short":
        assert mismatch.value.size == len(BODY) - 1000
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("variant", ["cut", "missing"])
async def test_a_broken_connection_or_an_http_error_is_a_pull_error_and_leaves_no_file(
    tmp_path: Path, variant: str
) -> None:
    """The connection dying mid-body, or a 404, raises PullError (worth retrying); no partial file stays."""
    dest = tmp_path / "t-3.part"
    async with file_server() as url, aiohttp.ClientSession() as session:
        with pytest.raises(PullError):
            await pull_file(session, f"{url}/{variant}", TOKEN, dest, size=len(BODY), checksum=checksum_of(BODY))
    assert not dest.exists()


async def test_a_cancelled_pull_ends_at_once_though_the_server_stalls_and_leaves_no_file(tmp_path: Path) -> None:
    """A large pull over plain HTTP runs in a thread on a blocking socket: cancelling it (a daemon stopping)
    shuts that socket down, so it ends at once, not after the read timeout, and the partial file goes."""
    started, release = asyncio.Event(), asyncio.Event()

    async def stalling(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(BODY)
        await response.prepare(request)
        await response.write(BODY[: len(BODY) // 2])
        started.set()
        await release.wait()
        return response

    app = web.Application()
    app.router.add_get("/stall", stalling)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    dest = tmp_path / "t-4.part"
    try:
        async with aiohttp.ClientSession() as session:
            pull = asyncio.create_task(
                pull_file(session, f"http://127.0.0.1:{port}/stall", TOKEN, dest, size=len(BODY), checksum="b")
            )
            await asyncio.wait_for(started.wait(), 10)
            await asyncio.sleep(0.2)  # the first half is in the file (or its buffer)
            begun = time.monotonic()
            pull.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pull
            assert time.monotonic() - begun < 2.0
    finally:
        release.set()
        await runner.shutdown()
        await runner.cleanup()
    assert leftovers(tmp_path) == []


# ---- the relay's receiver --------------------------------------------------------------------


@dataclasses.dataclass
class Relay:
    """The base's receiver running, the summit's data server serving, and the acks as the summit sees them."""

    topology: Topology
    summit_journal: Journal
    base_journal: Journal
    receiver: Receiver
    sender: Sender
    counters: SiteCounters
    acks: Subscriber
    onward: Subscriber
    pulls: list[str]
    at_ack: list[dict[str, Any]]
    base_port: int
    relay_dir: Path

    async def offer(self, transfer: TransferRow, row: FileRow, attempt: int) -> None:
        """The summit's Offer of ``transfer`` published into the base's mailbox."""
        payload = ItemFactory("summit", self.summit_journal).offer(transfer, row).payload(attempt)
        sealed = trust(self.topology, "summit").seal("offer", "base", payload)
        await publish_once(self.base_port, topics.site("base", "offer"), sealed)

    def ack(self, n: int) -> Ack:
        """The n-th ack the summit received (0-based)."""
        return Ack.from_json(opened(self.topology, "summit", "ack", self.acks.messages[n].payload))


def base_journal_now(path: Path, transfer_id: str) -> dict[str, Any]:
    """What the base's journal holds for an incoming transfer, read at once with a separate connection."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        inbound = db.execute("SELECT status, file_key FROM inbound WHERE transfer_id = ?", (transfer_id,)).fetchone()
        files = db.execute("SELECT file_key, local_path FROM files").fetchall()
        onward = db.execute("SELECT receiver, hop, state FROM transfers").fetchall()
    return {"inbound": inbound, "files": files, "onward": onward}


@contextlib.asynccontextmanager
async def relay(tmp_path: Path) -> AsyncIterator[Relay]:
    """Brokers for the three sites, the summit's journal and data server, the base's Receiver and Mailbox;
    the acks the summit receives and the offers the base sends on to the archive are collected."""
    async with brokers(tmp_path, "summit", "base", "archive") as started:
        http_port = free_port()
        topo = topology(
            tmp_path,
            broker_ports={site: b.port for site, b in started.items()},
            http_ports={"summit": http_port},
            routes=(PRIMARY,),
        )
        summit_journal = await open_journal(topo.sites["summit"].state_dir / "journal.sqlite")
        base_cfg = topo.sites["base"]
        base_journal = await open_journal(base_cfg.state_dir / "journal.sqlite")
        pulls: list[str] = []

        @web.middleware
        async def count_pulls(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            if request.path.startswith("/v1/transfers/"):
                pulls.append(request.path)
            return await handler(request)

        async def status() -> dict[str, Any]:
            return {}

        app = build_app(summit_journal, Access(topo, None), trust(topo, "summit"), status)
        app.middlewares.append(count_pulls)

        counters = SiteCounters()
        reporter = Reporter("base", base_journal, counters)
        receivers: list[Receiver] = []

        async def base_message(topic: str, payload: bytes) -> None:
            if topics.parse_site(topic)[1] == "offer":
                await receivers[0].on_offer(Offer.from_json(opened(topo, "base", "offer", payload)))

        mailbox = make_mailbox(topo, "base", base_message)
        links_up = {peer: asyncio.Event() for peer in mailbox.peers}
        mailbox.add_peer_listener(lambda peer, up: links_up[peer].set() if up else links_up[peer].clear())
        sender = Sender("base", topo, mailbox, reporter, None, counters)
        items = ItemFactory("base", base_journal)
        relay_dir = base_cfg.state_dir / "relay"
        store = RelayStore(base_journal, items, relay_dir)
        receiver = Receiver(
            "base",
            topo,
            base_journal,
            mailbox,
            sender,
            items,
            reporter,
            counters,
            store,
            base_cfg.state_dir / "in",
            trust(topo, "base"),
        )
        receivers.append(receiver)
        receiver.incoming.mkdir(parents=True)
        at_ack: list[dict[str, Any]] = []

        def snapshot(message: Message) -> None:
            ack = Ack.from_json(opened(topo, "summit", "ack", message.payload))
            at_ack.append(base_journal_now(base_journal.path, ack.transfer_id))

        try:
            async with running() as tg, aiohttp.ClientSession() as session:
                http_ready = asyncio.Event()
                tg.create_task(serve(app, Endpoint(host="127.0.0.1", port=http_port), http_ready), name="summit.http")
                acks = await Subscriber(started["summit"].port, topics.site("summit", "ack"), snapshot).start(tg)
                onward = await Subscriber(started["archive"].port, topics.site("archive", "offer")).start(tg)
                await mailbox.run(tg)
                await sender.run(tg)
                await receiver.run(tg, session)
                async with asyncio.timeout(10):
                    await http_ready.wait()
                    await mailbox.wait_local()
                    for up in links_up.values():
                        await up.wait()
                yield Relay(
                    topology=topo,
                    summit_journal=summit_journal,
                    base_journal=base_journal,
                    receiver=receiver,
                    sender=sender,
                    counters=counters,
                    acks=acks,
                    onward=onward,
                    pulls=pulls,
                    at_ack=at_ack,
                    base_port=started["base"].port,
                    relay_dir=relay_dir,
                )
        finally:
            await base_journal.close()
            await summit_journal.close()


async def test_a_relay_journals_the_file_and_its_next_hop_before_it_acks(tmp_path: Path) -> None:
    """An offer from the summit: the base pulls the file into its cache, journals it with its onward transfer
    to the archive, and only then acks 'stored' with the checksum it computed."""
    data = os.urandom(300_000)
    async with relay(tmp_path) as r:
        transfer, row = await hold_file(
            r.summit_journal, tmp_path / "summit" / "inbox", name="AT_O_1_R00_S00.fits", data=data, route=PRIMARY
        )
        await r.offer(transfer, row, attempt=1)
        await r.acks.wait_count(1, timeout_s=10)
        ack = r.ack(0)
        assert (ack.transfer_id, ack.status, ack.checksum, ack.sender) == (
            transfer.transfer_id,
            "stored",
            checksum_of(data),
            "base",
        )
        (seen,) = r.at_ack  # the base's journal at the moment the summit got the ack
        assert seen["inbound"] == ("stored", row.file_key)
        ((key, local_path),) = seen["files"]
        assert key == row.file_key and await asyncio.to_thread(Path(local_path).read_bytes) == data
        assert seen["onward"] == [("archive", 1, "pending")]
        await r.onward.wait_count(1, timeout_s=10)
        sent_on = Offer.from_json(opened(r.topology, "archive", "offer", r.onward.messages[0].payload))
        assert (sent_on.sender, sent_on.hop, sent_on.route, sent_on.checksum) == (
            "base",
            1,
            "primary",
            checksum_of(data),
        )
        assert leftovers(r.receiver.incoming) == []


async def test_a_repeated_offer_is_answered_from_the_journal_without_pulling_again(tmp_path: Path) -> None:
    """The summit repeats an offer the base already stored (its ack was lost): the same 'stored' ack comes back
    from the journal, and the file is not pulled again; another transfer of the same file is a 'duplicate'."""
    data = os.urandom(200_000)
    async with relay(tmp_path) as r:
        transfer, row = await hold_file(
            r.summit_journal, tmp_path / "summit" / "inbox", name="AT_O_2_R00_S00.fits", data=data, route=PRIMARY
        )
        await r.offer(transfer, row, attempt=1)
        await r.acks.wait_count(1, timeout_s=10)
        await r.onward.wait_count(1, timeout_s=10)  # the first answer is complete: the file went on
        await r.offer(transfer, row, attempt=2)
        await r.acks.wait_count(2, timeout_s=10)
        again = r.ack(1)
        assert (again.transfer_id, again.status, again.checksum, again.attempt) == (
            transfer.transfer_id,
            "stored",
            checksum_of(data),
            2,
        )
        other = await r.summit_journal.write(
            journal_files.insert_transfer,
            transfer_id=new_id("t"),
            file_key=row.file_key,
            route=PRIMARY.name,
            route_sites=PRIMARY.sites,
            hop=0,
        )
        await r.offer(other, row, attempt=1)
        await r.acks.wait_count(3, timeout_s=10)
        assert (r.ack(2).transfer_id, r.ack(2).status) == (other.transfer_id, "duplicate")
        assert r.pulls == [f"/v1/transfers/{transfer.transfer_id}"]
        assert r.counters.files["stored"] == 1 and r.counters.files["duplicate"] == 1
        assert len(r.sender.items) == 1  # one onward offer, not one per answer


async def test_bytes_that_changed_at_the_source_are_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    """The summit's copy changed after it was journaled (same size, one byte flipped): the base answers
    'checksum_mismatch' with the checksum it computed, keeps no file and journals no hop."""
    data = os.urandom(100_000)
    async with relay(tmp_path) as r:
        transfer, row = await hold_file(
            r.summit_journal, tmp_path / "summit" / "inbox", name="AT_O_3_R00_S00.fits", data=data, route=PRIMARY
        )
        await asyncio.to_thread(Path(row.local_path).write_bytes, _flipped(data, 1234))
        started = time.monotonic()
        await r.offer(transfer, row, attempt=1)
        await r.acks.wait_count(1, timeout_s=10)
        ack = r.ack(0)
        assert ack.status == "checksum_mismatch" and ack.checksum == checksum_of(_flipped(data, 1234))
        assert r.at_ack == [{"inbound": None, "files": [], "onward": []}]
        assert leftovers(r.receiver.incoming) == [] and not r.relay_dir.exists()
        assert r.counters.files["checksum_mismatch"] == 1 and r.sender.items == {}
        assert time.monotonic() - started < 10


# ---- the data server's sending ------------------------------------------------------------


def test_the_data_server_sends_a_large_file_whole_by_sendfile_and_survives_a_puller_that_hangs_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file above the small-file size goes out by the kernel's sendfile on plain HTTP: pulled whole, byte
    for byte. A puller that reads 1 MiB of it and hangs up
    costs the server that send only (it is logged as ``send_failed``): the next pull of the same file is whole."""
    data = os.urandom(24 << 20)
    sent: list[int] = []
    sendfile = os.sendfile

    def counting(out_fd: int, in_fd: int, offset: int | None, count: int) -> int:
        n = sendfile(out_fd, in_fd, offset, count)
        sent.append(n)
        return n

    monkeypatch.setattr(os, "sendfile", counting)

    async def main() -> None:
        http_port = free_port()
        topo = topology(tmp_path, http_ports={"summit": http_port}, routes=(PRIMARY,))
        journal = await open_journal(topo.sites["summit"].state_dir / "journal.sqlite")

        async def status() -> dict[str, Any]:
            return {}

        try:
            transfer, _ = await hold_file(journal, tmp_path / "inbox", name="big.fits", data=data, route=PRIMARY)
            path = f"/v1/transfers/{transfer.transfer_id}"
            url = f"http://127.0.0.1:{http_port}{path}"
            app = build_app(journal, Access(topo, None), trust(topo, "summit"), status)
            async with running() as tg, aiohttp.ClientSession() as session:
                ready = asyncio.Event()
                tg.create_task(serve(app, Endpoint(host="127.0.0.1", port=http_port), ready), name="summit.http")
                await asyncio.wait_for(ready.wait(), 10)
                header = trust(topo, "base").pull_header(path)
                for n in range(2):
                    dest = tmp_path / f"pulled-{n}"
                    computed = await pull_file(
                        session, url, TOKEN, dest, size=len(data), checksum=checksum_of(data), signature=header
                    )
                    assert computed == checksum_of(data)
                    assert dest.read_bytes() == data
                    if n == 0:
                        reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
                        writer.write(
                            f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                            f"{PULL_HEADER}: {header}\r\n\r\n".encode()
                        )
                        await writer.drain()
                        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
                        await reader.readexactly(1 << 20)
                        writer.transport.abort()  # hang up mid-body
        finally:
            await journal.close()

    with structlog.testing.capture_logs() as logs:
        asyncio.run(main())
    assert sum(sent) >= 2 * len(data) + (1 << 20)  # the kernel's copies: two whole pulls and the cut one
    assert [entry["event"] for entry in logs].count("send_failed") == 1
