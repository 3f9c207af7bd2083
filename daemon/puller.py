"""Pull one file over HTTP: hash while streaming to a temporary file, fsync, verify."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import blake3

from daemon.errors import ChecksumMismatch, PullError
from protocol.checksum import format_checksum

CHUNK_BYTES = 1 << 20


def _write_chunk(fd: int, hasher: blake3.blake3, chunk: bytes) -> None:
    hasher.update(chunk)
    view = memoryview(chunk)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _finish(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def pull_file(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    dest: Path,
    *,
    size: int,
    checksum: str,
    read_timeout_s: float = 30.0,
) -> str:
    """Download ``url`` into ``dest`` (created or truncated), fsynced; return the computed checksum.

    The bytes are hashed as they stream, so a mismatch is known the moment the last byte lands.

    Raises:
        ChecksumMismatch: the size or blake3 differs from what was offered (``dest`` is removed).
        PullError: connection failure, HTTP error status, or the stream ended early.
    """
    hasher = blake3.blake3(max_threads=1)
    received = 0
    fd = await asyncio.to_thread(os.open, dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    ok = False
    try:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout_s)
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout) as resp:
            if resp.status != 200:
                body = (await resp.text())[:200]
                raise PullError(f"HTTP {resp.status} from {url}: {body.strip()}")
            async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                received += len(chunk)
                if received > size:
                    break
                if len(chunk) >= 256 * 1024:
                    await asyncio.to_thread(_write_chunk, fd, hasher, chunk)
                else:
                    _write_chunk(fd, hasher, chunk)
        await asyncio.to_thread(_finish, fd)
        fd = -1
        computed = format_checksum(hasher.hexdigest())
        if received != size:
            raise ChecksumMismatch(f"received {received} bytes, offered {size}", checksum=computed, size=received)
        if computed != checksum:
            raise ChecksumMismatch(f"checksum {computed} != offered {checksum}", checksum=computed, size=received)
        ok = True
        return computed
    except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
        raise PullError(f"pull from {url} failed: {exc!r}") from exc
    finally:
        if fd >= 0:
            os.close(fd)
        if not ok:
            await asyncio.to_thread(dest.unlink, missing_ok=True)
