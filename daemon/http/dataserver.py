"""The data server: a transfer's file bytes for an authorised puller, and the HTTP app that carries every route."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import ssl
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from daemon.config import Endpoint
from daemon.http.auth import Access
from daemon.journal import Journal
from daemon.journal import files as journal_files
from daemon.trust import PULL_HEADER, Trust

log = structlog.get_logger()

StatusFn = Callable[[], Awaitable[dict[str, Any]]]
STREAM_CHUNK_BYTES = 1 << 20
SEND_STALL_S = 30.0
"""A plain-HTTP send ends (the connection is closed) when the socket takes no byte for this long."""
SMALL_FILE_BYTES = 256 * 1024
"""A file up to this size is read in one thread hop and sent from memory (FileResponse's stat, open,
conditional-request and sendfile steps cost more than the bytes for a small file)."""


def build_app(
    journal: Journal,
    access: Access,
    trust: Trust,
    status: StatusFn,
    extra_routes: list[web.RouteDef] | None = None,
    served: Callable[[str, int], None] | None = None,
) -> web.Application:
    """The data server: ``GET /v1/transfers/{id}`` streams that transfer's file, only while the transfer is
    pending and only to the site its offer named (which signs the request); every other route needs the
    credential :class:`~daemon.http.auth.Access` asks for. ``served(peer, size)`` counts each file served."""
    app = web.Application(middlewares=[access.middleware])

    async def transfer(request: web.Request) -> web.StreamResponse:
        transfer_id = request.match_info["transfer_id"]
        found = await journal.read(journal_files.transfer_with_source, transfer_id)
        signer = trust.pull_signer(request.headers.get(PULL_HEADER, ""), request.path)
        if found is None:
            raise web.HTTPNotFound(text=f"no transfer {transfer_id}")
        transfer_row, row = found
        if signer != transfer_row.receiver:
            log.warning("pull_refused", peer=request.remote, path=request.path, signer=signer)
            raise web.HTTPForbidden(text=f"transfer {transfer_id} is for {transfer_row.receiver}, not {signer}")
        if row.state == "replaced":
            raise web.HTTPGone(text=f"{row.name} was rewritten at the source; this version no longer exists")
        path = Path(row.local_path)
        if transfer_row.state == "pending" and row.size <= SMALL_FILE_BYTES and not request.secure:
            small = await asyncio.to_thread(_read_small, path)
            if isinstance(small, bytes) and len(small) == row.size:
                if served is not None:
                    served(signer, row.size)
                return web.Response(
                    body=small,
                    headers={"X-Skyrelay-Checksum": row.checksum},
                    content_type="application/octet-stream",
                )
            # Gone, not a regular file, or another size now: the checks below say which.
        try:
            st = await asyncio.to_thread(os.lstat, path)
        except FileNotFoundError as exc:
            raise web.HTTPGone(text=f"{row.name} is no longer held here") from exc
        if not stat.S_ISREG(st.st_mode):
            # The inbox entry was swapped for a link or a special file after it was registered.
            raise web.HTTPConflict(text=f"{row.name} is no longer a regular file here; not served")
        size = st.st_size
        if transfer_row.state != "pending":
            raise web.HTTPGone(text=f"transfer {transfer_id} is {transfer_row.state}, no longer served")
        if size != row.size:
            raise web.HTTPConflict(text=f"{row.name} changed on disk: {size} bytes, journal says {row.size}")
        headers = {"X-Skyrelay-Checksum": row.checksum}
        if served is not None:
            served(signer, size)
        if request.secure:
            return await _stream_file(request, path, size, headers)
        return await _send_file(request, path, size, headers)

    async def status_handler(request: web.Request) -> web.Response:
        return web.json_response(await status())

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/v1/transfers/{transfer_id}", transfer)
    app.router.add_get("/v1/status", status_handler)
    app.router.add_get("/healthz", health)
    if extra_routes:
        app.router.add_routes(extra_routes)
    return app


def _read_small(path: Path) -> bytes | None:
    """A small regular file's bytes, read through a descriptor that follows no link at the end of ``path``;
    None when it is not there or not a regular file (blocking)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > SMALL_FILE_BYTES:
            return None
        return os.read(fd, st.st_size + 1)
    finally:
        os.close(fd)


