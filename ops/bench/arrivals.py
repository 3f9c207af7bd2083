"""Arrival notices as the benchmark sees them: a subscriber to the archive broker that records each one."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import aiomqtt
import structlog

__all__ = ["ARRIVALS_TOPIC", "Arrival", "ArrivalListener", "listen_arrivals"]

log = structlog.get_logger()


ARRIVALS_TOPIC: Final = "skyrelay/v1/arrivals/#"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """One arrival notice as the benchmark's subscriber received it."""

    name: str
    notice_id: str
    size: int
    closed_at: float
    received_at: float

    @property
    def latency_s(self) -> float:
        """Summit close (the file's mtime) to receipt of the notice."""
        return self.received_at - self.closed_at


class ArrivalListener:
    """Collects arrival notices by file name; lets a workload wait until a set of names has arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, Arrival] = {}
        self.seen_ids: set[str] = set()
        self.duplicates = 0
        self.ignored = 0
        self._changed = asyncio.Condition()

    async def consume(self, client: aiomqtt.Client) -> None:
        """Record every arrival notice until cancelled (exposure notices and repeats are skipped)."""
        async for message in client.messages:
            received_at = time.time()
            await self._record(message.topic.value, message.payload, received_at)

    async def _record(self, topic: str, payload: Any, received_at: float) -> None:
        if topic.endswith("/exposure") or not isinstance(payload, bytes | bytearray):
            self.ignored += 1
            return
        try:
            body = json.loads(payload)
            if body.get("type") == "exposure":
                self.ignored += 1
                return
            arrival = Arrival(
                name=str(body["name"]),
                notice_id=str(body["notice_id"]),
                size=int(body["size"]),
                closed_at=float(body["closed_at"]),
                received_at=received_at,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("bench_bad_notice", topic=topic, error=repr(exc))
            self.ignored += 1
            return
        if arrival.notice_id in self.seen_ids or arrival.name in self.arrivals:
            self.duplicates += 1
            return
        self.seen_ids.add(arrival.notice_id)
        async with self._changed:
            self.arrivals[arrival.name] = arrival
            self._changed.notify_all()

    async def wait_for(self, names: Sequence[str], timeout_s: float) -> bool:
        """Wait until every name has a notice; False when ``timeout_s`` passes first."""
        wanted = set(names)
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: wanted <= self.arrivals.keys())
        except TimeoutError:
            return False
        return True


@contextlib.asynccontextmanager
async def listen_arrivals(port: int, login: tuple[str, str]) -> AsyncIterator[ArrivalListener]:
    """Subscribe to the archive broker's arrival notices (qos 1, as the subscriber) for the duration of the block."""
    listener = ArrivalListener()
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"skyrelay-bench-{os.getpid()}", username=login[0], password=login[1]
    ) as client:
        await client.subscribe(ARRIVALS_TOPIC, qos=1)
        async with asyncio.TaskGroup() as tg:
            consumer = tg.create_task(listener.consume(client), name="bench.arrivals")
            try:
                yield listener
            finally:
                consumer.cancel()
