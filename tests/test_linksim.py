"""The link simulator and the drill client, exercised over real sockets."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from ops.drill import add_drill_arguments, drill_main
from ops.linksim import (
    Link,
    LinkMode,
    LinkParamsError,
    LinkSimulator,
    ProxySpec,
    link_name,
    resolve_link_name,
)
from ops.linksim.framing import HttpFramer

BLOB = random.Random(20260121).randbytes(4 * 1024 * 1024)
LINK = "summit-base"
QUICK_S = 2.0  # bound on waits for something that should happen at once


class EchoServer:
    """A TCP echo server that tracks its connections so teardown leaves nothing open."""

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self._handlers.discard(task)


async def _blob(request: web.Request) -> web.Response:
    size = int(request.query.get("size", len(BLOB)))
    return web.Response(body=BLOB[:size], content_type="application/octet-stream")


async def _chunked_blob(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.enable_chunked_encoding()
    await response.prepare(request)
    for start in range(0, len(BLOB), 100_000):
        await response.write(BLOB[start : start + 100_000])
    await response.write_eof()
    return response


@dataclass(frozen=True, slots=True, kw_only=True)
class Bench:
    """A simulator with one link: an http proxy to the blob server and an mqtt-kind proxy to an echo server."""

    sim: LinkSimulator
    link: Link
    http_port: int
    echo_port: int

    @property
    def blob_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/blob"


@pytest.fixture
async def echo_server() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def blob_server() -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_get("/blob", _blob)
    app.router.add_get("/chunked", _chunked_blob)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield runner.addresses[0][1]
    await runner.cleanup()


@pytest.fixture
async def bench(echo_server: EchoServer, blob_server: int) -> AsyncIterator[Bench]:
    proxies = [
        ProxySpec(
            listen_host="127.0.0.1",
            listen_port=0,
            target_host="127.0.0.1",
            target_port=blob_server,
            kind="http",
            direction="summit->base",
        ),
        ProxySpec(
            listen_host="127.0.0.1",
            listen_port=0,
            target_host="127.0.0.1",
            target_port=echo_server.port,
            kind="mqtt",
            direction="summit->base",
        ),
    ]
    async with LinkSimulator({LINK: proxies}) as sim:
        link = sim.links[LINK]
        yield Bench(
            sim=sim,
            link=link,
            http_port=link.proxies[0].listen_port,
            echo_port=link.proxies[1].listen_port,
        )


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    await writer.drain()
    async with asyncio.timeout(QUICK_S):
        return await reader.readexactly(len(payload))


async def expect_reset(reader: asyncio.StreamReader) -> None:
    with pytest.raises(ConnectionResetError):
        async with asyncio.timeout(QUICK_S):
            await reader.read(65536)


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with asyncio.timeout(10), session.get(url) as response:
        return response.status, await response.read()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_up_forwards_http_and_raw_bytes_unchanged(bench: Bench) -> None:
    """An up link delivers a 4 MiB HTTP body and an echoed byte stream bit for bit."""
    async with aiohttp.ClientSession() as session:
        status, body = await fetch(session, bench.blob_url)
    assert (status, sha256(body)) == (200, sha256(BLOB))
    async with connect(bench.echo_port) as (reader, writer):
        assert await round_trip(reader, writer, b"ping" * 1000) == b"ping" * 1000
    stats = bench.link.stats()
    assert stats["bytes"]["base->summit"] >= len(BLOB) + 4000
    assert stats["connections_total"] == 2


async def test_cut_resets_open_connections_and_new_ones_until_restored(bench: Bench) -> None:
    """Cutting a link resets open connections and every new one; restoring it lets connections through."""
    async with connect(bench.echo_port) as (reader, writer):
        assert await round_trip(reader, writer, b"hello") == b"hello"
        await bench.link.set_mode("cut")
        await expect_reset(reader)
    async with connect(bench.echo_port) as (reader, writer):
        await expect_reset(reader)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await fetch(session, bench.blob_url)
        await bench.link.set_mode("up")
        status, body = await fetch(session, bench.blob_url)
    assert (status, body) == (200, BLOB)
    assert bench.link.stats()["resets"] >= 3


async def test_cut_breaks_an_http_download_in_flight(bench: Bench) -> None:
    """A download that is under way when the link is cut fails with a client error instead of hanging."""
    await bench.link.set_mode("slow", mbps=8)
    async with aiohttp.ClientSession() as session, session.get(bench.blob_url) as response:
        assert response.status == 200
        await response.content.readexactly(1024)
        await bench.link.set_mode("cut")
        with pytest.raises(aiohttp.ClientError):
            async with asyncio.timeout(QUICK_S):
                await response.read()


async def test_blackhole_silences_connections_and_restore_resets_them(bench: Bench) -> None:
    """A blackholed link answers nothing, old or new connection, and returning to up resets those connections."""
    async with connect(bench.echo_port) as (old_reader, old_writer):
        assert await round_trip(old_reader, old_writer, b"before") == b"before"
        await bench.link.set_mode("blackhole")
        async with connect(bench.echo_port) as (new_reader, new_writer):
            for reader, writer in ((old_reader, old_writer), (new_reader, new_writer)):
                writer.write(b"anyone there?")
                writer.write_eof()  # the echo server would close in turn: that must not cross either
                await writer.drain()
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await reader.read(65536)
            await bench.link.set_mode("up")
            await expect_reset(old_reader)
            await expect_reset(new_reader)
    async with connect(bench.echo_port) as (reader, writer):
        assert await round_trip(reader, writer, b"after") == b"after"


async def test_slow_caps_bandwidth(bench: Bench) -> None:
    """At 16 Mbit/s a 2 MiB download takes at least about a second and still arrives intact."""
    await bench.link.set_mode("slow", mbps=16)
    size = 2 * 1024 * 1024
    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        status, body = await fetch(session, f"{bench.blob_url}?size={size}")
        elapsed = time.monotonic() - started
    assert (status, body) == (200, BLOB[:size])
    assert elapsed >= 0.8


async def test_slow_adds_latency_each_way(bench: Bench) -> None:
    """With 150 ms of added one-way latency an echo round trip takes at least 300 ms."""
    await bench.link.set_mode("slow", latency_ms=150)
    async with connect(bench.echo_port) as (reader, writer):
        started = time.monotonic()
        assert await round_trip(reader, writer, b"x") == b"x"
        assert time.monotonic() - started >= 0.3


async def test_mode_change_applies_to_a_transfer_under_way(bench: Bench) -> None:
    """A download crawling on a 0.2 Mbit/s link finishes promptly once the link is restored."""
    await bench.link.set_mode("slow", mbps=0.2)
    async with aiohttp.ClientSession() as session, session.get(bench.blob_url) as response:
        await response.content.readexactly(1024)
        assert bench.link.stats()["bytes"]["base->summit"] < 100_000  # 4 MiB would take ~3 minutes
        await bench.link.set_mode("up")
        async with asyncio.timeout(QUICK_S):
            assert len(await response.read()) == len(BLOB) - 1024


async def test_corrupt_damages_http_bodies_but_not_framing_or_mqtt(bench: Bench) -> None:
    """A corrupting link changes body bytes of keep-alive, HEAD and chunked responses, yet every response parses."""
    await bench.link.set_mode("corrupt", corrupt_probability=1.0)
    base = f"http://127.0.0.1:{bench.http_port}"
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # same keep-alive connection: the second response header must survive
            status, body = await fetch(session, f"{base}/blob")
            assert (status, len(body)) == (200, len(BLOB))
            assert body != BLOB
        async with session.head(f"{base}/blob") as response:
            assert response.status == 200
        status, body = await fetch(session, f"{base}/chunked")
        assert (status, len(body)) == (200, len(BLOB))
        assert body != BLOB
    async with connect(bench.echo_port) as (reader, writer):
        assert await round_trip(reader, writer, b"mqtt" * 1000) == b"mqtt" * 1000
    assert bench.link.stats()["corrupted_chunks"] >= 3


async def test_flaky_resets_long_lived_connections(bench: Bench) -> None:
    """On a flaky link with a 50 ms mean reset interval a long-lived connection is reset soon."""
    async with connect(bench.echo_port) as (reader, writer):
        assert await round_trip(reader, writer, b"hello") == b"hello"
        await bench.link.set_mode("flaky", reset_interval_s=0.05)
        await expect_reset(reader)
    assert bench.link.stats()["resets"] >= 1


async def test_control_api_reports_changes_and_rejects_bad_requests(bench: Bench) -> None:
    """The control API lists links, accepts either site order, 404s an unknown link and 400s a bad mode."""
    url = bench.sim.control_url
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/links/base-summit", json={"mode": "slow", "mbps": 50}) as response:
            assert response.status == 200
            assert (await response.json())["state"]["mode"] == "slow"
        async with session.get(f"{url}/links") as response:
            listing = await response.json()
        assert listing["links"][LINK]["state"]["mbps"] == 50
        assert listing["links"][LINK]["proxies"][0]["listen_port"] == bench.http_port
        async with session.post(f"{url}/links/summit-moon", json={"mode": "cut"}) as response:
            assert response.status == 404
            assert "summit-moon" in (await response.json())["error"]
        async with session.post(f"{url}/links/{LINK}", json={"mode": "melt"}) as response:
            assert response.status == 400
            assert "melt" in (await response.json())["error"]
        negative = {"mode": "flaky", "reset_interval_s": -1}
        async with session.post(f"{url}/links/{LINK}", json=negative) as response:
            assert response.status == 400
    assert bench.link.state.mode is LinkMode.SLOW


async def test_drill_changes_the_mode_through_cluster_json(bench: Bench, tmp_path: Path) -> None:
    """`drill cut base-summit` with the control URL in cluster.json cuts the link; an unknown link exits 2."""
    (tmp_path / "cluster.json").write_text(json.dumps({"drill": {"control": bench.sim.control_url}}))
    parser = argparse.ArgumentParser(prog="drill")
    add_drill_arguments(parser)

    def run(*argv: str) -> int:
        return drill_main(parser.parse_args(["--workdir", str(tmp_path), *argv]))

    assert await asyncio.to_thread(run, "cut", "base-summit") == 0
    assert bench.link.state.mode is LinkMode.CUT
    assert await asyncio.to_thread(run, "slow", LINK, "--mbps", "5", "--latency-ms", "20") == 0
    assert (bench.link.state.mbps, bench.link.state.latency_ms) == (5, 20)
    assert await asyncio.to_thread(run, "status") == 0
    assert await asyncio.to_thread(run, "cut", "summit-moon") == 2
    assert drill_main(parser.parse_args(["--workdir", str(tmp_path / "nowhere"), "status"])) == 2


def test_link_names_match_in_either_site_order() -> None:
    """Link names resolve with the sites in either order, even when a site name contains a dash."""
    assert link_name("summit", "base") == link_name("base", "summit") == "base-summit"
    known = ["summit-base", "base-us-archive"]
    assert resolve_link_name("base-summit", known) == "summit-base"
    assert resolve_link_name("us-archive-base", known) == "base-us-archive"
    assert resolve_link_name("summit-archive", known) is None


async def test_slow_mode_needs_a_cap_or_latency() -> None:
    """Asking for a slow link with neither bandwidth nor latency is rejected and leaves the link up."""
    link = Link(LINK, [])
    with pytest.raises(LinkParamsError):
        await link.set_mode("slow")
    assert link.state.mode is LinkMode.UP


def test_http_framer_finds_bodies_across_any_chunk_split() -> None:
    """The framer marks exactly the body bytes of pipelined responses however the stream is split."""
    requests = b"HEAD /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n"
    responses = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"  # HEAD: no body despite the length
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nBBBBB"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nCCC\r\n2\r\nCC\r\n0\r\nT: 1\r\n\r\n"
    )
    for split in range(1, 9):
        methods: deque[str] = deque()
        HttpFramer(responses=False, methods=methods).feed(requests)
        framer = HttpFramer(responses=True, methods=methods)
        body = bytearray()
        for start in range(0, len(responses), split):
            chunk = responses[start : start + split]
            for begin, end in framer.feed(chunk):
                body += chunk[begin:end]
        assert body == b"BBBBBCCCCC", split