async def _stream_file(request: web.Request, path: Path, size: int, headers: dict[str, str]) -> web.StreamResponse:
    """Send ``path`` in 1 MiB reads: over TLS, aiohttp's FileResponse cannot use sendfile and falls back
    to 16 KiB reads (about 90 MB/s here); larger writes keep the encryption cost per byte low."""
    response = web.StreamResponse(headers={**headers, "Content-Type": "application/octet-stream"})
    response.content_length = size
    await response.prepare(request)
    with await asyncio.to_thread(open, path, "rb") as source:
        remaining = size
        while remaining > 0:
            chunk = await asyncio.to_thread(source.read, min(STREAM_CHUNK_BYTES, remaining))
            if not chunk:
                break  # the file shrank under us; the puller sees a short body and reports it
            await response.write(chunk)
            remaining -= len(chunk)
    await response.write_eof()
    return response


async def _send_file(request: web.Request, path: Path, size: int, headers: dict[str, str]) -> web.StreamResponse:
    """Plain HTTP: the kernel copies the file to the socket (``os.sendfile``, in a thread), whatever the event
    loop (uvloop, measured for issue 13, has no ``loop.sendfile``, and aiohttp's fallback then reads 1 MiB at a
    time into Python: 40 % more CPU at the summit). The file is opened without following a link (aiohttp's
    FileResponse opened the path again), so an inbox entry swapped for one after the checks is refused.

    Raises:
        web.HTTPConflict: the path is no longer a regular file of the journaled size.
        ConnectionResetError: the socket failed or stalled mid-body (aiohttp then closes the connection; the
            puller sees a short body and retries).
    """
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if transport is None or sock is None:
        raise ConnectionResetError("connection lost before the body")
    try:
        fd = await asyncio.to_thread(_open_regular, path, size)
    except FileNotFoundError as exc:
        raise web.HTTPGone(text=f"{path.name} is no longer held here") from exc
    except OSError as exc:
        raise web.HTTPConflict(text=f"{path.name} is not the journaled regular file here: {exc}") from exc
    try:
        response = web.StreamResponse(headers={**headers, "Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)  # (a StreamResponse sends its headers at once)
        if transport.get_write_buffer_size():  # headers still queued: the body must follow them, not overtake
            with os.fdopen(os.dup(fd), "rb") as source:
                while chunk := await asyncio.to_thread(source.read, STREAM_CHUNK_BYTES):
                    await response.write(chunk)
        else:
            # A duplicate of the socket's descriptor, taken here on the loop's thread: should the loop close
            # the connection meanwhile, the number it frees cannot be reused under the thread's sendfile.
            out = os.dup(sock.fileno())
            try:
                await asyncio.to_thread(_sendfile, out, fd, size)
            except OSError as exc:
                log.info("send_failed", peer=request.remote, path=request.path, error=str(exc))
                raise ConnectionResetError(f"sending {path.name} failed: {exc}") from exc
            finally:
                os.close(out)
        await response.write_eof()
        return response
    finally:
        os.close(fd)


def _open_regular(path: Path, size: int) -> int:
    """A descriptor on ``path`` (no link followed at its end) when it is a regular file of ``size`` bytes (blocking).

    Raises:
        OSError: it is gone, a link, not a regular file, or another size.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) and st.st_size == size:
        return fd
    os.close(fd)
    raise OSError(f"a {stat.filemode(st.st_mode)} of {st.st_size} bytes, not a regular file of {size}")


def _sendfile(out: int, fd: int, size: int) -> None:
    """Copy ``size`` bytes of ``fd`` to the non-blocking socket ``out``, waiting for room with poll (blocking).

    Raises:
        OSError: the socket failed, took nothing for :data:`SEND_STALL_S`, or the file ended early.
    """
    poller = select.poll()
    poller.register(out, select.POLLOUT)
    sent = 0
    while sent < size:
        try:
            n = os.sendfile(out, fd, sent, size - sent)
        except BlockingIOError:
            if not poller.poll(SEND_STALL_S * 1000):
                raise TimeoutError(f"the socket took nothing for {SEND_STALL_S:g} s") from None
            continue
        if n == 0:
            raise OSError(f"the file ended after {sent} of {size} bytes")
        sent += n


async def serve(
    app: web.Application, endpoint: Endpoint, ready: asyncio.Event, tls: ssl.SSLContext | None = None
) -> None:
    """Serve ``app`` on ``endpoint`` (HTTPS when ``tls`` is given) until cancelled."""
    # An access log line per request at info: shown with `--library-log-level info` (off by default, and then cheap).
    runner = web.AppRunner(app, access_log=logging.getLogger("aiohttp.access"), handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, endpoint.host, endpoint.port, reuse_address=True, ssl_context=tls)
        await site.start()
        log.info("http_listening", address=str(endpoint), tls=tls is not None)
        ready.set()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
