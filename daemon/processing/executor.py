"""Where processors run: a local process pool by default, a Dask cluster when one is configured.

Both take a picklable top-level function and its one argument and give back its result, so the same
call (``make_master(spec)``) runs on either, with the same bytes written. A worker that dies mid-job
surfaces as :class:`WorkerLost` (the pool is replaced); Dask reruns a lost worker's task by itself
and gives up after its ``allowed-failures``, which also surfaces as :class:`WorkerLost`.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

import structlog

log = structlog.get_logger()

A = TypeVar("A")
R = TypeVar("R")


class WorkerLost(RuntimeError):
    """The process running a job died (killed, out of memory); the job may be run again."""


class Executor(Protocol):
    """Runs one processor call off the event loop."""

    name: str

    async def run(self, fn: Callable[[A], R], arg: A) -> R:
        """``fn(arg)`` in a worker; raises what ``fn`` raised, or :class:`WorkerLost`."""
        ...

    async def close(self) -> None:
        """Release the workers."""
        ...


class PoolExecutor:
    """A :class:`~concurrent.futures.ProcessPoolExecutor` of ``workers`` processes (forkserver), made on first use."""

    name = "process-pool"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def _get(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Not fork: the daemon has threads (the journal's, watchdog's) a forked child would inherit mid-state.
            context = multiprocessing.get_context("forkserver")
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)
        return self._pool

    async def run(self, fn: Callable[[A], R], arg: A) -> R:
        """``fn(arg)`` in one of the pool's processes."""
        pool = self._get()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, fn, arg)
        except BrokenProcessPool as exc:
            if self._pool is pool:  # the first job to notice replaces the pool for everyone
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise WorkerLost(f"a process-pool worker died: {exc}") from exc

    async def close(self) -> None:
        """Stop the pool's processes (without waiting on the loop)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


class DaskExecutor:
    """A ``dask.distributed`` cluster reached at ``address`` (``tcp://host:port``), connected on first use."""

    name = "dask"

    def __init__(self, address: str) -> None:
        self.address = address
        self._client: Any = None
        self._lock = asyncio.Lock()

    async def _get(self) -> Any:
        async with self._lock:
            if self._client is None:
                from distributed import Client

                self._client = await Client(self.address, asynchronous=True)  # type: ignore[no-untyped-call]
                log.info("dask_connected", scheduler=self.address)
            return self._client

    async def run(self, fn: Callable[[A], R], arg: A) -> R:
        """``fn(arg)`` on a Dask worker (``pure=False``: every call runs, none is served from a cache)."""
        from distributed import KilledWorker

        client = await self._get()
        future = client.submit(fn, arg, pure=False)
        try:
            result: R = await future
        except KilledWorker as exc:
            raise WorkerLost(f"dask gave the job up after its workers died: {exc}") from exc
        finally:
            future.release()
        return result

    async def close(self) -> None:
        """Disconnect from the scheduler (the cluster keeps running)."""
        async with self._lock:
            if self._client is not None:
                client, self._client = self._client, None
                await client.close()


def make_executor(dask_scheduler: str | None, workers: int) -> Executor:
    """The executor ``[processing]`` asks for: Dask when ``dask_scheduler`` is set, else a process pool."""
    if dask_scheduler:
        return DaskExecutor(dask_scheduler)
    return PoolExecutor(workers)
